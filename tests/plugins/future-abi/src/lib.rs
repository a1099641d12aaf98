//! A plugin from the future: it exports the entry symbol of plugin ABI
//! version 2, which this server does not speak. The host must refuse it
//! with a message naming both versions, and never call it.

/// The ABI 2 entry symbol. Never called by an ABI 1 host.
///
/// # Safety
/// Not meant to be called.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn switchboard_plugin_v2(
    _host: *const std::ffi::c_void,
) -> *const std::ffi::c_void {
    std::ptr::null()
}
