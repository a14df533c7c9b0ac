//! A dataset's fingerprint: the SHA-256 of what a run trains and tests on,
//! so that a run resumed after its data changed (images added, removed,
//! edited or moved to another class folder) is caught rather than trained on
//! two datasets.
//!
//! It covers, for each split in order, every image's label, size and content
//! (for folders and archives the SHA-256 of its file, which any machine reads
//! alike, rather than decoded pixels, which a JPEG decoder's SIMD path may
//! round differently; for CIFAR and generated data the pixels themselves),
//! and the class names. File names and paths are not part of it: the same
//! images in a folder moved elsewhere are the same data.

use super::{Dataset, Split};
use sha2::{Digest, Sha256};

impl Dataset {
    /// The fingerprint, as 64 hexadecimal digits.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"sweep dataset v1");
        for (tag, split) in [(b"train", &self.train), (b"test\0", &self.test)] {
            h.update(tag);
            split_into(&mut h, split);
        }
        // Only where there is one, so that the fingerprints of data without it stay as they were.
        if let Some(val) = &self.val {
            h.update(b"val\0\0");
            split_into(&mut h, val);
        }
        h.update((self.classes.len() as u64).to_le_bytes());
        for c in &self.classes {
            h.update((c.len() as u64).to_le_bytes());
            h.update(c.as_bytes());
        }
        format!("{:x}", h.finalize())
    }
}

fn split_into(h: &mut Sha256, split: &Split) {
    h.update((split.len() as u64).to_le_bytes());
    for i in 0..split.len() {
        let (height, width) = split.size(i);
        h.update(split.labels[i].to_le_bytes());
        h.update((height as u32).to_le_bytes());
        h.update((width as u32).to_le_bytes());
        match split.digests.get(i) {
            Some(d) => h.update(d),
            None => h.update(split.image(i)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::data::synthetic;

    fn tiny() -> Dataset {
        let mut train = Split::default();
        train.push(&[1; 12], 2, 2, 0, Some(("a/0.png".into(), [1; 32])));
        train.push(&[2; 12], 2, 2, 1, Some(("b/0.png".into(), [2; 32])));
        let mut test = Split::default();
        test.push(&[3; 12], 2, 2, 1, Some(("b/1.png".into(), [3; 32])));
        Dataset { train, test, val: None, classes: vec!["a".into(), "b".into()], skipped: Vec::new() }
    }

    #[test]
    fn the_same_data_has_the_same_fingerprint_and_any_change_another() {
        let base = tiny();
        let fp = base.fingerprint();
        assert_eq!(fp.len(), 64);
        assert_eq!(tiny().fingerprint(), fp);
        // The same images under other paths (the folder moved).
        let mut moved = tiny();
        moved.train.files = vec!["/elsewhere/a/0.png".into(), "/elsewhere/b/0.png".into()];
        assert_eq!(moved.fingerprint(), fp);

        let mut edited = tiny();
        edited.train.digests[1] = [9; 32];
        let mut relabelled = tiny();
        relabelled.train.labels[0] = 1;
        let mut added = tiny();
        added.train.push(&[4; 12], 2, 2, 0, Some(("a/1.png".into(), [4; 32])));
        let mut removed = tiny();
        removed.train.truncate(1);
        let mut swapped = tiny(); // an image moved from test to train
        swapped.train.push(&[3; 12], 2, 2, 1, Some(("b/1.png".into(), [3; 32])));
        swapped.test = Split::default();
        let mut renamed = tiny();
        renamed.classes[1] = "c".into();
        let mut fps: Vec<String> =
            [edited, relabelled, added, removed, swapped, renamed].iter().map(Dataset::fingerprint).collect();
        fps.push(fp);
        let n = fps.len();
        fps.sort();
        fps.dedup();
        assert_eq!(fps.len(), n, "every change gives another fingerprint");
    }

    #[test]
    fn generated_data_is_fingerprinted_by_its_pixels() {
        let a = synthetic(40, 10, 0);
        assert_eq!(a.fingerprint(), synthetic(40, 10, 0).fingerprint());
        assert_ne!(a.fingerprint(), synthetic(40, 10, 1).fingerprint());
        assert_ne!(a.fingerprint(), synthetic(41, 10, 0).fingerprint());
    }
}
