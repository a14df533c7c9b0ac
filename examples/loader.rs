//! Loader throughput (bench/loader.sh): decodes an image folder or archive
//! once, then times batches of the report's heavy augmentation with and
//! without the resize to 224, on the host threads and (for the resize) as
//! tensor ops; prints JSON lines.
//!
//!     cargo run --release --example loader -- PATH [threads] [batches]

use candle_core::Device;
use std::time::Instant;
use sweep::spec::Transform;
use sweep::train::data::folder;
use sweep::train::loader::{self, Loader, Pipeline};
use sweep::train::rng::{stream, Rng};

fn transforms(resize: bool) -> Vec<Transform> {
    let text = format!(
        r"t = [
  {{ random_crop = {{ size = 32, padding = 4 }} }},
  {{ hflip = {{ p = 0.5 }} }},
  {{ rotation = {{ degrees = 10 }} }},
  {{ affine = {{ degrees = 0, shear = 10, scale = [0.8, 1.2] }} }},
  {{ color_jitter = {{ brightness = 0.2, contrast = 0.2, saturation = 0.2 }} }},
  {}
  {{ normalize = {{ mean = [0.4914, 0.4824, 0.4467], std = [0.2471, 0.2436, 0.2616] }} }},
]",
        if resize { "{ resize = { size = 224 } }," } else { "" }
    );
    #[derive(serde::Deserialize)]
    struct T {
        t: Vec<Transform>,
    }
    toml::from_str::<T>(&text).expect("valid transforms").t
}

fn main() -> anyhow::Result<()> {
    sweep::process::tune_for_training();
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).ok_or_else(|| anyhow::anyhow!("usage: loader PATH [threads] [batches]"))?;
    let threads: usize = args.get(2).map_or(Ok(2), |s| s.parse())?;
    let n_batches: usize = args.get(3).map_or(Ok(20), |s| s.parse())?;
    let bs = 128;

    let t = Instant::now();
    let ds = folder::load(std::path::Path::new(path), &folder::FolderOptions::default())?;
    let secs = t.elapsed().as_secs_f64();
    let n = ds.train.len() + ds.test.len();
    println!(r#"{{"what": "decode", "images": {n}, "seconds": {secs:.2}, "images_per_sec": {:.0}}}"#, n as f64 / secs);

    let mut order: Vec<usize> = (0..ds.train.len()).collect();
    Rng::derive(&[stream::SHUFFLE, 0, 0]).shuffle(&mut order);
    let batches: Vec<&[usize]> = loader::batches(&order, bs, true).into_iter().take(n_batches).collect();
    let cases = [
        ("heavy+resize224+normalize, host threads", Pipeline::host_only(&transforms(true))),
        (
            "heavy+resize224+normalize, resize/normalize as tensor ops",
            Pipeline::device_tail(&transforms(true), &ds.train),
        ),
        ("heavy+normalize at 32x32, host threads", Pipeline::host_only(&transforms(false))),
    ];
    for (what, pipe) in &cases {
        let t = Instant::now();
        let mut images = 0;
        std::thread::scope(|s| -> anyhow::Result<()> {
            let mut l = Loader::start(s, pipe, &ds.train, batches.clone(), 0, 1, threads, 2);
            while let Some(b) = l.next_batch() {
                let (x, _) = pipe.to_tensors(&b, &Device::Cpu)?;
                images += x.dim(0)?;
            }
            Ok(())
        })?;
        let secs = t.elapsed().as_secs_f64();
        println!(
            r#"{{"what": "{what}", "threads": {threads}, "batch": {bs}, "images": {images}, "seconds": {secs:.2}, "images_per_sec": {:.0}}}"#,
            images as f64 / secs
        );
    }
    Ok(())
}
