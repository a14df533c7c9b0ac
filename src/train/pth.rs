//! Reads the tensors of a file written by `torch.save` (the zip format of
//! torch >= 1.6).
//!
//! The archive is parsed here (stored entries, ZIP64 records as current torch
//! writes them) because the `zip` crate behind `candle_core::pickle` rejects
//! archives written by torch 2.x ("Invalid Central Directory header"); the
//! pickle itself is decoded by candle's `pickle::Stack`.

use candle_core::pickle::{Object, Stack, TensorInfo};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

struct Entry {
    data_start: usize,
    size: usize,
}

/// The `n` bytes of `b` from `i`, if all are there.
fn span(b: &[u8], i: usize, n: usize) -> Option<&[u8]> {
    b.get(i..i.checked_add(n)?)
}
fn u16_at(b: &[u8], i: usize) -> Option<u64> {
    Some(u64::from(u16::from_le_bytes(span(b, i, 2)?.try_into().ok()?)))
}
fn u32_at(b: &[u8], i: usize) -> Option<u64> {
    Some(u64::from(u32::from_le_bytes(span(b, i, 4)?.try_into().ok()?)))
}
fn u64_at(b: &[u8], i: usize) -> Option<u64> {
    Some(u64::from_le_bytes(span(b, i, 8)?.try_into().ok()?))
}

/// The stored entries of a zip archive, by name.
fn entries(b: &[u8]) -> Result<HashMap<String, Entry>, String> {
    let bad = |what: &str| format!("not a torch.save zip archive ({what})");
    let search_from = b.len().saturating_sub(22 + 65535);
    let eocd = (search_from..b.len().saturating_sub(21))
        .rev()
        .find(|&i| b[i..i + 4] == [0x50, 0x4b, 0x05, 0x06])
        .ok_or_else(|| bad("no end-of-central-directory record"))?;
    let mut count = u16_at(b, eocd + 10).ok_or_else(|| bad("truncated"))?;
    let mut cd = u32_at(b, eocd + 16).ok_or_else(|| bad("truncated"))?;
    if count == 0xffff || cd == 0xffff_ffff {
        let loc = eocd
            .checked_sub(20)
            .filter(|&l| b[l..l + 4] == [0x50, 0x4b, 0x06, 0x07])
            .ok_or_else(|| bad("no ZIP64 locator"))?;
        let z = usize::try_from(u64_at(b, loc + 8).ok_or_else(|| bad("truncated"))?).unwrap_or(usize::MAX);
        if span(b, z, 4) != Some(&[0x50, 0x4b, 0x06, 0x06]) {
            return Err(bad("bad ZIP64 record"));
        }
        count = u64_at(b, z.saturating_add(32)).ok_or_else(|| bad("truncated"))?;
        cd = u64_at(b, z.saturating_add(48)).ok_or_else(|| bad("truncated"))?;
    }
    let mut out = HashMap::new();
    let mut p = usize::try_from(cd).unwrap_or(usize::MAX);
    for _ in 0..count {
        if span(b, p, 4) != Some(&[0x50, 0x4b, 0x01, 0x02]) {
            return Err(bad("bad central directory entry"));
        }
        let field = |i| u16_at(b, p + i).ok_or_else(|| bad("truncated"));
        let method = field(10)?;
        let (name_len, extra_len, comment_len) = (field(28)? as usize, field(30)? as usize, field(32)? as usize);
        let mut size = u32_at(b, p + 24).ok_or_else(|| bad("truncated"))?;
        let mut offset = u32_at(b, p + 42).ok_or_else(|| bad("truncated"))?;
        // p + 46 + name_len + extra_len is within the file (the name and the extra field below are).
        let name = String::from_utf8_lossy(span(b, p + 46, name_len).ok_or_else(|| bad("truncated"))?).into_owned();
        // ZIP64 extended information: the 0xffffffff fields, in order.
        let extra = span(b, p + 46 + name_len, extra_len).ok_or_else(|| bad("truncated"))?;
        let mut e = 0;
        while e + 4 <= extra.len() {
            let (id, len) = (u16_at(extra, e).unwrap_or(0), u16_at(extra, e + 2).unwrap_or(0) as usize);
            if id == 1 {
                let mut q = e + 4;
                let compressed = u32_at(b, p + 20).unwrap_or(0);
                let mut next = || {
                    let v = u64_at(extra, q).ok_or_else(|| bad("truncated ZIP64 field"));
                    q += 8;
                    v
                };
                if size == 0xffff_ffff {
                    size = next()?;
                }
                if compressed == 0xffff_ffff {
                    next()?;
                }
                if offset == 0xffff_ffff {
                    offset = next()?;
                }
            }
            e += 4 + len;
        }
        if method != 0 {
            return Err(format!("zip entry `{name}` is compressed (method {method}); torch.save stores entries"));
        }
        let lh = usize::try_from(offset).unwrap_or(usize::MAX);
        if span(b, lh, 30).is_none_or(|h| h[..4] != [0x50, 0x4b, 0x03, 0x04]) {
            return Err(bad("bad local header"));
        }
        // A local header's 30 bytes are in the file, so these sums are far from overflowing.
        let data_start = lh + 30 + u16_at(b, lh + 26).unwrap_or(0) as usize + u16_at(b, lh + 28).unwrap_or(0) as usize;
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        if span(b, data_start, size).is_none() {
            return Err(bad("an entry runs past the end of the file"));
        }
        out.insert(name, Entry { data_start, size });
        p += 46 + name_len + extra_len + comment_len;
    }
    Ok(out)
}

/// Why a `.pth` file gave no tensors.
#[derive(Debug)]
pub enum PthError {
    /// Not a torch.save zip archive.
    Format(String),
    /// An archive whose pickle does not decode, or that holds no state_dict (a
    /// whole model object, a dict of other things), or a tensor that cannot be read.
    Content(String),
}

/// The entries of a checkpoint dict that hold the model's state_dict, in the
/// order they are looked for: `torch.save({"epoch": e, "state_dict": ...})`
/// (timm, Lightning), PyTorch's tutorial's `model_state_dict`, torchvision's
/// reference scripts' `model`, and `net`.
pub const STATE_DICT_ENTRIES: &[&str] = &["state_dict", "model_state_dict", "model", "net"];

/// Every tensor of the state_dict in `path`, on the CPU: the pickle's dict
/// itself when it holds tensors, else its entry named in
/// [`STATE_DICT_ENTRIES`], else its one entry that is a dict of tensors.
pub fn read(path: &Path) -> Result<Vec<(String, Tensor)>, PthError> {
    let format = PthError::Format;
    let bytes = std::fs::read(path).map_err(|e| format(e.to_string()))?;
    let entries = entries(&bytes).map_err(format)?;
    let pkl =
        entries.keys().find(|k| k.ends_with("data.pkl")).ok_or(format("the archive has no data.pkl".into()))?.clone();
    let dir = pkl.strip_suffix(".pkl").expect("ends with .pkl").to_owned();
    let e = &entries[&pkl];
    let mut stack = Stack::empty();
    // A torch.save archive whose pickle does not decode is damaged (or not torch's).
    let damaged = |e: candle_core::Error| PthError::Content(format!("a damaged file: its {pkl} does not decode ({e})"));
    stack.read_loop(&mut &bytes[e.data_start..e.data_start + e.size]).map_err(damaged)?;
    let obj = stack.finalize().map_err(damaged)?;
    let Object::Dict(kv) = obj else {
        let what = class_of(&obj).map_or("not a dict".to_owned(), |c| format!("a whole `{c}` object"));
        return Err(PthError::Content(format!(
            "the file holds {what}, not a state_dict: save the weights with `torch.save(model.state_dict(), PATH)`"
        )));
    };
    let mut infos = tensor_infos(&kv, &dir);
    if infos.is_empty() {
        let named: Vec<(String, Vec<TensorInfo>)> = kv
            .iter()
            .filter_map(|(k, v)| match (k, v) {
                (Object::Unicode(k), Object::Dict(inner)) => Some((k.clone(), tensor_infos(inner, &dir))),
                _ => None,
            })
            .filter(|(_, t)| !t.is_empty())
            .collect();
        let preferred = STATE_DICT_ENTRIES.iter().find_map(|p| named.iter().position(|(k, _)| k == p));
        infos = match (preferred, named.len()) {
            (Some(i), _) => named.into_iter().nth(i).map(|(_, t)| t).unwrap_or_default(),
            (None, 1) => named.into_iter().next().map(|(_, t)| t).unwrap_or_default(),
            (None, 0) => {
                let keys: Vec<String> = kv.iter().take(8).map(|(k, _)| key_text(k)).collect();
                let more = if kv.len() > 8 { format!(", ... {} more", kv.len() - 8) } else { String::new() };
                return Err(PthError::Content(format!(
                    "no tensors found: the file holds a dict with the keys {}{more}, none of them a state_dict",
                    keys.join(", ")
                )));
            }
            (None, _) => {
                let keys: Vec<String> = named.iter().map(|(k, _)| format!("`{k}`")).collect();
                return Err(PthError::Content(format!(
                    "the file holds several state_dicts ({}) and none is named {}: save the one to load on its own",
                    keys.join(", "),
                    STATE_DICT_ENTRIES.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
                )));
            }
        };
    }
    let content = PthError::Content;
    let mut out = Vec::new();
    for info in infos {
        let entry_name = info.path.clone();
        let entry =
            entries.get(&entry_name).ok_or_else(|| content(format!("`{}`: no storage `{entry_name}`", info.name)))?;
        let layout = &info.layout;
        if !layout.is_contiguous() {
            return Err(content(format!("`{}`: non-contiguous tensors are not supported", info.name)));
        }
        // The layout's offset is in bytes; candle's pickle reader has checked that
        // the offset and the tensor's elements in bytes fit in a usize.
        let offset = layout.start_offset();
        let n = layout.shape().elem_count() * info.dtype.size_in_bytes();
        if offset.checked_add(n).is_none_or(|end| end > entry.size) {
            return Err(content(format!("`{}`: its storage is truncated", info.name)));
        }
        let start = entry.data_start + offset;
        let t = Tensor::from_raw_buffer(&bytes[start..start + n], info.dtype, layout.dims(), &Device::Cpu)
            .map_err(|e| content(format!("`{}`: {e}", info.name)))?;
        let t = if info.dtype == DType::F64 { t.to_dtype(DType::F32).map_err(|e| content(e.to_string()))? } else { t };
        out.push((info.name, t));
    }
    Ok(out)
}

/// The tensors among a dict's values.
fn tensor_infos(kv: &[(Object, Object)], dir: &str) -> Vec<TensorInfo> {
    kv.iter().filter_map(|(k, v)| v.clone().into_tensor_info(k.clone(), Path::new(dir)).ok().flatten()).collect()
}

/// A dict key as the user wrote it: `epoch`, or its debug form.
fn key_text(k: &Object) -> String {
    match k {
        Object::Unicode(s) => format!("`{s}`"),
        other => format!("{other:?}"),
    }
}

/// The class a pickled object is an instance of (`torch.save(model)`:
/// `torchvision.models.resnet.ResNet`), skipping pickle's own helpers.
fn class_of(obj: &Object) -> Option<String> {
    match obj {
        Object::Class { module_name, class_name } => {
            let helper = ["copyreg", "copy_reg", "builtins", "__builtin__", "collections", "torch._utils"]
                .contains(&module_name.as_str());
            (!helper).then(|| format!("{module_name}.{class_name}"))
        }
        Object::Reduce { callable, args } | Object::Build { callable, args } => {
            class_of(callable).or_else(|| class_of(args))
        }
        Object::Tuple(items) | Object::List(items) => items.iter().find_map(class_of),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A zip archive of stored entries, as torch.save writes it (without its
    /// 64-byte alignment, which the reader does not need).
    fn zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let (mut out, mut cd) = (Vec::new(), Vec::new());
        for (name, data) in entries {
            let offset = out.len() as u32;
            let size = data.len() as u32;
            out.extend([0x50, 0x4b, 0x03, 0x04]);
            out.extend([0; 14]);
            out.extend(size.to_le_bytes());
            out.extend(size.to_le_bytes());
            out.extend((name.len() as u16).to_le_bytes());
            out.extend([0, 0]);
            out.extend(name.as_bytes());
            out.extend(*data);
            cd.extend([0x50, 0x4b, 0x01, 0x02]);
            cd.extend([0; 16]);
            cd.extend(size.to_le_bytes());
            cd.extend(size.to_le_bytes());
            cd.extend((name.len() as u16).to_le_bytes());
            cd.extend([0; 12]);
            cd.extend(offset.to_le_bytes());
            cd.extend(name.as_bytes());
        }
        let cd_offset = out.len() as u32;
        let (n, cd_len) = (entries.len() as u16, cd.len() as u32);
        out.extend(cd);
        out.extend([0x50, 0x4b, 0x05, 0x06, 0, 0, 0, 0]);
        out.extend(n.to_le_bytes());
        out.extend(n.to_le_bytes());
        out.extend(cd_len.to_le_bytes());
        out.extend(cd_offset.to_le_bytes());
        out.extend([0, 0]);
        out
    }

    fn text(s: &str) -> Vec<u8> {
        let mut out = vec![b'X'];
        out.extend((s.len() as u32).to_le_bytes());
        out.extend(s.as_bytes());
        out
    }

    /// `torch._utils._rebuild_tensor_v2(storage 0 of 6 floats, offset, size, stride, False, OrderedDict())`.
    fn tensor(offset: u8, size: &[u8], stride: &[u8]) -> Vec<u8> {
        let mut p = b"ctorch._utils\n_rebuild_tensor_v2\n((".to_vec();
        p.extend(text("storage"));
        p.extend(b"ctorch\nFloatStorage\n");
        p.extend(text("0"));
        p.extend(text("cpu"));
        p.extend([b'K', 6, b't', b'Q', b'K', offset, b'(']);
        p.extend(size.iter().flat_map(|&d| [b'K', d]));
        p.extend([b't', b'(']);
        p.extend(stride.iter().flat_map(|&d| [b'K', d]));
        p.extend(b"t\x89ccollections\nOrderedDict\n)RtR");
        p
    }

    fn state_dict(items: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut p = vec![0x80, 2, b'}', b'('];
        for (k, v) in items {
            p.extend(text(k));
            p.extend(v);
        }
        p.extend(b"u.");
        p
    }

    fn read_bytes(archive: &[u8]) -> Result<Vec<(String, Tensor)>, PthError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.pth");
        std::fs::write(&path, archive).unwrap();
        read(&path)
    }

    #[test]
    fn tensors_that_share_a_storage_are_read_at_their_offsets() {
        // a = storage[0:2], b = storage[2:6] as 2x2: what torch.save writes for
        // tensors that are views of one storage (a split or a chunk of a weight).
        let data: Vec<u8> = (1..=6).flat_map(|v| (v as f32).to_le_bytes()).collect();
        let pkl = state_dict(&[("a", tensor(0, &[2], &[1])), ("b", tensor(2, &[2, 2], &[2, 1]))]);
        let got = read_bytes(&zip(&[("archive/data.pkl", &pkl), ("archive/data/0", &data)])).unwrap();
        let mut vals: Vec<(String, Vec<f32>)> =
            got.into_iter().map(|(k, t)| (k, t.flatten_all().unwrap().to_vec1().unwrap())).collect();
        vals.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(vals, [("a".into(), vec![1.0, 2.0]), ("b".into(), vec![3.0, 4.0, 5.0, 6.0])]);
        // A view past its storage's end is refused, not read.
        let pkl = state_dict(&[("c", tensor(3, &[2, 2], &[2, 1]))]);
        let err = read_bytes(&zip(&[("archive/data.pkl", &pkl), ("archive/data/0", &data)])).unwrap_err();
        assert!(matches!(&err, PthError::Content(e) if e.contains("`c`: its storage is truncated")), "{err:?}");
    }

    #[test]
    fn hostile_archives_and_pickles_are_errors() {
        let data = [0u8; 24];
        let good = state_dict(&[("a", tensor(0, &[2], &[1]))]);
        let archive = zip(&[("archive/data.pkl", &good), ("archive/data/0", &data)]);
        assert_eq!(read_bytes(&archive).unwrap().len(), 1);
        // Every central directory field that locates something set to its maximum.
        let cd = archive.len() - 22 - (46 + 16) - (46 + 14);
        for (field, width) in [(24, 4), (28, 2), (30, 2), (42, 4)] {
            let mut bad = archive.clone();
            bad[cd + field..cd + field + width].fill(0xff);
            assert!(read_bytes(&bad).is_err(), "field {field}");
        }
        // Strides that do not match the dimensions, a tensor too large to
        // address, a rebuild with too few arguments: no tensor read.
        for pkl in [
            state_dict(&[("a", tensor(0, &[2], &[1, 1]))]),
            state_dict(&[("a", tensor(0, &[255, 255, 255, 255, 255, 255, 255, 255], &[1; 8]))]),
            state_dict(&[("a", b"ctorch._utils\n_rebuild_tensor_v2\n(K\x01tR".to_vec())]),
            state_dict(&[("a", b"ctorch._utils\n_rebuild_parameter\n)R".to_vec())]),
        ] {
            let err = read_bytes(&zip(&[("archive/data.pkl", &pkl), ("archive/data/0", &data)])).unwrap_err();
            assert!(matches!(&err, PthError::Content(e) if e.starts_with("no tensors found")), "{err:?}");
        }
        // Memo gets that double a list 60 times (about 1e18 objects) stop at the
        // copy limit, at once.
        let mut bomb = vec![0x80, 2, b']', b'q', 0];
        for _ in 0..60 {
            bomb.extend([b']', b'(', b'h', 0, b'h', 0, b'e', b'q', 0]);
        }
        bomb.push(b'.');
        let start = std::time::Instant::now();
        let err = read_bytes(&zip(&[("archive/data.pkl", &bomb)])).unwrap_err();
        assert!(
            matches!(&err, PthError::Content(e) if e.contains("archive/data.pkl does not decode") && e.contains("memo copies more than")),
            "{err:?}"
        );
        assert!(start.elapsed().as_secs() < 10);
        // A string that claims 4 GiB, and a LONG1 wider than 64 bits.
        for pkl in [vec![0x80, 2, b'X', 0xff, 0xff, 0xff, 0xff, b'a', b'.'], vec![0x80, 2, 0x8a, 9, 1, 2, b'.']] {
            assert!(
                matches!(read_bytes(&zip(&[("archive/data.pkl", &pkl)])), Err(PthError::Content(e)) if e.starts_with("a damaged file"))
            );
        }
    }
}
