//! [`ShadowDir`]: the private folder that plugins are loaded from.
//!
//! The server never opens a file in the actions folder itself: writing to
//! a loaded library in place crashes the process, and reopening a path or
//! inode that is still mapped returns the old code. Each load therefore
//! copies the file (a new inode) to a name never used before in this
//! process: `<stem>.<pid>.<counter>.<ext>`, under `<base>/<pid>/`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// This process's folder of plugin copies.
#[derive(Debug)]
pub struct ShadowDir {
    dir: PathBuf,
    counter: AtomicU64,
}

impl ShadowDir {
    /// Creates `<base>/<pid>/`, first removing the folders of processes
    /// that no longer run (copies left by a crash).
    pub fn create(base: &Path) -> io::Result<ShadowDir> {
        fs::create_dir_all(base)?;
        // Resolved, as `/proc/self/maps` names mapped files: the unload
        // check compares the two.
        let base = &base.canonicalize()?;
        remove_stale(base);
        let dir = base.join(std::process::id().to_string());
        if dir.exists() {
            fs::remove_dir_all(&dir)?;
        }
        fs::create_dir_all(&dir)?;
        Ok(ShadowDir {
            dir,
            counter: AtomicU64::new(0),
        })
    }

    /// The default base: `$TMPDIR/switchboard-shadow`.
    pub fn default_base() -> PathBuf {
        std::env::temp_dir().join("switchboard-shadow")
    }

    /// Copies `source` to a fresh, never-reused name and returns its path.
    pub fn copy_in(&self, source: &Path) -> io::Result<PathBuf> {
        let target = self.fresh_name(source);
        fs::copy(source, &target)?;
        Ok(target)
    }

    /// Writes `bytes` (a file's content, read once) to a fresh name for
    /// `source`: what is checked, hashed and loaded is then one content,
    /// whatever happens to `source` meanwhile.
    pub fn write_in(&self, source: &Path, bytes: &[u8]) -> io::Result<PathBuf> {
        let target = self.fresh_name(source);
        fs::write(&target, bytes)?;
        Ok(target)
    }

    /// `<dir>/<stem>.<pid>.<n>.<ext>`, with `n` never used before.
    fn fresh_name(&self, source: &Path) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let stem = source
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("plugin");
        let ext = source
            .extension()
            .and_then(|s| s.to_str())
            .unwrap_or(std::env::consts::DLL_EXTENSION);
        self.dir
            .join(format!("{stem}.{}.{n}.{ext}", std::process::id()))
    }

    /// Removes this process's folder (at shutdown). Mapped copies stay
    /// mapped; only their names go.
    pub fn remove(&self) {
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            tracing::debug!(dir = %self.dir.display(), "could not remove the shadow folder: {e}");
        }
    }
}

/// SHA-256 of a plugin file's content, in hex: how `/status` names a
/// generation's content, and how an unchanged file is recognised.
pub fn content_hash(bytes: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn remove_stale(base: &Path) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new("/proc").join(pid.to_string()).exists() {
            match fs::remove_dir_all(entry.path()) {
                Ok(()) => {
                    tracing::info!(dir = %entry.path().display(), "removed plugin copies left by a process that is gone")
                }
                Err(e) => {
                    tracing::warn!(dir = %entry.path().display(), "could not remove stale plugin copies: {e}")
                }
            }
        }
    }
}
