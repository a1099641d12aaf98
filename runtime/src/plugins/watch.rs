//! Watching the actions folder (notify, debounced) and turning each
//! settled change into a reload, one at a time, on one thread.
//!
//! File events arrive early and in bursts: cargo unlinks the old artifact
//! and later hard-links the new one into place, `cp` writes in several
//! chunks, a slow writer dribbles. A path is taken only once its size,
//! mtime and inode have stayed the same for the debounce; the registry
//! then reads it once, skips it if its content is unchanged, and refuses
//! an incomplete ELF (a later write brings it back). Removed files take
//! their actions with them.

use super::generations::ActionsChanged;
use super::generations::FileStat;
use super::registry::Registry;
use notify::event::ModifyKind;
use notify::{EventKind, RecursiveMode, Watcher};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{RecvTimeoutError, Sender, channel};
use std::time::{Duration, Instant};

/// How often pending paths and draining generations are looked at. With
/// neither, the thread sleeps until a file event, the next check of
/// mapped generations, or the server stopping: an idle (or busy) server
/// is not woken fifty times a second for nothing, and the thread does not
/// take its core from the runtime's worker.
const TICK: Duration = Duration::from_millis(20);
/// How often generations that stayed mapped are checked again.
const MAPPED_RECHECK: Duration = Duration::from_secs(2);

/// A file's identity (device, inode, size, mtime): "has it settled?" is
/// "is it the same as a debounce ago?". `None` when it is gone.
fn stat(path: &Path) -> Option<FileStat> {
    std::fs::metadata(path).ok().map(|meta| FileStat::of(&meta))
}

/// A change seen but not yet settled.
struct Pending {
    since: Instant,
    stat: Option<FileStat>,
}

/// The running watch; dropping it stops the thread.
#[derive(Debug)]
pub struct Watch {
    stop: Arc<AtomicBool>,
    /// Wakes the thread from its wait, to see `stop`.
    wake: Sender<notify::Result<notify::Event>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self
            .wake
            .send(Err(notify::Error::generic("the watch is stopping")));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Why the watch could not start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// notify refused the folder.
    #[error("could not watch {dir}: {source}")]
    Notify {
        /// The folder.
        dir: PathBuf,
        /// notify's error.
        source: notify::Error,
    },
    /// The thread could not start.
    #[error("could not start the watch thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// Starts watching `dir`: every plugin file that changes and then stays
/// unchanged for `debounce` is applied to `target`'s registry, and clients
/// that subscribed hear `actions.changed`. Also closes drained generations.
pub fn start(
    target: Arc<dyn Watched>,
    dir: &Path,
    debounce: Duration,
) -> Result<Watch, WatchError> {
    let (tx, rx) = channel();
    let wake = tx.clone();
    let mut watcher = notify::recommended_watcher(move |event| {
        let _ = tx.send(event);
    })
    .map_err(|source| WatchError::Notify {
        dir: dir.to_path_buf(),
        source,
    })?;
    watcher
        .watch(dir, RecursiveMode::NonRecursive)
        .map_err(|source| WatchError::Notify {
            dir: dir.to_path_buf(),
            source,
        })?;
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = Arc::clone(&stop);
    let dir = dir.to_path_buf();
    let canonical_dir = dir.canonicalize().unwrap_or_else(|_| dir.clone());
    let thread = std::thread::Builder::new()
        .name("plugin-watch".into())
        .spawn(move || {
            let _watcher = watcher;
            let mut pending: HashMap<PathBuf, Pending> = HashMap::new();
            // Whatever changed between the first scan and the watch
            // starting is looked at once (unchanged files cost a hash).
            queue_all(&dir, &mut pending);
            let mut last_recheck = Instant::now();
            while !stopping.load(Ordering::Relaxed) {
                let wait = if pending.is_empty() && !target.registry().has_draining() {
                    MAPPED_RECHECK
                        .saturating_sub(last_recheck.elapsed())
                        .max(TICK)
                } else {
                    TICK
                };
                match rx.recv_timeout(wait) {
                    // `Watch::drop` wakes the thread to stop.
                    Ok(Err(_)) if stopping.load(Ordering::Relaxed) => break,
                    Ok(Ok(event)) if event.need_rescan() => {
                        tracing::warn!("file events were lost; looking at every plugin file again");
                        queue_all(&dir, &mut pending);
                    }
                    // Reading a file is an event too (the server's own
                    // copy of it, for one): only a write finishing counts,
                    // or a refused file would be read again for ever.
                    Ok(Ok(event)) if is_read_only(&event.kind) => {}
                    Ok(Ok(event)) => {
                        let metadata =
                            matches!(event.kind, EventKind::Modify(ModifyKind::Metadata(_)));
                        for path in event.paths {
                            // The folder's own mode or owner changed: files
                            // refused for it may be loadable now. (Only
                            // that: reading the folder is an event too.)
                            if same_dir(&path, &dir, &canonical_dir) {
                                if metadata {
                                    queue_all(&dir, &mut pending);
                                }
                                continue;
                            }
                            // Only direct children: editors' temp folders
                            // and the like are not plugins. Named as the
                            // registry names them (`dir` + file name).
                            let (Some(parent), Some(name)) = (path.parent(), path.file_name())
                            else {
                                continue;
                            };
                            let path = dir.join(name);
                            if same_dir(parent, &dir, &canonical_dir)
                                && super::generations::is_plugin_file_name(&path)
                            {
                                let stat = stat(&path);
                                let since = Instant::now();
                                pending.insert(path, Pending { since, stat });
                            }
                        }
                    }
                    Ok(Err(e)) => tracing::warn!("watching the actions folder: {e}"),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => break,
                }
                let recheck = last_recheck.elapsed() >= MAPPED_RECHECK;
                if recheck {
                    last_recheck = Instant::now();
                }
                let ready = settled(&mut pending, debounce);
                // A panic here (a thread that could not start, say) must
                // not end hot reload for the life of the server.
                let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    for path in ready {
                        target.changed(target.registry().apply(&path));
                    }
                    target.changed(target.registry().sweep(recheck));
                }));
                if step.is_err() {
                    tracing::error!("a reload step panicked; watching goes on");
                }
            }
        })?;
    Ok(Watch {
        stop,
        wake,
        thread: Some(thread),
    })
}

/// Whether an event only says a file was opened or read, which changes
/// nothing (a write that finishes is a change).
fn is_read_only(kind: &EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode};
    matches!(kind, EventKind::Access(access)
        if !matches!(access, AccessKind::Close(AccessMode::Write)))
}

/// Queues every plugin file in `dir`.
fn queue_all(dir: &Path, pending: &mut HashMap<PathBuf, Pending>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = dir.join(entry.file_name());
        if super::generations::is_plugin_file_name(&path) {
            let stat = stat(&path);
            let since = Instant::now();
            pending.insert(path, Pending { since, stat });
        }
    }
}

/// Whether an event's folder is the watched one (notify may report it
/// as given or resolved).
fn same_dir(parent: &Path, dir: &Path, canonical_dir: &Path) -> bool {
    parent == dir
        || parent == canonical_dir
        || parent.canonicalize().is_ok_and(|p| p == canonical_dir)
}

/// The pending paths that have stayed the same for `debounce`; those
/// that changed meanwhile start waiting again.
fn settled(pending: &mut HashMap<PathBuf, Pending>, debounce: Duration) -> Vec<PathBuf> {
    let now = Instant::now();
    let due: Vec<PathBuf> = pending
        .iter()
        .filter(|(_, p)| now.duration_since(p.since) >= debounce)
        .map(|(path, _)| path.clone())
        .collect();
    let mut ready = Vec::new();
    for path in due {
        let current = stat(&path);
        match pending.get_mut(&path) {
            Some(p) if p.stat != current => {
                p.stat = current;
                p.since = now;
            }
            _ => {
                pending.remove(&path);
                ready.push(path);
            }
        }
    }
    ready.sort();
    ready
}

/// What the watch acts on: the registry changes are applied to, and
/// whoever is told of what changed (the server, which tells its clients).
pub trait Watched: Send + Sync + 'static {
    /// The registry to apply changed files to.
    fn registry(&self) -> &Registry;
    /// Hears every change a reload or a sweep made (maybe none).
    fn changed(&self, changes: Vec<ActionsChanged>);
}
