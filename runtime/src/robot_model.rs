//! The robot's model from a URDF: its joints (names, limits) and the kinematic chain
//! that places its links, for the safety filter's Cartesian checks.
//!
//! The URDF is parsed by `urdf-rs`; the tree, the choice of the arm's chain and the
//! forward kinematics are ours. The robot's joints are the movable joints on the
//! path from the root link to the arm's tip, in that order; fixed joints are folded
//! into the transforms around them. [`KinematicChain::link_position`] runs in the
//! tick, so it allocates nothing and returns NaN (never panics) when it is given too
//! few joint values.
//!
//! Frames follow the URDF: a joint's `<origin xyz rpy>` places its frame in the
//! parent link's frame (`rpy` = fixed-axis roll about x, then pitch about y, then
//! yaw about z); a revolute or continuous joint rotates about `<axis>` in that
//! frame, a prismatic joint slides along it. Positions are in the root link's frame.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::Path;

use nalgebra::{Isometry3, Translation3, Unit, UnitQuaternion, Vector3};

use crate::MAX_JOINTS;

/// URDF files above this size are refused (they are text; real ones are < 1 MiB).
pub const MAX_URDF_BYTES: u64 = 16 << 20;

/// What went wrong loading a URDF; every message names the file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RobotModelError {
    #[error("cannot read URDF {file}: {reason}")]
    Read { file: String, reason: String },
    #[error("URDF {file} is not valid URDF XML: {reason}")]
    Parse { file: String, reason: String },
    #[error("URDF {file}: {reason}")]
    Invalid { file: String, reason: String },
    #[error("URDF {file} has no link `{link}` to end the arm's chain at; links: {links}")]
    UnknownTip {
        file: String,
        link: String,
        links: String,
    },
}

/// How a robot joint moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JointKind {
    /// Rotates about its axis within position limits, rad.
    Revolute,
    /// Rotates about its axis without position limits in the URDF.
    Continuous,
    /// Slides along its axis, m.
    Prismatic,
}

impl fmt::Display for JointKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Revolute => "revolute",
            Self::Continuous => "continuous",
            Self::Prismatic => "prismatic",
        })
    }
}

/// One robot joint as the URDF describes it. A limit is `None` where the URDF gives
/// none (a continuous joint's position, a `<limit>` without `velocity`, URDF < 1.2
/// acceleration and jerk).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelJoint {
    pub name: String,
    pub kind: JointKind,
    /// `[lower, upper]`, rad or m.
    pub position: Option<[f64; 2]>,
    pub velocity: Option<f64>,
    /// N·m or N; carried for reference, reflex commands positions.
    pub effort: Option<f64>,
    /// URDF 1.2 `acceleration`.
    pub acceleration: Option<f64>,
    /// URDF 1.2 `jerk`.
    pub jerk: Option<f64>,
}

/// A robot model: the joints of the arm's chain and its kinematics.
#[derive(Debug, Clone)]
pub struct RobotModel {
    /// The URDF's `<robot name>`.
    pub name: String,
    /// The robot joints, root to tip.
    pub joints: Vec<ModelJoint>,
    pub chain: KinematicChain,
    /// The link at the end of the chain.
    pub tip: LinkId,
    /// Every link of the URDF, in file order (also those off the chain).
    links: Vec<String>,
    /// Links off the chain, with the movable joint that puts them out of reach.
    unreachable: HashMap<String, String>,
}

/// A link whose position the chain can compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LinkId(usize);

#[derive(Debug, Clone, Copy)]
enum Motion {
    Rotate(Unit<Vector3<f64>>),
    Slide(Unit<Vector3<f64>>),
}

/// One movable joint of the chain.
#[derive(Debug, Clone, Copy)]
struct Step {
    /// From the previous movable joint's moving frame (or the root) to this joint's
    /// frame: the fixed joints in between folded with this joint's origin.
    origin: Isometry3<f64>,
    motion: Motion,
}

/// Where a link sits on the chain.
#[derive(Debug, Clone)]
struct LinkFrame {
    name: String,
    /// How many chain joints move it (the first `steps` of the chain).
    steps: usize,
    /// From the last of those joints' moving frame to the link's frame.
    tail: Isometry3<f64>,
}

/// The arm's serial chain: forward kinematics without allocation.
#[derive(Debug, Clone)]
pub struct KinematicChain {
    steps: Vec<Step>,
    links: Vec<LinkFrame>,
}

impl KinematicChain {
    /// Number of joint values the chain takes.
    pub fn joints(&self) -> usize {
        self.steps.len()
    }

    /// The id of a link the chain places: one whose position depends on no joint but
    /// the chain's.
    pub fn link_id(&self, name: &str) -> Option<LinkId> {
        self.links.iter().position(|l| l.name == name).map(LinkId)
    }

    pub fn link_name(&self, link: LinkId) -> &str {
        self.links.get(link.0).map_or("", |l| l.name.as_str())
    }

    /// The names of the links the chain places.
    pub fn link_names(&self) -> impl Iterator<Item = &str> {
        self.links.iter().map(|l| l.name.as_str())
    }

    /// The pose of `link` in the root link's frame at joint positions `q` (chain
    /// order). Entries of `q` beyond [`Self::joints`] are ignored; a missing one
    /// makes the pose NaN, which no workspace check accepts.
    pub fn link_pose(&self, q: &[f64], link: LinkId) -> Isometry3<f64> {
        let Some(frame) = self.links.get(link.0) else {
            return nan_pose();
        };
        let mut pose = Isometry3::identity();
        for (j, step) in self.steps.iter().take(frame.steps).enumerate() {
            let Some(&value) = q.get(j) else {
                return nan_pose();
            };
            pose *= step.origin;
            match step.motion {
                Motion::Rotate(axis) => {
                    pose.rotation *= UnitQuaternion::from_axis_angle(&axis, value);
                }
                Motion::Slide(axis) => {
                    pose.translation.vector += pose.rotation * (axis.into_inner() * value);
                }
            }
        }
        pose * frame.tail
    }

    /// The origin of `link`'s frame in the root link's frame, m; see [`Self::link_pose`].
    pub fn link_position(&self, q: &[f64], link: LinkId) -> Vector3<f64> {
        self.link_pose(q, link).translation.vector
    }
}

fn nan_pose() -> Isometry3<f64> {
    Isometry3::from_parts(
        Translation3::new(f64::NAN, f64::NAN, f64::NAN),
        UnitQuaternion::identity(),
    )
}

/// An axis-aligned box, in the root link's frame, that a link must stay inside.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WorkspaceBox {
    pub link: LinkId,
    pub min: Vector3<f64>,
    pub max: Vector3<f64>,
}

impl WorkspaceBox {
    /// True when the link is inside the box (boundary included) at joint positions
    /// `q`; false for NaN positions, so a broken input never counts as inside.
    pub fn contains(&self, chain: &KinematicChain, q: &[f64]) -> bool {
        self.contains_point(&chain.link_position(q, self.link))
    }

    pub fn contains_point(&self, p: &Vector3<f64>) -> bool {
        (0..3).all(|i| p[i] >= self.min[i] && p[i] <= self.max[i])
    }
}

impl RobotModel {
    /// Reads a URDF file. `tip_link` names the arm's last link; without it the URDF's
    /// movable joints must form one chain.
    pub fn from_file(path: &Path, tip_link: Option<&str>) -> Result<Self, RobotModelError> {
        let file = path.display().to_string();
        let text = read_capped(path).map_err(|reason| RobotModelError::Read {
            file: file.clone(),
            reason,
        })?;
        Self::from_urdf(&text, &file, tip_link)
    }

    /// Parses URDF text; `file` names it in errors.
    pub fn from_urdf(
        text: &str,
        file: &str,
        tip_link: Option<&str>,
    ) -> Result<Self, RobotModelError> {
        let robot = urdf_rs::read_from_string(text).map_err(|e| {
            let reason = e.to_string();
            RobotModelError::Parse {
                file: file.to_string(),
                // serde's wrapper word says nothing to a reader.
                reason: reason
                    .strip_prefix("custom: ")
                    .unwrap_or(&reason)
                    .to_string(),
            }
        })?;
        if let Some(tip) = tip_link
            && !robot.links.iter().any(|l| l.name == tip)
        {
            return Err(RobotModelError::UnknownTip {
                file: file.to_string(),
                link: tip.to_string(),
                links: robot
                    .links
                    .iter()
                    .map(|l| l.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        let invalid = |reason: String| RobotModelError::Invalid {
            file: file.to_string(),
            reason,
        };
        build(&robot, tip_link).map_err(invalid)
    }

    /// Every link in the URDF, in file order.
    pub fn link_names(&self) -> &[String] {
        &self.links
    }

    /// Why the chain cannot place `link`: it does not exist, or a joint that is not
    /// a robot joint moves it. `None` when the chain places it.
    pub fn why_unplaced(&self, link: &str) -> Option<String> {
        if self.chain.link_id(link).is_some() {
            return None;
        }
        Some(match self.unreachable.get(link) {
            Some(joint) => format!(
                "link `{link}` is moved by joint `{joint}`, which is not on the arm's chain \
                 (chain links: {})",
                self.chain.link_names().collect::<Vec<_>>().join(", ")
            ),
            None => format!(
                "the URDF has no link `{link}` (links: {})",
                self.links.join(", ")
            ),
        })
    }
}

/// Reads a regular file of at most [`MAX_URDF_BYTES`].
fn read_capped(path: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() > MAX_URDF_BYTES {
        return Err(format!(
            "{} bytes, more than the {MAX_URDF_BYTES} a URDF may have",
            meta.len()
        ));
    }
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_URDF_BYTES + 1).read_to_string(&mut text))
        .map_err(|e| e.to_string())?;
    Ok(text)
}

fn origin_of(joint: &urdf_rs::Joint) -> Result<Isometry3<f64>, String> {
    let [x, y, z] = joint.origin.xyz.0;
    let [roll, pitch, yaw] = joint.origin.rpy.0;
    if ![x, y, z, roll, pitch, yaw].iter().all(|v| v.is_finite()) {
        return Err(format!(
            "joint `{}` has a non-finite <origin> (xyz {:?}, rpy {:?})",
            joint.name, joint.origin.xyz.0, joint.origin.rpy.0
        ));
    }
    Ok(Isometry3::from_parts(
        Translation3::new(x, y, z),
        UnitQuaternion::from_euler_angles(roll, pitch, yaw),
    ))
}

fn axis_of(joint: &urdf_rs::Joint) -> Result<Unit<Vector3<f64>>, String> {
    let v = Vector3::from(joint.axis.xyz.0);
    let norm = v.norm();
    if !(norm.is_finite() && norm > 1e-9) {
        return Err(format!(
            "joint `{}` has axis {:?}; it must be a non-zero finite vector",
            joint.name, joint.axis.xyz.0
        ));
    }
    Ok(Unit::new_normalize(v))
}

/// A URDF limit: urdf-rs reports an absent `velocity` / `effort` as 0 and absent
/// URDF 1.2 limits as infinity; both mean "not given".
fn given(value: f64) -> Option<f64> {
    (value != 0.0 && !value.is_infinite()).then_some(value)
}

fn model_joint(joint: &urdf_rs::Joint, kind: JointKind) -> ModelJoint {
    let limit = &joint.limit;
    let position = match kind {
        JointKind::Continuous => None,
        // Both bounds 0 is what urdf-rs gives without a <limit>: a joint that cannot
        // move is no robot joint, so ask for limits rather than freeze it.
        _ if limit.lower == 0.0 && limit.upper == 0.0 => None,
        _ if limit.lower.is_infinite() || limit.upper.is_infinite() => None,
        _ => Some([limit.lower, limit.upper]),
    };
    ModelJoint {
        name: joint.name.clone(),
        kind,
        position,
        velocity: given(limit.velocity),
        effort: given(limit.effort),
        acceleration: limit.acceleration.is_finite().then_some(limit.acceleration),
        jerk: limit.jerk.is_finite().then_some(limit.jerk),
    }
}

/// Builds the tree, picks the arm's chain and folds its transforms.
fn build(robot: &urdf_rs::Robot, tip_link: Option<&str>) -> Result<RobotModel, String> {
    use urdf_rs::JointType;

    let links: Vec<String> = robot.links.iter().map(|l| l.name.clone()).collect();
    let mut index = HashMap::new();
    for (i, name) in links.iter().enumerate() {
        if index.insert(name.as_str(), i).is_some() {
            return Err(format!("link `{name}` is defined twice"));
        }
    }
    if links.is_empty() {
        return Err("has no <link>".into());
    }
    // parent_joint[link] = the joint whose child it is.
    let mut parent_joint: Vec<Option<usize>> = vec![None; links.len()];
    let mut joint_names = HashMap::new();
    for (j, joint) in robot.joints.iter().enumerate() {
        if joint_names.insert(joint.name.as_str(), j).is_some() {
            return Err(format!("joint `{}` is defined twice", joint.name));
        }
        let find = |name: &str, role: &str| {
            index.get(name).copied().ok_or_else(|| {
                format!(
                    "joint `{}` names {role} link `{name}`, which is not defined",
                    joint.name
                )
            })
        };
        find(&joint.parent.link, "parent")?;
        let child = find(&joint.child.link, "child")?;
        if let Some(other) = parent_joint[child] {
            return Err(format!(
                "link `{}` is the child of two joints (`{}` and `{}`)",
                joint.child.link, robot.joints[other].name, joint.name
            ));
        }
        parent_joint[child] = Some(j);
    }
    let roots: Vec<&str> = (0..links.len())
        .filter(|&l| parent_joint[l].is_none())
        .map(|l| links[l].as_str())
        .collect();
    if roots.len() != 1 {
        return Err(format!(
            "must have exactly one root link (a link no joint moves), found {}: {}",
            roots.len(),
            roots.join(", ")
        ));
    }
    // Joints from the root to each link, root first; a loop never reaches the root.
    let path_to = |link: usize| -> Result<Vec<usize>, String> {
        let mut path = Vec::new();
        let mut at = link;
        while let Some(j) = parent_joint[at] {
            if path.len() > robot.joints.len() {
                return Err(format!(
                    "the joints above link `{}` form a loop",
                    links[link]
                ));
            }
            path.push(j);
            at = index[robot.joints[j].parent.link.as_str()];
        }
        path.reverse();
        Ok(path)
    };
    let paths = (0..links.len())
        .map(path_to)
        .collect::<Result<Vec<_>, _>>()?;
    let moves = |j: usize| robot.joints[j].joint_type != JointType::Fixed;
    let movable =
        |path: &[usize]| -> Vec<usize> { path.iter().copied().filter(|&j| moves(j)).collect() };

    let tip = match tip_link {
        Some(name) => *index.get(name).ok_or_else(|| {
            format!(
                "has no link `{name}` (the tip link); links: {}",
                links.join(", ")
            )
        })?,
        None => {
            // The leaf with the most movable joints above it; every other leaf must
            // hang off the same chain, or the arm's end is ambiguous.
            let leaves: Vec<usize> = (0..links.len())
                .filter(|&l| !robot.joints.iter().any(|j| j.parent.link == links[l]))
                .collect();
            let best = leaves
                .iter()
                .copied()
                .max_by_key(|&l| (movable(&paths[l]).len(), std::cmp::Reverse(l)))
                .unwrap_or(0);
            let chain = movable(&paths[best]);
            if let Some(&other) = leaves
                .iter()
                .find(|&&l| !movable(&paths[l]).iter().all(|j| chain.contains(j)))
            {
                return Err(format!(
                    "its movable joints branch (to links `{}` and `{}`); name the arm's last \
                     link with `robot.tip_link`",
                    links[best], links[other]
                ));
            }
            best
        }
    };
    let chain_joints = movable(&paths[tip]);
    if chain_joints.len() > MAX_JOINTS {
        return Err(format!(
            "the chain to `{}` has {} movable joints; at most {MAX_JOINTS} are supported",
            links[tip],
            chain_joints.len()
        ));
    }

    let mut joints = Vec::with_capacity(chain_joints.len());
    let mut steps = Vec::with_capacity(chain_joints.len());
    let mut pending = Isometry3::identity();
    for &j in &paths[tip] {
        let joint = &robot.joints[j];
        let origin = origin_of(joint)?;
        let kind = match joint.joint_type {
            JointType::Fixed => {
                pending *= origin;
                continue;
            }
            JointType::Revolute => JointKind::Revolute,
            JointType::Continuous => JointKind::Continuous,
            JointType::Prismatic => JointKind::Prismatic,
            ref other => {
                return Err(format!(
                    "joint `{}` on the arm's chain is {other:?}; only revolute, continuous, \
                     prismatic and fixed joints are supported",
                    joint.name
                ));
            }
        };
        if joint.mimic.is_some() {
            return Err(format!(
                "joint `{}` on the arm's chain mimics another joint; mimic joints are not \
                 supported on the chain",
                joint.name
            ));
        }
        let axis = axis_of(joint)?;
        steps.push(Step {
            origin: pending * origin,
            motion: match kind {
                JointKind::Prismatic => Motion::Slide(axis),
                _ => Motion::Rotate(axis),
            },
        });
        pending = Isometry3::identity();
        joints.push(model_joint(joint, kind));
    }

    // Every link whose path moves only with chain joints gets a frame.
    let mut frames = Vec::new();
    let mut unreachable = HashMap::new();
    for (l, path) in paths.iter().enumerate() {
        if let Some(&j) = movable(path).iter().find(|j| !chain_joints.contains(j)) {
            unreachable.insert(links[l].clone(), robot.joints[j].name.clone());
            continue;
        }
        // After the last chain joint on the path, only fixed joints remain.
        let last = path.iter().rposition(|&j| moves(j));
        let mut tail = Isometry3::identity();
        for &j in &path[last.map_or(0, |i| i + 1)..] {
            tail *= origin_of(&robot.joints[j])?;
        }
        frames.push(LinkFrame {
            name: links[l].clone(),
            steps: movable(path).len(),
            tail,
        });
    }
    let chain = KinematicChain {
        steps,
        links: frames,
    };
    let tip = chain
        .link_id(&links[tip])
        .ok_or_else(|| format!("internal: tip link `{}` has no frame", links[tip]))?;
    Ok(RobotModel {
        name: robot.name.clone(),
        joints,
        chain,
        tip,
        links,
        unreachable,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A two-joint arm with a fixed tool and a branch (a camera on a pan joint).
    const ARM: &str = r#"<?xml version="1.0"?>
<robot name="two">
  <link name="base"/>
  <link name="upper"/>
  <link name="fore"/>
  <link name="tool"/>
  <joint name="shoulder" type="revolute">
    <origin xyz="0 0 0.1" rpy="0 0 0"/>
    <parent link="base"/><child link="upper"/>
    <axis xyz="0 0 1"/>
    <limit lower="-2" upper="2" velocity="1.5" effort="10"/>
  </joint>
  <joint name="elbow" type="continuous">
    <origin xyz="0.5 0 0" rpy="0 0 0"/>
    <parent link="upper"/><child link="fore"/>
    <axis xyz="0 0 1"/>
    <limit velocity="2" effort="5"/>
  </joint>
  <joint name="tool_mount" type="fixed">
    <origin xyz="0.25 0 0" rpy="0 0 0"/>
    <parent link="fore"/><child link="tool"/>
  </joint>
</robot>"#;

    fn arm() -> RobotModel {
        RobotModel::from_urdf(ARM, "arm.urdf", None).unwrap()
    }

    fn close(a: Vector3<f64>, b: [f64; 3]) -> bool {
        (a - Vector3::from(b)).norm() < 1e-12
    }

    #[test]
    fn reads_joints_limits_and_chain_order() {
        let model = arm();
        let names: Vec<_> = model.joints.iter().map(|j| j.name.as_str()).collect();
        assert_eq!(names, ["shoulder", "elbow"]);
        assert_eq!(model.joints[0].kind, JointKind::Revolute);
        assert_eq!(model.joints[0].position, Some([-2.0, 2.0]));
        assert_eq!(model.joints[0].velocity, Some(1.5));
        assert_eq!(model.joints[0].effort, Some(10.0));
        assert_eq!(model.joints[0].acceleration, None);
        assert_eq!(model.joints[1].kind, JointKind::Continuous);
        assert_eq!(model.joints[1].position, None);
        assert_eq!(model.chain.link_name(model.tip), "tool");
    }

    #[test]
    fn planar_forward_kinematics() {
        let model = arm();
        let tool = model.chain.link_id("tool").unwrap();
        let quarter = std::f64::consts::FRAC_PI_2;
        assert!(close(
            model.chain.link_position(&[0.0, 0.0], tool),
            [0.75, 0.0, 0.1]
        ));
        assert!(close(
            model.chain.link_position(&[quarter, 0.0], tool),
            [0.0, 0.75, 0.1]
        ));
        assert!(close(
            model.chain.link_position(&[quarter, -quarter], tool),
            [0.25, 0.5, 0.1]
        ));
        let base = model.chain.link_id("base").unwrap();
        assert!(close(
            model.chain.link_position(&[1.0, 2.0], base),
            [0.0; 3]
        ));
    }

    #[test]
    fn rpy_is_fixed_axis_roll_pitch_yaw_and_prismatic_slides() {
        // Yaw 90° then a slide along the joint's x: moves along the parent's y.
        let urdf = r#"<robot name="p"><link name="a"/><link name="b"/><link name="c"/>
          <joint name="turn" type="fixed"><origin xyz="1 0 0" rpy="0 0 1.5707963267948966"/>
            <parent link="a"/><child link="b"/></joint>
          <joint name="slide" type="prismatic"><origin xyz="0 0 0" rpy="1.5707963267948966 0 0"/>
            <parent link="b"/><child link="c"/><axis xyz="0 1 0"/>
            <limit lower="0" upper="1" velocity="0.5" effort="1"/></joint></robot>"#;
        let model = RobotModel::from_urdf(urdf, "p.urdf", None).unwrap();
        assert_eq!(model.joints.len(), 1);
        let c = model.chain.link_id("c").unwrap();
        // Roll 90° maps the joint's y onto the parent's z; yaw is about z, so the
        // slide stays vertical.
        assert!(close(model.chain.link_position(&[0.5], c), [1.0, 0.0, 0.5]));
    }

    #[test]
    fn too_few_joint_values_give_nan_not_a_panic() {
        let model = arm();
        let p = model.chain.link_position(&[0.1], model.tip);
        assert!(p.iter().all(|v| v.is_nan()));
        let inside = WorkspaceBox {
            link: model.tip,
            min: Vector3::repeat(-10.0),
            max: Vector3::repeat(10.0),
        };
        assert!(!inside.contains(&model.chain, &[0.1]));
        assert!(!inside.contains(&model.chain, &[f64::NAN, 0.0]));
        assert!(inside.contains(&model.chain, &[0.1, 0.2]));
    }

    #[test]
    fn workspace_box_includes_its_boundary_and_nothing_outside() {
        let model = arm();
        let mut b = WorkspaceBox {
            link: model.tip,
            min: Vector3::new(0.0, -0.1, 0.0),
            max: Vector3::new(0.75, 0.1, 0.1),
        };
        assert!(b.contains(&model.chain, &[0.0, 0.0]));
        b.max.x = 0.7;
        assert!(!b.contains(&model.chain, &[0.0, 0.0]));
        assert!(!b.contains(&model.chain, &[0.5, 0.0]));
    }

    #[test]
    fn a_branch_needs_a_tip_and_off_chain_links_are_explained() {
        let branched = ARM.replace(
            "</robot>",
            r#"<link name="camera"/>
  <joint name="pan" type="revolute"><parent link="upper"/><child link="camera"/>
    <axis xyz="0 0 1"/><limit lower="-1" upper="1" velocity="1" effort="1"/></joint>
</robot>"#,
        );
        let err = RobotModel::from_urdf(&branched, "arm.urdf", None).unwrap_err();
        assert!(err.to_string().contains("robot.tip_link"), "{err}");
        assert!(err.to_string().contains("arm.urdf"), "{err}");
        let model = RobotModel::from_urdf(&branched, "arm.urdf", Some("tool")).unwrap();
        assert_eq!(model.joints.len(), 2);
        let why = model.why_unplaced("camera").unwrap();
        assert!(why.contains("joint `pan`"), "{why}");
        assert!(
            model
                .why_unplaced("nope")
                .unwrap()
                .contains("no link `nope`")
        );
        assert!(model.why_unplaced("upper").is_none());
        // The other way round, the chain is shoulder + pan.
        let model = RobotModel::from_urdf(&branched, "arm.urdf", Some("camera")).unwrap();
        let names: Vec<_> = model.joints.iter().map(|j| j.name.as_str()).collect();
        assert_eq!(names, ["shoulder", "pan"]);
    }

    #[test]
    fn broken_urdfs_name_the_file_and_the_problem() {
        let cases = [
            ("<robot name='x'><link name='a'>", "not valid URDF XML"),
            (
                "<robot name='x'><link name='a'/><link name='a'/></robot>",
                "link `a` is defined twice",
            ),
            (
                "<robot name='x'><link name='a'/><joint name='j' type='fixed'><parent link='a'/><child link='b'/></joint></robot>",
                "child link `b`, which is not defined",
            ),
            (
                "<robot name='x'><link name='a'/><link name='b'/></robot>",
                "exactly one root link",
            ),
            (
                "<robot name='x'><link name='a'/><link name='b'/><joint name='j' type='revolute'><parent link='a'/><child link='b'/><axis xyz='0 0 0'/><limit lower='-1' upper='1' velocity='1' effort='1'/></joint></robot>",
                "axis [0.0, 0.0, 0.0]",
            ),
            (
                "<robot name='x'><link name='a'/><link name='b'/><joint name='j' type='floating'><parent link='a'/><child link='b'/></joint></robot>",
                "only revolute, continuous",
            ),
            (
                "<robot name='x'><link name='a'/><link name='b'/><joint name='j' type='revolute'><origin xyz='nan 0 0'/><parent link='a'/><child link='b'/><limit lower='-1' upper='1' velocity='1' effort='1'/></joint></robot>",
                "non-finite <origin>",
            ),
        ];
        for (urdf, expected) in cases {
            let err = RobotModel::from_urdf(urdf, "bad.urdf", None).unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains("bad.urdf") && text.contains(expected),
                "{text}"
            );
        }
        let err = RobotModel::from_file(Path::new("/nonexistent/arm.urdf"), None).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/arm.urdf"), "{err}");
        let err = RobotModel::from_file(Path::new("/"), None).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }
}
