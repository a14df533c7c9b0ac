//! The log of one run: `runs/<key>/log.txt` in the home folder, one
//! timestamped line for each thing the worker said about the run (its start,
//! every epoch, how it ended, errors in full), appended across attempts.
//! `sweep logs RUN [-f]` prints or follows it. Writing it never fails a run:
//! a write error is reported once in the worker's log and the file is left.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// The name of a run's log file inside its folder.
pub const LOG_FILE: &str = "log.txt";

/// An open run log (or a closed one, after a write failed).
#[derive(Debug)]
pub struct RunLog {
    file: Option<File>,
}

impl RunLog {
    /// Opens (appending) the log in the run folder `dir`.
    pub fn open(dir: &Path) -> RunLog {
        let path = dir.join(LOG_FILE);
        match std::fs::OpenOptions::new().create(true).append(true).open(&path) {
            Ok(file) => RunLog { file: Some(file) },
            Err(e) => {
                tracing::warn!("cannot open the run log {}: {e}", path.display());
                RunLog { file: None }
            }
        }
    }

    /// Appends `text` (each of its lines) with the current UTC time.
    pub fn line(&mut self, text: &str) {
        let Some(file) = self.file.as_mut() else { return };
        let stamp = utc_timestamp(SystemTime::now());
        let mut out = String::new();
        for l in text.lines() {
            out.push_str(&stamp);
            out.push_str("  ");
            out.push_str(l);
            out.push('\n');
        }
        if let Err(e) = file.write_all(out.as_bytes()) {
            tracing::warn!("writing the run log: {e}; it stops here");
            self.file = None;
        }
    }
}

/// `2026-12-01T23:59:01.123Z`.
pub fn utc_timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!("{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem % 3600 / 60, rem % 60, d.subsec_millis())
}

/// Year, month, day of a count of days since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_utc_iso_8601() {
        assert_eq!(utc_timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        // 2000-02-29 (a leap day), 12:34:56.789: 951_827_696 s since the epoch.
        let t = UNIX_EPOCH + Duration::from_millis(951_827_696_789);
        assert_eq!(utc_timestamp(t), "2000-02-29T12:34:56.789Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_796_169_599);
        assert_eq!(utc_timestamp(t), "2026-12-01T23:59:59.000Z");
    }

    #[test]
    fn every_line_is_stamped_and_appended() {
        let dir = std::env::temp_dir().join(format!("sweep-runlog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let _ = std::fs::remove_file(dir.join(LOG_FILE));
        RunLog::open(&dir).line("one\ntwo");
        RunLog::open(&dir).line("three");
        let text = std::fs::read_to_string(dir.join(LOG_FILE)).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines.iter().zip(["one", "two", "three"]).all(|(l, w)| l.ends_with(&format!("Z  {w}"))));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
