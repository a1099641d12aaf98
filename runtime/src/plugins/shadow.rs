//! [`ShadowDir`]: the private folder that plugins are loaded from.
//!
//! The server never opens a file in the actions folder itself: writing to
//! a loaded library in place crashes the process, and reopening a path or
//! inode that is still mapped returns the old code. Each load therefore
//! copies the file (a new inode) to a name never used before in this
//! process: `<stem>.<pid>.<counter>.<ext>`, under `<base>/<pid>/`.
//!
//! Whoever can write to that folder can swap a copy between its check and
//! its load: the folder is created private (0700) and checked by the same
//! rules as the actions folder ([`super::trust`]).

use super::elf::{ElfError, check_complete_file};
use super::trust::{Unsafe, check_private_folder};
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// This process's folder of plugin copies.
#[derive(Debug)]
pub struct ShadowDir {
    dir: PathBuf,
    counter: AtomicU64,
}

/// Why the shadow folder could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ShadowError {
    /// Creating or reading it failed.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// Others could write to it (see [`super::trust`]).
    #[error("{0} (or set allow_unsafe_plugin_folder = true to accept it)")]
    Unsafe(#[from] Unsafe),
}

impl ShadowDir {
    /// Creates `<base>/<pid>/` (folders it creates are 0700), first
    /// removing the folders of processes that no longer run (copies left
    /// by a crash). A base that others could write to is refused unless
    /// `allow_unsafe`, which only warns.
    pub fn create(base: &Path, allow_unsafe: bool) -> Result<ShadowDir, ShadowError> {
        private_folder(base)?;
        // Resolved, as `/proc/self/maps` names mapped files: the unload
        // check compares the two.
        let base = &base.canonicalize()?;
        match check_private_folder(base) {
            Ok(()) => {}
            Err(problem) if allow_unsafe => {
                tracing::warn!(
                    "using the shadow folder anyway (allow_unsafe_plugin_folder = true): {problem}"
                );
            }
            Err(problem) => return Err(problem.into()),
        }
        remove_stale(base);
        let dir = base.join(std::process::id().to_string());
        if dir.exists() {
            fs::remove_dir_all(&dir)?;
        }
        private_folder(&dir)?;
        Ok(ShadowDir {
            dir,
            counter: AtomicU64::new(0),
        })
    }

    /// The default base: `$TMPDIR/switchboard-shadow-<uid>`, one per user,
    /// so servers of different users never share (or fight over) one.
    pub fn default_base() -> PathBuf {
        std::env::temp_dir().join(format!(
            "switchboard-shadow-{}",
            crate::sys::effective_uid()
        ))
    }

    /// Copies `source` to a fresh, never-reused name, hashing the content
    /// on the way: what is checked, hashed and loaded is then one content,
    /// whatever happens to `source` meanwhile. The file is read once, in
    /// chunks that stay in the processor's cache (a reload must not evict
    /// the working set of the calls it runs beside).
    pub fn copy_hashed(&self, source: &Path) -> io::Result<Copied> {
        let mut from = File::open(source)?;
        // The file as opened: what the trust check vouches for.
        let source_metadata = from.metadata()?;
        let path = self.fresh_name(source);
        let to = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        let mut copied = Copied {
            path,
            file: Some(to),
            hash: String::new(),
            len: 0,
            source_metadata,
        };
        let mut hasher = blake3::Hasher::new();
        let mut chunk = vec![0u8; COPY_CHUNK];
        loop {
            let n = match from.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let bytes = chunk.get(..n).unwrap_or_default();
            hasher.update(bytes);
            if let Some(to) = copied.file.as_mut() {
                to.write_all(bytes)?;
            }
            copied.len += n as u64;
            // A chunk is tens of microseconds of CPU: between chunks the
            // calls waiting for this core go first, so the copy delays
            // none of them by more than one chunk.
            std::thread::yield_now();
        }
        copied.hash = hasher.finalize().to_hex().to_string();
        Ok(copied)
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

/// Creates `dir` and any missing parents with mode 0700.
fn private_folder(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Bytes read and written at a time when copying a plugin file.
const COPY_CHUNK: usize = 64 * 1024;

/// A fresh private copy of a plugin file and its content's hash. Its name
/// is removed when it is dropped, unless [`Copied::keep`] takes it.
#[derive(Debug)]
pub struct Copied {
    path: PathBuf,
    file: Option<File>,
    hash: String,
    len: u64,
    source_metadata: std::fs::Metadata,
}

impl Copied {
    /// Where the copy is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// BLAKE3 of the content, in hex (as `b3sum` prints it): how
    /// `/status` names a generation's content, and how an unchanged file
    /// is recognised.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// The metadata of the source file as it was opened for the copy (its
    /// owner and mode, from the open descriptor).
    pub fn source_metadata(&self) -> &std::fs::Metadata {
        &self.source_metadata
    }

    /// Checks that the copy is a complete ELF object for this machine.
    pub fn check_elf(&self) -> Result<(), ElfError> {
        match &self.file {
            Some(file) => check_complete_file(file, self.len),
            None => Err(ElfError::NotElf),
        }
    }

    /// Keeps the copy (it is to be loaded) and returns its path.
    pub fn keep(mut self) -> PathBuf {
        self.file = None;
        std::mem::take(&mut self.path)
    }
}

impl Drop for Copied {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.path);
        }
    }
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
