//! A structural check of an ELF shared object before it is opened: that it
//! is complete (every segment and the section-header table lie inside the
//! file) and built for this machine.
//!
//! `dlopen` happily maps a file whose tail is missing when the missing part
//! holds only debug info, and a half-written file whose code is cut off
//! crashes later. Only the fixed-offset fields of the ELF64 header and the
//! program headers are read, so a small hand-written reader suffices.

/// Why a file is not a complete ELF object for this machine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElfError {
    /// No ELF magic number.
    #[error("not an ELF file")]
    NotElf,
    /// 32-bit or big-endian.
    #[error("not a 64-bit little-endian ELF file")]
    WrongClass,
    /// Built for another processor.
    #[error("built for another architecture (ELF machine {found}, this server runs on {expected})")]
    WrongArchitecture {
        /// The file's `e_machine`.
        found: u16,
        /// This machine's.
        expected: u16,
    },
    /// Cut off: something the headers describe lies past the end.
    #[error("truncated: {what} ends at byte {end}, but the file has {len} bytes")]
    Truncated {
        /// What is cut off.
        what: &'static str,
        /// Where it should end.
        end: u64,
        /// The file's length.
        len: u64,
    },
}

/// `e_machine` of the machine this server was built for.
#[cfg(target_arch = "x86_64")]
const HOST_MACHINE: Option<u16> = Some(62);
#[cfg(target_arch = "aarch64")]
const HOST_MACHINE: Option<u16> = Some(183);
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const HOST_MACHINE: Option<u16> = None;

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    bytes
        .get(at..at + 2)
        .and_then(|b| b.try_into().ok())
        .map(u16::from_le_bytes)
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    bytes
        .get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
}

/// Checks that `bytes` hold a complete ELF64 object for this machine.
pub fn check_complete(bytes: &[u8]) -> Result<(), ElfError> {
    check(bytes.len() as u64, |at, size| {
        let at = usize::try_from(at).ok()?;
        bytes.get(at..at.checked_add(size)?).map(<[u8]>::to_vec)
    })
}

/// Checks that `file`, `len` bytes long, holds a complete ELF64 object for
/// this machine, reading only its headers.
pub fn check_complete_file(file: &std::fs::File, len: u64) -> Result<(), ElfError> {
    use std::os::unix::fs::FileExt;
    check(len, |at, size| {
        if at.checked_add(size as u64)? > len {
            return None;
        }
        let mut bytes = vec![0; size];
        file.read_exact_at(&mut bytes, at).ok().map(|()| bytes)
    })
}

/// The check itself, over a file of `len` bytes whose ranges `read_at`
/// gives (`None` past the end).
fn check(len: u64, read_at: impl Fn(u64, usize) -> Option<Vec<u8>>) -> Result<(), ElfError> {
    let head = read_at(0, len.min(64) as usize).unwrap_or_default();
    if head.get(..4) != Some(b"\x7fELF".as_slice()) {
        return Err(ElfError::NotElf);
    }
    if head.get(4..6) != Some([2u8, 1u8].as_slice()) {
        return Err(ElfError::WrongClass);
    }
    let truncated = |what, end| ElfError::Truncated { what, end, len };
    // The whole 64-byte header, not only the fields read below (which end
    // at byte 62): a shorter file is cut off (found by fuzzing).
    if head.len() < 64 {
        return Err(truncated("the ELF header", 64));
    }
    let header = |at| u64_at(&head, at).ok_or_else(|| truncated("the ELF header", 64));
    let header16 = |at| u16_at(&head, at).ok_or_else(|| truncated("the ELF header", 64));
    let machine = header16(0x12)?;
    if let Some(expected) = HOST_MACHINE
        && machine != expected
    {
        return Err(ElfError::WrongArchitecture {
            found: machine,
            expected,
        });
    }
    let (phoff, shoff) = (header(0x20)?, header(0x28)?);
    let (phentsize, phnum) = (u64::from(header16(0x36)?), u64::from(header16(0x38)?));
    let (shentsize, shnum) = (u64::from(header16(0x3A)?), u64::from(header16(0x3C)?));
    let within = |what, start: u64, size: u64| {
        let end = start.saturating_add(size);
        if end > len {
            Err(truncated(what, end))
        } else {
            Ok(())
        }
    };
    let table_size = phentsize.saturating_mul(phnum);
    within("the program-header table", phoff, table_size)?;
    within(
        "the section-header table",
        shoff,
        shentsize.saturating_mul(shnum),
    )?;
    let table = usize::try_from(table_size)
        .ok()
        .and_then(|size| read_at(phoff, size))
        .ok_or_else(|| truncated("the program-header table", phoff.saturating_add(table_size)))?;
    for i in 0..phnum {
        let at =
            usize::try_from(i * phentsize).map_err(|_| truncated("a program header", u64::MAX))?;
        let (offset, filesz) = (u64_at(&table, at + 0x08), u64_at(&table, at + 0x20));
        let (Some(offset), Some(filesz)) = (offset, filesz) else {
            return Err(truncated("a program header", phoff + (i + 1) * phentsize));
        };
        within("a loadable segment", offset, filesz)?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn this_test_binary_is_complete_and_its_prefixes_are_not() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(check_complete(&me), Ok(()));
        for cut in [me.len() / 2, me.len() - 1, 100, 10] {
            assert!(
                check_complete(&me[..cut]).is_err(),
                "a {cut}-byte prefix passed"
            );
        }
        assert_eq!(check_complete(b"#!/bin/sh\n"), Err(ElfError::NotElf));
    }

    #[test]
    fn a_file_shorter_than_the_elf_header_is_truncated() {
        // The fuzzer's find (runtime/fuzz, elf_check): 62 bytes whose
        // header fields up to e_shnum all read, with no program headers.
        let mut short = vec![0u8; 62];
        short[..6].copy_from_slice(b"\x7fELF\x02\x01");
        short[0x12..0x14].copy_from_slice(&HOST_MACHINE.unwrap_or(0).to_le_bytes());
        assert_eq!(
            check_complete(&short),
            Err(ElfError::Truncated {
                what: "the ELF header",
                end: 64,
                len: 62
            })
        );
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        for cut in [63, 62, 40, 5] {
            assert!(check_complete(&me[..cut]).is_err(), "{cut} bytes passed");
        }
    }

    #[test]
    fn a_file_is_checked_like_its_bytes() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let dir = std::env::temp_dir().join(format!("switchboard-elf-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for cut in [me.len(), me.len() / 2, me.len() - 1, 100, 10, 0] {
            let path = dir.join(format!("cut-{cut}"));
            std::fs::write(&path, &me[..cut]).unwrap();
            let file = std::fs::File::open(&path).unwrap();
            assert_eq!(
                check_complete_file(&file, cut as u64),
                check_complete(&me[..cut]),
                "a {cut}-byte prefix"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
