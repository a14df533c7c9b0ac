//! A MATLAB MAT-file (SVHN's): parsed, and every array read as the SVHN reader reads it.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(arrays) = sweep::train::data::mat::read(data) {
        for a in &arrays {
            let _ = (a.is_numeric(), a.len(), a.as_u8(), a.to_f64());
        }
    }
});
