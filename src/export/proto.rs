//! The protocol-buffer wire format, as far as TensorBoard's event files need
//! it: varints, length-delimited fields, doubles and floats (encoding only).

/// A message being encoded.
#[derive(Debug, Default, Clone)]
pub struct Msg(pub Vec<u8>);

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

impl Msg {
    fn key(&mut self, field: u32, wire: u8) {
        varint(&mut self.0, (u64::from(field) << 3) | u64::from(wire));
    }
    /// An int32/int64/enum/bool field (varint); zero is still written.
    pub fn int(mut self, field: u32, v: i64) -> Msg {
        self.key(field, 0);
        varint(&mut self.0, v as u64);
        self
    }
    /// A double field.
    pub fn double(mut self, field: u32, v: f64) -> Msg {
        self.key(field, 1);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// A float field.
    pub fn float(mut self, field: u32, v: f32) -> Msg {
        self.key(field, 5);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// A bytes field.
    pub fn bytes(mut self, field: u32, b: &[u8]) -> Msg {
        self.key(field, 2);
        varint(&mut self.0, b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }
    /// A string field.
    pub fn string(self, field: u32, s: &str) -> Msg {
        self.bytes(field, s.as_bytes())
    }
    /// An embedded message field.
    pub fn msg(self, field: u32, m: &Msg) -> Msg {
        self.bytes(field, &m.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_as_protobuf_does() {
        // Examples from the protocol buffers encoding guide.
        assert_eq!(Msg::default().int(1, 150).0, [0x08, 0x96, 0x01]);
        assert_eq!(Msg::default().string(2, "testing").0, b"\x12\x07testing");
        // TensorBoard's hparams NULL_TENSOR: dtype DT_FLOAT, shape [0].
        let shape = Msg::default().msg(2, &Msg::default());
        assert_eq!(Msg::default().int(1, 1).msg(2, &shape).0, [0x08, 0x01, 0x12, 0x02, 0x12, 0x00]);
        assert_eq!(Msg::default().double(1, 1.0).0[..1], [0x09]);
        assert_eq!(Msg::default().float(2, 0.5).0, [0x15, 0, 0, 0, 0x3f]);
    }
}
