//! Opening one plugin file: shadow copy, opening it through a [`Loader`]
//! (`dlopen`; see `image`), the ABI handshake, and copying the descriptor
//! into host memory ([`LoadedPlugin`], one generation of a plugin file).
//!
//! Nothing the host keeps points into the plugin's memory except the
//! function pointers it must call; names, paths and metadata are copied.
//! Each load gets a generation number never used before in this process.

use super::descriptor::{RestoreStateFn, SaveStateFn};
use super::descriptor::{read_actions, read_descriptor, utf8};
mod calls;
mod image;

pub(crate) use calls::{AuthArgs, CallArgs, JoinArgs};
pub use image::{Dlopen, Loader, OpenImage, Opened};

use super::context::PluginLogContext;
use super::host::host_table;
use super::invoke::{self, Asked};
pub use super::load_error::{ActionMeta, LoadError};
use super::replies::Pinned;
use super::replies::{InPlugin, PendingReply};
use super::services::HostServices;
use super::shadow::ShadowDir;
use action_api::abi::{AuthRequest, ByteView, CallInfo, HostTable, JoinRequest};
use std::ffi::c_void;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

/// The last generation number handed out (they start at 1).
static GENERATIONS: AtomicU64 = AtomicU64::new(0);

/// One generation of a plugin: a library loaded into the server, with
/// everything the host needs to call it.
///
/// Dropping it never closes the library: only [`LoadedPlugin::close`]
/// does, which the registry calls once nothing can run the code any more
/// (see `plugins::generations`).
pub struct LoadedPlugin {
    /// This load's number, unique in the process.
    pub generation: u64,
    /// BLAKE3 of the file's content, hex.
    pub hash: String,
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
    /// Calls started on this generation.
    pub calls: AtomicU64,
    /// What happened to its predecessor's state (set before it serves).
    pub handoff: Handoff,
    save_state: Option<SaveStateFn>,
    restore_state: Option<RestoreStateFn>,
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
    /// The opened image, until [`LoadedPlugin::close`]: never closed
    /// implicitly, only by `close`, deliberately.
    image: Option<Box<dyn OpenImage>>,
}

/// What a generation got from the one it replaced.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum Handoff {
    /// Loaded at start or as a new file: nothing to hand over.
    None,
    /// Its predecessor's saved bytes were restored.
    Restored {
        /// How many bytes.
        bytes: usize,
    },
    /// Its predecessor keeps no state (no save hook), or it takes none.
    NotOffered,
}

/// As `/status` names it: `none`, `restored` (with its bytes),
/// `not_offered`.
impl std::fmt::Display for Handoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Handoff::None => f.write_str("none"),
            Handoff::Restored { bytes } => write!(f, "restored ({bytes} bytes)"),
            Handoff::NotOffered => f.write_str("not_offered"),
        }
    }
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
    pub fn load(
        file: &Path,
        shadow: &ShadowDir,
        services: Arc<dyn HostServices>,
    ) -> Result<LoadedPlugin, LoadError> {
        let copy = shadow.copy_hashed(file).map_err(LoadError::Copy)?;
        Dlopen.check(&copy)?;
        let hash = copy.hash().to_owned();
        Self::load_prepared(&Dlopen, file, &copy.keep(), hash, services)
    }

    /// Loads `file` itself, without a copy: only for a file nobody else
    /// writes (the server's private copy, opened by the preflight child).
    pub fn load_in_place(
        file: &Path,
        services: Arc<dyn HostServices>,
    ) -> Result<LoadedPlugin, LoadError> {
        let bytes = std::fs::read(file).map_err(LoadError::Copy)?;
        super::elf::check_complete(&bytes)?;
        Self::load_copy(&Dlopen, file, file, String::new(), services)
    }

    /// Loads `copy` through `loader`: a private copy of `file` whose
    /// content hashes to `hash` and that the caller checked
    /// ([`Loader::check`]); removes the copy's name if the load fails.
    pub fn load_prepared(
        loader: &dyn Loader,
        file: &Path,
        copy: &Path,
        hash: String,
        services: Arc<dyn HostServices>,
    ) -> Result<LoadedPlugin, LoadError> {
        let result = Self::load_copy(loader, file, copy, hash, services);
        if result.is_err() {
            // The copy may still be mapped (a failed entry is never
            // closed); unlinking its name is safe either way.
            let _ = std::fs::remove_file(copy);
        }
        result
    }

    /// Loads an already-private copy; `file` is only for reporting.
    /// Opens `copy`, already checked by the caller (once: the candidate
    /// pipeline checks its copy as it is made).
    fn load_copy(
        loader: &dyn Loader,
        file: &Path,
        copy: &Path,
        hash: String,
        services: Arc<dyn HostServices>,
    ) -> Result<LoadedPlugin, LoadError> {
        let generation = GENERATIONS.fetch_add(1, Ordering::Relaxed) + 1;
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
            generation,
            services,
        }));
        let host_table: &'static HostTable = Box::leak(Box::new(host_table(log_ctx)));
        let Opened { image, descriptor } = loader.open(copy, host_table)?;
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
            generation,
            hash,
            file: file.to_path_buf(),
            shadow: copy.to_path_buf(),
            name,
            version,
            actions,
            loaded_at: SystemTime::now(),
            calls: AtomicU64::new(0),
            handoff: Handoff::None,
            save_state: descriptor.save_state,
            restore_state: descriptor.restore_state,
            call: descriptor.call,
            shutdown: descriptor.shutdown,
            authenticate: descriptor.authenticate,
            events,
            room_join: descriptor.room_join,
            join_patterns,
            image: Some(image),
        })
    }

    /// Retires the generation for good: stops its event thread, runs its
    /// shutdown hook, and `dlclose`s it. Only for a generation nothing can
    /// call any more (the registry holds the only reference: `&mut`).
    /// Whether the image is really gone is another question, answered by
    /// `/proc/self/maps` (see `plugins::maps`).
    pub fn close(&mut self) -> Result<(), String> {
        if let Some(events) = self.events.take() {
            events.stop();
        }
        self.shutdown();
        self.authenticate = None;
        self.room_join = None;
        match self.image.take() {
            Some(image) => image.close(),
            None => Ok(()),
        }
    }

    /// Where its `call` function is: two live generations with the same
    /// address are one image (the loader handed back an old one).
    pub fn code_address(&self) -> usize {
        self.call as usize
    }

    /// Counts a call started on this generation.
    pub(crate) fn count_call(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }
}

impl Pinned for LoadedPlugin {
    fn image(&self) -> &Path {
        &self.shadow
    }
}
