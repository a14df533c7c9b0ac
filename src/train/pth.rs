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

/// Why a `.pth` file gave no tensors.
#[derive(Debug)]
pub enum PthError {
    /// Not a torch.save zip archive, or its pickle does not decode.
    Format(String),
    /// A readable archive that holds no state_dict (a whole model object, a
    /// dict of other things), or a tensor that cannot be read.
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
    stack.read_loop(&mut &bytes[e.data_start..e.data_start + e.size]).map_err(|e| format(format!("data.pkl: {e}")))?;
    let obj = stack.finalize().map_err(|e| format(format!("data.pkl: {e}")))?;
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
        let size = info.dtype.size_in_bytes();
        let start = entry.data_start + layout.start_offset() * size;
        let n = layout.shape().elem_count() * size;
        if layout.start_offset() * size + n > entry.size {
            return Err(content(format!("`{}`: its storage is truncated", info.name)));
        }
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
