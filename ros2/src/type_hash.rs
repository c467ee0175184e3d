//! ROS 2 type hashes (REP 2011, `RIHS01_<sha256>`), which rmw_zenoh puts in
//! every key expression: the SHA-256 of the type description as JSON (the
//! type's fields, then every type it references, sorted by name; no default
//! values), serialized as rosidl does (`", "` and `": "` separators, keys in
//! declaration order).

use sha2::{Digest, Sha256};

/// A field's type: `type_id` from `type_description_interfaces/msg/FieldType`.
#[derive(Debug, Clone, Copy)]
pub enum FieldType {
    Int32,
    Uint32,
    Float64,
    String,
    Nested(&'static str),
    /// An unbounded sequence of the inner type (`T[]`).
    Sequence(&'static FieldType),
}

impl FieldType {
    fn base_id(&self) -> u8 {
        match self {
            FieldType::Nested(_) => 1,
            FieldType::Int32 => 6,
            FieldType::Uint32 => 7,
            FieldType::Float64 => 11,
            FieldType::String => 17,
            FieldType::Sequence(inner) => inner.base_id(),
        }
    }

    fn type_id(&self) -> u8 {
        match self {
            // Unbounded sequences: the element's id + 144.
            FieldType::Sequence(inner) => inner.base_id() + 144,
            other => other.base_id(),
        }
    }

    fn nested(&self) -> Option<&'static str> {
        match self {
            FieldType::Nested(name) => Some(name),
            FieldType::Sequence(inner) => inner.nested(),
            _ => None,
        }
    }
}

/// A message type: `pkg/msg/Name` and its fields in declaration order.
pub struct MessageType {
    pub name: &'static str,
    pub fields: &'static [(&'static str, FieldType)],
}

const SEQ_F64: FieldType = FieldType::Sequence(&FieldType::Float64);
const SEQ_STRING: FieldType = FieldType::Sequence(&FieldType::String);

pub const TIME: MessageType = MessageType {
    name: "builtin_interfaces/msg/Time",
    fields: &[("sec", FieldType::Int32), ("nanosec", FieldType::Uint32)],
};
pub const DURATION: MessageType = MessageType {
    name: "builtin_interfaces/msg/Duration",
    fields: &[("sec", FieldType::Int32), ("nanosec", FieldType::Uint32)],
};
pub const HEADER: MessageType = MessageType {
    name: "std_msgs/msg/Header",
    fields: &[
        ("stamp", FieldType::Nested(TIME.name)),
        ("frame_id", FieldType::String),
    ],
};
pub const JOINT_STATE: MessageType = MessageType {
    name: "sensor_msgs/msg/JointState",
    fields: &[
        ("header", FieldType::Nested(HEADER.name)),
        ("name", SEQ_STRING),
        ("position", SEQ_F64),
        ("velocity", SEQ_F64),
        ("effort", SEQ_F64),
    ],
};
pub const JOINT_TRAJECTORY_POINT: MessageType = MessageType {
    name: "trajectory_msgs/msg/JointTrajectoryPoint",
    fields: &[
        ("positions", SEQ_F64),
        ("velocities", SEQ_F64),
        ("accelerations", SEQ_F64),
        ("effort", SEQ_F64),
        ("time_from_start", FieldType::Nested(DURATION.name)),
    ],
};
pub const JOINT_TRAJECTORY: MessageType = MessageType {
    name: "trajectory_msgs/msg/JointTrajectory",
    fields: &[
        ("header", FieldType::Nested(HEADER.name)),
        ("joint_names", SEQ_STRING),
        (
            "points",
            FieldType::Sequence(&FieldType::Nested(JOINT_TRAJECTORY_POINT.name)),
        ),
    ],
};
pub const MULTI_ARRAY_DIMENSION: MessageType = MessageType {
    name: "std_msgs/msg/MultiArrayDimension",
    fields: &[
        ("label", FieldType::String),
        ("size", FieldType::Uint32),
        ("stride", FieldType::Uint32),
    ],
};
pub const MULTI_ARRAY_LAYOUT: MessageType = MessageType {
    name: "std_msgs/msg/MultiArrayLayout",
    fields: &[
        (
            "dim",
            FieldType::Sequence(&FieldType::Nested(MULTI_ARRAY_DIMENSION.name)),
        ),
        ("data_offset", FieldType::Uint32),
    ],
};
pub const FLOAT64_MULTI_ARRAY: MessageType = MessageType {
    name: "std_msgs/msg/Float64MultiArray",
    fields: &[
        ("layout", FieldType::Nested(MULTI_ARRAY_LAYOUT.name)),
        ("data", SEQ_F64),
    ],
};

/// Every type a description may reference.
const KNOWN: &[&MessageType] = &[
    &TIME,
    &DURATION,
    &HEADER,
    &JOINT_STATE,
    &JOINT_TRAJECTORY_POINT,
    &JOINT_TRAJECTORY,
    &MULTI_ARRAY_DIMENSION,
    &MULTI_ARRAY_LAYOUT,
    &FLOAT64_MULTI_ARRAY,
];

fn known(name: &str) -> &'static MessageType {
    KNOWN
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("{name} is referenced but not described"))
}

fn describe(t: &MessageType, out: &mut String) {
    out.push_str(&format!("{{\"type_name\": \"{}\", \"fields\": [", t.name));
    for (i, (name, field)) in t.fields.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(&format!(
            "{{\"name\": \"{name}\", \"type\": {{\"type_id\": {}, \"capacity\": 0, \
             \"string_capacity\": 0, \"nested_type_name\": \"{}\"}}}}",
            field.type_id(),
            field.nested().unwrap_or("")
        ));
    }
    out.push_str("]}");
}

/// The JSON that is hashed (the type and what it references, sorted by name).
pub fn hashable_description(t: &MessageType) -> String {
    let mut referenced: Vec<&'static str> = Vec::new();
    let mut pending: Vec<&'static str> = t.fields.iter().filter_map(|(_, f)| f.nested()).collect();
    while let Some(name) = pending.pop() {
        if !referenced.contains(&name) {
            referenced.push(name);
            pending.extend(known(name).fields.iter().filter_map(|(_, f)| f.nested()));
        }
    }
    referenced.sort_unstable();
    let mut out = String::from("{\"type_description\": ");
    describe(t, &mut out);
    out.push_str(", \"referenced_type_descriptions\": [");
    for (i, name) in referenced.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        describe(known(name), &mut out);
    }
    out.push_str("]}");
    out
}

/// `RIHS01_<64 lowercase hex>`.
pub fn type_hash(t: &MessageType) -> String {
    let digest = Sha256::digest(hashable_description(t).as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("RIHS01_{hex}")
}

/// The DDS name rmw_zenoh puts in key expressions: `pkg::msg::dds_::Name_`.
pub fn dds_type_name(t: &MessageType) -> String {
    let mut parts = t.name.split('/');
    let (pkg, kind, name) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    format!("{pkg}::{kind}::dds_::{name}_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_string_example_of_the_rmw_zenoh_design() {
        const STRING: MessageType = MessageType {
            name: "std_msgs/msg/String",
            fields: &[("data", FieldType::String)],
        };
        assert_eq!(
            type_hash(&STRING),
            "RIHS01_df668c740482bbd48fb39d76a70dfd4bd59db1288021743503259e948f6b1a18"
        );
        assert_eq!(dds_type_name(&STRING), "std_msgs::msg::dds_::String_");
    }
}
