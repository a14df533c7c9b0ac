//! sweep: image-classification experiment sweeps on candle, recorded in SQLite.
//!
//! The modules follow the data, and dependencies point one way:
//!
//! ```text
//! sweep file ──spec──▶ SweepSpec ─▶ PlannedRun (RunConfig + RunKey)
//!                                        │ store::submit
//!                                        ▼
//!                       SQLite queue (store) ◀── worker ──▶ train (candle)
//!                                        │          epochs, checkpoints
//!                                        ▼
//!                             report (results, Markdown, CSV, JSON)
//! ```
//!
//! * [`spec`]: TOML text → validated, expanded runs (pure).
//! * [`record`]: what training produces (epoch and checkpoint records, the sink
//!   the trainer reports them to); shared by `train`, `store` and `report`.
//! * [`store`]: the only module with SQL: queue, status machine, records.
//! * [`train`]: the only module with candle: data, models, optimisers, the epoch loop.
//! * [`worker`]: claims runs, runs the trainer on its own thread, records epochs.
//! * [`text`]: user text made safe for a terminal (control characters escaped).
//! * [`report`]: read-only views of the store rendered as tables and files.
//! * [`estimate`]: how long runs will take (history or a timed probe).
//! * [`artifacts`]: where checkpoint files are kept (the home, a folder, an S3 bucket).
//! * [`export`]: the same views in other tools' formats (TensorBoard, MLflow).
//! * [`memory`]: how much memory the process may still take (`MemAvailable`, cgroup limits).
//!
//! The command-line front end (`src/main.rs`, `src/cli.rs`, `src/commands/`) is a
//! thin layer over these. See ARCHITECTURE.md for the decisions behind them.
#![warn(missing_docs)]

pub mod artifacts;
pub mod clock;
pub mod env;
pub mod estimate;
pub mod export;
pub mod fetch;
pub mod memory;
pub mod process;
pub mod record;
pub mod report;
pub mod rng;
pub mod search;
pub mod spec;
pub mod store;
pub mod text;
pub mod train;
pub mod worker;
