//! An image folder given as an archive (.tar or .tar.gz: ImageFolder's
//! train/ and test/ trees of class folders), loaded whole.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use sweep::train::data::folder;

static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let dir = DIR.get_or_init(|| tempfile::tempdir().unwrap()).path();
    // gzip's magic decides the name, as a user's file would be named.
    let name = if data.starts_with(&[0x1f, 0x8b]) { "images.tar.gz" } else { "images.tar" };
    let path = dir.join(name);
    std::fs::write(&path, data).unwrap();
    let options = folder::FolderOptions { skip_unreadable: data.len() % 2 == 0, ..folder::FolderOptions::default() };
    let _ = folder::load_within(&path, &options, Some(64 << 20));
    let _ = std::fs::remove_file(&path);
});
