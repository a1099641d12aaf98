//! [`PluginLogContext`]: what the host knows about one loaded plugin and
//! hands it as the `host_ctx` of its table: the name its log lines carry,
//! its generation, and the services of the server that loaded it.

use super::services::HostServices;

/// What the log callback knows about the plugin writing, for the `plugin`
/// field of each line: its file stem until its descriptor has been read,
/// then its name. Lives as long as the plugin's library.
#[derive(Debug)]
pub(crate) struct PluginLogContext {
    pub(crate) file_stem: String,
    pub(crate) name: std::sync::OnceLock<String>,
    /// The generation this library is, on every line it logs.
    pub(crate) generation: u64,
    /// The services of the server that loaded it.
    pub(crate) services: std::sync::Arc<dyn HostServices>,
}

impl PluginLogContext {
    /// The plugin's name, or its file's stem until the name is known.
    pub(crate) fn label(&self) -> &str {
        self.name.get().unwrap_or(&self.file_stem)
    }
}
