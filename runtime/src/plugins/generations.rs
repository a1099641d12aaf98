//! [`Generations`]: every plugin file's serving generation, the ones that
//! were replaced and are draining or retired, and what becomes of a
//! changed file (the reload transaction).
//!
//! Erlang's code swap is the model: a new generation serves new calls the
//! moment it is swapped in, calls already running finish on theirs, and a
//! replaced generation is closed only once nothing can run its code. Any
//! number of generations may drain at once; `max_generations` caps how
//! many of one file are kept, and past it a reload is refused as busy.
//!
//! A candidate is read once; that content is hashed, checked as an ELF,
//! written to a fresh shadow copy, opened first by a child process (the
//! preflight), and only then loaded here. Any failure leaves the serving
//! generation exactly as it was.

use super::loader::{Handoff, LoadedPlugin};
use super::preflight::preflight;
use super::registry::{RefusedFile, RegistrySnapshot};
use super::shadow::{ShadowDir, content_hash};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Unmapped generations remembered for `/status` (the oldest are dropped).
const UNMAPPED_KEPT: usize = 64;

/// How reloads behave (from the server's config).
#[derive(Debug, Clone)]
pub struct ReloadSettings {
    /// The deadline of actions that set none.
    pub default_timeout: Duration,
    /// Most generations of one file kept draining or mapped.
    pub max_generations: usize,
    /// Deadline of the out-of-process preflight; `None` skips it.
    pub preflight_timeout: Option<Duration>,
}

/// Where a generation is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GenerationState {
    /// The generation new calls go to.
    Serving,
    /// Replaced or removed; calls that started on it may still run.
    Draining,
    /// Drained and closed, but the image is still mapped (see `reason`).
    RetiredMapped,
    /// Drained, closed, and gone from `/proc/self/maps`.
    Unmapped,
}

/// One generation as `/status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct GenerationView {
    /// Its number, unique in the process.
    pub generation: u64,
    /// The plugin's name.
    pub plugin: String,
    /// The plugin's version.
    pub version: String,
    /// The file in the actions folder.
    pub file: PathBuf,
    /// The private copy that was mapped (what `/proc/<pid>/maps` shows).
    pub image: PathBuf,
    /// SHA-256 of the content loaded.
    pub hash: String,
    /// When it was loaded (seconds since the Unix epoch).
    pub loaded_at: u64,
    /// Calls started on it.
    pub calls: u64,
    /// What it got from its predecessor.
    pub handoff: Handoff,
    /// Where it is in its life.
    pub state: GenerationState,
    /// Why it is in that state, when that is not obvious.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What applying one file change did.
#[derive(Debug)]
pub enum Applied {
    /// Same content as the serving (or last refused) generation: nothing.
    Unchanged,
    /// Not a plugin file name, or nothing to do.
    Ignored,
    /// Refused; the serving generation (if any) keeps serving.
    Refused(String),
    /// A new generation serves; the summary goes to clients.
    Swapped(ActionsChanged),
    /// The file is gone, and so are its actions.
    Removed(ActionsChanged),
}

/// The `actions.changed` event's data.
#[derive(Debug, Clone, Serialize)]
pub struct ActionsChanged {
    /// The file that changed.
    pub file: PathBuf,
    /// The plugin's name (of the new generation, or the removed one).
    pub plugin: String,
    /// The new generation's version, when one was loaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The new generation's number, when one was loaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// Paths callable now that were not before.
    pub added: Vec<String>,
    /// Paths no longer callable.
    pub removed: Vec<String>,
}

/// One plugin file's slot.
#[derive(Debug, Default)]
struct FileSlot {
    serving: Option<Arc<LoadedPlugin>>,
    /// The last content refused, and why (cleared by a successful load).
    refused: Option<(Option<String>, String)>,
}

/// A generation that no longer serves.
#[derive(Debug)]
struct Retired {
    /// Held until it drains; `None` once closed.
    plugin: Option<Arc<LoadedPlugin>>,
    view: GenerationView,
    shadow: PathBuf,
}

/// Every generation of every plugin file.
#[derive(Debug)]
pub struct Generations {
    settings: ReloadSettings,
    shadow: ShadowDir,
    files: BTreeMap<PathBuf, FileSlot>,
    retired: Vec<Retired>,
    /// Contents (by hash) this process has loaded and run before: their
    /// constructors and entry already ran here, so a return to one (a
    /// rollback) skips the preflight child.
    ran_here: std::collections::HashSet<String>,
}

impl Generations {
    /// An empty table that loads through `shadow`.
    pub fn new(settings: ReloadSettings, shadow: ShadowDir) -> Generations {
        Generations {
            settings,
            shadow,
            files: BTreeMap::new(),
            retired: Vec::new(),
            ran_here: std::collections::HashSet::new(),
        }
    }

    /// The private folder copies are loaded from.
    pub fn shadow(&self) -> &ShadowDir {
        &self.shadow
    }

    /// The snapshot of what is callable now.
    pub fn snapshot(&self) -> RegistrySnapshot {
        let plugins = self
            .files
            .values()
            .filter_map(|slot| slot.serving.clone())
            .collect();
        let refused = self
            .files
            .iter()
            .filter_map(|(file, slot)| {
                slot.refused.as_ref().map(|(_, reason)| RefusedFile {
                    file: file.clone(),
                    reason: reason.clone(),
                })
            })
            .collect();
        RegistrySnapshot::build(plugins, refused, self.settings.default_timeout)
    }

    /// Takes the current content of `file` (a plugin file in the actions
    /// folder, new, changed or gone) and swaps in a new generation if it
    /// is a good plugin that differs from the serving one.
    pub fn apply(&mut self, file: &Path) -> Applied {
        if !is_plugin_file_name(file) {
            return Applied::Ignored;
        }
        let bytes = match std::fs::read(file) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return self.remove(file),
            Err(e) => return self.refuse(file, None, format!("could not read it: {e}")),
        };
        let hash = content_hash(&bytes);
        let slot = self.files.entry(file.to_path_buf()).or_default();
        if slot.serving.as_ref().is_some_and(|s| s.hash == hash)
            || slot
                .refused
                .as_ref()
                .is_some_and(|(h, _)| h.as_deref() == Some(hash.as_str()))
        {
            return Applied::Unchanged;
        }
        if let Err(e) = super::elf::check_complete(&bytes) {
            let waiting = if matches!(e, super::elf::ElfError::Truncated { .. }) {
                " (a writer may still be writing it: a complete file is taken when it settles)"
            } else {
                ""
            };
            return self.refuse(
                file,
                Some(hash),
                format!("not a loadable library: {e}{waiting}"),
            );
        }
        let retained = self
            .retired
            .iter()
            .filter(|r| r.view.file == file && r.view.state != GenerationState::Unmapped)
            .count();
        if retained >= self.settings.max_generations {
            // No hash remembered: the same content is tried again later.
            return self.refuse(
                file,
                None,
                format!(
                    "busy: {retained} earlier generations of this file are still draining or mapped \
                     (max_generations = {}); reload refused, the serving generation keeps serving; \
                     write the file again once /status shows fewer",
                    self.settings.max_generations
                ),
            );
        }
        let copy = match self.shadow.write_in(file, &bytes) {
            Ok(copy) => copy,
            Err(e) => {
                return self.refuse(file, None, format!("could not copy it for loading: {e}"));
            }
        };
        if let Some(timeout) = self.settings.preflight_timeout
            && !self.ran_here.contains(&hash)
            && let Err(e) = preflight(&copy, timeout)
        {
            let _ = std::fs::remove_file(&copy);
            return self.refuse(file, Some(hash), e.to_string());
        }
        let loaded = on_short_thread(|| LoadedPlugin::load_prepared(file, &copy, hash.clone()));
        let mut plugin = match loaded {
            Ok(plugin) => plugin,
            Err(e) => return self.refuse(file, Some(hash), e.to_string()),
        };
        if self.is_live_image(plugin.code_address()) {
            // Never expected (fresh name, fresh inode, RTLD_LOCAL), but
            // if the dynamic loader ever hands back an image already
            // loaded, serving it would silently keep the old code.
            let _ = std::fs::remove_file(&copy);
            return self.refuse(
                file,
                Some(hash),
                "stale image: the dynamic loader returned a library that is already loaded, so the \
                 new code would not run; reload refused"
                    .to_owned(),
            );
        }
        if let Some(conflict) = self.conflict(file, &plugin) {
            close_unused(plugin);
            // No hash remembered: tried again when another file changes.
            return self.refuse(file, None, conflict);
        }
        let previous = self.files.get(file).and_then(|s| s.serving.clone());
        if let Some(old) = &previous {
            match hand_over(old, &plugin) {
                Ok(handoff) => plugin.handoff = handoff,
                Err(reason) => {
                    close_unused(plugin);
                    return self.refuse(file, Some(hash), reason);
                }
            }
        }
        tracing::info!(
            file = %file.display(),
            plugin = %plugin.name,
            version = %plugin.version,
            generation = plugin.generation,
            actions = plugin.actions.len(),
            handoff = ?plugin.handoff,
            "plugin generation loaded"
        );
        self.ran_here.insert(plugin.hash.clone());
        let plugin = Arc::new(plugin);
        let change = ActionsChanged {
            file: file.to_path_buf(),
            plugin: plugin.name.clone(),
            version: Some(plugin.version.clone()),
            generation: Some(plugin.generation),
            added: paths_not_in(&plugin, previous.as_deref()),
            removed: previous
                .as_deref()
                .map(|old| paths_not_in(old, Some(&plugin)))
                .unwrap_or_default(),
        };
        let slot = self.files.entry(file.to_path_buf()).or_default();
        slot.refused = None;
        if let Some(old) = slot.serving.replace(plugin) {
            self.retire(old);
        }
        Applied::Swapped(change)
    }

    /// Files whose last content was refused for a reason that another
    /// file's change may lift (a path conflict, busy): worth another try.
    pub fn retryable(&self) -> Vec<PathBuf> {
        self.files
            .iter()
            .filter(|(_, slot)| matches!(slot.refused, Some((None, _))))
            .map(|(file, _)| file.clone())
            .collect()
    }

    /// The file is gone: its generation stops serving (running calls
    /// finish on it).
    fn remove(&mut self, file: &Path) -> Applied {
        let Some(slot) = self.files.remove(file) else {
            return Applied::Ignored;
        };
        let Some(old) = slot.serving else {
            return Applied::Ignored;
        };
        tracing::info!(file = %file.display(), plugin = %old.name, generation = old.generation, "plugin file removed; its actions are gone");
        let change = ActionsChanged {
            file: file.to_path_buf(),
            plugin: old.name.clone(),
            version: None,
            generation: None,
            added: Vec::new(),
            removed: old.actions.iter().map(|a| a.path.clone()).collect(),
        };
        self.retire(old);
        Applied::Removed(change)
    }

    fn refuse(&mut self, file: &Path, hash: Option<String>, reason: String) -> Applied {
        tracing::error!(file = %file.display(), "plugin refused: {reason}");
        self.files.entry(file.to_path_buf()).or_default().refused = Some((hash, reason.clone()));
        Applied::Refused(reason)
    }

    /// A path `plugin` claims that another file's serving generation has.
    fn conflict(&self, file: &Path, plugin: &LoadedPlugin) -> Option<String> {
        self.files
            .iter()
            .filter(|(other, _)| other.as_path() != file)
            .filter_map(|(_, slot)| slot.serving.as_ref())
            .find_map(|owner| {
                plugin
                    .actions
                    .iter()
                    .find(|a| owner.actions.iter().any(|o| o.path == a.path))
                    .map(|a| {
                        format!(
                            "plugin {} {} claims action '{}', which plugin {} {} from {} already provides; plugin refused",
                            plugin.name,
                            plugin.version,
                            a.path,
                            owner.name,
                            owner.version,
                            owner.file.display()
                        )
                    })
            })
    }

    /// Whether a serving or draining generation has its code at `address`.
    fn is_live_image(&self, address: usize) -> bool {
        let serving = self.files.values().filter_map(|s| s.serving.as_deref());
        let draining = self.retired.iter().filter_map(|r| r.plugin.as_deref());
        serving.chain(draining).any(|p| p.code_address() == address)
    }

    fn retire(&mut self, plugin: Arc<LoadedPlugin>) {
        let mut view = view_of(&plugin, GenerationState::Draining);
        view.reason = Some("calls that started on it may still be running".to_owned());
        self.retired.push(Retired {
            shadow: plugin.shadow.clone(),
            plugin: Some(plugin),
            view,
        });
    }

    /// Closes drained generations and, with `recheck_mapped`, checks
    /// `/proc/self/maps` again for those that stayed mapped. Returns
    /// whether anything changed.
    pub fn sweep(&mut self, recheck_mapped: bool) -> bool {
        let mut changed = false;
        for retired in &mut self.retired {
            match retired.view.state {
                GenerationState::Draining => {
                    let Some(plugin) = retired.plugin.as_mut().and_then(Arc::get_mut) else {
                        continue;
                    };
                    retired.view.calls = plugin.calls.load(std::sync::atomic::Ordering::Relaxed);
                    let closed = on_short_thread(|| plugin.close());
                    retired.plugin = None;
                    changed = true;
                    settle(retired, closed.err());
                }
                GenerationState::RetiredMapped
                    if recheck_mapped && super::maps::is_mapped(&retired.shadow) == Some(false) =>
                {
                    settle(retired, None);
                    changed = true;
                }
                _ => {}
            }
        }
        let unmapped = self
            .retired
            .iter()
            .filter(|r| r.view.state == GenerationState::Unmapped)
            .count();
        if unmapped > UNMAPPED_KEPT {
            let mut drop_count = unmapped - UNMAPPED_KEPT;
            self.retired.retain(|r| {
                let drop = drop_count > 0 && r.view.state == GenerationState::Unmapped;
                drop_count -= usize::from(drop);
                !drop
            });
        }
        changed
    }

    /// Every generation, serving ones first, then the retired ones oldest
    /// first.
    pub fn views(&self) -> Vec<GenerationView> {
        let serving = self
            .files
            .values()
            .filter_map(|s| s.serving.as_deref())
            .map(|p| view_of(p, GenerationState::Serving));
        let retired = self.retired.iter().map(|r| {
            let mut view = r.view.clone();
            if let Some(p) = &r.plugin {
                view.calls = p.calls.load(std::sync::atomic::Ordering::Relaxed);
            }
            view
        });
        serving.chain(retired).collect()
    }

    /// Runs the shutdown hooks of the serving generations (server exit).
    pub fn shutdown(&self) {
        for plugin in self.files.values().filter_map(|s| s.serving.as_deref()) {
            on_short_thread(|| plugin.shutdown());
        }
    }
}

/// After `close`: unmapped (and its copy deleted), or still mapped, and
/// why.
fn settle(retired: &mut Retired, close_error: Option<String>) {
    match super::maps::is_mapped(&retired.shadow) {
        Some(false) => {
            let _ = std::fs::remove_file(&retired.shadow);
            retired.view.state = GenerationState::Unmapped;
            retired.view.reason = None;
            tracing::info!(generation = retired.view.generation, plugin = %retired.view.plugin, "plugin generation unmapped");
        }
        mapped => {
            retired.view.state = GenerationState::RetiredMapped;
            retired.view.reason = Some(match (close_error, mapped) {
                (Some(e), _) => format!("dlclose failed: {e}"),
                (None, None) => "this system has no /proc/self/maps to confirm an unload; assumed mapped".to_owned(),
                (None, Some(_)) => "the dynamic loader kept it after dlclose: a thread that ran its code still \
                    holds thread-local destructors from it (a thread_local! with Drop), or a thread it \
                    started is still running; it unmaps when those threads exit"
                    .to_owned(),
            });
            tracing::info!(
                generation = retired.view.generation,
                plugin = %retired.view.plugin,
                reason = retired.view.reason.as_deref().unwrap_or(""),
                "plugin generation closed but still mapped"
            );
        }
    }
}

/// Hands the serving generation's state to its successor, if both take
/// part: `Err` (the successor is refused) if saving or restoring fails.
fn hand_over(old: &LoadedPlugin, new: &LoadedPlugin) -> Result<Handoff, String> {
    if !(old.keeps_state() && new.takes_state()) {
        return Ok(Handoff::NotOffered);
    }
    let saved = on_short_thread(|| old.save_state());
    let bytes = match saved {
        Some(Ok(bytes)) => bytes,
        Some(Err(reason)) => {
            return Err(format!(
                "the serving generation {} could not save its state ({reason}); new generation refused, the old keeps serving",
                old.generation
            ));
        }
        None => return Ok(Handoff::NotOffered),
    };
    on_short_thread(|| new.restore_state(&bytes)).map_err(|reason| {
        format!(
            "the new generation refused the state of generation {} ({reason}); new generation refused, the old keeps serving",
            old.generation
        )
    })?;
    Ok(Handoff::Restored { bytes: bytes.len() })
}

/// Closes a generation that never served (refused after loading).
fn close_unused(mut plugin: LoadedPlugin) {
    if let Err(e) = on_short_thread(|| plugin.close()) {
        tracing::debug!("closing a refused generation: {e}");
    }
    let _ = std::fs::remove_file(&plugin.shadow);
}

/// Runs plugin code on a thread that exits right after: thread-local
/// destructors a plugin registers there run at once, instead of pinning
/// its image to a long-lived server thread for ever.
fn on_short_thread<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| match scope.spawn(work).join() {
        Ok(value) => value,
        Err(payload) => std::panic::resume_unwind(payload),
    })
}

fn paths_not_in(plugin: &LoadedPlugin, other: Option<&LoadedPlugin>) -> Vec<String> {
    plugin
        .actions
        .iter()
        .filter(|a| other.is_none_or(|o| !o.actions.iter().any(|b| b.path == a.path)))
        .map(|a| a.path.clone())
        .collect()
}

fn view_of(plugin: &LoadedPlugin, state: GenerationState) -> GenerationView {
    GenerationView {
        generation: plugin.generation,
        plugin: plugin.name.clone(),
        version: plugin.version.clone(),
        file: plugin.file.clone(),
        image: plugin.shadow.clone(),
        hash: plugin.hash.clone(),
        loaded_at: plugin
            .loaded_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        calls: plugin.calls.load(std::sync::atomic::Ordering::Relaxed),
        handoff: plugin.handoff.clone(),
        state,
        reason: None,
    }
}

/// Whether `file` has the platform's library extension.
pub fn is_plugin_file_name(file: &Path) -> bool {
    file.extension().and_then(|e| e.to_str()) == Some(std::env::consts::DLL_EXTENSION)
}

/// Seconds since the Unix epoch, for views built elsewhere.
pub fn unix_secs(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
