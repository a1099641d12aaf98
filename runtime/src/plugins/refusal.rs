//! Why a plugin file was not loaded: a [`RefusalKind`] a program can act
//! on (shown on `/status` beside the sentence for people), and the
//! `Refusal` the reload table keeps, which also says when the file is
//! worth another try.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// What kind of refusal: machine-readable, stable names on `/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalKind {
    /// Not a regular file (a folder, a device).
    NotARegularFile,
    /// It could not be read or copied (I/O).
    Io,
    /// Someone other than the server's user could have put it there.
    UnsafePlace,
    /// Not a complete ELF library for this machine (maybe still being
    /// written).
    NotALibrary,
    /// A library without the Switchboard entry symbol.
    NotAPlugin,
    /// Built for another plugin ABI version.
    AbiMismatch,
    /// Its entry function failed.
    InitFailed,
    /// Its descriptor is malformed.
    BadDescriptor,
    /// Its constructors or entry crashed the preflight process.
    PreflightCrashed,
    /// Its constructors or entry hung in the preflight process.
    PreflightHung,
    /// The preflight process could not run.
    PreflightFailed,
    /// Too many earlier generations of the file are still retained.
    Busy,
    /// It claims an action path another plugin serves.
    PathConflict,
    /// The dynamic loader handed back an image already loaded.
    StaleImage,
    /// Its state restore refused its predecessor's state.
    HandoffRefused,
}

/// A file in the actions folder that was not loaded, and why.
#[derive(Debug, Clone, Serialize)]
pub struct RefusedFile {
    /// The file.
    pub file: PathBuf,
    /// What kind of refusal, for programs.
    pub kind: RefusalKind,
    /// Why, in a sentence, for people.
    pub reason: String,
}

/// Why a file's last content was refused, and when to try it again.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub(crate) kind: RefusalKind,
    /// The content's hash when the refusal is about the content itself:
    /// the same content is not tried again. `None` when the cause lies
    /// elsewhere (another file, the machine): the next write retries.
    pub(crate) hash: Option<String>,
    pub(crate) reason: String,
    /// Tried again whenever another file changes or a generation goes (a
    /// path conflict, busy).
    pub(crate) retry_with_others: bool,
}

impl Refusal {
    /// About this content: not tried again until the content changes.
    pub(crate) fn content(kind: RefusalKind, hash: String, reason: String) -> Refusal {
        Refusal {
            kind,
            hash: Some(hash),
            reason,
            retry_with_others: false,
        }
    }

    /// Caused by the machine (I/O, a killed or hung preflight): tried
    /// again when the file is written again, whatever its content.
    pub(crate) fn transient(kind: RefusalKind, reason: String) -> Refusal {
        Refusal {
            kind,
            hash: None,
            reason: format!("{reason}; write the file again to retry"),
            retry_with_others: false,
        }
    }

    /// The file or its folder could be written by someone other than the
    /// server's user: tried again when the file changes (a `chmod` or
    /// `chown` counts) or anything in the folder does.
    pub(crate) fn unsafe_place(reason: String) -> Refusal {
        Refusal {
            kind: RefusalKind::UnsafePlace,
            hash: None,
            reason: format!(
                "refused: {reason}; the file is tried again when it changes (chmod and chown count)"
            ),
            retry_with_others: false,
        }
    }

    /// Caused by another file or the generations still retained: tried
    /// again by itself when those change.
    pub(crate) fn waiting(kind: RefusalKind, reason: String) -> Refusal {
        Refusal {
            kind,
            hash: None,
            reason,
            retry_with_others: true,
        }
    }
}
