//! TensorBoard event files: `DIR/<run>/events.out.tfevents.<time>.sweep`.
//!
//! An event file is a sequence of TFRecords (length, masked CRC-32C of the
//! length, an `Event` protocol buffer, masked CRC-32C of it). The first event
//! names the file version; then the hparams plugin's session start (the run's
//! parameters), one event per epoch with its scalars (step = epoch), and the
//! session end (its status). TensorBoard's SCALARS tab shows the curves and
//! its HPARAMS tab the table of runs, parameters and final metrics.

use super::proto::Msg;
use super::{epoch_metrics, io, run_folder, start_time, Facts, Result, RunFacts, Written};
use crate::report::{Comparison, RunReport};
use crate::store::Status;
use std::io::Write;
use std::path::Path;

/// CRC-32C (Castagnoli), as TFRecord frames use it.
pub fn crc32c(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 == 1 { 0x82F6_3B78 ^ (c >> 1) } else { c >> 1 };
            }
            *slot = c;
        }
        t
    });
    !data.iter().fold(!0u32, |c, &b| table[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8))
}

fn masked(crc: u32) -> u32 {
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One TFRecord holding `data`.
pub fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked(crc32c(&len)).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked(crc32c(data)).to_le_bytes());
    out
}

// Field numbers of tensorflow/core/util/event.proto, framework/summary.proto,
// framework/tensor.proto and the hparams plugin's plugin_data.proto.
const EVENT_WALL_TIME: u32 = 1;
const EVENT_STEP: u32 = 2;
const EVENT_FILE_VERSION: u32 = 3;
const EVENT_SUMMARY: u32 = 5;
const SUMMARY_VALUE: u32 = 1;
const VALUE_TAG: u32 = 1;
const VALUE_SIMPLE: u32 = 2;
const VALUE_TENSOR: u32 = 8;
const VALUE_METADATA: u32 = 9;
const METADATA_PLUGIN_DATA: u32 = 1;
const PLUGIN_NAME: u32 = 1;
const PLUGIN_CONTENT: u32 = 2;
const HPARAMS_VERSION: u32 = 1;
const HPARAMS_SESSION_START: u32 = 3;
const HPARAMS_SESSION_END: u32 = 4;
const START_HPARAMS: u32 = 1;
const START_TIME: u32 = 5;
const END_STATUS: u32 = 1;
const END_TIME: u32 = 2;

fn event(wall_time: f64, step: i64) -> Msg {
    Msg::default().double(EVENT_WALL_TIME, wall_time).int(EVENT_STEP, step)
}

/// A `google.protobuf.Value` for a parameter's text: a number, a boolean or a string.
fn value(text: &str) -> Msg {
    match text {
        "true" | "false" => Msg::default().int(4, i64::from(text == "true")),
        _ => match text.parse::<f64>() {
            Ok(v) if v.is_finite() => Msg::default().double(2, v),
            _ => Msg::default().string(3, text),
        },
    }
}

/// An event carrying the hparams plugin's `content` under `tag`.
fn hparams_event(wall_time: f64, tag: &str, content: &Msg) -> Msg {
    let plugin = Msg::default().string(PLUGIN_NAME, "hparams").msg(PLUGIN_CONTENT, content);
    let metadata = Msg::default().msg(METADATA_PLUGIN_DATA, &plugin);
    // The plugin's NULL_TENSOR: DT_FLOAT, shape [0].
    let tensor = Msg::default().int(1, 1).msg(2, &Msg::default().msg(2, &Msg::default()));
    let v = Msg::default().string(VALUE_TAG, tag).msg(VALUE_METADATA, &metadata).msg(VALUE_TENSOR, &tensor);
    event(wall_time, 0).msg(EVENT_SUMMARY, &Msg::default().msg(SUMMARY_VALUE, &v))
}

/// The scalar tag of a metric: TensorBoard groups tags by what precedes `/`.
fn tag(metric: &str) -> String {
    match metric.split_once('_') {
        Some((split @ ("train" | "test" | "val"), what)) => format!("{split}/{what}"),
        _ if metric == "lr" => "lr".into(),
        _ => format!("speed/{metric}"),
    }
}

/// The events of one run.
pub fn run_events(r: &RunReport, facts: &RunFacts) -> Vec<Msg> {
    let times = &facts.times;
    let start = start_time(r, facts);
    let mut events = vec![event(start, 0).string(EVENT_FILE_VERSION, "brain.Event:2")];
    let mut hparams = Msg::default();
    for (k, v) in r.params.iter() {
        hparams = hparams.msg(START_HPARAMS, &Msg::default().string(1, k).msg(2, &value(v)));
    }
    // No group name: TensorBoard then groups by run folder, one row per run
    // (sessions sharing a group are averaged as repeats of one trial).
    let session = hparams.double(START_TIME, start);
    let content = Msg::default().int(HPARAMS_VERSION, 0).msg(HPARAMS_SESSION_START, &session);
    events.push(hparams_event(start, "_hparams_/session_start_info", &content));
    for (i, e) in r.epochs.iter().enumerate() {
        let t = times.get(i).copied().unwrap_or(start);
        let mut summary = Msg::default();
        for (name, v) in epoch_metrics(e) {
            let val = Msg::default().string(VALUE_TAG, &tag(name)).float(VALUE_SIMPLE, v as f32);
            summary = summary.msg(SUMMARY_VALUE, &val);
        }
        events.push(event(t, e.epoch).msg(EVENT_SUMMARY, &summary));
    }
    // tensorboard.plugins.hparams.api_pb2.Status.
    let status = match r.row.status {
        Status::Done => 1,
        Status::Failed | Status::Diverged => 2,
        Status::Running | Status::Queued => 3,
        Status::Interrupted | Status::Cancelled => 0,
    };
    let end = times.last().copied().unwrap_or(start);
    let end_info = Msg::default().int(END_STATUS, status).double(END_TIME, end);
    let content = Msg::default().int(HPARAMS_VERSION, 0).msg(HPARAMS_SESSION_END, &end_info);
    events.push(hparams_event(end, "_hparams_/session_end_info", &content));
    events
}

/// Writes every run with epochs under `dir`.
pub fn export(cmp: &Comparison, facts: &Facts, dir: &Path) -> Result<Written> {
    let mut written = Written::default();
    for r in super::exportable(cmp) {
        let run_dir = dir.join(run_folder(r));
        std::fs::create_dir_all(&run_dir).map_err(io(&run_dir))?;
        // An earlier export of this run is replaced, not added to.
        for old in std::fs::read_dir(&run_dir).map_err(io(&run_dir))?.filter_map(std::result::Result::ok) {
            if old.file_name().to_string_lossy().contains("tfevents") {
                std::fs::remove_file(old.path()).map_err(io(&old.path()))?;
            }
        }
        let f = facts.get(&r.row.id).cloned().unwrap_or_default();
        let path = run_dir.join(format!("events.out.tfevents.{}.sweep", start_time(r, &f) as u64));
        let mut bytes = Vec::new();
        for e in run_events(r, &f) {
            bytes.extend(record(&e.0));
        }
        let mut f = std::fs::File::create(&path).map_err(io(&path))?;
        f.write_all(&bytes).and_then(|()| f.sync_all()).map_err(io(&path))?;
        written.runs += 1;
        written.epochs += r.epochs.len();
        written.files += 1;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_and_the_tfrecord_mask() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
        let r = record(b"abc");
        assert_eq!(r.len(), 8 + 4 + 3 + 4);
        assert_eq!(&r[..8], &3u64.to_le_bytes());
        assert_eq!(u32::from_le_bytes(r[15..19].try_into().unwrap()), masked(crc32c(b"abc")));
    }

    #[test]
    fn metric_tags_group_by_split() {
        assert_eq!(tag("train_loss"), "train/loss");
        assert_eq!(tag("val_acc"), "val/acc");
        assert_eq!(tag("test_top5"), "test/top5");
        assert_eq!(tag("lr"), "lr");
        assert_eq!(tag("img_per_s"), "speed/img_per_s");
    }
}
