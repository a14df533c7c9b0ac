//! MNIST: the first byte picks which of the four IDX files (or its gzip) the
//! rest replaces in an otherwise valid copy; the whole dataset is then loaded.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use sweep::train::data::{cifar::Cache, mnist};

struct Setup {
    dir: tempfile::TempDir,
    files: Vec<(&'static str, Vec<u8>)>,
}

fn idx(dims: &[u32], body: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0, 8, dims.len() as u8];
    b.extend(dims.iter().flat_map(|d| d.to_be_bytes()));
    b.extend_from_slice(body);
    b
}

static SETUP: OnceLock<Setup> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let setup = SETUP.get_or_init(|| {
        let pixels: Vec<u8> = (0..3 * 28 * 28).map(|i| (i % 251) as u8).collect();
        let bodies =
            [idx(&[3, 28, 28], &pixels), idx(&[3], &[5, 0, 4]), idx(&[1, 28, 28], &pixels[..784]), idx(&[1], &[7])];
        let files = mnist::MNIST.files.iter().map(|(f, _)| *f).zip(bodies).collect();
        Setup { dir: tempfile::tempdir().unwrap(), files }
    });
    let Some((&which, rest)) = data.split_first() else { return };
    let dir = setup.dir.path().join("mnist");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let which = usize::from(which) % (2 * setup.files.len());
    for (i, (name, body)) in setup.files.iter().enumerate() {
        if i == which % setup.files.len() {
            // An odd pick writes the mutant as the gzipped file MNIST's mirrors serve.
            let name = if which >= setup.files.len() { format!("{name}.gz") } else { (*name).to_owned() };
            std::fs::write(dir.join(name), rest).unwrap();
        } else {
            std::fs::write(dir.join(name), body).unwrap();
        }
    }
    let cache = Cache { dir: setup.dir.path().join("cache"), base_url: "http://127.0.0.1:9".into() };
    let _ = mnist::load(&mnist::MNIST, Some(&dir), &cache, false);
});
