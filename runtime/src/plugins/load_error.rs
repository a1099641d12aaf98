//! [`LoadError`]: why a plugin file could not be loaded, and
//! [`ActionMeta`]: one action as the host keeps it once loaded. Shared by
//! the loader and the descriptor reader.

use super::refusal::RefusalKind;
use std::time::Duration;

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

impl LoadError {
    /// The kind of refusal, for `/status`.
    pub fn kind(&self) -> RefusalKind {
        match self {
            LoadError::Copy(_) => RefusalKind::Io,
            LoadError::Incomplete(_) | LoadError::NotALibrary(_) => RefusalKind::NotALibrary,
            LoadError::NotAPlugin => RefusalKind::NotAPlugin,
            LoadError::AbiMismatch { .. } => RefusalKind::AbiMismatch,
            LoadError::InitFailed => RefusalKind::InitFailed,
            LoadError::BadDescriptor(_) => RefusalKind::BadDescriptor,
        }
    }
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
    /// Calls per second and burst one connection may make (`None`: no
    /// limit of its own).
    pub rate_limit: Option<(u32, u32)>,
}
