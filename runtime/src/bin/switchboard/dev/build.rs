//! One build of one plugin crate: `cargo build -p <package>` with its
//! artifact read from cargo's own messages, and the atomic install of the
//! library into the served actions folder (a hidden name, then a rename).

use super::*;

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
pub(super) fn find_artifact(messages: &str, manifest: &Path) -> Option<PathBuf> {
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
pub(super) fn build_and_install(
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
