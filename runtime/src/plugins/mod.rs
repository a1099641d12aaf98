//! The host side of the plugin ABI: loading files ([`loader`]) after a
//! structural check ([`elf`]), the private
//! copies they are loaded from ([`shadow`]), who may put code where the
//! server loads it ([`trust`]), the callback table
//! ([`host`], with the server's services in [`services`] and reply handles
//! in [`replies`]), and the snapshot of callable actions ([`registry`]).

mod check_process;
pub(crate) mod context;
pub(crate) mod descriptor;
pub mod elf;
pub mod events;
#[cfg(test)]
pub(crate) mod fake;
pub mod generations;
pub mod host;
pub mod images;
pub(crate) mod inbox;
mod inline_reply;
pub(crate) mod invoke;
mod load_error;
pub mod loader;
pub mod maps;
pub mod preflight;
pub mod refusal;
pub mod registry;
pub mod replies;
pub mod services;
pub mod shadow;
mod shims;
pub mod trust;
pub mod watch;

pub use generations::{Applied, GenerationState, GenerationView, ReloadSettings};
pub use loader::{ActionMeta, Handoff, LoadError, LoadedPlugin};
pub use refusal::{RefusalKind, RefusedFile};
pub use registry::{ActionEntry, Registry, RegistrySnapshot};
pub use shadow::ShadowDir;
