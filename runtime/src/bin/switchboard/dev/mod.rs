//! `switchboard dev`: watch plugin sources, rebuild on save, install the
//! new build into the served actions folder.
//!
//! Each watched crate is a `cdylib` plugin crate (a folder with a
//! `Cargo.toml`). On start every crate is built once; afterwards a change
//! to one of its `*.rs` files or its `Cargo.toml` (anything under `target/`
//! or a hidden folder is ignored) starts, once the edits have been quiet
//! for the debounce, `cargo build -p <package>` for that crate alone.
//!
//! A build that succeeds is installed atomically: the library cargo made
//! is copied beside the served file under a hidden name that does not end
//! in `.so`, then renamed into place, so the server's folder watch sees one
//! complete file and hot-reloads it. A build that fails installs nothing:
//! cargo's rendered errors are printed to stderr under a banner, and the
//! previous generation keeps serving.
//!
//! Builds run one at a time on one thread; edits saved during a build
//! start another once it ends. The library's path comes from cargo's own
//! artifact messages, so `CARGO_TARGET_DIR`, workspaces and `--release`
//! are all honoured.

mod build;
mod crates;

use build::build_and_install;
pub(crate) use crates::{PluginCrate, default_actions_dir, resolve_crates};

use notify::{EventKind, RecursiveMode, Watcher};
use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{IsTerminal, Read};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

/// How long source edits must be quiet before a build starts, unless
/// [`DevOptions::debounce`] says otherwise.
pub(crate) const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(150);

/// How often the watch thread looks at settled edits, and a running
/// build at the stop flag.
const TICK: Duration = Duration::from_millis(10);

/// Why `dev` could not start (or a crate could not be read).
#[derive(Debug, thiserror::Error)]
pub(crate) enum DevError {
    /// `--src` named a folder with no `Cargo.toml`.
    #[error("{dir} has no Cargo.toml: --src takes a plugin crate's folder")]
    NotACrate {
        /// The folder given.
        dir: PathBuf,
    },
    /// A file or folder could not be read.
    #[error("could not read {path}: {source}")]
    Read {
        /// What was being read.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A `Cargo.toml` is not valid TOML.
    #[error("{path} is not a valid Cargo.toml: {source}")]
    Manifest {
        /// The manifest.
        path: PathBuf,
        /// The parser's error.
        source: Box<toml::de::Error>,
    },
    /// A `Cargo.toml` has no `[package] name` (a virtual workspace
    /// manifest, say).
    #[error("{path} has no [package] name: --src takes a plugin crate's folder")]
    NoPackage {
        /// The manifest.
        path: PathBuf,
    },
    /// No `--src` and no Cargo workspace above the current folder.
    #[error("no Cargo workspace found from {from}: run dev inside one, or pass --src DIR")]
    NoWorkspace {
        /// Where the search started.
        from: PathBuf,
    },
    /// No `--src` and the workspace has no `actions/*` crates.
    #[error("no plugin crates in {dir} (no actions/*/Cargo.toml): pass --src DIR")]
    NoCrates {
        /// The folder searched.
        dir: PathBuf,
    },
    /// The actions folder could not be created.
    #[error("could not create the actions folder {dir}: {source}")]
    ActionsDir {
        /// The folder.
        dir: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// notify refused a source folder.
    #[error("could not watch {dir}: {source}")]
    Watch {
        /// The folder.
        dir: PathBuf,
        /// notify's error.
        source: notify::Error,
    },
    /// The watch thread could not start.
    #[error("could not start the source watch thread: {0}")]
    Thread(std::io::Error),
}

/// Why one build (or its install) did not put a new library in place.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BuildError {
    /// cargo could not be started.
    #[error("could not run {cargo:?}: {source}")]
    Spawn {
        /// The cargo program.
        cargo: OsString,
        /// The I/O error.
        source: std::io::Error,
    },
    /// cargo ran and failed: `output` holds its rendered errors.
    #[error("cargo build -p {package} failed ({status})")]
    Failed {
        /// The package.
        package: String,
        /// cargo's exit status.
        status: ExitStatus,
        /// What cargo printed on stderr (the compiler's errors).
        output: String,
    },
    /// cargo succeeded but reported no plugin library for the crate.
    #[error(
        "cargo build -p {package} made no .{ext} library: is it a cdylib crate (crate-type = [\"cdylib\"])?",
        ext = std::env::consts::DLL_EXTENSION
    )]
    NoArtifact {
        /// The package.
        package: String,
    },
    /// The build was abandoned because dev is stopping.
    #[error("the build was stopped")]
    Stopped,
    /// Waiting for cargo failed.
    #[error("waiting for cargo: {0}")]
    Wait(std::io::Error),
    /// The library could not be copied into the actions folder.
    #[error("could not install {from} as {to}: {source}")]
    Install {
        /// cargo's library.
        from: PathBuf,
        /// The served file.
        to: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// How `dev` builds.
#[derive(Debug, Clone)]
pub(crate) struct DevOptions {
    /// Build with `--release`.
    pub(crate) release: bool,
    /// How long edits must be quiet before a build starts.
    pub(crate) debounce: Duration,
    /// The cargo to run: `$CARGO` if set, else `cargo`.
    pub(crate) cargo: OsString,
    /// Ask cargo for colored errors (when stderr is a terminal).
    pub(crate) color: bool,
}

impl Default for DevOptions {
    fn default() -> Self {
        DevOptions {
            release: false,
            debounce: DEFAULT_DEBOUNCE,
            cargo: std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()),
            color: std::io::stderr().is_terminal(),
        }
    }
}

/// The running source watch; dropping it stops the thread (and kills a
/// build in progress).
#[derive(Debug)]
pub(crate) struct DevWatch {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for DevWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl DevWatch {
    /// Starts watching `crates`' sources, builds each once and installs it
    /// into `actions_dir` (created if missing), then returns with a thread
    /// rebuilding and installing whichever crate changes. A crate whose
    /// first build fails is reported and watched like the others.
    pub(crate) fn start(
        crates: Vec<PluginCrate>,
        actions_dir: &Path,
        options: DevOptions,
    ) -> Result<DevWatch, DevError> {
        // 0755 whatever the umask: the server refuses a folder that group
        // or others may write to.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(actions_dir)
            .map_err(|source| DevError::ActionsDir {
                dir: actions_dir.to_path_buf(),
                source,
            })?;
        let (tx, rx) = channel();
        let mut watcher = notify::recommended_watcher(move |event| {
            let _ = tx.send(event);
        })
        .map_err(|source| DevError::Watch {
            dir: PathBuf::new(),
            source,
        })?;
        for krate in &crates {
            watch_crate(&mut watcher, &krate.dir)?;
            tracing::info!(crate = %krate.package, dir = %krate.dir.display(), "watching plugin sources");
        }
        let stop = Arc::new(AtomicBool::new(false));
        // Edits saved during these builds are queued and rebuilt later.
        for krate in &crates {
            build_and_install(krate, actions_dir, &options, &stop);
        }
        let stopping = Arc::clone(&stop);
        let actions_dir = actions_dir.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("dev-watch".into())
            .spawn(move || {
                let _watcher = watcher;
                run(&crates, &actions_dir, &options, &rx, &stopping);
            })
            .map_err(DevError::Thread)?;
        Ok(DevWatch {
            stop,
            thread: Some(thread),
        })
    }
}

/// Watches the crate folder itself (its `Cargo.toml`, `build.rs`) and,
/// recursively, each of its subfolders except `target` and hidden ones,
/// so cargo's own output is never watched.
fn watch_crate(watcher: &mut impl Watcher, dir: &Path) -> Result<(), DevError> {
    let mut watch = |path: &Path, mode| {
        watcher.watch(path, mode).map_err(|source| DevError::Watch {
            dir: path.to_path_buf(),
            source,
        })
    };
    watch(dir, RecursiveMode::NonRecursive)?;
    let entries = std::fs::read_dir(dir).map_err(|source| DevError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        if path.is_dir() && !ignored_name(&entry.file_name()) {
            watch(&path, RecursiveMode::Recursive)?;
        }
    }
    Ok(())
}

/// Names never watched or reacted to: `target` and hidden files (editor
/// swap and lock files, `.git`).
fn ignored_name(name: &std::ffi::OsStr) -> bool {
    name == "target" || name.to_string_lossy().starts_with('.')
}

/// Whether a changed `path` in the crate at `root` can change its build:
/// a `*.rs` file or a `Cargo.toml`, not under `target/` or a hidden folder.
fn is_source_change(root: &Path, path: &Path) -> bool {
    let Ok(relative) = path.strip_prefix(root) else {
        return false;
    };
    if relative.components().any(|c| ignored_name(c.as_os_str())) {
        return false;
    }
    let Some(name) = path.file_name() else {
        return false;
    };
    name == "Cargo.toml" || Path::new(name).extension().is_some_and(|e| e == "rs")
}

/// The watch loop: marks crates dirty on source events, builds each once
/// its edits have been quiet for the debounce.
fn run(
    crates: &[PluginCrate],
    actions_dir: &Path,
    options: &DevOptions,
    rx: &Receiver<notify::Result<notify::Event>>,
    stop: &AtomicBool,
) {
    // Crate index -> when its last edit was seen.
    let mut dirty: HashMap<usize, Instant> = HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        match rx.recv_timeout(TICK) {
            Ok(Ok(event)) => {
                // Reads (cargo's own included) are not edits.
                if matches!(event.kind, EventKind::Access(_)) {
                    continue;
                }
                for path in &event.paths {
                    if let Some(index) = owner(crates, path)
                        && is_source_change(&crates[index].dir, path)
                    {
                        tracing::debug!(path = %path.display(), "source changed");
                        dirty.insert(index, Instant::now());
                    }
                }
            }
            Ok(Err(e)) => tracing::warn!("watching plugin sources: {e}"),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        let mut due: Vec<usize> = dirty
            .iter()
            .filter(|(_, since)| since.elapsed() >= options.debounce)
            .map(|(index, _)| *index)
            .collect();
        due.sort_unstable();
        for index in due {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            dirty.remove(&index);
            build_and_install(&crates[index], actions_dir, options, stop);
        }
    }
}

/// The crate whose folder holds `path` (the deepest, if they nest).
fn owner(crates: &[PluginCrate], path: &Path) -> Option<usize> {
    crates
        .iter()
        .enumerate()
        .filter(|(_, k)| path.starts_with(&k.dir))
        .max_by_key(|(_, k)| k.dir.components().count())
        .map(|(index, _)| index)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::build::{Installed, find_artifact, install};
    use super::*;

    #[test]
    fn source_changes_are_rust_files_and_manifests_outside_target() {
        let root = Path::new("/w/actions/echo");
        assert!(is_source_change(root, &root.join("src/lib.rs")));
        assert!(is_source_change(root, &root.join("Cargo.toml")));
        assert!(is_source_change(root, &root.join("build.rs")));
        assert!(!is_source_change(root, &root.join("target/debug/out.rs")));
        assert!(!is_source_change(root, &root.join("src/.#lib.rs")));
        assert!(!is_source_change(root, &root.join(".git/x.rs")));
        assert!(!is_source_change(root, &root.join("Cargo.lock")));
        assert!(!is_source_change(root, &root.join("src/lib.rs~")));
        assert!(!is_source_change(root, Path::new("/elsewhere/lib.rs")));
    }

    #[test]
    fn the_deepest_crate_owns_a_path() {
        let crates = vec![
            PluginCrate {
                dir: "/w/a".into(),
                package: "a".into(),
            },
            PluginCrate {
                dir: "/w/a/inner".into(),
                package: "inner".into(),
            },
        ];
        assert_eq!(owner(&crates, Path::new("/w/a/src/lib.rs")), Some(0));
        assert_eq!(owner(&crates, Path::new("/w/a/inner/src/lib.rs")), Some(1));
        assert_eq!(owner(&crates, Path::new("/w/b/src/lib.rs")), None);
    }

    #[test]
    fn the_artifact_is_the_cdylib_of_the_crate() {
        let messages = r#"{"reason":"compiler-artifact","manifest_path":"/nope/dep/Cargo.toml","target":{"crate_types":["lib"]},"filenames":["/t/debug/libdep.rlib"]}
{"reason":"compiler-artifact","manifest_path":"/nope/other/Cargo.toml","target":{"crate_types":["cdylib"]},"filenames":["/t/debug/libother.so"]}
{"reason":"compiler-artifact","manifest_path":"/nope/me/Cargo.toml","target":{"crate_types":["cdylib"]},"filenames":["/t/debug/libme.so"]}
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            find_artifact(messages, Path::new("/nope/me/Cargo.toml")),
            Some(PathBuf::from("/t/debug/libme.so"))
        );
        assert_eq!(
            find_artifact(messages, Path::new("/nope/x/Cargo.toml")),
            None
        );
    }

    #[test]
    fn install_renames_a_complete_copy_into_place() {
        let dir = std::env::temp_dir().join(format!("sb-dev-install-{}", std::process::id()));
        let actions = dir.join("actions");
        std::fs::create_dir_all(&actions).unwrap();
        let artifact = dir.join("libx.so");
        std::fs::write(&artifact, b"one").unwrap();
        let dest = actions.join("libx.so");
        assert_eq!(
            install(&artifact, &actions).unwrap(),
            Installed::Replaced(dest.clone())
        );
        assert_eq!(
            install(&artifact, &actions).unwrap(),
            Installed::Unchanged(dest.clone())
        );
        std::fs::write(&artifact, b"two").unwrap();
        assert_eq!(
            install(&artifact, &actions).unwrap(),
            Installed::Replaced(dest.clone())
        );
        assert_eq!(std::fs::read(&dest).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(&actions)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("libx.so")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
