//! A Python pickle (CIFAR's batches): parsed, and its values read as CIFAR's reader reads them.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = sweep::train::data::pickle::load(data) {
        for key in ["data", "labels", "fine_labels", "coarse_labels", "filenames", "batch_label"] {
            if let Some(x) = v.get(key) {
                let _ = (x.as_bytes(), x.as_string(), x.as_ints(), x.as_array());
            }
        }
        let _ = (v.as_bytes(), v.as_string(), v.as_ints(), v.as_array());
    }
});
