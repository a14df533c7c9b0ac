//! One checkpoint file: tensors written as safetensors (the bytes `safetensors::serialize`
//! would give), synced, renamed into place, and hashed in the same pass.
//!
//! The tensors' bytes go to the file straight from their CPU storage (a tensor on another
//! device is copied to the host first; that copy is the only one), and a second thread hashes
//! the same bytes while the first writes them: a checkpoint is not read back to be hashed.

use super::io_err;
use crate::train::TrainError;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Device, Storage, Tensor};
use safetensors::tensor::{Dtype, Metadata, TensorInfo};
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::io::Write;
use std::path::Path;

/// Writes `tensors` to `path` through `<path without extension>.tmp` (synced, then renamed;
/// the folder synced after the rename) and returns the file's SHA-256 (lower-case hex). On
/// an error no temporary file is left behind.
pub(super) fn write(tensors: Vec<(String, Tensor)>, path: &Path) -> Result<String, TrainError> {
    let tmp = path.with_extension("tmp");
    // candle's errors here are the host copy's and an unsupported type's; the disk's come
    // from the writing, through `io_err`.
    let candle_err = |e: candle_core::Error| TrainError::Checkpoint { path: tmp.clone(), detail: e.to_string() };
    let mut tensors = tensors
        .into_iter()
        .map(|(name, t)| Ok((name, on_host(&t)?)))
        .collect::<candle_core::Result<Vec<_>>>()
        .map_err(candle_err)?;
    // safetensors' order: the widest types first, then by name.
    tensors.sort_by(|(a, ta), (b, tb)| st_dtype(tb.dtype()).cmp(&st_dtype(ta.dtype())).then(a.cmp(b)));
    let header = header(&tensors).map_err(|detail| TrainError::Checkpoint { path: tmp.clone(), detail })?;
    let guards: Vec<_> = tensors.iter().map(|(_, t)| t.storage_and_layout()).collect();
    let mut parts: Vec<Cow<'_, [u8]>> = vec![Cow::Owned(header)];
    for (storage, layout) in &guards {
        let Storage::Cpu(cpu) = &**storage else { unreachable!("on_host gives CPU tensors") };
        let (start, end) = layout.contiguous_offsets().expect("on_host gives contiguous tensors");
        parts.push(bytes(cpu, start, end).map_err(candle_err)?);
    }
    let (written, sha) = std::thread::scope(|s| {
        let hashing = s.spawn(|| {
            let mut h = Sha256::new();
            for p in &parts {
                h.update(p);
            }
            format!("{:x}", h.finalize())
        });
        let written = write_synced(&tmp, &parts);
        (written, hashing.join().expect("hashing does not panic"))
    });
    if let Err(e) = written {
        // No half-written file is left behind (a full disk stays as full as it was).
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(&tmp)(e));
    }
    std::fs::rename(&tmp, path).map_err(io_err(path))?;
    if let Some(dir) = path.parent() {
        // Make the rename itself durable (ignored where directories cannot be opened).
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(sha)
}

/// `t` as a contiguous CPU tensor (itself when it is one).
fn on_host(t: &Tensor) -> candle_core::Result<Tensor> {
    let t = if t.device().is_cpu() { t.clone() } else { t.to_device(&Device::Cpu)? };
    t.contiguous()
}

fn st_dtype(d: DType) -> Dtype {
    d.into()
}

/// The 8-byte little-endian header length and the JSON header, padded with spaces to a
/// multiple of 8, as `safetensors::serialize` writes them.
fn header(tensors: &[(String, Tensor)]) -> Result<Vec<u8>, String> {
    let mut offset = 0;
    let infos = tensors
        .iter()
        .map(|(name, t)| {
            let n = t.elem_count() * t.dtype().size_in_bytes();
            let info =
                TensorInfo { dtype: st_dtype(t.dtype()), shape: t.dims().to_vec(), data_offsets: (offset, offset + n) };
            offset += n;
            (name.clone(), info)
        })
        .collect();
    let metadata = Metadata::new(None, infos).map_err(|e| e.to_string())?;
    let mut json = serde_json::to_vec(&metadata).map_err(|e| e.to_string())?;
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    Ok(out)
}

/// Elements `start..end` of a CPU storage as little-endian bytes: borrowed, except for the
/// half-precision types (copied).
fn bytes(cpu: &CpuStorage, start: usize, end: usize) -> candle_core::Result<Cow<'_, [u8]>> {
    let half = |bits: &mut dyn Iterator<Item = u16>| Cow::Owned(bits.flat_map(u16::to_le_bytes).collect());
    Ok(match cpu {
        CpuStorage::U8(v) => Cow::Borrowed(&v[start..end]),
        CpuStorage::U32(v) => Cow::Borrowed(bytemuck::cast_slice(&v[start..end])),
        CpuStorage::I16(v) => Cow::Borrowed(bytemuck::cast_slice(&v[start..end])),
        CpuStorage::I32(v) => Cow::Borrowed(bytemuck::cast_slice(&v[start..end])),
        CpuStorage::I64(v) => Cow::Borrowed(bytemuck::cast_slice(&v[start..end])),
        CpuStorage::F32(v) => Cow::Borrowed(bytemuck::cast_slice(&v[start..end])),
        CpuStorage::F64(v) => Cow::Borrowed(bytemuck::cast_slice(&v[start..end])),
        CpuStorage::BF16(v) => half(&mut v[start..end].iter().map(|x| x.to_bits())),
        CpuStorage::F16(v) => half(&mut v[start..end].iter().map(|x| x.to_bits())),
        other => candle_core::bail!("a checkpoint cannot hold {:?} tensors", other.dtype()),
    })
}

/// Writes `parts` one after another to a new file at `tmp` (readable by its owner only, as
/// before) and syncs it.
fn write_synced(tmp: &Path, parts: &[Cow<'_, [u8]>]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options.open(tmp)?;
    // Small tensors (BatchNorm's) are gathered into one write; large ones go to the file
    // directly, not through the buffer.
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    for p in parts {
        w.write_all(p)?;
    }
    w.into_inner().map_err(std::io::IntoInnerError::into_error)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn tensors() -> Vec<(String, Tensor)> {
        let cpu = &Device::Cpu;
        let f = |n: usize| Tensor::arange(0f32, n as f32, cpu).unwrap();
        vec![
            ("layer1.0.conv1.weight".into(), f(2 * 3 * 3 * 3).reshape((2, 3, 3, 3)).unwrap()),
            ("fc.bias".into(), f(10)),
            ("bn1.num_batches_tracked".into(), Tensor::new(&[7i64], cpu).unwrap().squeeze(0).unwrap()),
            ("__sweep_state__".into(), Tensor::new(b"{\"epoch\":3}".as_slice(), cpu).unwrap()),
            ("half".into(), f(5).to_dtype(DType::BF16).unwrap()),
            ("u32".into(), Tensor::new(&[1u32, 2, 3], cpu).unwrap()),
            // a view that is not contiguous: written as its values
            ("fc.weight".into(), f(12).reshape((3, 4)).unwrap().t().unwrap()),
            ("empty".into(), Tensor::zeros((0, 4), DType::F32, cpu).unwrap()),
        ]
    }

    /// The same bytes as candle's own writer (safetensors' `serialize`), and the hash is the file's.
    #[test]
    fn writes_the_bytes_of_safetensors_and_their_hash() {
        let dir = tempfile::tempdir().unwrap();
        let ours = dir.path().join("ours.safetensors");
        let sha = write(tensors(), &ours).unwrap();
        let theirs = dir.path().join("theirs.safetensors");
        let map: HashMap<String, Tensor> = tensors().into_iter().collect();
        candle_core::safetensors::save(&map, &theirs).unwrap();
        let bytes = std::fs::read(&ours).unwrap();
        assert_eq!(bytes, std::fs::read(&theirs).unwrap());
        assert_eq!(sha, crate::fetch::sha256_file(&ours).unwrap());
        let back = candle_core::safetensors::load(&ours, &Device::Cpu).unwrap();
        let t = &back["fc.weight"];
        assert_eq!(t.to_vec2::<f32>().unwrap(), vec![[0f32, 4., 8.], [1., 5., 9.], [2., 6., 10.], [3., 7., 11.]]);
        assert_eq!(back["half"].to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap(), vec![0f32, 1., 2., 3., 4.]);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "no temporary file left: {names:?}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&ours).unwrap().permissions().mode() & 0o777, 0o600);
        }
    }

    /// A file that cannot be written leaves neither the file nor its temporary behind.
    #[test]
    fn a_failed_write_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        // The temporary name is taken by a folder, so the file cannot be created.
        std::fs::create_dir(dir.path().join("e0001.tmp")).unwrap();
        let err = write(tensors(), &dir.path().join("e0001.safetensors")).unwrap_err();
        assert!(matches!(err, TrainError::Checkpoint { .. }), "{err:?}");
        assert!(!dir.path().join("e0001.safetensors").exists());
    }
}
