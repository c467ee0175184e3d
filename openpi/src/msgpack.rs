//! The subset of MessagePack the openpi protocol uses, read without trusting the
//! sender: every length is checked against the bytes that are left before anything
//! is allocated, and nesting is bounded, so a short hostile message cannot make the
//! reader allocate gigabytes or recurse off the stack.

use std::fmt;

/// Deepest nesting of arrays and maps accepted (observations nest two or three).
pub const MAX_DEPTH: usize = 32;

/// A decoded value; strings and binaries borrow from the message.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    Nil,
    Bool(bool),
    /// Every integer (uint64 values above `i64::MAX` are refused).
    Int(i64),
    Float(f64),
    Str(&'a str),
    Bin(&'a [u8]),
    Array(Vec<Value<'a>>),
    Map(Vec<(Value<'a>, Value<'a>)>),
    /// An extension type (`type`, payload); nothing in the protocol uses one.
    Ext(i8, &'a [u8]),
}

impl<'a> Value<'a> {
    /// A map's value for a key written as a string or as bytes (Python's
    /// msgpack writes `b"..."` keys as bin, `"..."` keys as str).
    pub fn get(&self, key: &str) -> Option<&Value<'a>> {
        match self {
            Value::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.key_text() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// The text of a str or (UTF-8) bin value.
    pub fn key_text(&self) -> Option<&'a str> {
        match *self {
            Value::Str(s) => Some(s),
            Value::Bin(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::Int(i) => Some(i as f64),
            Value::Float(f) => Some(f),
            _ => None,
        }
    }

    /// What the value is, for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Nil => "nil",
            Value::Bool(_) => "a bool",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Str(_) => "a string",
            Value::Bin(_) => "bytes",
            Value::Array(_) => "an array",
            Value::Map(_) => "a map",
            Value::Ext(..) => "an extension value",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("the message ends inside a value (at byte {0})")]
    Truncated(usize),
    #[error("byte 0x{byte:02x} at {at} starts no MessagePack value")]
    Reserved { byte: u8, at: usize },
    #[error("a string at byte {0} is not UTF-8")]
    NotUtf8(usize),
    #[error("an unsigned integer at byte {0} does not fit in int64")]
    IntegerTooLarge(usize),
    #[error("values nest deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("{0} bytes follow the first value")]
    TrailingBytes(usize),
}

/// Decodes one message that holds exactly one value.
pub fn decode(bytes: &[u8]) -> Result<Value<'_>, DecodeError> {
    let mut reader = Reader { bytes, at: 0 };
    let value = reader.value(0)?;
    match bytes.len() - reader.at {
        0 => Ok(value),
        rest => Err(DecodeError::TrailingBytes(rest)),
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or(DecodeError::Truncated(self.at))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn len(&mut self, width: usize) -> Result<usize, DecodeError> {
        Ok(match width {
            1 => self.array::<1>()?[0] as usize,
            2 => u16::from_be_bytes(self.array()?) as usize,
            _ => u32::from_be_bytes(self.array()?) as usize,
        })
    }

    fn str(&mut self, len: usize) -> Result<Value<'a>, DecodeError> {
        let at = self.at;
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes)
            .map(Value::Str)
            .map_err(|_| DecodeError::NotUtf8(at))
    }

    /// Elements of an array or map: each takes at least one byte, so a count
    /// beyond the bytes left is refused before anything is reserved.
    fn count(&self, count: usize) -> Result<usize, DecodeError> {
        if count > self.bytes.len() - self.at {
            return Err(DecodeError::Truncated(self.at));
        }
        Ok(count)
    }

    fn items(&mut self, count: usize, depth: usize) -> Result<Value<'a>, DecodeError> {
        let count = self.count(count)?;
        let mut items = Vec::with_capacity(count);
        for _ in 0..count {
            items.push(self.value(depth + 1)?);
        }
        Ok(Value::Array(items))
    }

    fn entries(&mut self, count: usize, depth: usize) -> Result<Value<'a>, DecodeError> {
        let count = self.count(count)?;
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            let key = self.value(depth + 1)?;
            entries.push((key, self.value(depth + 1)?));
        }
        Ok(Value::Map(entries))
    }

    fn ext(&mut self, len: usize) -> Result<Value<'a>, DecodeError> {
        let kind = self.array::<1>()?[0] as i8;
        Ok(Value::Ext(kind, self.take(len)?))
    }

    fn value(&mut self, depth: usize) -> Result<Value<'a>, DecodeError> {
        if depth > MAX_DEPTH {
            return Err(DecodeError::TooDeep);
        }
        let at = self.at;
        let byte = self.array::<1>()?[0];
        Ok(match byte {
            0x00..=0x7f => Value::Int(byte as i64),
            0x80..=0x8f => self.entries((byte & 0x0f) as usize, depth)?,
            0x90..=0x9f => self.items((byte & 0x0f) as usize, depth)?,
            0xa0..=0xbf => self.str((byte & 0x1f) as usize)?,
            0xc0 => Value::Nil,
            0xc2 => Value::Bool(false),
            0xc3 => Value::Bool(true),
            0xc4..=0xc6 => {
                let len = self.len(1 << (byte - 0xc4))?;
                Value::Bin(self.take(len)?)
            }
            0xc7..=0xc9 => {
                let len = self.len(1 << (byte - 0xc7))?;
                self.ext(len)?
            }
            0xca => Value::Float(f32::from_be_bytes(self.array()?) as f64),
            0xcb => Value::Float(f64::from_be_bytes(self.array()?)),
            0xcc => Value::Int(self.array::<1>()?[0] as i64),
            0xcd => Value::Int(u16::from_be_bytes(self.array()?) as i64),
            0xce => Value::Int(u32::from_be_bytes(self.array()?) as i64),
            0xcf => {
                let v = u64::from_be_bytes(self.array()?);
                Value::Int(i64::try_from(v).map_err(|_| DecodeError::IntegerTooLarge(at))?)
            }
            0xd0 => Value::Int(self.array::<1>()?[0] as i8 as i64),
            0xd1 => Value::Int(i16::from_be_bytes(self.array()?) as i64),
            0xd2 => Value::Int(i32::from_be_bytes(self.array()?) as i64),
            0xd3 => Value::Int(i64::from_be_bytes(self.array()?)),
            0xd4..=0xd8 => self.ext(1 << (byte - 0xd4))?,
            0xd9..=0xdb => {
                let len = self.len(1 << (byte - 0xd9))?;
                self.str(len)?
            }
            0xdc | 0xdd => {
                let len = self.len(if byte == 0xdc { 2 } else { 4 })?;
                self.items(len, depth)?
            }
            0xde | 0xdf => {
                let len = self.len(if byte == 0xde { 2 } else { 4 })?;
                self.entries(len, depth)?
            }
            0xe0..=0xff => Value::Int(byte as i8 as i64),
            0xc1 => return Err(DecodeError::Reserved { byte, at }),
        })
    }
}

/// Writes MessagePack into a growing buffer, in the smallest encodings (as
/// Python's msgpack does).
#[derive(Default)]
pub struct Writer {
    pub bytes: Vec<u8>,
}

impl fmt::Debug for Writer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Writer({} bytes)", self.bytes.len())
    }
}

impl Writer {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    pub fn nil(&mut self) -> &mut Self {
        self.bytes.push(0xc0);
        self
    }

    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.bytes.push(if v { 0xc3 } else { 0xc2 });
        self
    }

    pub fn int(&mut self, v: i64) -> &mut Self {
        match v {
            0..=0x7f => self.bytes.push(v as u8),
            -32..=-1 => self.bytes.push(v as i8 as u8),
            0x80..=0xff => self.bytes.extend_from_slice(&[0xcc, v as u8]),
            0x100..=0xffff => self.head(0xcd, &(v as u16).to_be_bytes()),
            0x1_0000..=0xffff_ffff => self.head(0xce, &(v as u32).to_be_bytes()),
            0x1_0000_0000.. => self.head(0xcf, &(v as u64).to_be_bytes()),
            -0x80..=-33 => self.bytes.extend_from_slice(&[0xd0, v as i8 as u8]),
            -0x8000..=-0x81 => self.head(0xd1, &(v as i16).to_be_bytes()),
            -0x8000_0000..=-0x8001 => self.head(0xd2, &(v as i32).to_be_bytes()),
            _ => self.head(0xd3, &v.to_be_bytes()),
        }
        self
    }

    pub fn float(&mut self, v: f64) -> &mut Self {
        self.head(0xcb, &v.to_be_bytes());
        self
    }

    pub fn str(&mut self, s: &str) -> &mut Self {
        let len = s.len();
        match len {
            0..=31 => self.bytes.push(0xa0 | len as u8),
            32..=0xff => self.bytes.extend_from_slice(&[0xd9, len as u8]),
            0x100..=0xffff => self.head(0xda, &(len as u16).to_be_bytes()),
            _ => self.head(0xdb, &(len as u32).to_be_bytes()),
        }
        self.bytes.extend_from_slice(s.as_bytes());
        self
    }

    pub fn bin(&mut self, b: &[u8]) -> &mut Self {
        let len = b.len();
        match len {
            0..=0xff => self.bytes.extend_from_slice(&[0xc4, len as u8]),
            0x100..=0xffff => self.head(0xc5, &(len as u16).to_be_bytes()),
            _ => self.head(0xc6, &(len as u32).to_be_bytes()),
        }
        self.bytes.extend_from_slice(b);
        self
    }

    /// Starts an array of `len` values (write them next).
    pub fn array(&mut self, len: usize) -> &mut Self {
        match len {
            0..=15 => self.bytes.push(0x90 | len as u8),
            16..=0xffff => self.head(0xdc, &(len as u16).to_be_bytes()),
            _ => self.head(0xdd, &(len as u32).to_be_bytes()),
        }
        self
    }

    /// Starts a map of `len` entries (write key, value, key, value, ... next).
    pub fn map(&mut self, len: usize) -> &mut Self {
        match len {
            0..=15 => self.bytes.push(0x80 | len as u8),
            16..=0xffff => self.head(0xde, &(len as u16).to_be_bytes()),
            _ => self.head(0xdf, &(len as u32).to_be_bytes()),
        }
        self
    }

    fn head(&mut self, marker: u8, rest: &[u8]) {
        self.bytes.push(marker);
        self.bytes.extend_from_slice(rest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_round_trip_at_every_encoding_boundary() {
        for v in [
            0,
            1,
            127,
            128,
            255,
            256,
            65535,
            65536,
            u32::MAX as i64,
            u32::MAX as i64 + 1,
            i64::MAX,
            -1,
            -32,
            -33,
            -128,
            -129,
            -32768,
            -32769,
            i32::MIN as i64,
            i32::MIN as i64 - 1,
            i64::MIN,
        ] {
            let mut w = Writer::new();
            w.int(v);
            assert_eq!(decode(&w.bytes), Ok(Value::Int(v)), "{v}");
        }
    }

    #[test]
    fn known_bytes_decode() {
        // {"a": [1, -1, 1.5, nil, true], b"k": "xy"} as Python's msgpack writes it.
        let bytes = [
            0x82, 0xa1, b'a', 0x95, 0x01, 0xff, 0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0, 0xc0, 0xc3,
            0xc4, 0x01, b'k', 0xa2, b'x', b'y',
        ];
        let value = decode(&bytes).unwrap();
        assert_eq!(
            value.get("a"),
            Some(&Value::Array(vec![
                Value::Int(1),
                Value::Int(-1),
                Value::Float(1.5),
                Value::Nil,
                Value::Bool(true)
            ]))
        );
        assert_eq!(value.get("k"), Some(&Value::Str("xy")));
    }

    #[test]
    fn hostile_lengths_are_refused_before_allocating() {
        // An array32 that claims 4 billion elements, in five bytes.
        assert_eq!(
            decode(&[0xdd, 0xff, 0xff, 0xff, 0xff]),
            Err(DecodeError::Truncated(5))
        );
        // A bin32 that claims 4 GB.
        assert!(matches!(
            decode(&[0xc6, 0xff, 0xff, 0xff, 0xff, 0]),
            Err(DecodeError::Truncated(_))
        ));
        // Nesting bombs.
        assert_eq!(decode(&[0x91; 100]), Err(DecodeError::TooDeep));
        assert_eq!(
            decode(&[0xc1]),
            Err(DecodeError::Reserved { byte: 0xc1, at: 0 })
        );
        assert_eq!(decode(&[0x01, 0x02]), Err(DecodeError::TrailingBytes(1)));
    }

    #[test]
    fn every_prefix_of_a_message_is_refused_cleanly() {
        let mut w = Writer::new();
        w.map(2)
            .str("data")
            .bin(&[7; 300])
            .str("shape")
            .array(2)
            .int(10)
            .int(30);
        for end in 0..w.bytes.len() {
            assert!(decode(&w.bytes[..end]).is_err(), "prefix {end}");
        }
        assert!(decode(&w.bytes).is_ok());
    }
}
