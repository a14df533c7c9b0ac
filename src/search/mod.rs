//! Search beyond the grid, as pure decisions: what a `[[search]]` samples
//! ([`space`]), what TPE proposes next from finished trials ([`tpe`], Optuna's
//! algorithm and defaults), and whether ASHA lets a run go on past a rung
//! ([`asha`], Ray Tune's rule, with promotion of stopped runs).
//!
//! Nothing here touches the database or candle: `spec` parses the distributions
//! and expands random trials with [`space`]; the worker reads recorded epochs and
//! trials from the store, asks [`tpe::propose`] or [`asha::Asha::standing`], and acts
//! on the answer. So every decision can be replayed from what was recorded.

pub mod asha;
pub mod space;
pub mod tpe;
mod truncnorm;

pub use space::Distribution;
