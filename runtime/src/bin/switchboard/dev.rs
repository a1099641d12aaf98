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

/// One watched plugin crate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PluginCrate {
    /// Its folder, canonical.
    pub(crate) dir: PathBuf,
    /// Its package name (`[package] name`), as `cargo build -p` takes it.
    pub(crate) package: String,
}

impl PluginCrate {
    /// Reads the crate in `dir` (its `Cargo.toml`'s package name).
    pub(crate) fn open(dir: &Path) -> Result<PluginCrate, DevError> {
        let manifest = dir.join("Cargo.toml");
        if !manifest.is_file() {
            return Err(DevError::NotACrate {
                dir: dir.to_path_buf(),
            });
        }
        let text = std::fs::read_to_string(&manifest).map_err(|source| DevError::Read {
            path: manifest.clone(),
            source,
        })?;
        let doc: toml::Table = toml::from_str(&text).map_err(|source| DevError::Manifest {
            path: manifest.clone(),
            source: Box::new(source),
        })?;
        let Some(package) = doc
            .get("package")
            .and_then(|p| p.get("name"))
            .and_then(|n| n.as_str())
        else {
            return Err(DevError::NoPackage { path: manifest });
        };
        let dir = dir.canonicalize().map_err(|source| DevError::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(PluginCrate {
            dir,
            package: package.to_owned(),
        })
    }

    /// Its `Cargo.toml`.
    pub(crate) fn manifest(&self) -> PathBuf {
        self.dir.join("Cargo.toml")
    }
}

/// The Cargo workspace that `from` is in: the nearest folder at or above
/// it whose `Cargo.toml` has a `[workspace]` table.
pub(crate) fn workspace_root(from: &Path) -> Option<PathBuf> {
    from.ancestors()
        .find(|dir| {
            std::fs::read_to_string(dir.join("Cargo.toml"))
                .ok()
                .and_then(|text| toml::from_str::<toml::Table>(&text).ok())
                .is_some_and(|doc| doc.contains_key("workspace"))
        })
        .map(Path::to_path_buf)
}

/// Every `actions/*` folder of `workspace` that holds a crate, by name.
pub(crate) fn workspace_crates(workspace: &Path) -> Result<Vec<PluginCrate>, DevError> {
    let actions = workspace.join("actions");
    let entries = std::fs::read_dir(&actions).map_err(|source| DevError::Read {
        path: actions.clone(),
        source,
    })?;
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.join("Cargo.toml").is_file())
        .collect();
    dirs.sort();
    if dirs.is_empty() {
        return Err(DevError::NoCrates { dir: actions });
    }
    dirs.iter().map(|d| PluginCrate::open(d)).collect()
}

/// The crates to watch: the `--src` folders if any were given, else the
/// `actions/*` crates of the workspace around `cwd`.
pub(crate) fn resolve_crates(src: &[PathBuf], cwd: &Path) -> Result<Vec<PluginCrate>, DevError> {
    if src.is_empty() {
        let root = workspace_root(cwd).ok_or_else(|| DevError::NoWorkspace {
            from: cwd.to_path_buf(),
        })?;
        return workspace_crates(&root);
    }
    let mut crates: Vec<PluginCrate> = Vec::new();
    for dir in src {
        let krate = PluginCrate::open(&cwd.join(dir))?;
        if !crates.contains(&krate) {
            crates.push(krate);
        }
    }
    Ok(crates)
}

/// Where `dev` installs plugins when no actions folder is given:
/// `switchboard-dev/actions` in cargo's target folder (`CARGO_TARGET_DIR`,
/// or `target` in the workspace around `cwd`, or in `cwd`), so a folder of
/// deployed plugins is never overwritten.
pub(crate) fn default_actions_dir(cwd: &Path) -> PathBuf {
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => cwd.join(dir),
        _ => workspace_root(cwd)
            .unwrap_or_else(|| cwd.to_path_buf())
            .join("target"),
    };
    target.join("switchboard-dev").join("actions")
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

/// A successful build.
#[derive(Debug, Clone)]
pub(crate) struct Built {
    /// The library cargo made.
    pub(crate) artifact: PathBuf,
    /// How long `cargo build` took.
    pub(crate) elapsed: Duration,
    /// cargo's stderr (warnings, if any).
    pub(crate) output: String,
}

/// Runs `cargo build -p <package>` for `krate` and returns the library it
/// made. Kills cargo and returns [`BuildError::Stopped`] if `stop` is set
/// meanwhile.
pub(crate) fn build(
    krate: &PluginCrate,
    options: &DevOptions,
    stop: &AtomicBool,
) -> Result<Built, BuildError> {
    let started = Instant::now();
    let mut cmd = Command::new(&options.cargo);
    cmd.current_dir(&krate.dir)
        .arg("build")
        .arg("--manifest-path")
        .arg(krate.manifest())
        .arg("-p")
        .arg(&krate.package)
        // Artifacts as JSON on stdout (to find the library); the
        // compiler's diagnostics rendered as usual on stderr.
        .arg("--message-format=json-render-diagnostics")
        .arg(if options.color {
            "--color=always"
        } else {
            "--color=never"
        })
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if options.release {
        cmd.arg("--release");
    }
    let mut child = cmd.spawn().map_err(|source| BuildError::Spawn {
        cargo: options.cargo.clone(),
        source,
    })?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let (status, stdout, stderr) = std::thread::scope(|scope| {
        let out = scope.spawn(move || read_all(stdout));
        let err = scope.spawn(move || read_all(stderr));
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Ok(status),
                Ok(None) if stop.load(Ordering::Relaxed) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break Err(BuildError::Stopped);
                }
                Ok(None) => std::thread::sleep(TICK),
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break Err(BuildError::Wait(e));
                }
            }
        };
        (
            status,
            out.join().unwrap_or_default(),
            err.join().unwrap_or_default(),
        )
    });
    let status = status?;
    if !status.success() {
        return Err(BuildError::Failed {
            package: krate.package.clone(),
            status,
            output: stderr,
        });
    }
    let artifact =
        find_artifact(&stdout, &krate.manifest()).ok_or_else(|| BuildError::NoArtifact {
            package: krate.package.clone(),
        })?;
    Ok(Built {
        artifact,
        elapsed: started.elapsed(),
        output: stderr,
    })
}

fn read_all(stream: Option<impl Read>) -> String {
    let mut text = String::new();
    if let Some(mut stream) = stream {
        let mut bytes = Vec::new();
        let _ = stream.read_to_end(&mut bytes);
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    text
}

/// The plugin library among cargo's JSON messages: a `cdylib` artifact of
/// the package at `manifest` (or, failing a path match, the only one).
fn find_artifact(messages: &str, manifest: &Path) -> Option<PathBuf> {
    let manifest = manifest.canonicalize().unwrap_or_else(|_| manifest.into());
    let mut libraries = Vec::new();
    for line in messages.lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let is_cdylib = msg["target"]["crate_types"]
            .as_array()
            .is_some_and(|types| types.iter().any(|t| t == "cdylib"));
        if !is_cdylib {
            continue;
        }
        let Some(library) = msg["filenames"].as_array().and_then(|files| {
            files.iter().filter_map(|f| f.as_str()).find(|f| {
                Path::new(f).extension().and_then(|e| e.to_str())
                    == Some(std::env::consts::DLL_EXTENSION)
            })
        }) else {
            continue;
        };
        let ours = msg["manifest_path"].as_str().is_some_and(|m| {
            let m = Path::new(m);
            m == manifest || m.canonicalize().is_ok_and(|m| m == manifest)
        });
        if ours {
            return Some(PathBuf::from(library));
        }
        libraries.push(PathBuf::from(library));
    }
    if libraries.len() == 1 {
        libraries.pop()
    } else {
        None
    }
}

/// What [`install`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Installed {
    /// The file was replaced (or created): the server will reload it.
    Replaced(PathBuf),
    /// The served file already had exactly this content.
    Unchanged(PathBuf),
}

/// Puts `artifact` into `actions_dir` under its own file name, atomically:
/// copied to a hidden name there that the server ignores (it does not end
/// in the library extension), then renamed over the served file.
pub(crate) fn install(artifact: &Path, actions_dir: &Path) -> Result<Installed, BuildError> {
    let fail = |to: &Path, source| BuildError::Install {
        from: artifact.to_path_buf(),
        to: to.to_path_buf(),
        source,
    };
    let Some(name) = artifact.file_name() else {
        return Err(fail(
            actions_dir,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "no file name"),
        ));
    };
    let dest = actions_dir.join(name);
    let new = std::fs::read(artifact).map_err(|e| fail(&dest, e))?;
    if std::fs::read(&dest).is_ok_and(|old| old == new) {
        return Ok(Installed::Unchanged(dest));
    }
    let mut staged_name = OsString::from(".");
    staged_name.push(name);
    staged_name.push(format!(".{}.dev-staged", std::process::id()));
    let staged = actions_dir.join(staged_name);
    let written = std::fs::write(&staged, &new).and_then(|()| {
        use std::os::unix::fs::PermissionsExt;
        // Never writable by group or others: the server refuses such a
        // plugin file (whatever the umask gave cargo's artifact).
        let mode = std::fs::metadata(artifact)?.permissions().mode() & 0o755;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&staged, &dest)
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&staged);
        return Err(fail(&dest, e));
    }
    Ok(Installed::Replaced(dest))
}

/// Builds `krate` and installs it into `actions_dir`, reporting on stderr
/// and in the log; `true` if a working build is in place.
fn build_and_install(
    krate: &PluginCrate,
    actions_dir: &Path,
    options: &DevOptions,
    stop: &AtomicBool,
) -> bool {
    let package = &krate.package;
    tracing::info!(crate = %package, "building {package}");
    let built = match build(krate, options, stop) {
        Ok(built) => built,
        Err(BuildError::Stopped) => return false,
        Err(BuildError::Failed { status, .. }) if status.code().is_none() => {
            // Killed by a signal (Ctrl-C reaches cargo too): not the code's fault.
            tracing::warn!(crate = %package, "cargo build of {package} was interrupted ({status})");
            return false;
        }
        Err(BuildError::Failed { output, status, .. }) => {
            eprintln!(
                "\n==== build of {package} failed ({status}); still serving the previous version ====\n{}\n==== end of cargo's output for {package}: fix it and save to rebuild ====\n",
                output.trim_end()
            );
            tracing::error!(crate = %package, "build of {package} failed; still serving the previous version");
            return false;
        }
        Err(e) => {
            tracing::error!(crate = %package, "{e}; still serving the previous version");
            return false;
        }
    };
    let ms = built.elapsed.as_millis();
    if built.output.contains("warning") {
        eprintln!("{}", built.output.trim_end());
    }
    tracing::info!(crate = %package, artifact = %built.artifact.display(), "built {package} in {ms} ms; installing");
    match install(&built.artifact, actions_dir) {
        Ok(Installed::Replaced(dest)) => {
            tracing::info!(crate = %package, file = %dest.display(), "installed {package}");
            true
        }
        Ok(Installed::Unchanged(dest)) => {
            tracing::info!(crate = %package, file = %dest.display(), "{package} is unchanged; nothing to install");
            true
        }
        Err(e) => {
            tracing::error!(crate = %package, "{e}");
            false
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
