//! Opening one plugin file: shadow copy, `dlopen`, the ABI handshake, and
//! copying the descriptor into host memory ([`LoadedPlugin`]).
//!
//! Nothing the host keeps points into the plugin's memory except the two
//! function pointers it must call; names, paths and metadata are copied.

use super::host::{PendingReply, PluginLogContext, host_table};
use super::shadow::ShadowDir;
use action_api::abi::{
    ABI_VERSION, ACTION_DESCRIPTOR_MIN_SIZE, ActionDescriptor, ByteView, CallInfo, ENTRY_SYMBOL,
    ENTRY_SYMBOL_PREFIX, EntryFn, HostTable, PLUGIN_DESCRIPTOR_MIN_SIZE, PluginDescriptor,
    action_flags,
};
use libloading::Library;
use std::mem::ManuallyDrop;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The longest action path accepted.
const MAX_PATH_BYTES: usize = 200;

/// Why a file could not be loaded as a plugin.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be copied into the shadow folder.
    #[error("could not copy it for loading: {0}")]
    Copy(#[source] std::io::Error),
    /// The file is not a complete library for this machine.
    #[error("not a loadable library: {0}")]
    Incomplete(#[from] super::elf::ElfError),
    /// The dynamic loader refused the file.
    #[error("not a loadable library: {0}")]
    NotALibrary(String),
    /// A library, but without any Switchboard entry symbol.
    #[error("not a Switchboard plugin: it exports no `switchboard_plugin_v1` symbol")]
    NotAPlugin,
    /// Built for another ABI version.
    #[error(
        "built for plugin ABI version {found}, but this server speaks version {expected}; rebuild it against action-api {expected}"
    )]
    AbiMismatch {
        /// The plugin's version.
        found: u32,
        /// The host's version.
        expected: u32,
    },
    /// The entry function returned no descriptor.
    #[error("its entry function failed (returned no descriptor); its log lines above say why")]
    InitFailed,
    /// The descriptor is malformed.
    #[error("bad descriptor: {0}")]
    BadDescriptor(String),
}

/// One action as the host keeps it (copied out of the plugin).
#[derive(Debug, Clone)]
pub struct ActionMeta {
    /// The method path.
    pub path: String,
    /// Callable without a token.
    pub public: bool,
    /// The plugin's own deadline, if it set one.
    pub timeout: Option<Duration>,
}

/// A plugin library loaded into the server, with everything the host needs
/// to call it.
///
/// The library is never closed in this version: a plugin's code may still
/// run on a thread after the host stops waiting for it (a call past its
/// deadline), and `dlclose` under it would crash the server.
pub struct LoadedPlugin {
    /// The file in the actions folder it came from.
    pub file: PathBuf,
    /// The private copy that is actually mapped.
    pub shadow: PathBuf,
    /// The plugin's name.
    pub name: String,
    /// The plugin's version.
    pub version: String,
    /// Its actions, in the plugin's order (index = the ABI's action number).
    pub actions: Vec<ActionMeta>,
    /// When it was loaded.
    pub loaded_at: SystemTime,
    call: unsafe extern "C" fn(usize, *const CallInfo),
    shutdown: Option<unsafe extern "C" fn()>,
    /// The library, never closed (see above).
    _library: ManuallyDrop<Library>,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("file", &self.file)
            .field("name", &self.name)
            .field("version", &self.version)
            .field("actions", &self.actions)
            .finish_non_exhaustive()
    }
}

impl LoadedPlugin {
    /// Loads `file` through a fresh copy in `shadow`.
    pub fn load(file: &Path, shadow: &ShadowDir) -> Result<LoadedPlugin, LoadError> {
        let copy = shadow.copy_in(file).map_err(LoadError::Copy)?;
        let result = Self::load_copy(file, &copy);
        if result.is_err() {
            // The copy may be mapped (a refused plugin is kept loaded but
            // unused); unlinking its name is safe either way.
            let _ = std::fs::remove_file(&copy);
        }
        result
    }

    /// Loads an already-private copy; `file` is only for reporting.
    fn load_copy(file: &Path, copy: &Path) -> Result<LoadedPlugin, LoadError> {
        if cfg!(target_os = "linux") {
            let bytes = std::fs::read(copy).map_err(LoadError::Copy)?;
            super::elf::check_complete(&bytes)?;
        }
        // SAFETY: opening a library runs its constructors. The file is a
        // private copy nobody else writes; plugins are code the operator
        // chose to run. (An out-of-process preflight is tracked in #8.)
        let library = unsafe { Library::new(copy) }
            .map_err(|e| LoadError::NotALibrary(describe_dlerror(&e)))?;
        let library = ManuallyDrop::new(library);
        let entry = find_entry(&library)?;
        // The log context and the host table are leaked on purpose: the
        // plugin may keep using them (a thread it started, its panic hook)
        // for as long as its code is mapped, which is for ever.
        let log_ctx: &'static PluginLogContext = Box::leak(Box::new(PluginLogContext {
            file_stem: file
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("plugin")
                .to_owned(),
            name: std::sync::OnceLock::new(),
        }));
        let host_table: &'static HostTable = Box::leak(Box::new(host_table(log_ctx)));
        // SAFETY: `entry` has the ABI 1 entry signature (it was found under
        // the ABI 1 name); the host table lives as long as the library.
        let descriptor = unsafe { entry(host_table) };
        if descriptor.is_null() {
            return Err(LoadError::InitFailed);
        }
        // SAFETY: a non-null descriptor from the entry lives as long as the library.
        let descriptor = unsafe { read_descriptor(descriptor) }?;
        // SAFETY: the descriptor's views point into the library's memory.
        let name = unsafe { utf8(descriptor.name, "name") }?;
        // SAFETY: as above.
        let version = unsafe { utf8(descriptor.version, "version") }?;
        // SAFETY: as above; `read_actions` checks the stride.
        let actions = unsafe { read_actions(&descriptor) }?;
        let _ = log_ctx.name.set(name.clone());
        Ok(LoadedPlugin {
            file: file.to_path_buf(),
            shadow: copy.to_path_buf(),
            name,
            version,
            actions,
            loaded_at: SystemTime::now(),
            call: descriptor.call,
            shutdown: descriptor.shutdown,
            _library: library,
        })
    }

    /// Starts action number `index` with `params` (raw JSON) for a caller;
    /// the completion arrives through `reply`. Blocks for as long as the
    /// plugin's `call` runs: call it from a thread that may block.
    pub(crate) fn call(
        &self,
        index: usize,
        params: &[u8],
        conn_id: u64,
        user: Option<&str>,
        reply: PendingReply,
    ) {
        let info = CallInfo {
            size: std::mem::size_of::<CallInfo>() as u32,
            params: ByteView::of(params),
            conn_id,
            user: user.map_or(ByteView::ABSENT, |u| ByteView::of(u.as_bytes())),
            reply: reply.into_handle(),
        };
        // SAFETY: `call` is the plugin's own, `index` is within its action
        // list (the registry only holds indices it read from it), and
        // `info` with everything it points to outlives the call.
        unsafe { (self.call)(index, &info) }
    }

    /// Runs the plugin's shutdown hook, if it has one.
    pub fn shutdown(&self) {
        if let Some(hook) = self.shutdown {
            // SAFETY: the plugin's own hook; it catches its panics.
            unsafe { hook() }
        }
    }
}

/// libloading's own text is just "dlopen failed"; the loader's reason is
/// in the error's source. Names of the shadow copy are replaced by nothing
/// useful to a person, so they are kept out.
fn describe_dlerror(error: &libloading::Error) -> String {
    match std::error::Error::source(error) {
        Some(source) => {
            let text = source.to_string();
            // "…/libx.123.4.so: invalid ELF header" -> "invalid ELF header"
            text.rsplit_once(": ")
                .map_or(text.clone(), |(_, reason)| reason.to_owned())
        }
        None => error.to_string(),
    }
}

fn find_entry(library: &Library) -> Result<EntryFn, LoadError> {
    // SAFETY: the symbol, if present, is the ABI 1 entry function, whose
    // type is `EntryFn` by contract of the name.
    if let Ok(entry) = unsafe { library.get::<EntryFn>(ENTRY_SYMBOL) } {
        return Ok(*entry);
    }
    for found in (1..=32u32).filter(|v| *v != ABI_VERSION) {
        let name = format!("{ENTRY_SYMBOL_PREFIX}{found}\0");
        // SAFETY: only the symbol's presence is checked; it is never called.
        if unsafe { library.get::<*const ()>(name.as_bytes()) }.is_ok() {
            return Err(LoadError::AbiMismatch {
                found,
                expected: ABI_VERSION,
            });
        }
    }
    Err(LoadError::NotAPlugin)
}

/// The descriptor as the host reads it: [`PluginDescriptor`]'s layout,
/// with every function pointer optional so that a null one is a value we
/// can check rather than undefined behaviour.
#[repr(C)]
struct RawDescriptor {
    abi_version: u32,
    size: u32,
    name: ByteView,
    version: ByteView,
    actions: *const ActionDescriptor,
    action_count: usize,
    action_size: usize,
    call: Option<unsafe extern "C" fn(usize, *const CallInfo)>,
    shutdown: Option<unsafe extern "C" fn()>,
}

// The mirror must keep the real layout.
const _: () =
    assert!(std::mem::size_of::<RawDescriptor>() == std::mem::size_of::<PluginDescriptor>());

/// The sizes of the descriptor's revisions, oldest first: a plugin's
/// `size` is rounded down to one of these, so a field is read only whole.
const DESCRIPTOR_REVISIONS: [usize; 2] = [
    PLUGIN_DESCRIPTOR_MIN_SIZE,
    std::mem::size_of::<PluginDescriptor>(),
];

/// What the host keeps from a descriptor.
struct Descriptor {
    name: ByteView,
    version: ByteView,
    actions: *const ActionDescriptor,
    action_count: usize,
    action_size: usize,
    call: unsafe extern "C" fn(usize, *const CallInfo),
    shutdown: Option<unsafe extern "C" fn()>,
}

/// Copies the revisions of the descriptor that the plugin provided; fields
/// it does not have (an older plugin) read as absent.
///
/// # Safety
/// `ptr` points to a descriptor that starts with `abi_version` and `size`
/// and is at least `size` bytes long.
unsafe fn read_descriptor(ptr: *const PluginDescriptor) -> Result<Descriptor, LoadError> {
    let bytes = ptr.cast::<u8>();
    // SAFETY: the two leading u32 fields exist in every revision; read
    // unaligned in case the plugin's pointer is not aligned.
    let (abi_version, size) = unsafe {
        (
            std::ptr::read_unaligned(bytes.cast::<u32>()),
            std::ptr::read_unaligned(bytes.add(4).cast::<u32>()) as usize,
        )
    };
    if abi_version != ABI_VERSION {
        return Err(LoadError::AbiMismatch {
            found: abi_version,
            expected: ABI_VERSION,
        });
    }
    let Some(known) = DESCRIPTOR_REVISIONS
        .iter()
        .rev()
        .copied()
        .find(|r| *r <= size)
    else {
        return Err(LoadError::BadDescriptor(format!(
            "it is {size} bytes, smaller than the {PLUGIN_DESCRIPTOR_MIN_SIZE} of ABI {ABI_VERSION}'s first revision"
        )));
    };
    let mut raw = std::mem::MaybeUninit::<RawDescriptor>::zeroed();
    // SAFETY: the plugin guarantees `size` >= `known` readable bytes. Every
    // field of `RawDescriptor` is an integer, a raw pointer or an optional
    // function pointer, for which any bytes read from a valid descriptor,
    // and all-zero bytes for the fields past `known`, are valid values.
    let raw = unsafe {
        std::ptr::copy_nonoverlapping(bytes, raw.as_mut_ptr().cast::<u8>(), known);
        raw.assume_init()
    };
    let Some(call) = raw.call else {
        return Err(LoadError::BadDescriptor("its call function is null".into()));
    };
    Ok(Descriptor {
        name: raw.name,
        version: raw.version,
        actions: raw.actions,
        action_count: raw.action_count,
        action_size: raw.action_size,
        call,
        shutdown: raw.shutdown,
    })
}

/// # Safety
/// `view` is absent or points to `len` bytes that live as long as the library.
unsafe fn utf8(view: ByteView, what: &str) -> Result<String, LoadError> {
    // SAFETY: per this function's contract.
    let bytes = unsafe { view.as_slice() };
    std::str::from_utf8(bytes)
        .map(str::to_owned)
        .map_err(|_| LoadError::BadDescriptor(format!("its {what} is not UTF-8")))
}

/// # Safety
/// `descriptor.actions` points to `action_count` elements of
/// `action_size` bytes each, living as long as the library.
unsafe fn read_actions(descriptor: &Descriptor) -> Result<Vec<ActionMeta>, LoadError> {
    if descriptor.action_count > 0 && descriptor.actions.is_null() {
        return Err(LoadError::BadDescriptor("its action list is null".into()));
    }
    if descriptor.action_size > 4096 {
        return Err(LoadError::BadDescriptor(format!(
            "its action entries claim {} bytes each",
            descriptor.action_size
        )));
    }
    if descriptor.action_count > 10_000 {
        return Err(LoadError::BadDescriptor(format!(
            "it claims {} actions",
            descriptor.action_count
        )));
    }
    if descriptor.action_size < ACTION_DESCRIPTOR_MIN_SIZE
        || !descriptor
            .action_size
            .is_multiple_of(std::mem::align_of::<ActionDescriptor>())
    {
        return Err(LoadError::BadDescriptor(format!(
            "its action entries are {} bytes: not a multiple of {} of at least the {ACTION_DESCRIPTOR_MIN_SIZE} of ABI {ABI_VERSION}",
            descriptor.action_size,
            std::mem::align_of::<ActionDescriptor>()
        )));
    }
    if descriptor
        .actions
        .align_offset(std::mem::align_of::<ActionDescriptor>())
        != 0
    {
        return Err(LoadError::BadDescriptor(
            "its action list is not aligned".into(),
        ));
    }
    let mut actions: Vec<ActionMeta> = Vec::with_capacity(descriptor.action_count);
    for i in 0..descriptor.action_count {
        // SAFETY: within the array per this function's contract; entries
        // at least as large as the first revision's layout.
        let raw = unsafe {
            &*descriptor
                .actions
                .cast::<u8>()
                .add(i * descriptor.action_size)
                .cast::<ActionDescriptor>()
        };
        // SAFETY: the path view lives as long as the library.
        let path = unsafe { utf8(raw.path, "action path") }?;
        check_path(&path)?;
        if actions.iter().any(|a| a.path == path) {
            return Err(LoadError::BadDescriptor(format!(
                "it lists action '{path}' twice"
            )));
        }
        actions.push(ActionMeta {
            path,
            public: raw.flags & action_flags::PUBLIC != 0,
            timeout: (raw.timeout_ms > 0).then(|| Duration::from_millis(raw.timeout_ms)),
        });
    }
    Ok(actions)
}

fn check_path(path: &str) -> Result<(), LoadError> {
    let refuse = |why: &str| {
        Err(LoadError::BadDescriptor(format!(
            "action path '{path}' {why}"
        )))
    };
    if path.is_empty() || path.len() > MAX_PATH_BYTES {
        return refuse(&format!("must be 1 to {MAX_PATH_BYTES} bytes"));
    }
    if path.starts_with("rpc.") {
        return refuse("uses the reserved 'rpc.' prefix");
    }
    if path.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return refuse("contains whitespace or control characters");
    }
    Ok(())
}
