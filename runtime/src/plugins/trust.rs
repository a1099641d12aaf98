//! Whether plugin code may be loaded from a place: a plugin runs as the
//! server, so only the server's own user (or root) may be able to put
//! code where the server loads from.
//!
//! Refused (unless the operator accepts it, `allow_unsafe_plugin_folder`):
//! - a folder or file that others may write to, or its group, unless that
//!   group is its owner's private group (Debian and Ubuntu give every
//!   user one, with a umask of 002);
//! - a folder or file owned by a user other than the server's or root;
//! - a symbolic link whose target is outside the actions folder;
//! - an ancestor of the folder owned by another user, or one that others
//!   may write to without the sticky bit (they could rename the folder
//!   away and put their own in its place). Group-writable ancestors are
//!   accepted: many systems give each user a group of their own.
//!
//! The same rules hold for the shadow folder the copies are loaded from,
//! which the server creates private (0700). A file's owner and mode are
//! checked again on the very file the server read ([`FolderTrust::check_opened`]),
//! so a path swapped between the check and the copy is caught.

use nix::unistd::{Gid, Group, Uid, User};
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Why a place is not safe to load plugins from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unsafe {
    /// Group or others may write to it.
    #[error(
        "{path} can be written by {who} (mode {mode:04o}): they could put code into this server; \
         fix it with `chmod go-w {path}`"
    )]
    Writable {
        /// The folder or file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// "its group" or "every user".
        who: &'static str,
    },
    /// Another user owns it.
    #[error(
        "{path} is owned by user {owner}, not by this server's user ({server}) or root: that user \
         could put code into this server; fix it with `chown {server} {path}`"
    )]
    Owner {
        /// The folder or file.
        path: PathBuf,
        /// Its owner's uid.
        owner: u32,
        /// The server's effective uid.
        server: u32,
    },
    /// A symbolic link that leads out of the actions folder.
    #[error(
        "{path} is a symbolic link to {target}, outside the actions folder {folder}: only files in \
         the folder are loaded; copy the library in instead"
    )]
    Outside {
        /// The link.
        path: PathBuf,
        /// Where it leads.
        target: PathBuf,
        /// The actions folder.
        folder: PathBuf,
    },
    /// It could not be examined.
    #[error("could not check {path}: {reason}")]
    Unreadable {
        /// The folder or file.
        path: PathBuf,
        /// The I/O error.
        reason: String,
    },
}

fn metadata(path: &Path) -> Result<std::fs::Metadata, Unsafe> {
    std::fs::metadata(path).map_err(|e| Unsafe::Unreadable {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn canonical(path: &Path) -> Result<PathBuf, Unsafe> {
    path.canonicalize().map_err(|e| Unsafe::Unreadable {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Checks one folder or file (not its ancestors): owned by the server's
/// user or root, and writable by neither group nor others.
fn check_owned_and_closed(path: &Path) -> Result<(), Unsafe> {
    check_meta(path, &metadata(path)?)
}

/// [`check_owned_and_closed`] on metadata already read.
fn check_meta(path: &Path, meta: &Metadata) -> Result<(), Unsafe> {
    check_owner(path, meta)?;
    let mode = meta.mode() & 0o7777;
    let who = if mode & 0o002 != 0 {
        "every user"
    } else if mode & 0o020 != 0 && !private_group(meta.uid(), meta.gid()) {
        "its group"
    } else {
        return Ok(());
    };
    Err(Unsafe::Writable {
        path: path.to_path_buf(),
        mode,
        who,
    })
}

/// Whether group `gid` lets nobody but `owner` in: it is the owner's
/// primary group, named after them, with no other member listed (a
/// "user private group").
fn private_group(owner: u32, gid: u32) -> bool {
    let (Ok(Some(user)), Ok(Some(group))) = (
        User::from_uid(Uid::from_raw(owner)),
        Group::from_gid(Gid::from_raw(gid)),
    ) else {
        return false;
    };
    user.gid.as_raw() == gid
        && group.name == user.name
        && group.mem.iter().all(|member| *member == user.name)
}

fn check_owner(path: &Path, meta: &Metadata) -> Result<(), Unsafe> {
    let server = crate::sys::effective_uid();
    if meta.uid() == server || meta.uid() == 0 {
        Ok(())
    } else {
        Err(Unsafe::Owner {
            path: path.to_path_buf(),
            owner: meta.uid(),
            server,
        })
    }
}

/// Checks a folder (already resolved) and every ancestor of it.
fn check_folder_chain(folder: &Path) -> Result<(), Unsafe> {
    check_owned_and_closed(folder)?;
    for ancestor in folder.ancestors().skip(1) {
        let meta = metadata(ancestor)?;
        check_owner(ancestor, &meta)?;
        let mode = meta.mode() & 0o7777;
        let sticky = mode & 0o1000 != 0;
        if mode & 0o002 != 0 && !sticky {
            return Err(Unsafe::Writable {
                path: ancestor.to_path_buf(),
                mode,
                who: "every user",
            });
        }
    }
    Ok(())
}

/// Checks the private folder plugin copies are loaded from (and its
/// ancestors) by the same rules as the actions folder.
pub fn check_private_folder(folder: &Path) -> Result<(), Unsafe> {
    check_folder_chain(&canonical(folder)?)
}

/// The actions folder plugins are loaded from, and whether unsafe places
/// are refused or only warned about.
#[derive(Debug, Clone)]
pub struct FolderTrust {
    /// The folder, resolved.
    folder: PathBuf,
    /// Warn instead of refusing.
    pub allow_unsafe: bool,
}

impl FolderTrust {
    /// The rules for `folder` (which must exist).
    pub fn new(folder: &Path, allow_unsafe: bool) -> Result<FolderTrust, Unsafe> {
        Ok(FolderTrust {
            folder: canonical(folder)?,
            allow_unsafe,
        })
    }

    /// Checks the folder and its ancestors.
    pub fn check_folder(&self) -> Result<(), Unsafe> {
        check_folder_chain(&self.folder)
    }

    /// Checks a plugin file in the folder: the folder itself, the file
    /// (or, for a symbolic link, its target, which must lie inside the
    /// folder, and every folder between the two).
    pub fn check_file(&self, file: &Path) -> Result<(), Unsafe> {
        self.check_folder()?;
        let is_link = std::fs::symlink_metadata(file)
            .map_err(|e| Unsafe::Unreadable {
                path: file.to_path_buf(),
                reason: e.to_string(),
            })?
            .file_type()
            .is_symlink();
        if !is_link {
            return check_owned_and_closed(file);
        }
        let target = canonical(file)?;
        let Ok(inside) = target.strip_prefix(&self.folder) else {
            return Err(Unsafe::Outside {
                path: file.to_path_buf(),
                target,
                folder: self.folder.clone(),
            });
        };
        check_owned_and_closed(&target)?;
        // Folders between the target and the actions folder.
        let mut between = self.folder.clone();
        for part in inside.parent().into_iter().flat_map(Path::components) {
            between.push(part);
            check_owned_and_closed(&between)?;
        }
        Ok(())
    }

    /// Checks the file the server actually opened (`meta` from the open
    /// descriptor) by the same rules: if `path` was swapped after
    /// [`FolderTrust::check_file`], the bytes read are still vouched for.
    pub fn check_opened(&self, path: &Path, meta: &Metadata) -> Result<(), Unsafe> {
        check_meta(path, meta)
    }

    /// Applies the policy to a check's outcome: refused, or (when unsafe
    /// places are allowed) logged as a warning and accepted.
    pub fn enforce(&self, outcome: Result<(), Unsafe>) -> Result<(), Unsafe> {
        match outcome {
            Err(problem) if self.allow_unsafe => {
                tracing::warn!("loading anyway (allow_unsafe_plugin_folder = true): {problem}");
                Ok(())
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn chmod(path: &Path, mode: u32) {
        let set = fs::set_permissions(path, fs::Permissions::from_mode(mode));
        assert!(set.is_ok(), "chmod {}", path.display());
    }

    #[test]
    fn writable_files_folders_and_links_out_are_refused() {
        let root = tempfile_dir().unwrap_or_else(|e| panic!("a temporary folder: {e}"));
        let folder = root.join("actions");
        let outside = root.join("elsewhere.so");
        assert!(fs::create_dir(&folder).is_ok() && fs::write(&outside, b"x").is_ok());
        chmod(&folder, 0o755);
        let file = folder.join("libok.so");
        assert!(fs::write(&file, b"x").is_ok());
        chmod(&file, 0o644);
        let trust = FolderTrust::new(&folder, false);
        let Ok(trust) = trust else {
            panic!("{trust:?}");
        };
        assert_eq!(trust.check_file(&file), Ok(()));
        chmod(&file, 0o666);
        assert!(matches!(
            trust.check_file(&file),
            Err(Unsafe::Writable {
                who: "every user",
                ..
            })
        ));
        // Group 100 ("users" where it exists) is nobody's private group.
        assert!(std::os::unix::fs::chown(&file, None, Some(100)).is_ok());
        chmod(&file, 0o664);
        assert!(matches!(
            trust.check_file(&file),
            Err(Unsafe::Writable {
                who: "its group",
                ..
            })
        ));
        chmod(&file, 0o644);
        chmod(&folder, 0o777);
        assert!(matches!(
            trust.check_file(&file),
            Err(Unsafe::Writable { .. })
        ));
        chmod(&folder, 0o755);
        let link = folder.join("liblink.so");
        assert!(std::os::unix::fs::symlink(&outside, &link).is_ok());
        assert!(matches!(
            trust.check_file(&link),
            Err(Unsafe::Outside { .. })
        ));
        let inner = folder.join("libinner.so");
        assert!(std::os::unix::fs::symlink(&file, &inner).is_ok());
        assert_eq!(trust.check_file(&inner), Ok(()));
        assert!(fs::remove_dir_all(&root).is_ok());
    }

    /// A fresh private folder under the system's temporary folder.
    fn tempfile_dir() -> std::io::Result<PathBuf> {
        let dir = std::env::temp_dir().join(format!(
            "switchboard-trust-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir)?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
        Ok(dir)
    }

    #[test]
    fn a_user_private_group_may_write() {
        // root's group is root's private group where /etc/group lists no
        // other member for it (as on Debian and Ubuntu).
        let groups = fs::read_to_string("/etc/group").unwrap_or_default();
        let root_alone = groups
            .lines()
            .find(|l| l.starts_with("root:"))
            .is_some_and(|l| {
                l.rsplit(':')
                    .next()
                    .is_none_or(|m| m.is_empty() || m == "root")
            });
        assert_eq!(private_group(0, 0), root_alone);
        assert!(
            !private_group(0, 100),
            "group 100 is not root's primary group"
        );
    }
}
