//! A weights file (a torch.save zip or safetensors: pretrained weights, `sweep eval`), read from disk.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let path = DIR.get_or_init(|| tempfile::tempdir().unwrap()).path().join("weights.pth");
    std::fs::write(&path, data).unwrap();
    let _ = sweep::train::weights::read(&path);
});
