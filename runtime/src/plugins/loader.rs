//! Opening one plugin file: shadow copy, `dlopen`, the ABI handshake, and
//! copying the descriptor into host memory ([`LoadedPlugin`]).
//!
//! Nothing the host keeps points into the plugin's memory except the two
//! function pointers it must call; names, paths and metadata are copied.

use super::descriptor::{read_actions, read_descriptor, utf8};
use super::host::{PendingReply, PluginLogContext, host_table};
use super::shadow::ShadowDir;
use action_api::abi::{
    ABI_VERSION, AuthRequest, ByteView, CallInfo, ENTRY_SYMBOL, ENTRY_SYMBOL_PREFIX, EntryFn,
    HostTable, JoinRequest,
};
use libloading::Library;
use std::mem::ManuallyDrop;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

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
    /// Scopes the caller's token must all carry.
    pub scopes: Vec<String>,
    /// Runs on the connection's task: the author promises it never blocks.
    pub inline: bool,
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
    /// The authentication hook, if the plugin has one.
    pub(crate) authenticate: Option<unsafe extern "C" fn(*const AuthRequest)>,
    /// Where lifecycle events for this plugin go, if it wants any.
    pub(crate) events: Option<super::events::EventSender>,
    /// The room-join hook, if the plugin has one.
    room_join: Option<unsafe extern "C" fn(*const JoinRequest)>,
    /// The room patterns its join hook decides.
    pub join_patterns: Vec<String>,
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
        // SAFETY: as above.
        let join_patterns: Vec<String> =
            unsafe { utf8(descriptor.room_patterns, "room patterns") }?
                .split_whitespace()
                .map(str::to_owned)
                .filter(|_| descriptor.room_join.is_some())
                .collect();
        let events = descriptor
            .on_event
            .filter(|_| descriptor.event_mask != 0)
            .map(|hook| super::events::EventSender::start(&name, hook, descriptor.event_mask));
        Ok(LoadedPlugin {
            file: file.to_path_buf(),
            shadow: copy.to_path_buf(),
            name,
            version,
            actions,
            loaded_at: SystemTime::now(),
            call: descriptor.call,
            shutdown: descriptor.shutdown,
            authenticate: descriptor.authenticate,
            events,
            room_join: descriptor.room_join,
            join_patterns,
            _library: library,
        })
    }

    /// Starts action number `index` for a caller; the completion arrives
    /// through `reply`. Blocks for as long as the plugin's `call` runs:
    /// call it from a thread that may block.
    pub(crate) fn call(&self, index: usize, call: &CallArgs<'_>, reply: PendingReply) {
        let view = |s: Option<&str>| s.map_or(ByteView::ABSENT, |s| ByteView::of(s.as_bytes()));
        let info = CallInfo {
            size: std::mem::size_of::<CallInfo>() as u32,
            params: ByteView::of(call.params),
            conn_id: call.conn_id,
            user: view(call.user),
            reply: reply.into_handle(),
            scopes: view(call.scopes),
            conn_data: view(call.conn_data),
        };
        // SAFETY: `call` is the plugin's own, `index` is within its action
        // list (the registry only holds indices it read from it), and
        // `info` with everything it points to outlives the call.
        unsafe { (self.call)(index, &info) }
    }

    /// Asks the plugin's authentication hook about a connection; the
    /// verdict arrives through `reply`. Returns `false` (and drops `reply`)
    /// when the plugin has no hook. Blocks: call it from a thread that may.
    pub(crate) fn authenticate(&self, request: &AuthArgs<'_>, reply: PendingReply) -> bool {
        let Some(hook) = self.authenticate else {
            return false;
        };
        let view = |s: Option<&str>| s.map_or(ByteView::ABSENT, |s| ByteView::of(s.as_bytes()));
        let raw = AuthRequest {
            size: std::mem::size_of::<AuthRequest>() as u32,
            token: view(request.token),
            headers: ByteView::of(request.headers_json.as_bytes()),
            query: view(request.query),
            remote_addr: ByteView::of(request.remote_addr.as_bytes()),
            conn_id: request.conn_id,
            reply: reply.into_handle(),
        };
        // SAFETY: the plugin's own hook; `raw` and what it points to
        // outlive the call; the plugin completes `reply` once.
        unsafe { hook(&raw) };
        true
    }

    /// Asks the plugin's join hook about a room; the verdict arrives
    /// through `reply`. Returns `false` (dropping `reply`) without a hook.
    /// Blocks: call it from a thread that may.
    pub(crate) fn ask_join(&self, request: &JoinArgs<'_>, reply: PendingReply) -> bool {
        let Some(hook) = self.room_join else {
            return false;
        };
        let raw = JoinRequest {
            size: std::mem::size_of::<JoinRequest>() as u32,
            room: ByteView::of(request.room.as_bytes()),
            pattern: ByteView::of(request.pattern.as_bytes()),
            conn_id: request.conn_id,
            user: request
                .user
                .map_or(ByteView::ABSENT, |u| ByteView::of(u.as_bytes())),
            reply: reply.into_handle(),
        };
        // SAFETY: the plugin's own hook; `raw` and what it points to
        // outlive the call; the plugin completes `reply` once.
        unsafe { hook(&raw) };
        true
    }

    /// Whether the plugin has an authentication hook.
    pub fn has_authenticate(&self) -> bool {
        self.authenticate.is_some()
    }

    /// Runs the plugin's shutdown hook, if it has one.
    pub fn shutdown(&self) {
        if let Some(hook) = self.shutdown {
            // SAFETY: the plugin's own hook; it catches its panics.
            unsafe { hook() }
        }
    }
}

/// One call's inputs, borrowed for the duration of the plugin's `call`.
#[derive(Debug)]
pub(crate) struct CallArgs<'a> {
    pub(crate) params: &'a [u8],
    pub(crate) conn_id: u64,
    pub(crate) user: Option<&'a str>,
    pub(crate) scopes: Option<&'a str>,
    pub(crate) conn_data: Option<&'a str>,
}

/// What an authentication hook is asked about.
#[derive(Debug)]
pub(crate) struct AuthArgs<'a> {
    pub(crate) token: Option<&'a str>,
    pub(crate) headers_json: &'a str,
    pub(crate) query: Option<&'a str>,
    pub(crate) remote_addr: &'a str,
    pub(crate) conn_id: u64,
}

/// A join request for a plugin's hook.
#[derive(Debug)]
pub(crate) struct JoinArgs<'a> {
    pub(crate) room: &'a str,
    pub(crate) pattern: &'a str,
    pub(crate) conn_id: u64,
    pub(crate) user: Option<&'a str>,
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
