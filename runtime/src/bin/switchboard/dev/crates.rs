//! Which crates `dev` watches: the plugin crates of the workspace around
//! the current folder, or the folders given with `--src`, and where their
//! builds are served from by default.

use super::*;

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
