//! Whether a library image is really mapped: `/proc/self/maps` is the
//! truth, whatever `dlclose` returned (glibc keeps an image mapped while a
//! live thread holds thread-local destructors from it, or while a thread
//! it started runs).

use std::ops::Range;
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

/// The address ranges mapped from `file` (see [`is_mapped`] for the
/// deleted case); `None` where `/proc/self/maps` cannot be read.
pub fn ranges_of(file: &Path) -> Option<Vec<Range<usize>>> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let wanted = file.to_str()?;
    Some(
        maps.lines()
            .filter(|line| {
                let path = line.splitn(6, ' ').nth(5).map(str::trim_start);
                path.is_some_and(|p| p == wanted || p.strip_suffix(" (deleted)") == Some(wanted))
            })
            .filter_map(|line| {
                let (start, end) = line.split(' ').next()?.split_once('-')?;
                let start = usize::from_str_radix(start, 16).ok()?;
                let end = usize::from_str_radix(end, 16).ok()?;
                (start < end).then_some(start..end)
            })
            .collect(),
    )
}

/// Maps each of `ranges` (which must be unmapped) as anonymous memory
/// with no access and no backing: the addresses are never handed out
/// again, and any access faults. Fails on the first range the kernel
/// will not place exactly there (something else took it meanwhile).
pub fn reserve_no_access(ranges: &[Range<usize>]) -> Result<(), String> {
    for range in ranges {
        let len = range.end - range.start;
        // SAFETY: a fresh anonymous mapping at a fixed address that the
        // kernel refuses (MAP_FIXED_NOREPLACE) if anything is mapped
        // there; no existing mapping is touched.
        let placed = unsafe {
            libc::mmap(
                range.start as *mut libc::c_void,
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE
                    | libc::MAP_ANONYMOUS
                    | libc::MAP_NORESERVE
                    | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        if placed == libc::MAP_FAILED {
            return Err(format!(
                "{:#x}-{:#x}: {}",
                range.start,
                range.end,
                std::io::Error::last_os_error()
            ));
        }
        if placed as usize != range.start {
            // A kernel older than 4.17 takes the address as a hint only.
            // SAFETY: the mapping just made, nothing else refers to it.
            unsafe { libc::munmap(placed, len) };
            return Err(format!(
                "{:#x}-{:#x}: the kernel placed it elsewhere",
                range.start, range.end
            ));
        }
    }
    Ok(())
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

    #[test]
    fn a_reserved_range_is_held_with_no_access_and_cannot_be_taken_twice() {
        let exe = std::env::current_exe()
            .ok()
            .and_then(|p| p.canonicalize().ok());
        if let Some(exe) = exe {
            assert!(!ranges_of(&exe).unwrap_or_default().is_empty());
        }
        let len = 4 * 4096;
        // A hole: mapped, then unmapped. Another test's thread may take it
        // in between, so a few are tried.
        let reserved = (0..5).find_map(|_| {
            // SAFETY: a fresh anonymous mapping, unmapped again at once.
            let hole = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            assert_ne!(hole, libc::MAP_FAILED);
            // SAFETY: the mapping made above.
            unsafe { libc::munmap(hole, len) };
            let range = hole as usize..hole as usize + len;
            reserve_no_access(std::slice::from_ref(&range))
                .is_ok()
                .then_some(range)
        });
        let Some(range) = reserved else {
            panic!("no hole could be reserved in 5 tries");
        };
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
        // (The kernel may merge it with a neighbour of the same kind.)
        let covered = maps.lines().any(|line| {
            let mut fields = line.split(' ');
            let (Some(span), Some(perms)) = (fields.next(), fields.next()) else {
                return false;
            };
            let Some((start, end)) = span.split_once('-') else {
                return false;
            };
            let (start, end) = (
                usize::from_str_radix(start, 16).unwrap_or(usize::MAX),
                usize::from_str_radix(end, 16).unwrap_or(0),
            );
            perms == "---p" && start <= range.start && range.end <= end
        });
        assert!(covered, "{range:x?} is not reserved ---p in\n{maps}");
        assert!(reserve_no_access(&[range]).is_err(), "reserved twice");
    }
}
