//! Reading input files safely: a path that must name a file is checked to be a
//! regular file (not a directory, FIFO or device such as `/dev/zero`), and what is
//! read is capped, so a wrong path gives a clear error instead of a hang or a read
//! that grows to gigabytes.
//!
//! The caps (documented in the README) are per kind of file:
//! [`MAX_MODEL_BYTES`] for ONNX models, [`MAX_DATA_BYTES`] for observations, images,
//! noise, schedules, statistics and tokenizers, [`MAX_CONFIG_BYTES`] for launch
//! files and small JSON configs.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// ONNX models (ONNX Runtime reads the file itself; larger models keep their
/// weights in external data files).
pub const MAX_MODEL_BYTES: u64 = 4 << 30;
/// Observations, images, noise, schedules, normalization statistics, tokenizers.
pub const MAX_DATA_BYTES: u64 = 256 << 20;
/// Launch files, `processor_config.json`, zenoh config files.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Why a file cannot be read; displays as `PATH: reason`.
#[derive(Debug, thiserror::Error)]
#[error("{}: {}", self.path().display(), self.reason())]
pub enum FileError {
    NotFound {
        path: PathBuf,
    },
    NotRegular {
        path: PathBuf,
        kind: &'static str,
    },
    TooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl FileError {
    pub fn path(&self) -> &Path {
        match self {
            Self::NotFound { path }
            | Self::NotRegular { path, .. }
            | Self::TooLarge { path, .. }
            | Self::Io { path, .. } => path,
        }
    }

    /// What is wrong, without the path (for messages that name it already).
    pub fn reason(&self) -> String {
        match self {
            Self::NotFound { .. } => "not found".into(),
            Self::NotRegular { kind, .. } => format!("not a regular file (it is {kind})"),
            Self::TooLarge { size, limit, .. } => format!(
                "{size} bytes, more than the limit of {} for this kind of file",
                human(*limit)
            ),
            Self::Io { source, .. } => source.to_string(),
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound { .. })
    }

    fn io(path: &Path, source: std::io::Error) -> Self {
        if source.kind() == std::io::ErrorKind::NotFound {
            Self::NotFound {
                path: path.to_path_buf(),
            }
        } else {
            Self::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    }
}

/// `4 GiB`, `256 MiB`, `1 MiB`, or bytes.
pub fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{} GiB", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b => format!("{b} bytes"),
    }
}

fn kind_of(file_type: std::fs::FileType) -> Option<&'static str> {
    if file_type.is_file() {
        None
    } else if file_type.is_dir() {
        Some("a directory")
    } else if file_type.is_fifo() {
        Some("a FIFO")
    } else if file_type.is_char_device() {
        Some("a character device")
    } else if file_type.is_block_device() {
        Some("a block device")
    } else if file_type.is_socket() {
        Some("a socket")
    } else {
        Some("not a file")
    }
}

/// Checks that `path` (symlinks followed) is a regular file of at most `limit`
/// bytes and returns its size. For paths that other code opens (ONNX Runtime).
pub fn check_regular(path: &Path, limit: u64) -> Result<u64, FileError> {
    let meta = std::fs::metadata(path).map_err(|e| FileError::io(path, e))?;
    check_meta(path, &meta, limit)
}

fn check_meta(path: &Path, meta: &std::fs::Metadata, limit: u64) -> Result<u64, FileError> {
    if let Some(kind) = kind_of(meta.file_type()) {
        return Err(FileError::NotRegular {
            path: path.to_path_buf(),
            kind,
        });
    }
    if meta.len() > limit {
        return Err(FileError::TooLarge {
            path: path.to_path_buf(),
            size: meta.len(),
            limit,
        });
    }
    Ok(meta.len())
}

/// Opens a regular file of at most `limit` bytes. Opening does not block on a
/// FIFO (`O_NONBLOCK`, which does nothing to regular files), and the type is
/// checked on the opened file, so a path swapped after a check cannot slip through.
pub fn open_regular(path: &Path, limit: u64) -> Result<(File, u64), FileError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| FileError::io(path, e))?;
    let meta = file.metadata().map_err(|e| FileError::io(path, e))?;
    let size = check_meta(path, &meta, limit)?;
    Ok((file, size))
}

/// Reads a whole regular file of at most `limit` bytes (also when it grows while
/// being read).
pub fn read(path: &Path, limit: u64) -> Result<Vec<u8>, FileError> {
    let (file, size) = open_regular(path, limit)?;
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| FileError::io(path, e))?;
    if bytes.len() as u64 > limit {
        return Err(FileError::TooLarge {
            path: path.to_path_buf(),
            size: bytes.len() as u64,
            limit,
        });
    }
    Ok(bytes)
}

/// [`read`] as UTF-8 text.
pub fn read_to_string(path: &Path, limit: u64) -> Result<String, FileError> {
    String::from_utf8(read(path, limit)?).map_err(|_| FileError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("reflex-files-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn reads_a_regular_file_within_the_cap() {
        let dir = scratch("ok");
        let path = dir.join("a.txt");
        std::fs::write(&path, "hello").unwrap();
        assert_eq!(read_to_string(&path, 5).unwrap(), "hello");
        assert_eq!(check_regular(&path, 5).unwrap(), 5);
        let err = read(&path, 4).unwrap_err();
        assert!(matches!(err, FileError::TooLarge { size: 5, .. }), "{err}");
    }

    #[test]
    fn devices_directories_and_fifos_are_not_regular_files() {
        let err = read(Path::new("/dev/zero"), MAX_DATA_BYTES).unwrap_err();
        assert!(
            err.to_string()
                .contains("not a regular file (it is a character device)"),
            "{err}"
        );
        let dir = scratch("kinds");
        let err = read(&dir, MAX_DATA_BYTES).unwrap_err();
        assert!(err.to_string().contains("a directory"), "{err}");
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // Without O_NONBLOCK this open would wait forever for a writer.
        let err = read(&fifo, MAX_DATA_BYTES).unwrap_err();
        assert!(err.to_string().contains("a FIFO"), "{err}");
        let err = check_regular(&fifo, MAX_DATA_BYTES).unwrap_err();
        assert!(err.to_string().contains("a FIFO"), "{err}");
    }

    #[test]
    fn a_missing_file_is_not_found() {
        let err = read(Path::new("/nonexistent/reflex"), 10).unwrap_err();
        assert!(err.is_not_found(), "{err}");
    }

    #[test]
    fn caps_read_in_human_units() {
        assert_eq!(human(MAX_MODEL_BYTES), "4 GiB");
        assert_eq!(human(MAX_DATA_BYTES), "256 MiB");
        assert_eq!(human(MAX_CONFIG_BYTES), "1 MiB");
        assert_eq!(human(1000), "1000 bytes");
    }
}
