//! A reader of MATLAB's level 5 MAT-files (what MATLAB's `save` writes up to
//! `-v7`, and SVHN is published in): the numeric arrays, by name.
//!
//! A file is a 128-byte header (text; the version; `IM` or `MI` giving the
//! byte order) and data elements, each an 8-byte tag (type, byte count; a
//! "small" element packs both in 4 bytes and its data in the other 4) and its
//! data padded to 8 bytes. A variable is an `miMATRIX` element, or an
//! `miCOMPRESSED` one holding it zlib-compressed (`-v7`); inside, the array
//! flags (class), the dimensions, the name and the real part, whose element
//! type may be narrower than the class (MATLAB stores a double array of small
//! integers as `miUINT8`). Cells, structs, objects, characters, sparse and
//! complex arrays are listed without their data; nothing else is read.

use std::io::Read;

/// A numeric array of a MAT-file, in MATLAB's column-major order.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    /// The variable's name.
    pub name: String,
    /// MATLAB's class: `double`, `single`, `uint8`, …; `cell`, `struct`,
    /// `char`, `sparse`, `complex`… for an array whose data is not read.
    pub class: &'static str,
    /// The dimensions (at least two).
    pub dims: Vec<usize>,
    /// The elements as stored: their type, byte order and bytes.
    data: Data,
}

#[derive(Debug, Clone, PartialEq)]
struct Data {
    mi: u32,
    big_endian: bool,
    bytes: Vec<u8>,
}

/// Element types of data elements (`mi*`).
const MI_INT8: u32 = 1;
const MI_UINT8: u32 = 2;
const MI_INT16: u32 = 3;
const MI_UINT16: u32 = 4;
const MI_INT32: u32 = 5;
const MI_UINT32: u32 = 6;
const MI_SINGLE: u32 = 7;
const MI_DOUBLE: u32 = 9;
const MI_INT64: u32 = 12;
const MI_UINT64: u32 = 13;
const MI_MATRIX: u32 = 14;
const MI_COMPRESSED: u32 = 15;

const CLASSES: [&str; 16] = [
    "unknown", "cell", "struct", "object", "char", "sparse", "double", "single", "int8", "uint8", "int16", "uint16",
    "int32", "uint32", "int64", "uint64",
];

fn mi_size(mi: u32) -> Option<usize> {
    Some(match mi {
        MI_INT8 | MI_UINT8 => 1,
        MI_INT16 | MI_UINT16 => 2,
        MI_INT32 | MI_UINT32 | MI_SINGLE => 4,
        MI_DOUBLE | MI_INT64 | MI_UINT64 => 8,
        _ => return None,
    })
}

impl Array {
    /// Whether the data was read (a real numeric array).
    pub fn is_numeric(&self) -> bool {
        mi_size(self.data.mi).is_some()
    }

    /// Number of elements (`usize::MAX` where the dimensions of an array
    /// whose data was not read multiply past it: a damaged header).
    pub fn len(&self) -> usize {
        self.dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).unwrap_or(usize::MAX)
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements' bytes when they are stored as unsigned bytes (a `uint8`
    /// array, or a wider class whose values MATLAB stored as bytes).
    pub fn as_u8(&self) -> Option<&[u8]> {
        (self.data.mi == MI_UINT8).then_some(self.data.bytes.as_slice())
    }

    /// The elements as `f64`, whatever their stored type (64-bit integers
    /// beyond 2^53 round); `None` for an array whose data was not read.
    pub fn to_f64(&self) -> Option<Vec<f64>> {
        let size = mi_size(self.data.mi)?;
        let be = self.data.big_endian;
        let v = self.data.bytes.chunks_exact(size).map(|b| {
            let mut a = [0u8; 8];
            a[..size].copy_from_slice(b);
            if be {
                a[..size].reverse();
            }
            match self.data.mi {
                MI_INT8 => f64::from(a[0] as i8),
                MI_UINT8 => f64::from(a[0]),
                MI_INT16 => f64::from(i16::from_le_bytes([a[0], a[1]])),
                MI_UINT16 => f64::from(u16::from_le_bytes([a[0], a[1]])),
                MI_INT32 => f64::from(i32::from_le_bytes([a[0], a[1], a[2], a[3]])),
                MI_UINT32 => f64::from(u32::from_le_bytes([a[0], a[1], a[2], a[3]])),
                MI_SINGLE => f64::from(f32::from_le_bytes([a[0], a[1], a[2], a[3]])),
                MI_DOUBLE => f64::from_le_bytes(a),
                MI_INT64 => i64::from_le_bytes(a) as f64,
                _ => u64::from_le_bytes(a) as f64,
            }
        });
        Some(v.collect())
    }
}

/// Reads every variable of a MAT-file (level 5) from `r`.
///
/// # Errors
/// Not a level 5 MAT-file (a v7.3 file is HDF5: said so), or a damaged one:
/// what is wrong and at which byte. A compressed element that says it
/// unpacks to more than this process may use ([`crate::memory::available`])
/// is refused before it is unpacked.
pub fn read(r: impl Read) -> Result<Vec<Array>, String> {
    read_within(r, crate::memory::available())
}

/// [`read`], refusing a compressed element that says it unpacks to more than
/// `limit` bytes (`None`: the format's own limit, 4 GiB).
pub fn read_within(mut r: impl Read, limit: Option<u64>) -> Result<Vec<Array>, String> {
    let mut header = [0u8; 128];
    r.read_exact(&mut header).map_err(|e| format!("not a MAT-file: cannot read its 128-byte header ({e})"))?;
    let big_endian = match &header[126..128] {
        b"IM" => false,
        b"MI" => true,
        _ if header.starts_with(b"MATLAB 7.3") => {
            return Err(
                "a MATLAB 7.3 (HDF5) file: save it with -v7 (or read it with h5py and write another format)".into()
            )
        }
        _ if header.starts_with(b"MATLAB") => {
            return Err("not a level 5 MAT-file: its header has no byte-order mark".into());
        }
        _ => return Err("not a MAT-file: it does not start with a MATLAB header".into()),
    };
    let mut out = Vec::new();
    let mut offset = 128u64;
    loop {
        let mut tag = [0u8; 8];
        match read_full(&mut r, &mut tag).map_err(|e| format!("cannot read at byte {offset}: {e}"))? {
            0 => return Ok(out),
            8 => {}
            n => return Err(format!("truncated: {n} bytes of an element's tag at byte {offset}")),
        }
        let (mi, n) = (u32_at(&tag, 0, big_endian), u32_at(&tag, 4, big_endian) as usize);
        let mut body = Vec::new();
        let padded = if mi == MI_COMPRESSED { n } else { n.next_multiple_of(8) };
        (&mut r)
            .take(padded as u64)
            .read_to_end(&mut body)
            .map_err(|e| format!("cannot read at byte {offset}: {e}"))?;
        if body.len() < n {
            return Err(format!(
                "truncated: the element at byte {offset} says {n} bytes, the file holds {}",
                body.len()
            ));
        }
        body.truncate(n);
        let at = offset;
        offset += 8 + padded as u64;
        let (mi, body) = if mi == MI_COMPRESSED {
            // The inner element's tag first, then no more than the length it gives: a small
            // stream can inflate to gigabytes.
            let undecodable = |e: std::io::Error| {
                format!("the compressed element at byte {at} does not decompress: {e} (a damaged file)")
            };
            let mut z = flate2::read::ZlibDecoder::new(body.as_slice());
            let mut inner = Vec::new();
            (&mut z).take(8).read_to_end(&mut inner).map_err(undecodable)?;
            let (mi, len, start) =
                tag_of(&inner, 0, big_endian).ok_or_else(|| format!("empty element at byte {at}"))?;
            if let Some(limit) = limit.filter(|&l| len as u64 > l) {
                return Err(format!(
                    "the compressed element at byte {at} says it unpacks to {len} bytes, more than this process may \
                     use ({}): a damaged file",
                    crate::memory::describe(limit)
                ));
            }
            let rest = (start + len).saturating_sub(inner.len());
            (&mut z).take(rest as u64).read_to_end(&mut inner).map_err(undecodable)?;
            if inner.len() - start < len {
                let held = inner.len() - start;
                return Err(format!("truncated: the compressed element at byte {at} holds {held} of {len} bytes"));
            }
            inner.drain(..start);
            inner.truncate(len);
            (mi, inner)
        } else {
            (mi, body)
        };
        if mi == MI_MATRIX && !body.is_empty() {
            let (mut array, range) =
                matrix(&body, big_endian).map_err(|e| format!("the variable at byte {at}: {e}"))?;
            if let Some(range) = range {
                // The real part, without a copy of what may be most of the file.
                let mut bytes = body;
                bytes.truncate(range.end);
                bytes.drain(..range.start);
                array.data.bytes = bytes;
            }
            out.push(array);
        }
    }
}

/// Reads into `buf` until it is full or the input ends; the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

fn u32_at(b: &[u8], at: usize, big_endian: bool) -> u32 {
    let a = [b[at], b[at + 1], b[at + 2], b[at + 3]];
    if big_endian {
        u32::from_be_bytes(a)
    } else {
        u32::from_le_bytes(a)
    }
}

/// The tag at `at`: its type, byte count and where its data starts (a small
/// element's 4 bytes follow its 4-byte tag).
fn tag_of(b: &[u8], at: usize, big_endian: bool) -> Option<(u32, usize, usize)> {
    if b.len() < at + 8 {
        return None;
    }
    let first = u32_at(b, at, big_endian);
    if first >> 16 != 0 {
        Some((first & 0xffff, (first >> 16) as usize, at + 4))
    } else {
        Some((first, u32_at(b, at + 4, big_endian) as usize, at + 8))
    }
}

/// The sub-elements of a matrix, in order: (type, data).
fn elements(b: &[u8], big_endian: bool) -> Result<Vec<(u32, &[u8])>, String> {
    let mut at = 0;
    let mut out = Vec::new();
    while at < b.len() {
        let (mi, n, start) = tag_of(b, at, big_endian).ok_or("a truncated sub-element tag")?;
        let data = b.get(start..start + n).ok_or_else(|| format!("a sub-element of {n} bytes past its end"))?;
        out.push((mi, data));
        at = if start == at + 4 { at + 8 } else { start + n.next_multiple_of(8) };
    }
    Ok(out)
}

/// The array a matrix element describes, without its data, and where in
/// `b` its real part is (for a numeric array).
fn matrix(b: &[u8], big_endian: bool) -> Result<(Array, Option<std::ops::Range<usize>>), String> {
    let el = elements(b, big_endian)?;
    let [(_, flags), (_, dims), (_, name), rest @ ..] = el.as_slice() else {
        return Err("fewer than the three sub-elements of an array (flags, dimensions, name)".into());
    };
    if flags.len() < 4 || dims.len() % 4 != 0 || dims.len() < 8 {
        return Err("damaged array flags or dimensions".into());
    }
    let f = u32_at(flags, 0, big_endian);
    let complex = f & 0x800 != 0;
    let class_id = (f & 0xff) as usize;
    let dims: Vec<usize> = dims.chunks_exact(4).map(|d| u32_at(d, 0, big_endian) as usize).collect();
    let name = String::from_utf8_lossy(name).into_owned();
    let class = CLASSES.get(class_id).copied().unwrap_or("unknown");
    let numeric = (6..=15).contains(&class_id) && !complex;
    let (mi, range) = match rest.first() {
        Some(&(mi, bytes)) if numeric => {
            let size = mi_size(mi).ok_or_else(|| format!("`{name}`: element type {mi} is not a number type"))?;
            let count = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or("too many elements")?;
            if Some(bytes.len()) != count.checked_mul(size) {
                let shape = dims.iter().map(ToString::to_string).collect::<Vec<_>>().join("x");
                return Err(format!("`{name}` is {shape} but holds {} bytes of {size}-byte elements", bytes.len()));
            }
            // `bytes` is a slice of `b`: its offset there.
            let start = bytes.as_ptr() as usize - b.as_ptr() as usize;
            (mi, Some(start..start + bytes.len()))
        }
        _ if numeric && dims.contains(&0) => (MI_DOUBLE, None),
        _ => (0, None),
    };
    let class = if complex { "complex" } else { class };
    Ok((Array { name, class, dims, data: Data { mi, big_endian, bytes: Vec::new() } }, range))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_element_packs_its_tag_and_data_in_eight_bytes() {
        // miINT8, 1 byte, "a", padding: one 8-byte element.
        let b = [1, 0, 1, 0, b'a', 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0];
        let el = elements(&b, false).unwrap();
        assert_eq!(el, vec![(1, &b"a"[..]), (2, &[7u8][..])]);
    }

    #[test]
    fn other_files_are_named_for_what_they_are() {
        assert!(read(&b"hello"[..]).unwrap_err().contains("not a MAT-file"));
        let mut h73 = b"MATLAB 7.3 MAT-file, Platform: GLNXA64".to_vec();
        h73.resize(128, b' ');
        assert!(read(h73.as_slice()).unwrap_err().contains("HDF5"));
    }
}
