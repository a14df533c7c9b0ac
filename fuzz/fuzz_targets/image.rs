//! One image file of an image folder (PNG, JPEG, BMP, PNM, TIFF, WebP), decoded to RGB CHW.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((chw, h, w)) = sweep::train::data::folder::decode(data) {
        assert_eq!(chw.len(), 3 * h * w);
    }
});
