//! Loader references to plugin images that are loaded already
//! (`dlopen` with `RTLD_NOLOAD`: nothing is loaded and no code runs):
//! to keep an image mapped while a thread may still run its code, and to
//! let glibc finish unloading a retired one.

use std::path::Path;

/// Lets the dynamic loader unload `image`, a closed generation it kept
/// mapped, if nothing pins it any more. glibc keeps an image whose
/// thread-local destructors were pending at `dlclose`, and when the last
/// thread holding them exits it only marks the image free: the unmap
/// happens at the next `dlclose` of anything. This is that `dlclose`: it
/// reopens the image without loading anything (`RTLD_NOLOAD`; no code
/// runs) and closes it again. An image that is not loaded is left alone.
/// If the image is unloaded, its destructors run on the calling thread.
pub fn collect_if_unpinned(image: &Path) {
    // SAFETY: RTLD_NOLOAD never maps or initialises a library; it only
    // hands back (and counts) one that is loaded already, whose
    // constructors ran long ago. Closing that handle unloads the image
    // only if glibc finds nothing pinning it, running its destructors as
    // the deferred unload would have; call it off the table's lock.
    let reopened = unsafe {
        libloading::os::unix::Library::open(Some(image), libc::RTLD_NOLOAD | libc::RTLD_LAZY)
    };
    if let Ok(library) = reopened
        && let Err(e) = library.close()
    {
        tracing::debug!(image = %image.display(), "closing a reopened retired image: {e}");
    }
}

/// A loader reference to `image`, a library that is loaded now, so it
/// stays mapped until the reference is dropped even if the host closes its
/// own handle; `None` if it is not loaded. Nothing is loaded or run.
pub(crate) fn hold_image(image: &Path) -> Option<libloading::os::unix::Library> {
    // SAFETY: RTLD_NOLOAD never maps or initialises a library; it hands
    // back (and counts) one that is loaded already, whose constructors ran
    // long ago. Dropping the handle is a `dlclose`, which unloads the image
    // only when nothing else holds it.
    unsafe {
        libloading::os::unix::Library::open(Some(image), libc::RTLD_NOLOAD | libc::RTLD_LAZY).ok()
    }
}
