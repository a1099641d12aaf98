//! [`Registry`]: the immutable snapshot of what can be called, swapped
//! atomically, and how a folder of plugin files becomes one.
//!
//! The call path reads the current [`RegistrySnapshot`] without a lock and
//! clones the `Arc` of the [`ActionEntry`] it needs, which keeps that
//! plugin alive for as long as the call runs.

use super::loader::LoadedPlugin;
use super::shadow::ShadowDir;
use arc_swap::ArcSwap;
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// One callable action in a snapshot.
#[derive(Debug)]
pub struct ActionEntry {
    /// The method path.
    pub path: String,
    /// The plugin that runs it.
    pub plugin: Arc<LoadedPlugin>,
    /// Its index in the plugin's action list.
    pub index: usize,
    /// Callable without a token.
    pub public: bool,
    /// Its deadline (the plugin's own, or the server's default).
    pub timeout: Duration,
    /// Scopes the caller's token must all carry.
    pub scopes: Vec<String>,
    /// Runs on the connection's task (the author promises it never blocks).
    pub inline: bool,
}

/// A file in the actions folder that was not loaded, and why.
#[derive(Debug, Clone, Serialize)]
pub struct RefusedFile {
    /// The file.
    pub file: PathBuf,
    /// Why, in a sentence.
    pub reason: String,
}

/// Everything callable at one moment. Never changed after it is built.
#[derive(Debug, Default)]
pub struct RegistrySnapshot {
    actions: HashMap<String, Arc<ActionEntry>>,
    /// The plugins loaded, in file order.
    pub plugins: Vec<Arc<LoadedPlugin>>,
    /// Files refused when this snapshot was built.
    pub refused: Vec<RefusedFile>,
    /// The union of the plugins' lifecycle-event masks.
    event_mask: u32,
}

impl RegistrySnapshot {
    /// The action at `path`, if any.
    pub fn get(&self, path: &str) -> Option<&Arc<ActionEntry>> {
        self.actions.get(path)
    }

    /// Whether any plugin listens for lifecycle events of `kind`.
    pub fn wants_event(&self, kind: u32) -> bool {
        kind < 32 && self.event_mask & (1 << kind) != 0
    }

    /// Every callable action, in no particular order.
    pub fn actions(&self) -> impl Iterator<Item = &Arc<ActionEntry>> {
        self.actions.values()
    }

    /// Builds a snapshot from loaded plugins, refusing any plugin that
    /// claims a path an earlier one already has (it keeps none of its
    /// actions, so a plugin is never half-loaded).
    pub fn build(
        loaded: Vec<LoadedPlugin>,
        mut refused: Vec<RefusedFile>,
        default_timeout: Duration,
    ) -> RegistrySnapshot {
        let mut actions: HashMap<String, Arc<ActionEntry>> = HashMap::new();
        let mut plugins = Vec::new();
        for plugin in loaded {
            if let Some((path, owner)) = plugin
                .actions
                .iter()
                .find_map(|a| actions.get(&a.path).map(|owner| (&a.path, &owner.plugin)))
            {
                let reason = format!(
                    "plugin {} {} claims action '{path}', which plugin {} {} from {} already provides; plugin refused",
                    plugin.name,
                    plugin.version,
                    owner.name,
                    owner.version,
                    owner.file.display()
                );
                tracing::error!(file = %plugin.file.display(), "{reason}");
                refused.push(RefusedFile {
                    file: plugin.file.clone(),
                    reason,
                });
                // Its code stays mapped (see `LoadedPlugin`) but unused.
                continue;
            }
            let plugin = Arc::new(plugin);
            for (index, meta) in plugin.actions.iter().enumerate() {
                let entry = ActionEntry {
                    path: meta.path.clone(),
                    plugin: Arc::clone(&plugin),
                    index,
                    public: meta.public,
                    timeout: meta.timeout.unwrap_or(default_timeout),
                    scopes: meta.scopes.clone(),
                    inline: meta.inline,
                };
                actions.insert(meta.path.clone(), Arc::new(entry));
            }
            plugins.push(plugin);
        }
        let event_mask = plugins
            .iter()
            .filter_map(|p: &Arc<LoadedPlugin>| p.events.as_ref())
            .fold(0, |mask, e| mask | e.mask());
        RegistrySnapshot {
            actions,
            plugins,
            refused,
            event_mask,
        }
    }
}

/// Loads every plugin in `dir` (sorted by file name, so conflicts resolve
/// the same way every time). Files without the platform's library
/// extension are skipped with a warning; files that fail to load are
/// refused with the reason; neither stops the others.
pub fn load_dir(
    dir: &Path,
    shadow: &ShadowDir,
    default_timeout: Duration,
) -> std::io::Result<RegistrySnapshot> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    let mut loaded = Vec::new();
    let mut refused = Vec::new();
    for file in files {
        if !file.is_file() {
            continue;
        }
        if file.extension().and_then(|e| e.to_str()) != Some(std::env::consts::DLL_EXTENSION) {
            tracing::warn!(file = %file.display(), "skipped: not a .{} file", std::env::consts::DLL_EXTENSION);
            continue;
        }
        match LoadedPlugin::load(&file, shadow) {
            Ok(plugin) => {
                tracing::info!(
                    file = %file.display(),
                    plugin = %plugin.name,
                    version = %plugin.version,
                    actions = plugin.actions.len(),
                    "plugin loaded"
                );
                loaded.push(plugin);
            }
            Err(err) => {
                tracing::error!(file = %file.display(), "plugin refused: {err}");
                refused.push(RefusedFile {
                    file,
                    reason: err.to_string(),
                });
            }
        }
    }
    Ok(RegistrySnapshot::build(loaded, refused, default_timeout))
}

/// The current snapshot, swapped atomically when plugins change.
#[derive(Debug)]
pub struct Registry {
    current: ArcSwap<RegistrySnapshot>,
}

impl Registry {
    /// A registry serving `snapshot`.
    pub fn new(snapshot: RegistrySnapshot) -> Registry {
        Registry {
            current: ArcSwap::from_pointee(snapshot),
        }
    }

    /// The snapshot in force now (lock-free).
    pub fn snapshot(&self) -> arc_swap::Guard<Arc<RegistrySnapshot>> {
        self.current.load()
    }

    /// Makes `snapshot` current; calls already running keep their plugin.
    pub fn replace(&self, snapshot: RegistrySnapshot) {
        self.current.store(Arc::new(snapshot));
    }
}
