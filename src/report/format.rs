//! How numbers and durations are written, shared by every renderer and by
//! the table builder (`query`): a leaf module, depending on nothing else here
//! but the run types.

use super::RunReport;
use crate::store::Status;

/// `v` with `digits` decimals, `-` when absent.
pub fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |x| format!("{x:.digits$}"))
}

/// Seconds as `12.3s`, `4m05s` or `1h02m`.
pub fn duration(secs: f64) -> String {
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else if secs < 3600.0 {
        format!("{}m{:02}s", (secs / 60.0) as u64, (secs % 60.0) as u64)
    } else {
        format!("{}h{:02}m", (secs / 3600.0) as u64, ((secs % 3600.0) / 60.0) as u64)
    }
}

/// A size in bytes for a person: `512 B`, `3.4 KiB`, `12.0 MiB`, `1.5 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// Decimals shown for a metric: 4 for losses, 2 for accuracies.
pub fn metric_digits(metric: &str) -> usize {
    if metric.ends_with("loss") {
        4
    } else {
        2
    }
}

/// Appends `v` with `digits` decimals, as `format!("{v:.digits$}")` writes it.
/// Exact decimal formatting (Rust's, for every digit count) was a third of
/// `sweep results`' rendering time; this rounds through an integer, and leaves
/// the values within a millionth of a tie to Rust's formatting.
pub fn push_fixed(out: &mut String, v: f64, digits: usize) {
    use std::fmt::Write;
    if v.is_finite() && digits <= 9 && v.abs() < 1e9 {
        let scale = 10u64.pow(digits as u32);
        let x = v.abs() * scale as f64;
        if (x - x.floor() - 0.5).abs() > 1e-6 {
            let n = x.round() as u64;
            if v.is_sign_negative() {
                out.push('-');
            }
            let _ = write!(out, "{}", n / scale);
            if digits > 0 {
                let _ = write!(out, ".{:0digits$}", n % scale);
            }
            return;
        }
    }
    let _ = write!(out, "{v:.digits$}");
}

/// Epochs done of total, with the batches of an unfinished epoch: `3/10 (+12/50)`.
pub fn progress(r: &RunReport) -> String {
    let row = &r.row;
    match (row.status, row.steps_per_epoch) {
        (Status::Running | Status::Interrupted, Some(n)) if row.step > 0 => {
            format!("{}/{} (+{}/{n})", row.epochs_done, row.epochs_total, row.step)
        }
        _ => format!("{}/{}", row.epochs_done, row.epochs_total),
    }
}

/// A parameter as a table shows it: a float with more than six significant
/// digits (a sampled learning rate) to four (`0.003162`); others as written.
pub fn sampled(s: &str) -> std::borrow::Cow<'_, str> {
    let digits =
        s.trim_start_matches(['-', '0', '.']).chars().take_while(|c| *c != 'e').filter(char::is_ascii_digit).count();
    match s.parse::<f64>() {
        Ok(v) if digits > 6 && v.is_finite() && s.contains('.') => {
            let text = format!("{v:.3e}");
            let (m, e) = text.split_once('e').unwrap_or((&text, "0"));
            let e: i32 = e.parse().unwrap_or(0);
            if (-4..6).contains(&e) {
                let decimals = (3 - e).max(0) as usize;
                let fixed = format!("{v:.decimals$}");
                std::borrow::Cow::Owned(if fixed.contains('.') {
                    fixed.trim_end_matches('0').trim_end_matches('.').to_owned()
                } else {
                    fixed
                })
            } else {
                std::borrow::Cow::Owned(format!("{}e{e}", m.trim_end_matches('0').trim_end_matches('.')))
            }
        }
        _ => std::borrow::Cow::Borrowed(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampled_floats_are_shortened_and_others_kept() {
        assert_eq!(sampled("0.0031622776601683794"), "0.003162");
        assert_eq!(sampled("0.000019145305734805996"), "1.915e-5");
        assert_eq!(sampled("0.01"), "0.01");
        assert_eq!(sampled("123.45678912"), "123.5");
        assert_eq!(sampled("0.5"), "0.5");
        assert_eq!(sampled("resnet18"), "resnet18");
        assert_eq!(sampled("1234567890"), "1234567890");
    }

    #[test]
    fn push_fixed_writes_what_format_writes() {
        let mut values =
            vec![0.0, -0.0, 0.5, 1.5, 2.5, 0.125, 0.375, 95.9, -0.001, 1e-7, 12345.678901, 99.995, 1e12, f64::NAN];
        values.extend([f64::INFINITY, -2.675, 0.045, 1.005]);
        // And a spread of values like those a results table shows.
        let mut x = 0.123_456_789_f64;
        for _ in 0..20_000 {
            x = (x * 9_301.0 + 49_297.0) % 233_280.0;
            values.push(x / 2_332.8 - 20.0);
        }
        for v in values {
            for d in 0..=6 {
                let mut s = String::new();
                push_fixed(&mut s, v, d);
                assert_eq!(s, format!("{v:.d$}"), "{v} with {d} decimals");
            }
        }
    }
}
