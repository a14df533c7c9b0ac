//! The worker's side of search: it asks [`crate::search`] what to do and
//! carries it out. After a rung's epoch is recorded, ASHA decides whether the
//! run goes on and which stopped runs the new arrival promotes; when nothing
//! is queued, a TPE search that wants its next trial gets it proposed.

use super::log::RunLog;
use crate::record::{CheckpointRecord, Verdict};
use crate::rng::{stream, Rng};
use crate::search::{asha, tpe, Distribution};
use crate::spec::{self, SearchMethod, TrialRef};
use crate::store::{AshaContext, Lease, NewTrial, Store, StoreError};
use crate::text::printable;
use std::path::PathBuf;

/// ASHA after epoch `epoch` of a run of `epochs` was recorded: the verdict for
/// the trainer. Promotes the runs this arrival lifts into the top 1/η. A
/// failure to decide is logged and the run goes on.
pub(super) async fn after_epoch(
    store: &Store,
    ctx: &AshaContext,
    lease: &Lease,
    epoch: u64,
    epochs: u64,
    log: &mut RunLog,
    verbose: bool,
) -> Verdict {
    let rules = ctx.settings.asha();
    if !rules.is_rung(epoch, epochs) {
        return Verdict::Continue;
    }
    let decided = async {
        let arrivals = store.rung_arrivals(ctx, epoch).await?;
        let Some(standing) = rules.standing(&arrivals, lease.run_id) else {
            return Ok::<_, StoreError>(Verdict::Continue);
        };
        let stop = !standing.continues();
        store.set_rung(lease, epoch, stop).await?;
        for (run, s) in rules.promotions(&arrivals, &store.stopped_at(ctx, epoch).await?) {
            let note = asha::promote_note(epoch, &s);
            if store.promote(run, epoch, &note).await? {
                tracing::info!(run, epoch, "{note}");
                log.line(&format!("  ASHA: run {run} {note}"));
                if verbose {
                    eprintln!("  ASHA: run {run} {note}: queued to resume");
                }
            }
        }
        let line = format!(
            "ASHA rung at epoch {epoch}: rank {} of {}{}",
            standing.rank,
            standing.of,
            if stop { ", stopped" } else { ", goes on" }
        );
        tracing::info!(run = lease.run_id, "{line}");
        log.line(&format!("  {line}"));
        Ok(if stop { Verdict::Stop(asha::stop_note(epoch, &standing)) } else { Verdict::Continue })
    };
    match decided.await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(run = lease.run_id, "ASHA could not decide at epoch {epoch} ({e}): the run goes on");
            Verdict::Continue
        }
    }
}

/// A run about to resume from `latest`: when that is a rung where ASHA stops
/// it (now), the note to end it with.
pub(super) async fn stays_stopped(
    store: &Store,
    ctx: &AshaContext,
    lease: &Lease,
    latest: &CheckpointRecord,
    epochs: u64,
) -> Result<Option<String>, StoreError> {
    let epoch = latest.epoch as u64;
    if latest.step != 0 || !ctx.settings.asha().is_rung(epoch, epochs) {
        return Ok(None);
    }
    let arrivals = store.rung_arrivals(ctx, epoch).await?;
    let Some(s) = ctx.settings.asha().standing(&arrivals, lease.run_id) else { return Ok(None) };
    if s.continues() {
        return Ok(None);
    }
    store.set_rung(lease, epoch, true).await?;
    Ok(Some(asha::stop_note(epoch, &s)))
}

/// Proposes the next trial of the first TPE search that wants one. True when
/// a run was queued.
pub(super) async fn propose_next(store: &Store, verbose: bool) -> Result<bool, StoreError> {
    for sweep in store.search_sweeps().await? {
        if !spec::has_tpe_search(&sweep.source_toml) {
            continue; // random searches only: nothing to propose
        }
        let path = PathBuf::from(&sweep.source_path);
        let spec = match spec::parse(&path, &sweep.source_toml) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(sweep = sweep.id, "the stored sweep file no longer expands ({e}): no proposals");
                continue;
            }
        };
        for search in spec.searches.iter().filter(|s| s.method == SearchMethod::Tpe) {
            let space: Vec<Distribution> = search.params.iter().map(|(_, d)| d.clone()).collect();
            let settings = tpe::Settings { n_startup_trials: search.startup as usize, ..tpe::Settings::default() };
            let (text, search_ref) = (&sweep.source_toml, search);
            let made = store
                .propose(sweep.id, search.index, search.count, |number, trials| {
                    propose_one(&path, text, search_ref, &space, &settings, number, trials)
                })
                .await?;
            if let Some((new, outcome)) = made {
                let line = format!("proposed {} ({}; {outcome:?})", printable(&new.run.name), new.method);
                tracing::info!(sweep = sweep.id, "{line}");
                if verbose {
                    eprintln!("{line}");
                }
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// One proposal: TPE's (or random, before enough trials finished) values,
/// expanded into a run by the sweep file itself. Draws again (another
/// stream) when `exclude` refuses the values.
fn propose_one(
    path: &std::path::Path,
    text: &str,
    search: &spec::Search,
    space: &[Distribution],
    settings: &tpe::Settings,
    number: u64,
    trials: &[tpe::Trial],
) -> Option<NewTrial> {
    for attempt in 0..100u64 {
        let mut rng = Rng::derive(&[stream::TPE, search.seed, search.index as u64, number, attempt]);
        let p = tpe::propose(space, trials, &mut rng, settings);
        let options = spec::Options {
            trial: Some(TrialRef { search: search.index, number, params: p.params.clone() }),
            ..spec::Options::default()
        };
        let Ok(spec) = spec::parse_with(path, text, &options) else { return None };
        let Some(run) = spec.proposed else { continue };
        let (method, based_on) = match p.method {
            tpe::Method::Random => ("random", None),
            tpe::Method::Tpe => {
                let one_based = |v: &[u64]| v.iter().map(|n| n + 1).collect::<Vec<_>>();
                let json = serde_json::json!({ "below": one_based(&p.below), "above": one_based(&p.above) });
                ("tpe", Some(json.to_string()))
            }
        };
        return Some(NewTrial { run, based_on, method });
    }
    None
}
