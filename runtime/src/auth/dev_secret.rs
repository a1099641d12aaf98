//! The development secret: what `serve` signs and checks tokens with when
//! no key is configured, kept in a private file of the user's state folder
//! so that `switchboard token` and `switchboard bench` can sign in to that
//! server, for any user, and tokens survive a restart of `serve`.
//!
//! The file is `$XDG_STATE_HOME/switchboard/dev-secret` (or
//! `~/.local/state/switchboard/dev-secret`, or, with no home, a per-user
//! folder in the temporary folder). Its folder is 0700 and the file 0600;
//! a file or folder that others could read or write is refused, never used.

use std::fs::{DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Why the development secret could not be read or made.
#[derive(Debug, thiserror::Error)]
pub enum DevSecretError {
    /// The file or its folder could not be read, made or written.
    #[error("the development secret {path}: {source}")]
    Io {
        /// The file or folder concerned.
        path: PathBuf,
        /// The failure.
        #[source]
        source: io::Error,
    },
    /// Another user could read or change it, or it belongs to someone else.
    #[error(
        "the development secret {path} is not private ({why}); remove it (a new one is made) or \
         configure a secret with --jwt-secret-file"
    )]
    NotPrivate {
        /// The file or folder concerned.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The file holds something that is not a secret this server made.
    #[error(
        "the development secret {0} is not 64 hexadecimal characters; remove it (a new one is made)"
    )]
    Malformed(PathBuf),
    /// No randomness for a new secret.
    #[error("could not make a random development secret: {0}")]
    Random(#[from] getrandom::Error),
}

/// Where the development secret of this user lives.
pub fn location() -> PathBuf {
    state_folder().join("switchboard").join("dev-secret")
}

fn state_folder() -> PathBuf {
    let from_env = |name: &str| {
        std::env::var_os(name)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    if let Some(state) = from_env("XDG_STATE_HOME") {
        return state;
    }
    if let Some(home) = from_env("HOME") {
        return home.join(".local").join("state");
    }
    std::env::temp_dir().join(format!("switchboard-state-{}", crate::sys::effective_uid()))
}

/// Reads the development secret at `path`, or makes one there if there is
/// none (two servers starting at once end with the same secret).
pub fn load_or_create(path: &Path) -> Result<String, DevSecretError> {
    if let Some(secret) = load(path)? {
        return Ok(secret);
    }
    let folder = path.parent().unwrap_or(Path::new("."));
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(folder)
        .map_err(|source| io_error(folder, source))?;
    check_private(folder)?;
    let secret = super::random_secret()?;
    // Written whole under a private name, then linked into place: a
    // reader never sees half a secret, and of two servers racing, the
    // first link wins and the other reads it.
    let partial = folder.join(format!(".dev-secret.{}", std::process::id()));
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .and_then(|mut file| file.write_all(secret.as_bytes()));
    let linked = written.and_then(|()| std::fs::hard_link(&partial, path));
    let _ = std::fs::remove_file(&partial);
    match linked {
        Ok(()) => Ok(secret),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            load(path)?.ok_or_else(|| io_error(path, e))
        }
        Err(e) => Err(io_error(path, e)),
    }
}

/// Reads the development secret at `path`; `None` if there is none yet.
pub fn load(path: &Path) -> Result<Option<String>, DevSecretError> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(path, e)),
        Ok(_) => {}
    }
    if let Some(folder) = path.parent() {
        check_private(folder)?;
    }
    check_private(path)?;
    let text = std::fs::read_to_string(path).map_err(|e| io_error(path, e))?;
    let secret = text.trim();
    if secret.len() != 64 || !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(DevSecretError::Malformed(path.to_path_buf()));
    }
    Ok(Some(secret.to_owned()))
}

/// Refuses a file or folder that is a symlink, belongs to another user or
/// that others may read or write.
fn check_private(path: &Path) -> Result<(), DevSecretError> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| io_error(path, e))?;
    let not_private = |why: String| DevSecretError::NotPrivate {
        path: path.to_path_buf(),
        why,
    };
    if meta.file_type().is_symlink() {
        return Err(not_private("it is a symbolic link".to_owned()));
    }
    let me = crate::sys::effective_uid();
    if meta.uid() != me {
        return Err(not_private(format!(
            "it belongs to uid {}, not {me}",
            meta.uid()
        )));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(not_private(format!(
            "mode {:o}: others may use it",
            meta.mode() & 0o777
        )));
    }
    Ok(())
}

fn io_error(path: &Path, source: io::Error) -> DevSecretError {
    DevSecretError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_secret_is_made_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("switchboard").join("dev-secret");
        assert!(load(&path).unwrap().is_none());
        let made = load_or_create(&path).unwrap();
        assert_eq!(made.len(), 64);
        assert_eq!(load_or_create(&path).unwrap(), made);
        let mode = std::fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let folder_mode = std::fs::metadata(path.parent().unwrap()).unwrap().mode() & 0o777;
        assert_eq!(folder_mode, 0o700);
    }

    #[test]
    fn a_secret_others_can_read_or_a_malformed_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("switchboard").join("dev-secret");
        load_or_create(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = load_or_create(&path).unwrap_err();
        assert!(
            matches!(error, DevSecretError::NotPrivate { .. }),
            "{error}"
        );
        assert!(error.to_string().contains("mode 644"), "{error}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "not a secret").unwrap();
        assert!(matches!(
            load(&path).unwrap_err(),
            DevSecretError::Malformed(_)
        ));
    }
}
