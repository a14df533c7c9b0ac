//! Where a run trains, as a user writes it: `auto`, `cpu` or `cuda:N`.
//!
//! Parsed once, into [`DeviceChoice`], wherever it is written: the sweep file's
//! `device` (by `expand`, located at its line), `--device` and `SWEEP_DEVICE`
//! (by clap, through [`FromStr`]). Opening the device is the trainer's job
//! (`train::device::select`).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A device as chosen by the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DeviceChoice {
    /// CUDA device 0 when this build has CUDA and a GPU answers, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// CUDA device N.
    Cuda(usize),
}

/// A device name that is none of `auto`, `cpu`, `cuda:N`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown device `{0}`: use cpu, auto or cuda:N")]
pub struct UnknownDevice(pub String);

impl FromStr for DeviceChoice {
    type Err = UnknownDevice;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            other => other
                .strip_prefix("cuda:")
                .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|n| n.parse::<usize>().ok())
                .map(DeviceChoice::Cuda)
                .ok_or_else(|| UnknownDevice(other.to_owned())),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            DeviceChoice::Auto => f.write_str("auto"),
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceChoice {
    /// Whether this names a GPU explicitly (`cuda:N`).
    pub fn is_cuda(self) -> bool {
        matches!(self, DeviceChoice::Cuda(_))
    }
}

impl Serialize for DeviceChoice {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DeviceChoice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_forms_parse_and_print_back() {
        for text in ["auto", "cpu", "cuda:0", "cuda:12"] {
            let d: DeviceChoice = text.parse().unwrap();
            assert_eq!(d.to_string(), text);
        }
        assert_eq!("cuda:1".parse(), Ok(DeviceChoice::Cuda(1)));
        for bad in ["gpu", "cuda", "cuda:", "cuda:x", "cuda:+1", "CPU", " cpu", "tpu"] {
            let e = bad.parse::<DeviceChoice>().unwrap_err();
            assert_eq!(e.to_string(), format!("unknown device `{bad}`: use cpu, auto or cuda:N"));
        }
    }
}
