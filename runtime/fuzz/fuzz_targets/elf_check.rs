//! Fuzzes the ELF completeness check run on every plugin file before it is
//! opened: `check_complete` (over bytes) never panics, agrees with
//! `check_complete_file` (over a file, reading only the headers), and what
//! it accepts is ELF64 little-endian whose header lies inside the input.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::io::Write;
use std::sync::LazyLock;
use switchboard::plugins::elf::{ElfError, check_complete, check_complete_file};

/// One scratch file per process, rewritten for each input.
static SCRATCH: LazyLock<std::path::PathBuf> = LazyLock::new(|| {
    std::env::temp_dir().join(format!("switchboard-fuzz-elf-{}", std::process::id()))
});

fuzz_target!(|data: &[u8]| {
    let verdict = check_complete(data);
    if verdict.is_ok() {
        assert!(data.len() >= 64, "a {}-byte file passed", data.len());
        assert_eq!(&data[..4], b"\x7fELF");
        assert_eq!(&data[4..6], [2, 1]);
    }
    if let Err(ElfError::Truncated { len, .. }) = &verdict {
        assert_eq!(*len, data.len() as u64);
    }
    let mut file = std::fs::File::create(&*SCRATCH).expect("a scratch file");
    file.write_all(data).expect("written");
    let file = std::fs::File::open(&*SCRATCH).expect("reopened");
    assert_eq!(
        check_complete_file(&file, data.len() as u64),
        verdict,
        "the file check and the bytes check disagree"
    );
});
