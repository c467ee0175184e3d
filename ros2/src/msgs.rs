//! The ROS 2 messages reflex exchanges, in CDR: `sensor_msgs/msg/JointState`
//! (in from a ros2_control arm's joint_state_broadcaster, out for ROS tools),
//! `trajectory_msgs/msg/JointTrajectory` (joint_trajectory_controller) and
//! `std_msgs/msg/Float64MultiArray` (forward_command_controller).

use crate::cdr::{CdrError, Reader, Writer};

/// `builtin_interfaces/msg/Time` (and `Duration`, which has the same fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Time {
    pub sec: i32,
    pub nanosec: u32,
}

impl Time {
    /// From nanoseconds (since the Unix epoch for stamps).
    pub fn from_ns(ns: u64) -> Self {
        Self {
            sec: (ns / 1_000_000_000) as i32,
            nanosec: (ns % 1_000_000_000) as u32,
        }
    }

    fn write(self, w: &mut Writer) {
        w.i32(self.sec).u32(self.nanosec);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, CdrError> {
        Ok(Self {
            sec: r.i32()?,
            nanosec: r.u32()?,
        })
    }
}

/// `std_msgs/msg/Header`.
fn write_header(w: &mut Writer, stamp: Time, frame_id: &str) {
    stamp.write(w);
    w.string(frame_id);
}

/// `sensor_msgs/msg/JointState` as read: names and values in the sender's order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct JointState {
    pub stamp: Time,
    pub frame_id: String,
    pub name: Vec<String>,
    pub position: Vec<f64>,
    pub velocity: Vec<f64>,
    pub effort: Vec<f64>,
}

impl JointState {
    /// Decodes into `self`, reusing its buffers.
    pub fn decode_into(&mut self, bytes: &[u8]) -> Result<(), CdrError> {
        let mut r = Reader::new(bytes)?;
        self.stamp = Time::read(&mut r)?;
        self.frame_id.clear();
        self.frame_id.push_str(r.string()?);
        let names = r.count(5)?;
        self.name.clear();
        for _ in 0..names {
            self.name.push(r.string()?.to_string());
        }
        for values in [&mut self.position, &mut self.velocity, &mut self.effort] {
            values.clear();
            r.f64s(values)?;
        }
        Ok(())
    }
}

/// Writes a `sensor_msgs/msg/JointState`.
pub fn write_joint_state<'a>(
    w: &mut Writer,
    stamp: Time,
    frame_id: &str,
    names: impl ExactSizeIterator<Item = &'a str>,
    position: &[f64],
    velocity: &[f64],
    effort: &[f64],
) {
    w.begin();
    write_header(w, stamp, frame_id);
    w.strings(names).f64s(position).f64s(velocity).f64s(effort);
}

/// One `trajectory_msgs/msg/JointTrajectoryPoint`.
#[derive(Debug, Clone, Copy)]
pub struct TrajectoryPoint<'a> {
    pub positions: &'a [f64],
    pub velocities: &'a [f64],
    pub accelerations: &'a [f64],
    pub time_from_start: Time,
}

/// Writes a `trajectory_msgs/msg/JointTrajectory` (efforts empty).
pub fn write_joint_trajectory<'a>(
    w: &mut Writer,
    stamp: Time,
    frame_id: &str,
    joint_names: impl ExactSizeIterator<Item = &'a str>,
    points: &[TrajectoryPoint<'_>],
) {
    w.begin();
    write_header(w, stamp, frame_id);
    w.strings(joint_names);
    w.u32(points.len() as u32);
    for point in points {
        w.f64s(point.positions)
            .f64s(point.velocities)
            .f64s(point.accelerations)
            .f64s(&[]);
        point.time_from_start.write(w);
    }
}

/// Writes a `std_msgs/msg/Float64MultiArray` holding `data` with an empty
/// layout, as `ros2 topic pub` sends forward_command_controller's commands.
pub fn write_float64_multi_array(w: &mut Writer, data: &[f64]) {
    w.begin();
    // layout: no dimensions, data_offset 0.
    w.u32(0).u32(0).f64s(data);
}
