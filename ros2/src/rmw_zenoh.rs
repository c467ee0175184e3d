//! rmw_zenoh's conventions, so that ROS 2 nodes (ros2_control, `ros2 topic`)
//! see reflex as one of their own. Pinned to rmw_zenoh_cpp 0.2.10 (Jazzy,
//! 2026-07-22; Kilted 0.6.7 is the same on everything here). Earlier releases
//! (Jazzy < 0.2.4, Rolling < 0.6.0) used a labelled attachment that this one
//! is not compatible with.
//!
//! - Data: `<domain>/<topic without its outer slashes>/<pkg>::msg::dds_::<Name>_/RIHS01_<hash>`,
//!   CDR little endian.
//! - Every sample carries a 33-byte attachment: sequence number (i64 LE, from
//!   1 per publisher), source timestamp (i64 LE, Unix ns), then the publisher's
//!   GID as zenoh-ext serializes a `[u8; 16]` (length 0x10, 16 bytes).
//!   rmw_zenoh drops samples without it ("Unable to obtain attachment",
//!   rmw_zenoh#479).
//! - Liveliness tokens make the node and its endpoints visible to the ROS graph
//!   (`ros2 topic list`, `ros2 node list`):
//!   `@ros2_lv/<domain>/<zid>/<node id>/<entity id>/<NN|MP|MS>/<enclave>/<namespace>/<node>[/<topic>/<type>/<hash>/<qos>]`,
//!   with `/` in names written as `%`.

use crate::type_hash::{MessageType, dds_type_name, type_hash};
use sha2::{Digest, Sha256};

/// A fully qualified ROS name (`/ns/topic`) from `name`, relative to `namespace`.
pub fn qualify(namespace: &str, name: &str) -> String {
    if name.starts_with('/') {
        name.to_string()
    } else {
        format!("{}/{name}", namespace.trim_end_matches('/'))
    }
}

/// Checks a ROS topic, namespace or node name: letters, digits, `_` and `/`
/// separators, no empty tokens, not starting with a digit.
pub fn check_name(name: &str, what: &str, node: bool) -> Result<(), String> {
    let tokens: Vec<&str> = name.trim_start_matches('/').split('/').collect();
    let root = name == "/" && !node;
    let ok = root
        || (!name.is_empty()
            && !name.ends_with('/')
            && (!node || tokens.len() == 1 && !name.starts_with('/'))
            && tokens.iter().all(|t| {
                !t.is_empty()
                    && !t.starts_with(|c: char| c.is_ascii_digit())
                    && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            }));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a valid ROS {what} (letters, digits and `_`{}, not starting with a digit)",
            if node {
                ""
            } else {
                ", tokens separated by `/`"
            }
        ))
    }
}

/// The key expression a topic's samples travel on.
pub fn topic_key(domain: u32, topic: &str, message: &MessageType) -> String {
    format!(
        "{domain}/{}/{}/{}",
        topic.trim_start_matches('/').trim_end_matches('/'),
        dds_type_name(message),
        type_hash(message)
    )
}

fn mangle(name: &str) -> String {
    name.replace('/', "%")
}

/// rmw_zenoh's QoS field of a token for reliable, volatile, keep-last `depth`
/// (the ROS 2 default profile with its depth): fields at rmw_zenoh's defaults
/// are left empty.
pub fn default_qos(depth: usize) -> String {
    let depth = if depth == 42 {
        String::new()
    } else {
        depth.to_string()
    };
    format!("::,{depth}:,:,:,,")
}

/// Who declares tokens: the session, the node's id and place.
#[derive(Debug, Clone)]
pub struct Node {
    pub domain: u32,
    /// The zenoh session id as `ZenohId` displays it (lowercase hex).
    pub zid: String,
    pub id: u32,
    pub namespace: String,
    pub name: String,
}

/// What an endpoint is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Publisher,
    Subscription,
}

impl Node {
    fn prefix(&self, entity: u32, kind: &str) -> String {
        format!(
            "@ros2_lv/{}/{}/{}/{entity}/{kind}/%/{}/{}",
            self.domain,
            self.zid,
            self.id,
            mangle(&self.namespace),
            mangle(&self.name)
        )
    }

    /// The node's own token.
    pub fn token(&self) -> String {
        self.prefix(self.id, "NN")
    }

    /// An endpoint's token (entity ids are unique within the session).
    pub fn endpoint_token(
        &self,
        entity: u32,
        kind: Endpoint,
        topic: &str,
        message: &MessageType,
        qos: &str,
    ) -> String {
        let kind = match kind {
            Endpoint::Publisher => "MP",
            Endpoint::Subscription => "MS",
        };
        format!(
            "{}/{}/{}/{}/{qos}",
            self.prefix(entity, kind),
            mangle(topic),
            dds_type_name(message),
            type_hash(message)
        )
    }
}

/// A publisher's GID: any 16 bytes unique to it (rmw_zenoh hashes its token
/// with XXH3; here the first 16 bytes of the token's SHA-256).
pub fn gid(token: &str) -> [u8; 16] {
    let digest = Sha256::digest(token.as_bytes());
    let mut gid = [0u8; 16];
    gid.copy_from_slice(&digest[..16]);
    gid
}

/// The attachment of one sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attachment {
    pub sequence_number: i64,
    pub source_timestamp_ns: i64,
    pub gid: [u8; 16],
}

/// Bytes of an attachment.
pub const ATTACHMENT_LEN: usize = 33;

impl Attachment {
    pub fn encode(&self) -> [u8; ATTACHMENT_LEN] {
        let mut out = [0u8; ATTACHMENT_LEN];
        out[..8].copy_from_slice(&self.sequence_number.to_le_bytes());
        out[8..16].copy_from_slice(&self.source_timestamp_ns.to_le_bytes());
        // zenoh-ext writes a slice's length first (LEB128: 16 is one byte).
        out[16] = 16;
        out[17..].copy_from_slice(&self.gid);
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != ATTACHMENT_LEN || bytes[16] != 16 {
            return None;
        }
        Some(Self {
            sequence_number: i64::from_le_bytes(bytes[..8].try_into().ok()?),
            source_timestamp_ns: i64::from_le_bytes(bytes[8..16].try_into().ok()?),
            gid: bytes[17..].try_into().ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::type_hash::JOINT_STATE;

    #[test]
    fn keys_and_tokens_in_rmw_zenohs_form() {
        assert_eq!(
            topic_key(0, "/joint_states", &JOINT_STATE),
            "0/joint_states/sensor_msgs::msg::dds_::JointState_/\
             RIHS01_a13ee3a330e346c9d87b5aa18d24e11690752bd33a0350f11c5882bc9179260e"
        );
        assert_eq!(
            topic_key(3, "/robot1/joint_states", &JOINT_STATE)
                .split('/')
                .take(3)
                .collect::<Vec<_>>(),
            ["3", "robot1", "joint_states"]
        );
        let node = Node {
            domain: 0,
            zid: "aac3178e146ba6f1fc6e6a4085e77f21".into(),
            id: 0,
            namespace: "/".into(),
            name: "reflex".into(),
        };
        assert_eq!(
            node.token(),
            "@ros2_lv/0/aac3178e146ba6f1fc6e6a4085e77f21/0/0/NN/%/%/reflex"
        );
        let token = node.endpoint_token(
            2,
            Endpoint::Subscription,
            "/joint_states",
            &JOINT_STATE,
            &default_qos(10),
        );
        assert!(
            token.starts_with(
                "@ros2_lv/0/aac3178e146ba6f1fc6e6a4085e77f21/0/2/MS/%/%/reflex/%joint_states/\
                 sensor_msgs::msg::dds_::JointState_/RIHS01_a13e"
            ),
            "{token}"
        );
        assert!(token.ends_with("/::,10:,:,:,,"), "{token}");
        assert_eq!(default_qos(42), "::,:,:,:,,");
        assert_eq!(qualify("/", "joint_states"), "/joint_states");
        assert_eq!(qualify("/arm", "joint_states"), "/arm/joint_states");
        assert_eq!(qualify("/arm", "/joint_states"), "/joint_states");
    }

    #[test]
    fn the_attachment_is_33_bytes_and_reads_back() {
        let a = Attachment {
            sequence_number: 1,
            source_timestamp_ns: 1_700_000_000_123_456_789,
            gid: *b"0123456789abcdef",
        };
        let bytes = a.encode();
        assert_eq!(&bytes[..8], &[1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(bytes[16], 0x10);
        assert_eq!(Attachment::decode(&bytes), Some(a));
        assert_eq!(Attachment::decode(&bytes[..32]), None);
    }

    #[test]
    fn ros_names_are_checked() {
        assert!(check_name("/joint_states", "topic", false).is_ok());
        assert!(check_name("/", "namespace", false).is_ok());
        assert!(
            check_name(
                "joint_trajectory_controller/joint_trajectory",
                "topic",
                false
            )
            .is_ok()
        );
        assert!(check_name("/bad//topic", "topic", false).is_err());
        assert!(check_name("/1topic", "topic", false).is_err());
        assert!(check_name("/a b", "topic", false).is_err());
        assert!(check_name("reflex", "node name", true).is_ok());
        assert!(check_name("/reflex", "node name", true).is_err());
    }
}
