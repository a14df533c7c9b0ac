//! Checkpoint retention as pure decisions (as burn-train's
//! `CheckpointingStrategy`): which records to drop when a run ends, and which
//! files of a run's folder no record refers to. The worker carries them out
//! (the store drops records, `train::checkpoint` removes files).

use crate::record::CheckpointRecord;
use crate::spec::Keep;
use std::path::Path;

/// How a run's training ended, as far as its checkpoints are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// Every epoch trained, or stopped early: it will not resume.
    Complete,
    /// Interrupted or failed: it may resume from its latest checkpoint.
    Resumable,
}

/// What to do with a run's checkpoint records when it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Drop the latest checkpoint's record (its files go with the next clean-up).
    DropLatest,
}

/// The actions for a run that ended as `end` under the policy `keep`.
pub fn at_run_end(keep: Keep, end: RunEnd) -> Vec<Action> {
    match (keep, end) {
        (Keep::Best, RunEnd::Complete) => vec![Action::DropLatest],
        (Keep::Best | Keep::BestAndLatest, _) => Vec::new(),
    }
}

/// Whether a file in a run's folder is a checkpoint file (or an unfinished
/// one) that sweep wrote, and so may be removed; `config.json` is not.
pub fn is_checkpoint_file(name: &str) -> bool {
    name.ends_with(".safetensors") || name.ends_with(".tmp")
}

/// The file names in `present` (a run folder's listing) that are checkpoint
/// files no record refers to, sorted.
pub fn unreferenced(present: &[String], records: &[CheckpointRecord]) -> Vec<String> {
    let name = |p: &str| Path::new(p).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let referenced: Vec<String> = records.iter().flat_map(|c| [name(&c.path), name(&c.state_path)]).collect();
    let mut out: Vec<String> =
        present.iter().filter(|f| is_checkpoint_file(f) && !referenced.contains(f)).cloned().collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::CheckpointKind;

    fn record(kind: CheckpointKind, stem: &str) -> CheckpointRecord {
        CheckpointRecord {
            kind,
            epoch: 1,
            step: 0,
            path: format!("runs/abc/{stem}.safetensors"),
            sha256: String::new(),
            state_path: format!("runs/abc/{stem}.state.safetensors"),
            state_sha256: String::new(),
            metric: None,
        }
    }

    #[test]
    fn keep_best_drops_the_latest_only_once_the_run_is_complete() {
        assert_eq!(at_run_end(Keep::Best, RunEnd::Complete), vec![Action::DropLatest]);
        assert!(at_run_end(Keep::Best, RunEnd::Resumable).is_empty());
        assert!(at_run_end(Keep::BestAndLatest, RunEnd::Complete).is_empty());
        assert!(at_run_end(Keep::BestAndLatest, RunEnd::Resumable).is_empty());
    }

    #[test]
    fn only_checkpoint_files_without_a_record_are_unreferenced() {
        let present: Vec<String> = [
            "e0002-s00000.safetensors",
            "e0002-s00000.state.safetensors",
            "e0001-s00000.safetensors",
            "e0001-s00000.state.safetensors",
            "e0003-s00000.safetensors.tmp",
            "config.json",
            "notes.txt",
        ]
        .map(String::from)
        .to_vec();
        let records = [record(CheckpointKind::Latest, "e0002-s00000"), record(CheckpointKind::Best, "e0002-s00000")];
        assert_eq!(
            unreferenced(&present, &records),
            ["e0001-s00000.safetensors", "e0001-s00000.state.safetensors", "e0003-s00000.safetensors.tmp"]
        );
        // With no record at all, every checkpoint file goes, and nothing else.
        assert_eq!(unreferenced(&present, &[]).len(), 5);
    }
}
