//! NumPy `.npy` files: writing float32 arrays (format 1.0) for the Python side, and
//! reading the little-endian C-order arrays numpy writes (float32/64, uint8, int64).

use std::io::Write;
use std::path::Path;

/// Writes little-endian float32 `values` with `shape`.
pub fn write_f32(path: &Path, shape: &[usize], values: &[f32]) -> std::io::Result<()> {
    // Streamed: training sets are hundreds of MB; no second copy.
    write_raw(path, "<f4", shape, |out| {
        values
            .iter()
            .try_for_each(|v| out.write_all(&v.to_le_bytes()))
    })
}

/// Writes uint8 `values` with `shape` (images).
pub fn write_u8(path: &Path, shape: &[usize], values: &[u8]) -> std::io::Result<()> {
    write_raw(path, "|u1", shape, |out| out.write_all(values))
}

/// Writes little-endian int64 `values` with `shape` (token ids).
pub fn write_i64(path: &Path, shape: &[usize], values: &[i64]) -> std::io::Result<()> {
    write_raw(path, "<i8", shape, |out| {
        values
            .iter()
            .try_for_each(|v| out.write_all(&v.to_le_bytes()))
    })
}

/// Writes booleans with `shape` (masks), one byte each as numpy stores them.
pub fn write_bool(path: &Path, shape: &[usize], values: &[bool]) -> std::io::Result<()> {
    write_raw(path, "|b1", shape, |out| {
        values
            .iter()
            .try_for_each(|v| out.write_all(&[u8::from(*v)]))
    })
}

fn write_raw(
    path: &Path,
    descr: &str,
    shape: &[usize],
    data: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let dims = match shape {
        [one] => format!("({one},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {dims}, }}");
    // Magic (6) + version (2) + length (2) + header + '\n' is a multiple of 64.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    out.write_all(b"\x93NUMPY\x01\x00")?;
    out.write_all(&(header.len() as u16).to_le_bytes())?;
    out.write_all(header.as_bytes())?;
    data(&mut out)?;
    out.flush()
}

/// An array read from an `.npy` file.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    pub shape: Vec<usize>,
    pub data: NpyData,
}

#[derive(Debug, Clone, PartialEq)]
pub enum NpyData {
    /// float32 or float64 values.
    Float(Vec<f64>),
    Uint8(Vec<u8>),
    Int64(Vec<i64>),
}

impl NpyArray {
    /// The values as f64 (any dtype).
    pub fn to_f64(&self) -> Vec<f64> {
        match &self.data {
            NpyData::Float(v) => v.clone(),
            NpyData::Uint8(v) => v.iter().map(|&x| f64::from(x)).collect(),
            NpyData::Int64(v) => v.iter().map(|&x| x as f64).collect(),
        }
    }
}

/// Reads a little-endian float32 or float64 C-order array as f64, with its shape.
pub fn read_f64(path: &Path) -> std::io::Result<(Vec<usize>, Vec<f64>)> {
    let array = read(path)?;
    match array.data {
        NpyData::Float(values) => Ok((array.shape, values)),
        _ => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: dtype must be <f4 or <f8", path.display()),
        )),
    }
}

/// Reads an `.npy` file: a regular file of at most
/// [`crate::files::MAX_DATA_BYTES`].
pub fn read(path: &Path) -> std::io::Result<NpyArray> {
    let bytes = crate::files::read(path, crate::files::MAX_DATA_BYTES)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
    parse(&bytes).map_err(|m| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: {m}", path.display()),
        )
    })
}

/// Parses the bytes of an `.npy` file (also an entry of an `.npz` archive).
pub fn parse(bytes: &[u8]) -> Result<NpyArray, String> {
    let bad = |m: &str| m.to_string();
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("not an .npy file"));
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        _ => return Err(bad("truncated header")),
    };
    let header = std::str::from_utf8(
        bytes
            .get(start..start + header_len)
            .ok_or_else(|| bad("truncated header"))?,
    )
    .map_err(|_| bad("header is not text"))?;
    if header.contains("'fortran_order': True") {
        return Err(bad("Fortran-order arrays are not supported"));
    }
    let dtype = ["'<f8'", "'<f4'", "'|u1'", "'<i8'"]
        .into_iter()
        .find(|d| header.contains(d))
        .ok_or_else(|| bad("dtype must be <f4, <f8, |u1 (uint8) or <i8 (int64)"))?;
    let width = match dtype {
        "'<f8'" | "'<i8'" => 8,
        "'<f4'" => 4,
        _ => 1,
    };
    let dims = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad("no shape in header"))?;
    let shape = dims
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| bad("bad shape")))
        .collect::<Result<Vec<_>, _>>()?;
    let data = &bytes[start + header_len..];
    let count: usize = shape.iter().product();
    if data.len() != count * width {
        return Err(bad("data length does not match the shape"));
    }
    let eight = |b: &[u8]| <[u8; 8]>::try_from(b).unwrap_or_default();
    let data = match dtype {
        "'<f8'" => NpyData::Float(
            data.chunks_exact(8)
                .map(|b| f64::from_le_bytes(eight(b)))
                .collect(),
        ),
        "'<f4'" => NpyData::Float(
            data.chunks_exact(4)
                .map(|b| {
                    f64::from(f32::from_le_bytes(
                        <[u8; 4]>::try_from(b).unwrap_or_default(),
                    ))
                })
                .collect(),
        ),
        "'<i8'" => NpyData::Int64(
            data.chunks_exact(8)
                .map(|b| i64::from_le_bytes(eight(b)))
                .collect(),
        ),
        _ => NpyData::Uint8(data.to_vec()),
    };
    Ok(NpyArray { shape, data })
}

#[cfg(test)]
mod tests {
    #[test]
    fn header_is_aligned_and_data_follows() {
        let path = std::env::temp_dir().join(format!("reflex-npy-{}.npy", std::process::id()));
        super::write_f32(&path, &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + header_len) % 64, 0);
        assert!(String::from_utf8_lossy(&bytes[10..10 + header_len]).contains("'shape': (2, 3)"));
        assert_eq!(bytes.len(), 10 + header_len + 24);
        let (shape, values) = super::read_f64(&path).unwrap();
        assert_eq!(shape, vec![2, 3]);
        assert_eq!(values, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn token_ids_and_masks_keep_their_dtypes() {
        let dir = std::env::temp_dir();
        let ids = dir.join(format!("reflex-npy-ids-{}.npy", std::process::id()));
        super::write_i64(&ids, &[1, 3], &[2, -1, 1 << 40]).unwrap();
        let array = super::read(&ids).unwrap();
        assert_eq!(array.shape, vec![1, 3]);
        assert_eq!(array.data, super::NpyData::Int64(vec![2, -1, 1 << 40]));
        let mask = dir.join(format!("reflex-npy-mask-{}.npy", std::process::id()));
        super::write_bool(&mask, &[3], &[true, false, true]).unwrap();
        let bytes = std::fs::read(&mask).unwrap();
        let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert!(String::from_utf8_lossy(&bytes[10..10 + header_len]).contains("'descr': '|b1'"));
        assert_eq!(&bytes[10 + header_len..], &[1, 0, 1]);
        for path in [ids, mask] {
            std::fs::remove_file(path).unwrap();
        }
    }
}
