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
//! - `candidate`: the reload transaction for one changed file;
//! - `retired`: generations that no longer serve, closed once drained and
//!   confirmed unmapped (or why not);
//! - here: the table itself, its snapshot and views, and small helpers.

mod candidate;
mod retired;

use super::loader::{Handoff, LoadedPlugin};
use super::preflight::{Preflighted, preflight};
use super::refusal::RefusedFile;
use super::refusal::{Refusal, RefusalKind};
use super::shadow::ShadowDir;
use retired::Retired;
use serde::Serialize;
use std::collections::BTreeMap;
use std::ops::Range;
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
    /// Keep an unmapped generation's address range reserved with no
    /// access (a debugging aid: stale pointers into it fault at once).
    pub protect_retired: bool,
    /// Who may put code in the actions folder: files others could have
    /// written are refused. `None` checks nothing (`switchboard check`).
    pub trust: Option<super::trust::FolderTrust>,
    /// The services of the server the plugins are loaded into.
    pub services: Arc<dyn super::services::HostServices>,
    /// How plugin files are opened ([`super::loader::Dlopen`] but in
    /// tests).
    pub loader: Arc<dyn super::loader::Loader>,
}

/// Where a generation is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GenerationState {
    /// The generation new calls go to.
    Serving,
    /// Replaced or removed; calls that started on it may still run.
    Draining,
    /// Drained: its shutdown hook and `dlclose` are running now.
    Closing,
    /// Drained and closed, but the image is still mapped (see `reason`).
    RetiredMapped,
    /// Drained, closed, and gone from `/proc/self/maps`.
    Unmapped,
}

impl GenerationState {
    /// Its name, as `/status` and `/metrics` show it.
    pub fn name(&self) -> &'static str {
        match self {
            GenerationState::Serving => "serving",
            GenerationState::Draining => "draining",
            GenerationState::Closing => "closing",
            GenerationState::RetiredMapped => "retired_mapped",
            GenerationState::Unmapped => "unmapped",
        }
    }
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
    /// BLAKE3 of the content loaded.
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
    /// Nothing callable changed, but what `/status` says did (a refusal
    /// cleared: the file is back to the serving content, or gone).
    StatusChanged,
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
    /// The file's identity when the serving content was read: while it
    /// is the same, the file is not read (or hashed) again.
    serving_stat: Option<FileStat>,
    /// The last content refused, and why (cleared by a successful load).
    refused: Option<Refusal>,
    /// The file's identity when it was last refused: while it is the
    /// same, only a change elsewhere brings it back (`apply_again`).
    refused_stat: Option<FileStat>,
}

/// A file's identity on disk: device, inode, size, mtime, and ctime (a
/// changed mode or owner changes it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStat {
    dev: u64,
    inode: u64,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl FileStat {
    /// The identity of the file `meta` describes.
    pub fn of(meta: &std::fs::Metadata) -> FileStat {
        use std::os::unix::fs::MetadataExt;
        FileStat {
            dev: meta.dev(),
            inode: meta.ino(),
            len: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
        }
    }
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
    ran_here: std::collections::HashMap<String, Preflighted>,
    /// Set at server exit: no more loads or closes.
    frozen: bool,
}

impl Generations {
    /// An empty table that loads through `shadow`.
    pub fn new(settings: ReloadSettings, shadow: ShadowDir) -> Generations {
        Generations {
            settings,
            shadow,
            files: BTreeMap::new(),
            retired: Vec::new(),
            ran_here: std::collections::HashMap::new(),
            frozen: false,
        }
    }

    /// The private folder copies are loaded from.
    pub fn shadow(&self) -> &ShadowDir {
        &self.shadow
    }

    /// The snapshot of what is callable now.
    pub fn snapshot(&self) -> (Vec<Arc<LoadedPlugin>>, Vec<RefusedFile>) {
        let plugins = self
            .files
            .values()
            .filter_map(|slot| slot.serving.clone())
            .collect();
        let refused = self
            .files
            .iter()
            .filter_map(|(file, slot)| {
                slot.refused.as_ref().map(|r| RefusedFile {
                    file: file.clone(),
                    kind: r.kind,
                    reason: r.reason.clone(),
                })
            })
            .collect();
        (plugins, refused)
    }

    /// The deadline of actions that set none.
    pub fn default_timeout(&self) -> Duration {
        self.settings.default_timeout
    }

    /// Files whose last content was refused as `kind`, a reason that a
    /// change elsewhere may lift (a path conflict: another plugin gave up
    /// paths; busy: an earlier generation is gone): worth another try then.
    pub fn retryable(&self, kind: RefusalKind) -> Vec<PathBuf> {
        self.files
            .iter()
            .filter(|(_, slot)| {
                slot.refused
                    .as_ref()
                    .is_some_and(|r| r.retry_with_others && r.kind == kind)
            })
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
            // Only a refusal was listed for it; it goes with the file.
            return if slot.refused.is_some() {
                Applied::StatusChanged
            } else {
                Applied::Ignored
            };
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

    fn refuse(&mut self, file: &Path, refusal: Refusal) -> Applied {
        tracing::error!(file = %file.display(), "plugin refused: {}", refusal.reason);
        let reason = refusal.reason.clone();
        self.files.entry(file.to_path_buf()).or_default().refused = Some(refusal);
        Applied::Refused(reason)
    }

    /// A path of `paths` (what `claimant` in `file` claims) that another
    /// file's serving generation has, described.
    fn conflict(&self, file: &Path, paths: &[String], claimant: &str) -> Option<String> {
        self.files
            .iter()
            .filter(|(other, _)| other.as_path() != file)
            .filter_map(|(_, slot)| slot.serving.as_ref())
            .find_map(|owner| {
                paths
                    .iter()
                    .find(|p| owner.actions.iter().any(|o| &o.path == *p))
                    .map(|path| {
                        format!(
                            "{claimant} claims action '{path}', which plugin {} {} from {} already \
                             provides; plugin refused (it is tried again when that changes)",
                            owner.name,
                            owner.version,
                            owner.file.display()
                        )
                    })
            })
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

    /// Runs the shutdown hooks of the serving generations (server exit),
    /// after which nothing is loaded or closed any more.
    pub fn shutdown(&mut self) {
        self.frozen = true;
        for plugin in self.files.values().filter_map(|s| s.serving.as_deref()) {
            on_short_thread(|| plugin.shutdown());
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
/// its image to a long-lived server thread for ever. If no thread can be
/// started (a process limit), the work runs here instead: a pinned image
/// is better than no reload.
pub(crate) fn on_short_thread<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    let work = std::sync::Mutex::new(Some(work));
    let take = || work.lock().ok().and_then(|mut w| w.take());
    let ran = std::thread::scope(|scope| {
        let spawned = std::thread::Builder::new()
            .name("plugin-hook".into())
            .spawn_scoped(scope, || take().map(|work| work()));
        match spawned {
            Ok(handle) => match handle.join() {
                Ok(value) => value,
                Err(payload) => std::panic::resume_unwind(payload),
            },
            Err(e) => {
                tracing::warn!("could not start a thread for plugin code ({e}); running it here");
                None
            }
        }
    });
    match ran {
        Some(value) => value,
        // Only the scoped thread takes the work, and it did not start.
        None => match take() {
            Some(work) => work(),
            None => unreachable!("plugin work neither ran on its thread nor stayed here"),
        },
    }
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
        loaded_at: unix_secs(plugin.loaded_at),
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

/// Seconds since the Unix epoch.
fn unix_secs(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
pub(crate) mod tests;
