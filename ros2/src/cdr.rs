//! CDR (OMG XCDR1, little endian), the encoding ROS 2 middlewares put on the
//! wire: a 4-byte encapsulation header (`00 01 00 00`), then every primitive
//! aligned to its size counted from after the header, strings as a u32 length
//! (with the NUL) + bytes + NUL, sequences as a u32 count + elements.

use thiserror::Error;

/// Encapsulation header of plain CDR, little endian.
pub const CDR_LE: [u8; 4] = [0x00, 0x01, 0x00, 0x00];

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CdrError {
    #[error("the message ends at byte {0}, inside a value")]
    Truncated(usize),
    #[error("encapsulation {0:02x?} is not little-endian plain CDR (00 01 00 00)")]
    Encapsulation([u8; 4]),
    #[error("a string at byte {0} is not NUL-terminated UTF-8")]
    BadString(usize),
    #[error("a sequence at byte {at} claims {count} elements, more than the {left} bytes left")]
    TooLong {
        at: usize,
        count: usize,
        left: usize,
    },
}

/// Appends CDR to a buffer (cleared by [`Writer::begin`], so it is reused).
#[derive(Debug, Default)]
pub struct Writer {
    pub bytes: Vec<u8>,
}

impl Writer {
    /// Starts a message: clears the buffer and writes the header.
    pub fn begin(&mut self) -> &mut Self {
        self.bytes.clear();
        self.bytes.extend_from_slice(&CDR_LE);
        self
    }

    fn align(&mut self, n: usize) {
        let body = self.bytes.len() - CDR_LE.len();
        let pad = (n - body % n) % n;
        self.bytes.resize(self.bytes.len() + pad, 0);
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.align(4);
        self.bytes.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn i32(&mut self, v: i32) -> &mut Self {
        self.align(4);
        self.bytes.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn f64(&mut self, v: f64) -> &mut Self {
        self.align(8);
        self.bytes.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn string(&mut self, s: &str) -> &mut Self {
        self.u32(s.len() as u32 + 1);
        self.bytes.extend_from_slice(s.as_bytes());
        self.bytes.push(0);
        self
    }

    pub fn f64s(&mut self, values: &[f64]) -> &mut Self {
        self.u32(values.len() as u32);
        if !values.is_empty() {
            self.align(8);
        }
        for v in values {
            self.bytes.extend_from_slice(&v.to_le_bytes());
        }
        self
    }

    pub fn strings<'a>(&mut self, values: impl ExactSizeIterator<Item = &'a str>) -> &mut Self {
        self.u32(values.len() as u32);
        for s in values {
            self.string(s);
        }
        self
    }
}

/// Reads CDR without trusting counts: a sequence longer than the bytes left
/// is refused before anything is allocated.
pub struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Result<Self, CdrError> {
        let header: [u8; 4] = bytes
            .get(..4)
            .and_then(|h| h.try_into().ok())
            .ok_or(CdrError::Truncated(bytes.len()))?;
        // Representation options (bytes 2..4) are ignored, as ROS 2 does.
        if header[..2] != CDR_LE[..2] {
            return Err(CdrError::Encapsulation(header));
        }
        Ok(Self { bytes, at: 4 })
    }

    fn take(&mut self, n: usize, align: usize) -> Result<&'a [u8], CdrError> {
        let body = self.at - CDR_LE.len();
        self.at += (align - body % align) % align;
        let end = self.at.checked_add(n).ok_or(CdrError::Truncated(self.at))?;
        let out = self
            .bytes
            .get(self.at..end)
            .ok_or(CdrError::Truncated(self.bytes.len()))?;
        self.at = end;
        Ok(out)
    }

    pub fn u32(&mut self) -> Result<u32, CdrError> {
        Ok(u32::from_le_bytes(self.take(4, 4)?.try_into().unwrap()))
    }

    pub fn i32(&mut self) -> Result<i32, CdrError> {
        Ok(i32::from_le_bytes(self.take(4, 4)?.try_into().unwrap()))
    }

    pub fn f64(&mut self) -> Result<f64, CdrError> {
        Ok(f64::from_le_bytes(self.take(8, 8)?.try_into().unwrap()))
    }

    /// A sequence's count, checked against the bytes left at `min_size` each.
    pub fn count(&mut self, min_size: usize) -> Result<usize, CdrError> {
        let at = self.at;
        let count = self.u32()? as usize;
        let left = self.bytes.len() - self.at;
        if count.saturating_mul(min_size) > left {
            return Err(CdrError::TooLong { at, count, left });
        }
        Ok(count)
    }

    pub fn string(&mut self) -> Result<&'a str, CdrError> {
        let at = self.at;
        let len = self.count(1)?;
        let raw = self.take(len, 1)?;
        match raw.split_last() {
            Some((0, text)) => std::str::from_utf8(text).map_err(|_| CdrError::BadString(at)),
            _ => Err(CdrError::BadString(at)),
        }
    }

    /// Appends a float64 sequence to `out`.
    pub fn f64s(&mut self, out: &mut Vec<f64>) -> Result<(), CdrError> {
        let count = self.count(8)?;
        for _ in 0..count {
            out.push(self.f64()?);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_from_after_the_header_and_terminates_strings() {
        let mut w = Writer::default();
        w.begin().string("ab").f64(1.5);
        // header | len 3 | 'a' 'b' NUL | pad to 8 | 1.5
        let mut expected = vec![0, 1, 0, 0, 3, 0, 0, 0, b'a', b'b', 0, 0];
        expected.extend_from_slice(&1.5f64.to_le_bytes());
        assert_eq!(w.bytes, expected);
        let mut r = Reader::new(&w.bytes).unwrap();
        assert_eq!(r.string().unwrap(), "ab");
        assert_eq!(r.f64().unwrap(), 1.5);
    }

    #[test]
    fn hostile_counts_are_refused_before_allocating() {
        let mut w = Writer::default();
        w.begin().u32(u32::MAX);
        let mut r = Reader::new(&w.bytes).unwrap();
        let mut out = Vec::new();
        assert!(matches!(r.f64s(&mut out), Err(CdrError::TooLong { .. })));
        assert!(out.capacity() == 0);
        assert!(Reader::new(&[0, 0, 0, 0]).is_err(), "big endian is refused");
        assert!(Reader::new(&[0, 1]).is_err());
        let mut w = Writer::default();
        w.begin().u32(3);
        w.bytes.extend_from_slice(b"abc");
        assert!(Reader::new(&w.bytes).unwrap().string().is_err(), "no NUL");
    }
}
