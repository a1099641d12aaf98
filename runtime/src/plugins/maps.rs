//! Whether a library image is really mapped: `/proc/self/maps` is the
//! truth, whatever `dlclose` returned (glibc keeps an image mapped while a
//! live thread holds thread-local destructors from it, or while a thread
//! it started runs).

use std::path::Path;

/// Whether any mapping of this process comes from `file` (also after the
/// file was deleted, which the kernel shows as `<path> (deleted)`).
/// `None` where `/proc/self/maps` cannot be read (not Linux).
pub fn is_mapped(file: &Path) -> Option<bool> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let wanted = file.to_str()?;
    Some(maps.lines().any(|line| {
        // address perms offset dev inode pathname
        let path = line.splitn(6, ' ').nth(5).map(str::trim_start);
        path.is_some_and(|p| p == wanted || p.strip_suffix(" (deleted)") == Some(wanted))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_running_executable_is_mapped_and_a_made_up_path_is_not() {
        let exe = std::env::current_exe()
            .ok()
            .and_then(|p| p.canonicalize().ok());
        if let Some(exe) = exe {
            assert_eq!(is_mapped(&exe), Some(true));
        }
        assert_eq!(
            is_mapped(Path::new("/nonexistent/libnothing.so")),
            Some(false)
        );
    }
}
