//! The byte format of joint commands and joint states on zenoh, version 1.
//!
//! Little-endian, fixed header, so any language decodes it with a struct unpack:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic: `RFXC` (command) or `RFXS` (state) |
//! | 4 | 2 | u16 format version (1) |
//! | 6 | 2 | u16 joint count n |
//! | 8 | 8 | u64 sequence number (strictly increasing per run) |
//! | 16 | 8 | u64 tick (commands) or robot epoch (states: 0 = unknown; a restarted robot driver sends a larger one) |
//! | 24 | 8 | u64 stamp, ns on the run's monotonic clock |
//! | 32 | 8 | u64 stamp, ns since the Unix epoch (when it was published) |
//! | 40 | 8n | f64 positions, rad |
//! | 40+8n | 8n | f64 velocities, rad/s (states only) |
//! | 40+16n | 8 | f64 gripper opening (states of an arm with a gripper; optional) |
//!
//! A gripper's command (`[robot.gripper]`) is its own message on its own key, the
//! same header with magic `RFXG` and a count of 1, then one f64: the commanded
//! opening in the gripper's unit.

use reflex_runtime::types::{JointCommand, JointState, MAX_JOINTS};

pub const COMMAND_MAGIC: [u8; 4] = *b"RFXC";
pub const STATE_MAGIC: [u8; 4] = *b"RFXS";
pub const GRIPPER_MAGIC: [u8; 4] = *b"RFXG";
pub const TENSOR_MAGIC: [u8; 4] = *b"RFXT";
/// Most values one tensor message may carry (4 MiB of f32).
pub const MAX_TENSOR_VALUES: usize = 1 << 20;
pub const VERSION: u16 = 1;
/// Commands in version 2 also carry the commanded velocity and acceleration.
pub const VERSION_WITH_DERIVATIVES: u16 = 2;
const HEADER: usize = 40;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("message of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("bad magic {0:?}")]
    Magic([u8; 4]),
    #[error("unsupported format version {0} (this build reads version {VERSION})")]
    Version(u16),
    #[error("{0} joints is more than the supported {MAX_JOINTS}")]
    TooManyJoints(usize),
    #[error("message has {found} bytes, {expected} expected for {joints} joints")]
    Length {
        found: usize,
        expected: usize,
        joints: usize,
    },
}

#[allow(clippy::too_many_arguments)]
fn put_header(
    out: &mut Vec<u8>,
    magic: [u8; 4],
    version: u16,
    joints: usize,
    seq: u64,
    tick: u64,
    stamp_ns: u64,
    unix_ns: u64,
) {
    out.clear();
    out.extend_from_slice(&magic);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(joints as u16).to_le_bytes());
    for field in [seq, tick, stamp_ns, unix_ns] {
        out.extend_from_slice(&field.to_le_bytes());
    }
}

/// Encodes into `out` (cleared first; reuses its capacity) in format `version`
/// (1: positions; 2: positions, velocities, accelerations).
pub fn encode_command(cmd: &JointCommand, unix_ns: u64, version: u16, out: &mut Vec<u8>) {
    put_header(
        out,
        COMMAND_MAGIC,
        version,
        cmd.joints,
        cmd.seq,
        cmd.tick,
        cmd.stamp_ns,
        unix_ns,
    );
    for p in cmd.positions() {
        out.extend_from_slice(&p.to_le_bytes());
    }
    if version >= VERSION_WITH_DERIVATIVES {
        let n = cmd.joints;
        for v in cmd.velocity[..n].iter().chain(&cmd.acceleration[..n]) {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

/// Encodes the gripper part of `cmd` (None when the command has none).
pub fn encode_gripper_command(cmd: &JointCommand, unix_ns: u64, out: &mut Vec<u8>) -> Option<()> {
    let opening = cmd.gripper?;
    put_header(
        out,
        GRIPPER_MAGIC,
        VERSION,
        1,
        cmd.seq,
        cmd.tick,
        cmd.stamp_ns,
        unix_ns,
    );
    out.extend_from_slice(&opening.to_le_bytes());
    Some(())
}

/// Decodes a gripper command into (seq, tick, stamp_ns, opening).
pub fn decode_gripper_command(bytes: &[u8]) -> Result<(u64, u64, u64, f64), WireError> {
    let h = read_header(bytes, GRIPPER_MAGIC, |v| (v == VERSION).then_some(1), false)?;
    if h.joints != 1 {
        return Err(WireError::Length {
            found: bytes.len(),
            expected: HEADER + 8,
            joints: h.joints,
        });
    }
    Ok((h.seq, h.tick, h.stamp_ns, read_f64(bytes, HEADER)))
}

pub fn encode_state(state: &JointState, unix_ns: u64, out: &mut Vec<u8>) {
    put_header(
        out,
        STATE_MAGIC,
        VERSION,
        state.joints,
        state.seq,
        state.epoch,
        state.stamp_ns,
        unix_ns,
    );
    for v in state.positions().iter().chain(state.velocities()) {
        out.extend_from_slice(&v.to_le_bytes());
    }
    if let Some(g) = state.gripper {
        out.extend_from_slice(&g.to_le_bytes());
    }
}

struct Header {
    version: u16,
    /// An optional trailing f64 is there.
    tail: bool,
    joints: usize,
    seq: u64,
    tick: u64,
    stamp_ns: u64,
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

fn read_f64(bytes: &[u8], at: usize) -> f64 {
    f64::from_bits(read_u64(bytes, at))
}

/// `vectors(version)`: how many f64 vectors of n values follow the header;
/// `tail`: one more f64 may follow.
fn read_header(
    bytes: &[u8],
    magic: [u8; 4],
    vectors: impl Fn(u16) -> Option<usize>,
    tail: bool,
) -> Result<Header, WireError> {
    if bytes.len() < HEADER {
        return Err(WireError::Short(bytes.len()));
    }
    let found = [bytes[0], bytes[1], bytes[2], bytes[3]];
    if found != magic {
        return Err(WireError::Magic(found));
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    let Some(vectors) = vectors(version) else {
        return Err(WireError::Version(version));
    };
    let joints = usize::from(u16::from_le_bytes([bytes[6], bytes[7]]));
    if joints > MAX_JOINTS {
        return Err(WireError::TooManyJoints(joints));
    }
    let expected = HEADER + 8 * joints * vectors;
    let with_tail = tail && bytes.len() == expected + 8;
    if bytes.len() != expected && !with_tail {
        return Err(WireError::Length {
            found: bytes.len(),
            expected,
            joints,
        });
    }
    Ok(Header {
        version,
        tail: with_tail,
        joints,
        seq: read_u64(bytes, 8),
        tick: read_u64(bytes, 16),
        stamp_ns: read_u64(bytes, 24),
    })
}

pub fn decode_command(bytes: &[u8]) -> Result<JointCommand, WireError> {
    let h = read_header(
        bytes,
        COMMAND_MAGIC,
        |version| match version {
            VERSION => Some(1),
            VERSION_WITH_DERIVATIVES => Some(3),
            _ => None,
        },
        false,
    )?;
    let mut cmd = JointCommand::empty(h.joints);
    (cmd.seq, cmd.tick, cmd.stamp_ns) = (h.seq, h.tick, h.stamp_ns);
    let n = h.joints;
    for j in 0..n {
        cmd.position[j] = read_f64(bytes, HEADER + 8 * j);
        if h.version == VERSION_WITH_DERIVATIVES {
            cmd.velocity[j] = read_f64(bytes, HEADER + 8 * (n + j));
            cmd.acceleration[j] = read_f64(bytes, HEADER + 8 * (2 * n + j));
        }
    }
    Ok(cmd)
}

pub fn decode_state(bytes: &[u8]) -> Result<JointState, WireError> {
    let h = read_header(
        bytes,
        STATE_MAGIC,
        |version| (version == VERSION).then_some(2),
        true,
    )?;
    let mut state = JointState::empty(h.joints);
    (state.epoch, state.seq, state.stamp_ns) = (h.tick, h.seq, h.stamp_ns);
    for j in 0..h.joints {
        state.position[j] = read_f64(bytes, HEADER + 8 * j);
        state.velocity[j] = read_f64(bytes, HEADER + 8 * (h.joints + j));
    }
    if h.tail {
        state.gripper = Some(read_f64(bytes, HEADER + 16 * h.joints));
    }
    Ok(state)
}

/// Element types of a tensor message (`RFXT`, offset 16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    F32 = 1,
    U8 = 2,
    U16 = 3,
    I16 = 4,
    F64 = 5,
}

impl Dtype {
    fn from_code(code: u64) -> Option<Self> {
        Some(match code {
            1 => Dtype::F32,
            2 => Dtype::U8,
            3 => Dtype::U16,
            4 => Dtype::I16,
            5 => Dtype::F64,
            _ => return None,
        })
    }

    fn size(self) -> usize {
        match self {
            Dtype::U8 => 1,
            Dtype::U16 | Dtype::I16 => 2,
            Dtype::F32 => 4,
            Dtype::F64 => 8,
        }
    }
}

/// A tensor message's header fields (besides the shape).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TensorHeader {
    pub seq: u64,
    /// Capture time on the sender's monotonic clock, ns (0: unknown).
    pub stamp_ns: u64,
    /// Capture time since the Unix epoch, ns (0: unknown).
    pub unix_ns: u64,
}

/// Encodes one float32 tensor sample (`RFXT`): the common header (the number of
/// dimensions in the count field, the dtype code at offset 16, the sender's
/// monotonic and Unix capture stamps at 24 and 32), then each dimension as u32,
/// then the values, row-major.
pub fn encode_tensor(header: TensorHeader, shape: &[usize], values: &[f32], out: &mut Vec<u8>) {
    put_header(
        out,
        TENSOR_MAGIC,
        VERSION,
        shape.len(),
        header.seq,
        Dtype::F32 as u64,
        header.stamp_ns,
        header.unix_ns,
    );
    for d in shape {
        out.extend_from_slice(&(*d as u32).to_le_bytes());
    }
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// Decodes a tensor sample whose shape must be `shape` into `values` as f32
/// (reused), whatever its dtype.
pub fn decode_tensor_into(
    bytes: &[u8],
    shape: &[usize],
    values: &mut Vec<f32>,
) -> Result<TensorHeader, TensorWireError> {
    if bytes.len() < HEADER {
        return Err(TensorWireError::Wire(WireError::Short(bytes.len())));
    }
    let magic = [bytes[0], bytes[1], bytes[2], bytes[3]];
    if magic != TENSOR_MAGIC {
        return Err(TensorWireError::Wire(WireError::Magic(magic)));
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if version != VERSION {
        return Err(TensorWireError::Wire(WireError::Version(version)));
    }
    let dtype_code = read_u64(bytes, 16);
    let dtype = Dtype::from_code(dtype_code).ok_or(TensorWireError::Dtype(dtype_code))?;
    let ndim = usize::from(u16::from_le_bytes([bytes[6], bytes[7]]));
    let dims_end = HEADER + 4 * ndim;
    if bytes.len() < dims_end {
        return Err(TensorWireError::Wire(WireError::Short(bytes.len())));
    }
    let found: Vec<usize> = (0..ndim)
        .map(|i| {
            let at = HEADER + 4 * i;
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize
        })
        .collect();
    if found != shape {
        return Err(TensorWireError::Shape {
            found,
            expected: shape.to_vec(),
        });
    }
    let n: usize = shape.iter().product();
    let expected = dims_end + dtype.size() * n;
    if bytes.len() != expected {
        return Err(TensorWireError::Wire(WireError::Length {
            found: bytes.len(),
            expected,
            joints: n,
        }));
    }
    values.clear();
    let data = &bytes[dims_end..];
    match dtype {
        Dtype::F32 => values.extend(
            data.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        ),
        Dtype::F64 => {
            values.extend(data.chunks_exact(8).map(|b| {
                f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
            }))
        }
        Dtype::U8 => values.extend(data.iter().map(|b| f32::from(*b))),
        Dtype::U16 => values.extend(
            data.chunks_exact(2)
                .map(|b| f32::from(u16::from_le_bytes([b[0], b[1]]))),
        ),
        Dtype::I16 => values.extend(
            data.chunks_exact(2)
                .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]]))),
        ),
    }
    Ok(TensorHeader {
        seq: read_u64(bytes, 8),
        stamp_ns: read_u64(bytes, 24),
        unix_ns: read_u64(bytes, 32),
    })
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TensorWireError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("tensor of shape {found:?}, the stream's is {expected:?}")]
    Shape {
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("unknown dtype code {0} (1 f32, 2 u8, 3 u16, 4 i16, 5 f64)")]
    Dtype(u64),
}

/// ns since the Unix epoch, for the wall-time stamp of published messages.
pub fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_round_trip_and_layout() {
        let mut cmd = JointCommand::empty(2);
        (cmd.seq, cmd.tick, cmd.stamp_ns) = (7, 9, 11);
        cmd.position[..2].copy_from_slice(&[0.5, -1.25]);
        let mut bytes = Vec::new();
        encode_command(&cmd, 13, VERSION, &mut bytes);
        assert_eq!(bytes.len(), 40 + 16);
        assert_eq!(&bytes[..4], b"RFXC");
        assert_eq!(u64::from_le_bytes(bytes[32..40].try_into().unwrap()), 13);
        assert_eq!(f64::from_le_bytes(bytes[48..56].try_into().unwrap()), -1.25);
        assert_eq!(decode_command(&bytes).unwrap(), cmd);
    }

    #[test]
    fn version_2_commands_carry_velocity_and_acceleration() {
        let mut cmd = JointCommand::empty(2);
        (cmd.seq, cmd.tick, cmd.stamp_ns) = (7, 9, 11);
        cmd.position[..2].copy_from_slice(&[0.5, -1.25]);
        cmd.velocity[..2].copy_from_slice(&[0.1, -0.2]);
        cmd.acceleration[..2].copy_from_slice(&[3.0, -4.0]);
        let mut bytes = Vec::new();
        encode_command(&cmd, 13, VERSION_WITH_DERIVATIVES, &mut bytes);
        assert_eq!(bytes.len(), 40 + 3 * 16);
        assert_eq!(u16::from_le_bytes([bytes[4], bytes[5]]), 2);
        // Velocities after the positions, then accelerations.
        assert_eq!(f64::from_le_bytes(bytes[64..72].try_into().unwrap()), -0.2);
        assert_eq!(f64::from_le_bytes(bytes[80..88].try_into().unwrap()), -4.0);
        assert_eq!(decode_command(&bytes).unwrap(), cmd);
    }

    #[test]
    fn states_carry_the_robot_epoch() {
        let mut state = JointState::empty(1);
        (state.epoch, state.seq) = (1_700_000_000, 3);
        let mut bytes = Vec::new();
        encode_state(&state, 0, &mut bytes);
        assert_eq!(
            u64::from_le_bytes(bytes[16..24].try_into().unwrap()),
            1_700_000_000
        );
        assert_eq!(decode_state(&bytes).unwrap(), state);
    }

    #[test]
    fn a_gripper_travels_as_its_own_message_and_at_the_end_of_a_state() {
        let mut cmd = JointCommand::empty(2);
        (cmd.seq, cmd.tick, cmd.stamp_ns, cmd.gripper) = (7, 9, 11, Some(0.035));
        let mut buf = Vec::new();
        encode_gripper_command(&cmd, 5, &mut buf).unwrap();
        assert_eq!(&buf[..4], b"RFXG");
        assert_eq!(buf.len(), HEADER + 8);
        assert_eq!(decode_gripper_command(&buf).unwrap(), (7, 9, 11, 0.035));
        assert!(decode_gripper_command(&buf[..HEADER + 4]).is_err());
        assert!(encode_gripper_command(&JointCommand::empty(2), 5, &mut buf).is_none());

        let mut state = JointState::empty(2);
        (state.seq, state.gripper) = (3, Some(0.01));
        encode_state(&state, 5, &mut buf);
        assert_eq!(decode_state(&buf).unwrap(), state);
        state.gripper = None;
        encode_state(&state, 5, &mut buf);
        assert_eq!(decode_state(&buf).unwrap(), state);
        buf.extend_from_slice(&[0; 4]);
        assert!(decode_state(&buf).is_err(), "a partial tail is damage");
    }

    #[test]
    fn tensors_round_trip_in_any_dtype_and_refuse_other_shapes() {
        let header = TensorHeader {
            seq: 4,
            stamp_ns: 7,
            unix_ns: 9,
        };
        let mut buf = Vec::new();
        encode_tensor(header, &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &mut buf);
        assert_eq!(&buf[..4], b"RFXT");
        assert_eq!(buf.len(), HEADER + 8 + 24);
        let mut values = Vec::new();
        assert_eq!(decode_tensor_into(&buf, &[2, 3], &mut values), Ok(header));
        assert_eq!(values, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert!(matches!(
            decode_tensor_into(&buf, &[3, 2], &mut values),
            Err(TensorWireError::Shape { .. })
        ));
        assert!(decode_tensor_into(&buf[..buf.len() - 1], &[2, 3], &mut values).is_err());
        assert!(decode_tensor_into(&buf[..HEADER + 2], &[2, 3], &mut values).is_err());
        // u16 taxels: the same header with dtype 3 and two bytes a value.
        let mut u16s = buf[..HEADER + 8].to_vec();
        u16s[16..24].copy_from_slice(&3u64.to_le_bytes());
        for v in [10u16, 20, 30, 40, 50, 60] {
            u16s.extend_from_slice(&v.to_le_bytes());
        }
        decode_tensor_into(&u16s, &[2, 3], &mut values).unwrap();
        assert_eq!(values, vec![10.0, 20.0, 30.0, 40.0, 50.0, 60.0]);
        u16s[16] = 9;
        assert_eq!(
            decode_tensor_into(&u16s, &[2, 3], &mut values),
            Err(TensorWireError::Dtype(9))
        );
    }

    #[test]
    fn state_round_trip() {
        let mut state = JointState::empty(3);
        state.seq = 4;
        state.position[..3].copy_from_slice(&[1.0, 2.0, 3.0]);
        state.velocity[..3].copy_from_slice(&[-1.0, -2.0, -3.0]);
        let mut bytes = Vec::new();
        encode_state(&state, 0, &mut bytes);
        assert_eq!(decode_state(&bytes).unwrap(), state);
    }

    #[test]
    fn malformed_messages_are_errors() {
        let mut bytes = Vec::new();
        encode_command(&JointCommand::empty(2), 0, VERSION, &mut bytes);
        assert_eq!(decode_command(&bytes[..10]), Err(WireError::Short(10)));
        assert!(matches!(
            decode_command(&bytes[..50]),
            Err(WireError::Length { .. })
        ));
        assert!(matches!(decode_state(&bytes), Err(WireError::Magic(_))));
        bytes[4] = 3;
        assert_eq!(decode_command(&bytes), Err(WireError::Version(3)));
    }
}
