//! Reads the tensors of a file written by `torch.save` (the zip format of
//! torch >= 1.6).
//!
//! The archive is parsed here (stored entries, ZIP64 records as current torch
//! writes them) because the `zip` crate behind `candle_core::pickle` rejects
//! archives written by torch 2.x ("Invalid Central Directory header"); the
//! pickle itself is decoded by candle's `pickle::Stack`.

use candle_core::pickle::{Object, Stack};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

struct Entry {
    data_start: usize,
    size: usize,
}

fn u16_at(b: &[u8], i: usize) -> Option<u64> {
    Some(u64::from(u16::from_le_bytes(b.get(i..i + 2)?.try_into().ok()?)))
}
fn u32_at(b: &[u8], i: usize) -> Option<u64> {
    Some(u64::from(u32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?)))
}
fn u64_at(b: &[u8], i: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(i..i + 8)?.try_into().ok()?))
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
        let z = u64_at(b, loc + 8).ok_or_else(|| bad("truncated"))? as usize;
        if b.get(z..z + 4) != Some(&[0x50, 0x4b, 0x06, 0x06]) {
            return Err(bad("bad ZIP64 record"));
        }
        count = u64_at(b, z + 32).ok_or_else(|| bad("truncated"))?;
        cd = u64_at(b, z + 48).ok_or_else(|| bad("truncated"))?;
    }
    let mut out = HashMap::new();
    let mut p = cd as usize;
    for _ in 0..count {
        if b.get(p..p + 4) != Some(&[0x50, 0x4b, 0x01, 0x02]) {
            return Err(bad("bad central directory entry"));
        }
        let field = |i| u16_at(b, p + i).ok_or_else(|| bad("truncated"));
        let method = field(10)?;
        let (name_len, extra_len, comment_len) = (field(28)? as usize, field(30)? as usize, field(32)? as usize);
        let mut size = u32_at(b, p + 24).ok_or_else(|| bad("truncated"))?;
        let mut offset = u32_at(b, p + 42).ok_or_else(|| bad("truncated"))?;
        let name =
            String::from_utf8_lossy(b.get(p + 46..p + 46 + name_len).ok_or_else(|| bad("truncated"))?).into_owned();
        // ZIP64 extended information: the 0xffffffff fields, in order.
        let extra = b.get(p + 46 + name_len..p + 46 + name_len + extra_len).ok_or_else(|| bad("truncated"))?;
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
        let lh = offset as usize;
        if b.get(lh..lh + 4) != Some(&[0x50, 0x4b, 0x03, 0x04]) {
            return Err(bad("bad local header"));
        }
        let data_start = lh + 30 + u16_at(b, lh + 26).unwrap_or(0) as usize + u16_at(b, lh + 28).unwrap_or(0) as usize;
        if data_start + size as usize > b.len() {
            return Err(bad("an entry runs past the end of the file"));
        }
        out.insert(name, Entry { data_start, size: size as usize });
        p += 46 + name_len + extra_len + comment_len;
    }
    Ok(out)
}

/// Every tensor of the state_dict in `path` (or of its `key` entry), on the CPU.
pub fn read(path: &Path, key: Option<&str>) -> Result<Vec<(String, Tensor)>, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let entries = entries(&bytes)?;
    let pkl = entries.keys().find(|k| k.ends_with("data.pkl")).ok_or("the archive has no data.pkl")?.clone();
    let dir = pkl.strip_suffix(".pkl").expect("ends with .pkl").to_owned();
    let e = &entries[&pkl];
    let mut stack = Stack::empty();
    stack.read_loop(&mut &bytes[e.data_start..e.data_start + e.size]).map_err(|e| format!("data.pkl: {e}"))?;
    let mut obj = stack.finalize().map_err(|e| format!("data.pkl: {e}"))?;
    if let Some(key) = key {
        let Object::Dict(kv) = obj else { return Ok(vec![]) };
        match kv.into_iter().find(|(k, _)| *k == Object::Unicode(key.to_owned())) {
            Some((_, v)) => obj = v,
            None => return Ok(vec![]),
        }
    }
    let Object::Dict(kv) = obj else { return Err("the pickle is not a dict (a state_dict)".into()) };
    let mut out = Vec::new();
    for (name, value) in kv {
        let Ok(Some(info)) = value.into_tensor_info(name, Path::new(&dir)) else { continue };
        let entry_name = info.path.clone();
        let entry = entries.get(&entry_name).ok_or_else(|| format!("`{}`: no storage `{entry_name}`", info.name))?;
        let layout = &info.layout;
        if !layout.is_contiguous() {
            return Err(format!("`{}`: non-contiguous tensors are not supported", info.name));
        }
        let size = info.dtype.size_in_bytes();
        let start = entry.data_start + layout.start_offset() * size;
        let n = layout.shape().elem_count() * size;
        if layout.start_offset() * size + n > entry.size {
            return Err(format!("`{}`: its storage is truncated", info.name));
        }
        let t = Tensor::from_raw_buffer(&bytes[start..start + n], info.dtype, layout.dims(), &Device::Cpu)
            .map_err(|e| format!("`{}`: {e}", info.name))?;
        let t = if info.dtype == DType::F64 { t.to_dtype(DType::F32).map_err(|e| e.to_string())? } else { t };
        out.push((info.name, t));
    }
    Ok(out)
}
