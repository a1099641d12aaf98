//! A shared library that is not a Switchboard plugin: it exports a C
//! function, but no `switchboard_plugin_v*` symbol.

/// Adds two numbers; here only so the library exports something.
#[unsafe(no_mangle)]
pub extern "C" fn not_a_plugin_add(a: u32, b: u32) -> u32 {
    a.wrapping_add(b)
}
