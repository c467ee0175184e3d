//! numpy arrays as openpi's `msgpack_numpy` sends them: a map
//! `{b"__ndarray__": True, b"data": <bytes>, b"dtype": "<f4", b"shape": [..]}`
//! (keys as bytes), scalars as `{b"__npgeneric__": True, b"data": v, b"dtype": ..}`.

use crate::msgpack::{Value, Writer};

/// Largest array accepted from a peer, in elements.
pub const MAX_ELEMENTS: usize = 64 << 20;

/// An element type numpy names by its `dtype.str`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    Bool,
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
}

impl Dtype {
    /// Parses `"<f4"`, `"|u1"`, `">i8"`, ...; returns the type and whether it is
    /// big-endian.
    pub fn parse(text: &str) -> Option<(Self, bool)> {
        let (order, code) = text.split_at_checked(1)?;
        let big = match order {
            "<" | "|" | "=" => false,
            ">" => true,
            _ => return None,
        };
        let dtype = match code {
            "b1" => Self::Bool,
            "u1" => Self::U8,
            "i1" => Self::I8,
            "u2" => Self::U16,
            "i2" => Self::I16,
            "u4" => Self::U32,
            "i4" => Self::I32,
            "u8" => Self::U64,
            "i8" => Self::I64,
            "f4" => Self::F32,
            "f8" => Self::F64,
            _ => return None,
        };
        Some((dtype, big))
    }

    pub fn size(self) -> usize {
        match self {
            Self::Bool | Self::U8 | Self::I8 => 1,
            Self::U16 | Self::I16 => 2,
            Self::U32 | Self::I32 | Self::F32 => 4,
            Self::U64 | Self::I64 | Self::F64 => 8,
        }
    }

    /// numpy's little-endian `dtype.str`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Bool => "|b1",
            Self::U8 => "|u1",
            Self::I8 => "|i1",
            Self::U16 => "<u2",
            Self::I16 => "<i2",
            Self::U32 => "<u4",
            Self::I32 => "<i4",
            Self::U64 => "<u8",
            Self::I64 => "<i8",
            Self::F32 => "<f4",
            Self::F64 => "<f8",
        }
    }
}

/// A decoded array: its bytes in native little-endian order.
#[derive(Debug, Clone, PartialEq)]
pub struct NdArray<'a> {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    data: std::borrow::Cow<'a, [u8]>,
}

impl<'a> NdArray<'a> {
    /// Reads an array (or a numpy scalar, as shape `[]`) from a decoded value;
    /// None when the value is neither. Errors describe what is wrong with one.
    pub fn from_value(value: &Value<'a>) -> Option<Result<Self, String>> {
        if value.get("__ndarray__").is_some() {
            return Some(Self::array(value));
        }
        if value.get("__npgeneric__").is_some() {
            return Some(Self::scalar(value));
        }
        None
    }

    fn dtype_of(value: &Value<'_>) -> Result<(Dtype, bool), String> {
        let text = value
            .get("dtype")
            .and_then(Value::key_text)
            .ok_or("has no `dtype` string")?;
        Dtype::parse(text).ok_or_else(|| {
            format!("has dtype `{text}`; supported: bool, (u)int8-64, float32, float64")
        })
    }

    fn array(value: &Value<'a>) -> Result<Self, String> {
        let (dtype, big) = Self::dtype_of(value)?;
        let Some(Value::Array(dims)) = value.get("shape") else {
            return Err("has no `shape` array".into());
        };
        let mut shape = Vec::with_capacity(dims.len());
        let mut elements = 1usize;
        for d in dims {
            let Value::Int(d) = *d else {
                return Err(format!("has a shape entry that is {}", d.type_name()));
            };
            let d = usize::try_from(d).map_err(|_| format!("has a negative dimension {d}"))?;
            elements = elements
                .checked_mul(d)
                .filter(|&n| n <= MAX_ELEMENTS)
                .ok_or_else(|| format!("has more than {MAX_ELEMENTS} elements"))?;
            shape.push(d);
        }
        let Some(Value::Bin(data)) = value.get("data") else {
            return Err("has no `data` bytes".into());
        };
        if data.len() != elements * dtype.size() {
            return Err(format!(
                "has {} data bytes, shape {shape:?} of {} needs {}",
                data.len(),
                dtype.name(),
                elements * dtype.size()
            ));
        }
        let data = if big && dtype.size() > 1 {
            let mut swapped = data.to_vec();
            for element in swapped.chunks_exact_mut(dtype.size()) {
                element.reverse();
            }
            std::borrow::Cow::Owned(swapped)
        } else {
            std::borrow::Cow::Borrowed(*data)
        };
        Ok(Self { dtype, shape, data })
    }

    fn scalar(value: &Value<'a>) -> Result<Self, String> {
        let (dtype, _) = Self::dtype_of(value)?;
        let data = match value.get("data") {
            Some(Value::Bool(b)) => f64::from(u8::from(*b)),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| format!("has scalar data that is {}", v.type_name()))?,
            None => return Err("has no `data`".into()),
        };
        Ok(Self::from_f64(&[], &[data]).with_dtype(dtype))
    }

    /// A float64 array (for building requests and replies).
    pub fn from_f64(shape: &[usize], values: &[f64]) -> NdArray<'static> {
        NdArray {
            dtype: Dtype::F64,
            shape: shape.to_vec(),
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    pub fn from_f32(shape: &[usize], values: &[f32]) -> NdArray<'static> {
        NdArray {
            dtype: Dtype::F32,
            shape: shape.to_vec(),
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    pub fn from_u8<'v>(shape: &[usize], values: &'v [u8]) -> NdArray<'v> {
        NdArray {
            dtype: Dtype::U8,
            shape: shape.to_vec(),
            data: std::borrow::Cow::Borrowed(values),
        }
    }

    /// The same values converted to `dtype` (only used for scalars).
    fn with_dtype(self, dtype: Dtype) -> Self {
        if dtype == Dtype::F64 {
            return self;
        }
        let v = self.to_f64()[0];
        let bytes: Vec<u8> = match dtype {
            Dtype::Bool | Dtype::U8 => vec![v as u8],
            Dtype::I8 => vec![v as i8 as u8],
            Dtype::U16 => (v as u16).to_le_bytes().to_vec(),
            Dtype::I16 => (v as i16).to_le_bytes().to_vec(),
            Dtype::U32 => (v as u32).to_le_bytes().to_vec(),
            Dtype::I32 => (v as i32).to_le_bytes().to_vec(),
            Dtype::U64 => (v as u64).to_le_bytes().to_vec(),
            Dtype::I64 => (v as i64).to_le_bytes().to_vec(),
            Dtype::F32 => (v as f32).to_le_bytes().to_vec(),
            Dtype::F64 => unreachable!(),
        };
        Self {
            dtype,
            shape: self.shape,
            data: bytes.into(),
        }
    }

    pub fn len(&self) -> usize {
        self.data.len() / self.dtype.size()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The raw bytes of a uint8 array.
    pub fn as_u8(&self) -> Option<&[u8]> {
        (self.dtype == Dtype::U8).then_some(&self.data[..])
    }

    /// Every element as f64 (exact for every integer type up to 2^53).
    pub fn to_f64(&self) -> Vec<f64> {
        let d = &self.data[..];
        macro_rules! each {
            ($t:ty) => {
                d.chunks_exact(size_of::<$t>())
                    .map(|c| <$t>::from_le_bytes(c.try_into().unwrap()) as f64)
                    .collect()
            };
        }
        match self.dtype {
            Dtype::Bool | Dtype::U8 => d.iter().map(|&b| b as f64).collect(),
            Dtype::I8 => d.iter().map(|&b| b as i8 as f64).collect(),
            Dtype::U16 => each!(u16),
            Dtype::I16 => each!(i16),
            Dtype::U32 => each!(u32),
            Dtype::I32 => each!(i32),
            Dtype::U64 => each!(u64),
            Dtype::I64 => each!(i64),
            Dtype::F32 => each!(f32),
            Dtype::F64 => each!(f64),
        }
    }

    /// Writes the array as openpi's `msgpack_numpy.pack_array` does (byte keys).
    pub fn write(&self, w: &mut Writer) {
        w.map(4)
            .bin(b"__ndarray__")
            .bool(true)
            .bin(b"data")
            .bin(&self.data)
            .bin(b"dtype")
            .str(self.dtype.name())
            .bin(b"shape")
            .array(self.shape.len());
        for &d in &self.shape {
            w.int(d as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msgpack::decode;

    #[test]
    fn arrays_round_trip_with_their_dtype_and_shape() {
        let array = NdArray::from_f32(&[2, 3], &[1.0, -2.5, 3.0, 4.0, 5.0, 6.25]);
        let mut w = Writer::new();
        array.write(&mut w);
        let value = decode(&w.bytes).unwrap();
        let back = NdArray::from_value(&value).unwrap().unwrap();
        assert_eq!(back, array);
        assert_eq!(back.to_f64(), vec![1.0, -2.5, 3.0, 4.0, 5.0, 6.25]);
    }

    #[test]
    fn big_endian_and_short_data_are_handled() {
        let mut w = Writer::new();
        w.map(4)
            .str("__ndarray__")
            .bool(true)
            .str("data")
            .bin(&[0x01, 0x02])
            .str("dtype")
            .str(">u2")
            .str("shape")
            .array(1)
            .int(1);
        let value = decode(&w.bytes).unwrap();
        let array = NdArray::from_value(&value).unwrap().unwrap();
        assert_eq!(array.to_f64(), vec![258.0]);
        let mut w = Writer::new();
        w.map(4)
            .bin(b"__ndarray__")
            .bool(true)
            .bin(b"data")
            .bin(&[0; 7])
            .bin(b"dtype")
            .str("<f4")
            .bin(b"shape")
            .array(1)
            .int(2);
        let value = decode(&w.bytes).unwrap();
        let error = NdArray::from_value(&value).unwrap().unwrap_err();
        assert!(error.contains("7 data bytes"), "{error}");
    }
}
