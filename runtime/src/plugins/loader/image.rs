//! [`Loader`]: how a plugin file's code comes into the process (checked,
//! opened, its entry run), and [`OpenImage`], the handle that closes it.
//! [`Dlopen`] is the real one; the reload table's unit tests put a fake in
//! its place, so reloads are tested without native code.

use super::LoadError;
use crate::plugins::elf::ElfError;
use crate::plugins::shadow::Copied;
use action_api::abi::PluginDescriptor;
use action_api::abi::{ABI_VERSION, ENTRY_SYMBOL, ENTRY_SYMBOL_PREFIX, EntryFn, HostTable};
use libloading::Library;
use std::mem::ManuallyDrop;
use std::path::Path;

/// An opened image, until it is closed.
pub trait OpenImage: Send + Sync {
    /// Closes it (`dlclose`): only once nothing can run its code.
    fn close(self: Box<Self>) -> Result<(), String>;
}

/// What opening an image gave: the image, and the descriptor its entry
/// returned (valid as long as the image is mapped).
pub struct Opened {
    /// The image.
    pub image: Box<dyn OpenImage>,
    /// The plugin's descriptor, never null.
    pub descriptor: *const PluginDescriptor,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field("descriptor", &self.descriptor)
            .finish_non_exhaustive()
    }
}

/// How plugin files' code comes into the process.
pub trait Loader: Send + Sync + std::fmt::Debug {
    /// Checks that `copy` is a loadable library, before any of its code
    /// runs.
    fn check(&self, copy: &Copied) -> Result<(), ElfError>;

    /// Opens `copy` (a private copy nobody else writes) and runs its entry
    /// with `host`. After the entry ran, a failure leaves the image mapped
    /// (its code may have started threads).
    fn open(&self, copy: &Path, host: &'static HostTable) -> Result<Opened, LoadError>;
}

/// The dynamic loader (`dlopen`, through libloading).
#[derive(Debug, Clone, Copy, Default)]
pub struct Dlopen;

/// A library `dlopen` opened. `ManuallyDrop`: never `dlclose`d implicitly,
/// only by [`OpenImage::close`], deliberately.
struct DlopenImage(ManuallyDrop<Library>);

impl OpenImage for DlopenImage {
    fn close(self: Box<Self>) -> Result<(), String> {
        ManuallyDrop::into_inner(self.0)
            .close()
            .map_err(|e| describe_dlerror(&e))
    }
}

impl Loader for Dlopen {
    fn check(&self, copy: &Copied) -> Result<(), ElfError> {
        copy.check_elf()
    }

    fn open(&self, copy: &Path, host: &'static HostTable) -> Result<Opened, LoadError> {
        // SAFETY: opening a library runs its constructors. The file is a
        // private copy nobody else writes, which a child process opened
        // first (the preflight), and plugins are code the operator chose
        // to run. libloading opens with RTLD_LAZY | RTLD_LOCAL: never
        // RTLD_GLOBAL, so a generation's calls to its own exported
        // functions never bind to an older generation's.
        let library = unsafe { Library::new(copy) }
            .map_err(|e| LoadError::NotALibrary(describe_dlerror(&e)))?;
        let entry = match find_entry(&library) {
            Ok(entry) => entry,
            Err(e) => {
                // Nothing of it ran but its constructors: safe to close.
                let _ = library.close();
                return Err(e);
            }
        };
        // From here its code runs (the entry may start threads), so a
        // failure below leaves it mapped rather than `dlclose`d.
        let library = ManuallyDrop::new(library);
        // SAFETY: `entry` has the ABI 1 entry signature (it was found under
        // the ABI 1 name); the host table lives for ever.
        let descriptor = unsafe { entry(host) };
        if descriptor.is_null() {
            return Err(LoadError::InitFailed);
        }
        Ok(Opened {
            image: Box::new(DlopenImage(library)),
            descriptor,
        })
    }
}

/// libloading's own text is just "dlopen failed"; the loader's reason is
/// in the error's source. Names of the shadow copy are replaced by nothing
/// useful to a person, so they are kept out.
fn describe_dlerror(error: &libloading::Error) -> String {
    match std::error::Error::source(error) {
        Some(source) => {
            let text = source.to_string();
            // "…/libx.123.4.so: invalid ELF header" -> "invalid ELF header"
            text.rsplit_once(": ")
                .map_or(text.clone(), |(_, reason)| reason.to_owned())
        }
        None => error.to_string(),
    }
}

fn find_entry(library: &Library) -> Result<EntryFn, LoadError> {
    // SAFETY: the symbol, if present, is the ABI 1 entry function, whose
    // type is `EntryFn` by contract of the name.
    if let Ok(entry) = unsafe { library.get::<EntryFn>(ENTRY_SYMBOL) } {
        return Ok(*entry);
    }
    for found in (1..=32u32).filter(|v| *v != ABI_VERSION) {
        let name = format!("{ENTRY_SYMBOL_PREFIX}{found}\0");
        // SAFETY: only the symbol's presence is checked; it is never called.
        if unsafe { library.get::<*const ()>(name.as_bytes()) }.is_ok() {
            return Err(LoadError::AbiMismatch {
                found,
                expected: ABI_VERSION,
            });
        }
    }
    Err(LoadError::NotAPlugin)
}
