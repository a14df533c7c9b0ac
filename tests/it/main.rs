//! The one integration-test binary (each extra one links candle and sqlx again).
//!
//! * `backprop`: candle's backward pass as patched in `vendor/candle-core` (shared first gradients, views).
//! * `spec`: sweep files → runs: expansion, hashing, error locations.
//! * `store`: the queue and records through the library API, on SQLite and PostgreSQL (`pg`).
//! * `train`: the trainer on tiny generated data: determinism, resume, failures.
//! * `models`: the model zoo against torchvision fixtures; pretrained weights, heads, freezing.
//! * `fuzz`: the sweep-file parser against thousands of seeded mutations (bounded in time).
//! * `data`: datasets in every format, transforms against torchvision, the loader.
//! * `optim`: optimizers against torch.optim fixtures.
//! * `report`: results filters, sorting, grouping, `show`, every report format, the SQL views.
//! * `cli`: the `sweep` binary end to end, including kill -9 and Ctrl-C.
//! * `scale`: several workers, PostgreSQL through the binary, preemption, `sweep store copy`.
//! * `s3`: the artifact store on a local S3 server (moto): resume on another machine.
//! * `snapshots`: the output of plan, status, results, show and report, as insta snapshots.

mod backprop;
mod cli;
mod data;
mod export;
mod fuzz;
mod manage;
mod models;
mod optim;
mod pg;
mod report;
mod s3;
mod scale;
mod search;
mod snapshots;
mod spec;
mod store;
mod sweep_oracle;
mod train;

use std::path::{Path, PathBuf};

/// Writes a sweep file into `dir` and returns its path.
pub fn write_sweep(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A sweep file on a tiny generated dataset, with `extra` appended.
pub fn tiny_sweep(name: &str, train: usize, epochs: usize, extra: &str) -> String {
    format!(
        r#"
name = "{name}"
dataset = {{ name = "synthetic", train_size = {train}, test_size = 40 }}
metric = "test_acc"
seed = 1

[defaults]
model = "smallcnn"
batch_size = 16
epochs = {epochs}
augment = "light"
optimizer = {{ name = "sgd", lr = 0.05, momentum = 0.9, weight_decay = 5e-4 }}
schedule = {{ name = "multistep", milestones = [1], factors = [0.5] }}

[augment.light]
train = [{{ random_crop = {{ size = 32, padding = 2 }} }}, {{ hflip = {{}} }}]
test = []
{extra}
"#
    )
}
