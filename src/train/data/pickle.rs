//! A small unpickler for the CIFAR python release: dicts of lists, strings and
//! numpy uint8 arrays, as written by Python 2's cPickle (the official files:
//! `BINSTRING` payloads) or by Python 3 with any protocol from 2 to 5
//! (`_codecs.encode` payloads, `BINBYTES`, `BYTEARRAY8`, `_frombuffer`).
//! Nothing is executed: globals are kept as names and interpreted here.

use std::collections::HashMap;

/// A decoded pickle value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `None`.
    None,
    /// `True`/`False`.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A text string (Python 2 `str` decoded as latin-1, as torchvision does).
    Str(String),
    /// Bytes.
    Bytes(Vec<u8>),
    /// A list.
    List(Vec<Value>),
    /// A tuple.
    Tuple(Vec<Value>),
    /// A dict, in insertion order.
    Dict(Vec<(Value, Value)>),
    /// `module.name`, not resolved.
    Global(String, String),
    /// `func(*args)`, then `__setstate__(state)` if built.
    Reduce {
        /// The callable.
        func: Box<Value>,
        /// Its arguments.
        args: Box<Value>,
        /// The state set by `BUILD`.
        state: Option<Box<Value>>,
    },
}

impl Value {
    /// The size of a copy: one per value and one per byte of text or bytes, or
    /// `limit` when it is at least that.
    fn size_up_to(&self, limit: usize) -> usize {
        let mut n = 0usize;
        let mut todo = vec![self];
        while let Some(v) = todo.pop() {
            n += 1;
            match v {
                Value::Str(s) => n += s.len(),
                Value::Bytes(b) => n += b.len(),
                Value::Global(m, name) => n += m.len() + name.len(),
                Value::List(v) | Value::Tuple(v) => todo.extend(v),
                Value::Dict(kv) => todo.extend(kv.iter().flat_map(|(k, v)| [k, v])),
                Value::Reduce { func, args, state } => {
                    todo.extend([&**func, &**args]);
                    todo.extend(state.as_deref());
                }
                Value::None | Value::Bool(_) | Value::Int(_) | Value::Float(_) => {}
            }
            if n >= limit {
                return limit;
            }
        }
        n
    }

    /// The value of `key` in a dict whose keys are strings or bytes.
    pub fn get(&self, key: &str) -> Option<&Value> {
        let Value::Dict(items) = self else { return None };
        items.iter().find_map(|(k, v)| match k {
            Value::Str(s) if s == key => Some(v),
            Value::Bytes(b) if b == key.as_bytes() => Some(v),
            _ => None,
        })
    }

    /// The bytes of a `bytes`/latin-1 `str` value.
    pub fn as_bytes(&self) -> Option<Vec<u8>> {
        match self {
            Value::Bytes(b) => Some(b.clone()),
            Value::Str(s) => s.chars().map(|c| u8::try_from(u32::from(c)).ok()).collect(),
            _ => None,
        }
    }

    /// A string value (from `str` or `bytes`).
    pub fn as_string(&self) -> Option<String> {
        match self {
            Value::Str(s) => Some(s.clone()),
            Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }

    /// The integers of a list (or a 1-d integer array).
    pub fn as_ints(&self) -> Option<Vec<i64>> {
        match self {
            Value::List(v) | Value::Tuple(v) => {
                v.iter().map(|x| if let Value::Int(i) = x { Some(*i) } else { None }).collect()
            }
            _ => {
                let (shape, dtype, data) = self.as_array()?;
                if shape.len() != 1 {
                    return None;
                }
                match dtype.as_str() {
                    "u1" | "|u1" => Some(data.iter().map(|&b| i64::from(b)).collect()),
                    "<i8" | "i8" => {
                        Some(data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect())
                    }
                    "<i4" | "i4" => Some(
                        data.chunks_exact(4).map(|c| i64::from(i32::from_le_bytes(c.try_into().unwrap()))).collect(),
                    ),
                    _ => None,
                }
            }
        }
    }

    /// A numpy array: (shape, dtype string such as `u1` or `<i8`, raw C-order bytes).
    pub fn as_array(&self) -> Option<(Vec<usize>, String, Vec<u8>)> {
        let Value::Reduce { func, args, state } = self else { return None };
        let Value::Global(module, name) = func.as_ref() else { return None };
        let shape_of = |v: &Value| match v {
            Value::Tuple(s) | Value::List(s) => {
                s.iter().map(|d| if let Value::Int(i) = d { usize::try_from(*i).ok() } else { None }).collect()
            }
            _ => None,
        };
        match (module.as_str(), name.as_str()) {
            ("numpy.core.multiarray" | "numpy._core.multiarray", "_reconstruct") => {
                let Value::Tuple(st) = state.as_deref()? else { return None };
                // (version, shape, dtype, is_fortran, data)
                let [_, shape, dtype, fortran, data] = st.as_slice() else { return None };
                if *fortran == Value::Bool(true) {
                    return None;
                }
                Some((shape_of(shape)?, dtype_name(dtype)?, data.as_bytes()?))
            }
            ("numpy.core.numeric" | "numpy._core.numeric", "_frombuffer") => {
                let Value::Tuple(a) = args.as_ref() else { return None };
                let [buf, dtype, shape, order] = a.as_slice() else { return None };
                if order.as_string()? != "C" {
                    return None;
                }
                Some((shape_of(shape)?, dtype_name(dtype)?, buf.as_bytes()?))
            }
            _ => None,
        }
    }
}

/// `numpy.dtype('u1', ...)` with its BUILD state giving the byte order.
fn dtype_name(v: &Value) -> Option<String> {
    let Value::Reduce { func, args, state } = v else { return None };
    if !matches!(func.as_ref(), Value::Global(_, n) if n == "dtype") {
        return None;
    }
    let Value::Tuple(a) = args.as_ref() else { return None };
    let name = a.first()?.as_string()?;
    let order = match state.as_deref() {
        Some(Value::Tuple(s)) => s.get(1).and_then(Value::as_string).unwrap_or_default(),
        _ => String::new(),
    };
    Some(if order == "|" || order.is_empty() { name } else { format!("{order}{name}") })
}

/// Decodes one pickle.
pub fn load(b: &[u8]) -> Result<Value, String> {
    let mut stack: Vec<Value> = Vec::new();
    let mut marks: Vec<usize> = Vec::new();
    let mut memo: HashMap<u64, Value> = HashMap::new();
    let mut p = 0usize;
    // Copies into and out of the memo (and DUP's) are counted in values and bytes: a few
    // bytes of gets that nest lists in lists would otherwise copy an exponential number of
    // values. A real file copies each value at most about once (CIFAR's memoises its data).
    let mut budget = (1usize << 22).saturating_add(b.len().saturating_mul(2));
    let mut copy = |v: &Value, at: usize| -> Result<Value, String> {
        let n = v.size_up_to(budget);
        if n >= budget {
            return Err(format!("the pickle's memo copies too much at byte {at}"));
        }
        budget -= n;
        Ok(v.clone())
    };
    let take = |p: &mut usize, n: usize| -> Result<&[u8], String> {
        let s = p.checked_add(n).and_then(|end| b.get(*p..end)).ok_or_else(|| format!("truncated at byte {}", *p))?;
        *p += n;
        Ok(s)
    };
    let le = |s: &[u8]| s.iter().rev().fold(0u64, |a, &x| (a << 8) | u64::from(x));
    let pop = |stack: &mut Vec<Value>, at: usize| stack.pop().ok_or_else(|| format!("stack underflow at byte {at}"));
    let pop_mark = |stack: &mut Vec<Value>, marks: &mut Vec<usize>, at: usize| -> Result<Vec<Value>, String> {
        let m = marks.pop().ok_or_else(|| format!("no mark at byte {at}"))?;
        Ok(stack.split_off(m.min(stack.len())))
    };
    loop {
        let at = p;
        let op = take(&mut p, 1)?[0];
        match op {
            0x80 => {
                take(&mut p, 1)?;
            } // PROTO
            0x95 => {
                take(&mut p, 8)?;
            } // FRAME
            b'.' => return pop(&mut stack, at),
            b'(' => marks.push(stack.len()),
            b'}' => stack.push(Value::Dict(Vec::new())),
            b']' => stack.push(Value::List(Vec::new())),
            b')' => stack.push(Value::Tuple(Vec::new())),
            b'N' => stack.push(Value::None),
            0x88 => stack.push(Value::Bool(true)),
            0x89 => stack.push(Value::Bool(false)),
            b'J' => stack.push(Value::Int(i64::from(i32::from_le_bytes(take(&mut p, 4)?.try_into().unwrap())))),
            b'K' => stack.push(Value::Int(i64::from(take(&mut p, 1)?[0]))),
            b'M' => stack.push(Value::Int(le(take(&mut p, 2)?) as i64)),
            0x8a => {
                // LONG1: little-endian two's complement
                let n = take(&mut p, 1)?[0] as usize;
                let s = take(&mut p, n)?;
                if n > 8 {
                    return Err(format!("integer too large at byte {at}"));
                }
                let mut v = le(s) as i64;
                if n > 0 && n < 8 && s[n - 1] & 0x80 != 0 {
                    v -= 1i64 << (8 * n);
                }
                stack.push(Value::Int(v));
            }
            b'G' => stack.push(Value::Float(f64::from_be_bytes(take(&mut p, 8)?.try_into().unwrap()))),
            b'U' | b'T' | b'X' | 0x8c | 0x8d => {
                // SHORT_BINSTRING, BINSTRING, BINUNICODE, SHORT_BINUNICODE, BINUNICODE8
                let n = match op {
                    b'U' | 0x8c => take(&mut p, 1)?[0] as usize,
                    0x8d => le(take(&mut p, 8)?) as usize,
                    _ => le(take(&mut p, 4)?) as usize,
                };
                let s = take(&mut p, n)?;
                stack.push(Value::Str(if op == b'U' || op == b'T' {
                    s.iter().map(|&c| char::from(c)).collect()
                } else {
                    String::from_utf8(s.to_vec()).map_err(|_| format!("bad UTF-8 at byte {at}"))?
                }));
            }
            b'C' | b'B' | 0x8e | 0x96 => {
                // SHORT_BINBYTES, BINBYTES, BINBYTES8, BYTEARRAY8
                let n = match op {
                    b'C' => take(&mut p, 1)?[0] as usize,
                    b'B' => le(take(&mut p, 4)?) as usize,
                    _ => le(take(&mut p, 8)?) as usize,
                };
                stack.push(Value::Bytes(take(&mut p, n)?.to_vec()));
            }
            b'q' | b'r' | 0x94 => {
                let k = match op {
                    b'q' => u64::from(take(&mut p, 1)?[0]),
                    b'r' => le(take(&mut p, 4)?),
                    _ => memo.len() as u64,
                };
                let v = copy(stack.last().ok_or("memo of an empty stack")?, at)?;
                memo.insert(k, v);
            }
            b'h' | b'j' => {
                let k = if op == b'h' { u64::from(take(&mut p, 1)?[0]) } else { le(take(&mut p, 4)?) };
                let v = memo.get(&k).ok_or_else(|| format!("unknown memo {k} at byte {at}"))?;
                stack.push(copy(v, at)?);
            }
            b'c' => {
                let rest = &b[p..];
                let nl1 = rest.iter().position(|&c| c == b'\n').ok_or("bad GLOBAL")?;
                let nl2 = rest[nl1 + 1..].iter().position(|&c| c == b'\n').ok_or("bad GLOBAL")?;
                let module = String::from_utf8_lossy(&rest[..nl1]).into_owned();
                let name = String::from_utf8_lossy(&rest[nl1 + 1..nl1 + 1 + nl2]).into_owned();
                p += nl1 + nl2 + 2;
                stack.push(Value::Global(module, name));
            }
            0x93 => {
                let name = pop(&mut stack, at)?.as_string().ok_or("bad STACK_GLOBAL")?;
                let module = pop(&mut stack, at)?.as_string().ok_or("bad STACK_GLOBAL")?;
                stack.push(Value::Global(module, name));
            }
            b't' => {
                let items = pop_mark(&mut stack, &mut marks, at)?;
                stack.push(Value::Tuple(items));
            }
            0x85..=0x87 => {
                let n = usize::from(op - 0x84);
                if stack.len() < n {
                    return Err(format!("stack underflow at byte {at}"));
                }
                let items = stack.split_off(stack.len() - n);
                stack.push(Value::Tuple(items));
            }
            b'l' => {
                let items = pop_mark(&mut stack, &mut marks, at)?;
                stack.push(Value::List(items));
            }
            b'd' => {
                let items = pop_mark(&mut stack, &mut marks, at)?;
                let mut it = items.into_iter();
                let mut d = Vec::new();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    d.push((k, v));
                }
                stack.push(Value::Dict(d));
            }
            b'a' => {
                let v = pop(&mut stack, at)?;
                match stack.last_mut() {
                    Some(Value::List(l)) => l.push(v),
                    _ => return Err(format!("APPEND to a non-list at byte {at}")),
                }
            }
            b'e' => {
                let items = pop_mark(&mut stack, &mut marks, at)?;
                match stack.last_mut() {
                    Some(Value::List(l)) => l.extend(items),
                    _ => return Err(format!("APPENDS to a non-list at byte {at}")),
                }
            }
            b's' | b'u' => {
                let items = if op == b's' {
                    let v = pop(&mut stack, at)?;
                    let k = pop(&mut stack, at)?;
                    vec![k, v]
                } else {
                    pop_mark(&mut stack, &mut marks, at)?
                };
                match stack.last_mut() {
                    Some(Value::Dict(d)) => {
                        let mut it = items.into_iter();
                        while let (Some(k), Some(v)) = (it.next(), it.next()) {
                            d.push((k, v));
                        }
                    }
                    _ => return Err(format!("SETITEM on a non-dict at byte {at}")),
                }
            }
            b'R' | 0x81 => {
                // REDUCE, NEWOBJ
                let args = pop(&mut stack, at)?;
                let func = pop(&mut stack, at)?;
                let v = match (&func, &args) {
                    (Value::Global(m, n), Value::Tuple(a)) if m == "_codecs" && n == "encode" => {
                        // Python 3 writes bytes under protocol 2 as _codecs.encode(str, "latin1").
                        Value::Bytes(a.first().and_then(Value::as_bytes).ok_or("bad _codecs.encode")?)
                    }
                    (Value::Global(m, n), Value::Tuple(a)) if m == "builtins" && n == "bytearray" => {
                        Value::Bytes(a.first().and_then(Value::as_bytes).unwrap_or_default())
                    }
                    _ => Value::Reduce { func: Box::new(func), args: Box::new(args), state: None },
                };
                stack.push(v);
            }
            b'b' => {
                let st = pop(&mut stack, at)?;
                match stack.last_mut() {
                    Some(Value::Reduce { state, .. }) => *state = Some(Box::new(st)),
                    _ => return Err(format!("BUILD on an unsupported object at byte {at}")),
                }
            }
            b'0' => {
                pop(&mut stack, at)?;
            }
            b'2' => {
                let v = copy(stack.last().ok_or("DUP of an empty stack")?, at)?;
                stack.push(v);
            }
            _ => return Err(format!("unsupported pickle opcode 0x{op:02x} at byte {at}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python2_style_dict_with_a_uint8_array() {
        // What Python 2's cPickle.dump({'labels': [3, 300], 'data': np.array([[1, 2, 255]], np.uint8)}, f, 2)
        // writes, built opcode by opcode.
        let mut p: Vec<u8> = vec![0x80, 2, b'}', b'q', 1, b'(', b'U', 6];
        p.extend(b"labels");
        p.extend([b']', b'(', b'K', 3, b'M', 0x2c, 1, b'e', b'U', 4]);
        p.extend(b"data");
        p.extend(b"cnumpy.core.multiarray\n_reconstruct\n");
        p.extend(b"cnumpy\nndarray\n");
        p.extend([b'K', 0, 0x85, b'U', 1, b'b', 0x87, b'R']);
        p.extend([b'(', b'K', 1, b'K', 1, b'K', 3, 0x86]);
        p.extend(b"cnumpy\ndtype\n");
        p.extend([b'U', 2]);
        p.extend(b"u1");
        p.extend([b'K', 0, b'K', 1, 0x87, b'R', b'(', b'K', 3, b'U', 1, b'|', b'N', b'N', b'N', b'J']);
        p.extend((-1i32).to_le_bytes());
        p.extend([b'J']);
        p.extend((-1i32).to_le_bytes());
        p.extend([b'K', 0, b't', b'b', 0x89, b'U', 3, 1, 2, 255, b't', b'b', b'u', b'.']);
        let v = load(&p).unwrap();
        assert_eq!(v.get("labels").unwrap().as_ints(), Some(vec![3, 300]));
        let (shape, dtype, data) = v.get("data").unwrap().as_array().unwrap();
        assert_eq!((shape, dtype.as_str(), data), (vec![1, 3], "u1", vec![1, 2, 255]));
        assert!(load(&p[..p.len() - 5]).unwrap_err().contains("truncated"));
    }

    #[test]
    fn hostile_pickles_are_errors_at_once() {
        // Memo gets, or DUPs, that double a list 60 times (about 1e18 values).
        let start = std::time::Instant::now();
        let mut gets = vec![0x80, 2, b']', b'q', 0];
        let mut dups = vec![0x80, 2, b']'];
        for _ in 0..60 {
            gets.extend([b'(', b'h', 0, b'h', 0, b'l', b'q', 0]);
            dups.extend([b'2', 0x86]);
        }
        for bomb in [gets, dups] {
            assert!(load(&bomb).unwrap_err().contains("memo copies too much"));
        }
        assert!(start.elapsed().as_secs() < 10);
        // Lengths at the end of their integers.
        for op in [0x8d, 0x8e, 0x96] {
            let mut p = vec![0x80, 4, op];
            p.extend(u64::MAX.to_le_bytes());
            assert!(load(&p).unwrap_err().contains("truncated"), "{op}");
        }
    }
}
