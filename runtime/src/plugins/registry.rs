//! [`Registry`]: the immutable snapshot of what can be called, swapped
//! atomically, over the table of plugin generations that reloads change.
//!
//! The call path reads the current [`RegistrySnapshot`] without a lock and
//! clones the `Arc` of the [`ActionEntry`] it needs, which keeps that
//! plugin alive for as long as the call runs.

use super::generations::{
    ActionsChanged, Applied, GenerationView, Generations, ReloadSettings, is_plugin_file_name,
    on_short_thread,
};
use super::loader::LoadedPlugin;
use super::refusal::{RefusalKind, RefusedFile};
use super::shadow::ShadowDir;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
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
    /// Calls per second and burst one connection may make, if limited.
    pub rate_limit: Option<(u32, u32)>,
    /// Its calls' counters and latency histogram (`/metrics`).
    pub metrics: crate::metrics::ActionMetrics,
}

/// Everything callable at one moment. Never changed after it is built.
#[derive(Debug, Default)]
pub struct RegistrySnapshot {
    actions: HashMap<String, Arc<ActionEntry>, foldhash::fast::RandomState>,
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

    /// Builds a snapshot of `plugins`, which claim no path twice (the
    /// generations table refuses a plugin that would).
    pub fn build(
        plugins: Vec<Arc<LoadedPlugin>>,
        refused: Vec<RefusedFile>,
        default_timeout: Duration,
    ) -> RegistrySnapshot {
        let mut actions: HashMap<String, Arc<ActionEntry>, foldhash::fast::RandomState> =
            HashMap::default();
        for plugin in &plugins {
            for (index, meta) in plugin.actions.iter().enumerate() {
                let entry = ActionEntry {
                    path: meta.path.clone(),
                    plugin: Arc::clone(plugin),
                    index,
                    public: meta.public,
                    timeout: meta.timeout.unwrap_or(default_timeout),
                    scopes: meta.scopes.clone(),
                    inline: meta.inline,
                    rate_limit: meta.rate_limit,
                    metrics: crate::metrics::global().action(&meta.path),
                };
                actions.insert(meta.path.clone(), Arc::new(entry));
            }
        }
        let event_mask = plugins
            .iter()
            .filter_map(|p| p.events.as_ref())
            .fold(0, |mask, e| mask | e.mask());
        RegistrySnapshot {
            actions,
            plugins,
            refused,
            event_mask,
        }
    }
}

/// What can be called now (a snapshot, swapped atomically), and the
/// generations table behind it (changed only by reloads, one at a time).
#[derive(Debug)]
pub struct Registry {
    current: ArcSwap<RegistrySnapshot>,
    table: Mutex<Generations>,
    /// The generations as last published, for `/status` while a reload
    /// holds the table.
    views: ArcSwap<Vec<GenerationView>>,
}

impl Registry {
    /// Loads every plugin in `dir`, in file-name order (so which of two
    /// plugins claiming one path is refused is the same every time).
    /// Files without the platform's library extension are skipped with a
    /// warning; files that fail are refused with the reason, and neither
    /// stops the others.
    pub fn load(
        dir: &Path,
        shadow: ShadowDir,
        settings: ReloadSettings,
    ) -> std::io::Result<Registry> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        let mut table = Generations::new(settings, shadow);
        for file in files {
            if !is_plugin_file_name(&file) {
                tracing::warn!(file = %file.display(), "skipped: not a .{} file", std::env::consts::DLL_EXTENSION);
                continue;
            }
            table.apply(&file);
        }
        Ok(Registry {
            current: ArcSwap::from_pointee(snapshot_of(&table)),
            views: ArcSwap::from_pointee(table.views()),
            table: Mutex::new(table),
        })
    }

    /// The snapshot in force now (lock-free).
    pub fn snapshot(&self) -> arc_swap::Guard<Arc<RegistrySnapshot>> {
        self.current.load()
    }

    /// Takes the current content of one plugin file (new, changed or
    /// removed) and, when that changes what is callable, swaps the new
    /// snapshot in: new calls see it at once, running calls keep theirs.
    /// Returns every change clients should hear of: this file's, and those
    /// of files refused earlier for a conflict that this change lifted.
    pub fn apply(&self, file: &Path) -> Vec<ActionsChanged> {
        let mut table = self.table();
        let applied = table.apply(file);
        // Published at once (a refusal too: /status shows it), before
        // files refused for a conflict are retried.
        match applied {
            Applied::Unchanged | Applied::Ignored => Vec::new(),
            Applied::Refused(_) | Applied::StatusChanged => {
                if matches!(applied, Applied::Refused(_)) {
                    crate::metrics::global().reload(None);
                }
                self.publish(&table);
                Vec::new()
            }
            Applied::Swapped(change) | Applied::Removed(change) => {
                let swapping = std::time::Instant::now();
                self.publish(&table);
                if change.generation.is_none() {
                    crate::metrics::global().plugin_removed();
                } else {
                    crate::metrics::global().reload(Some(swapping.elapsed()));
                }
                // Only paths given up can lift a conflict.
                let retried = if change.removed.is_empty() {
                    Vec::new()
                } else {
                    retry(&mut table, Some(file), RefusalKind::PathConflict)
                };
                let mut changes = vec![change];
                if !retried.is_empty() {
                    self.publish(&table);
                }
                changes.extend(retried);
                changes
            }
        }
    }

    /// Whether a retired generation is still draining: until it is
    /// closed, [`sweep`](Self::sweep) is worth calling often.
    pub fn has_draining(&self) -> bool {
        self.table().has_draining()
    }

    /// Closes generations that have drained (see [`Generations::sweep`])
    /// and retries reloads refused as busy; returns the changes made.
    pub fn sweep(&self, recheck_mapped: bool) -> Vec<ActionsChanged> {
        let drained = {
            let mut table = self.table();
            let drained = table.take_drained();
            if !drained.is_empty() {
                self.publish(&table);
            }
            drained
        };
        let mut changed = !drained.is_empty();
        // Closed without holding the table: a plugin's shutdown hook may
        // take its time, and /status and reloads must not wait on it.
        for (generation, mut plugin) in drained {
            let closed = match Arc::get_mut(&mut plugin) {
                Some(plugin) => on_short_thread(|| plugin.close()),
                None => Err("still referenced; left mapped".to_owned()),
            };
            drop(plugin);
            self.table().settle_closed(generation, closed.err());
        }
        if recheck_mapped {
            // Off the table: unloading an image that is no longer pinned
            // runs its destructors.
            let pinned = self.table().retired_mapped_images();
            for image in pinned {
                on_short_thread(|| super::images::collect_if_unpinned(&image));
            }
        }
        let mut table = self.table();
        changed |= table.sweep(recheck_mapped);
        if !changed || table.is_frozen() {
            return Vec::new();
        }
        // A generation gone (or unmapped) can lift only a busy refusal.
        let changes = retry(&mut table, None, RefusalKind::Busy);
        self.publish(&table);
        changes
    }

    /// Every generation, for `/status`. Never waits: while a reload holds
    /// the table (a preflight, a plugin's save or shutdown hook), this is
    /// the view published after the last change.
    pub fn generations(&self) -> Vec<GenerationView> {
        match self.table.try_lock() {
            Ok(table) => table.views(),
            Err(std::sync::TryLockError::Poisoned(table)) => table.into_inner().views(),
            Err(std::sync::TryLockError::WouldBlock) => self.views.load().as_ref().clone(),
        }
    }

    /// Stops reloading, then runs the serving plugins' shutdown hooks
    /// (server exit).
    pub fn shutdown(&self) {
        self.table().shutdown();
    }

    /// Makes the table's current state what new calls and `/status` see.
    fn publish(&self, table: &Generations) {
        self.current.store(Arc::new(snapshot_of(table)));
        self.views.store(Arc::new(table.views()));
    }

    /// Removes the shadow folder (server exit): mapped copies stay mapped.
    pub fn remove_shadow(&self) {
        self.table().shadow().remove();
    }

    fn table(&self) -> MutexGuard<'_, Generations> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What is callable now in `table`.
fn snapshot_of(table: &Generations) -> RegistrySnapshot {
    let (plugins, refused) = table.snapshot();
    RegistrySnapshot::build(plugins, refused, table.default_timeout())
}

/// Applies again every file last refused as `kind` (which another change
/// may have lifted), except `changed`; returns the swaps.
fn retry(
    table: &mut MutexGuard<'_, Generations>,
    changed: Option<&Path>,
    kind: RefusalKind,
) -> Vec<ActionsChanged> {
    table
        .retryable(kind)
        .into_iter()
        .filter(|file| Some(file.as_path()) != changed)
        .filter_map(|file| match table.apply_again(&file) {
            Applied::Swapped(change) | Applied::Removed(change) => Some(change),
            Applied::Refused(_)
            | Applied::StatusChanged
            | Applied::Unchanged
            | Applied::Ignored => None,
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::expect_used, clippy::unwrap_used)]
    use super::*;
    use crate::plugins::fake::FakeLoader;
    use crate::plugins::generations::GenerationState;
    use crate::plugins::generations::tests::install;
    use crate::plugins::refusal::RefusalKind;
    use crate::plugins::services::NoServer;

    /// A registry over a folder of fake plugins, the loader, and the
    /// folders (kept alive).
    pub(crate) fn registry(
        files: &[(&str, &str)],
    ) -> (Registry, FakeLoader, tempfile::TempDir, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            install(dir.path(), name, text);
        }
        std::fs::write(dir.path().join("README.txt"), "not a plugin").unwrap();
        let loader = FakeLoader::default();
        let shadow_base = tempfile::tempdir().unwrap();
        let settings = ReloadSettings {
            default_timeout: Duration::from_secs(30),
            max_generations: 8,
            preflight_timeout: None,
            protect_retired: false,
            trust: None,
            services: Arc::new(NoServer),
            loader: Arc::new(loader.clone()),
        };
        let shadow = ShadowDir::create(shadow_base.path(), false).unwrap();
        let registry = Registry::load(dir.path(), shadow, settings).unwrap();
        (registry, loader, dir, shadow_base)
    }

    #[test]
    fn load_takes_every_plugin_file_in_name_order_with_their_actions() {
        let (registry, _, _dir, _shadow) = registry(&[
            (
                "alpha",
                "name=alpha version=1 actions=a/x!,a/slow@250 code=1",
            ),
            ("beta", "name=beta version=1 actions=a/x,b/y code=2"),
        ]);
        let snapshot = registry.snapshot();
        let x = snapshot.get("a/x").expect("a/x");
        assert_eq!(
            (x.plugin.name.as_str(), x.index, x.public),
            ("alpha", 0, true)
        );
        assert_eq!(x.timeout, Duration::from_secs(30), "the server's default");
        let slow = snapshot.get("a/slow").expect("a/slow");
        assert_eq!(
            (slow.timeout, slow.public),
            (Duration::from_millis(250), false)
        );
        assert!(
            snapshot.get("b/y").is_none(),
            "beta came second and clashed"
        );
        let refused: Vec<_> = snapshot.refused.iter().map(|r| r.kind).collect();
        assert_eq!(refused, [RefusalKind::PathConflict]);
        assert_eq!(snapshot.plugins.len(), 1);
    }

    #[test]
    fn a_reload_swaps_the_snapshot_while_a_running_call_keeps_its_generation() {
        let (registry, loader, dir, _shadow) =
            registry(&[("alpha", "name=alpha version=1 actions=a/x code=1")]);
        let running = Arc::clone(registry.snapshot().get("a/x").unwrap());
        let file = install(
            dir.path(),
            "alpha",
            "name=alpha version=2 actions=a/x code=2",
        );
        let changes = registry.apply(&file);
        assert_eq!(changes.len(), 1);
        assert_eq!(registry.snapshot().get("a/x").unwrap().plugin.version, "2");
        assert_eq!(
            running.plugin.version, "1",
            "the call runs on where it started"
        );

        assert!(registry.sweep(false).is_empty());
        assert!(loader.closed().is_empty(), "still running");
        let old = running.plugin.generation;
        drop(running);
        registry.sweep(false);
        assert_eq!(loader.closed(), ["alpha 1"]);
        let state = registry
            .generations()
            .into_iter()
            .find(|g| g.generation == old)
            .map(|g| g.state);
        assert_eq!(state, Some(GenerationState::Unmapped));
    }

    #[test]
    fn a_change_that_gives_up_no_path_does_not_retry_a_conflict() {
        let (registry, _, dir, shadow) = registry(&[
            ("alpha", "name=alpha version=1 actions=shared/x code=1"),
            ("beta", "name=beta version=1 actions=shared/x code=2"),
        ]);
        let copies = || {
            std::fs::read_dir(shadow.path().join(std::process::id().to_string()))
                .unwrap()
                .count()
        };
        let before = copies();
        let gamma = install(
            dir.path(),
            "gamma",
            "name=gamma version=1 actions=g/x code=3",
        );
        assert_eq!(registry.apply(&gamma).len(), 1);
        assert_eq!(
            copies(),
            before + 1,
            "gamma's copy only: beta was not read again"
        );
        let file = install(
            dir.path(),
            "alpha",
            "name=alpha version=2 actions=shared/x,a/y code=4",
        );
        assert_eq!(registry.apply(&file).len(), 1, "alpha kept shared/x");
        assert_eq!(registry.snapshot().refused.len(), 1);
    }

    #[test]
    fn removing_a_file_lets_a_refused_one_in_and_both_changes_are_told() {
        let (registry, _, dir, _shadow) = registry(&[
            ("alpha", "name=alpha version=1 actions=shared/x code=1"),
            ("beta", "name=beta version=1 actions=shared/x code=2"),
        ]);
        let alpha = dir
            .path()
            .join(format!("alpha.{}", std::env::consts::DLL_EXTENSION));
        std::fs::remove_file(&alpha).unwrap();
        let changes = registry.apply(&alpha);
        let told: Vec<(&str, &[String], &[String])> = changes
            .iter()
            .map(|c| (c.plugin.as_str(), &c.added[..], &c.removed[..]))
            .collect();
        let x = ["shared/x".to_owned()];
        assert_eq!(
            told,
            [("alpha", &[][..], &x[..]), ("beta", &x[..], &[][..])]
        );
        assert_eq!(
            registry.snapshot().get("shared/x").unwrap().plugin.name,
            "beta"
        );
        assert!(registry.snapshot().refused.is_empty());
    }
}
