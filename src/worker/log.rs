//! The log of one run: `runs/<key>/log.txt` in the home folder, one
//! timestamped line for each thing the worker said about the run (its start,
//! every epoch, how it ended, errors in full), appended across attempts.
//! `sweep logs RUN [-f]` prints or follows it. Writing it never fails a run:
//! a write error is reported once in the worker's log and the file is left.

use crate::clock::utc_timestamp;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::SystemTime;

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

#[cfg(test)]
mod tests {
    use super::*;

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
