//! Where each part of reflex's observation sits in an openpi request: openpi's
//! examples send flat keys (`observation/image`, `observation/state`, `prompt`)
//! or nested maps (`images/cam_high`); both are found.

use std::collections::BTreeMap;

use reflex_runtime::launch::{Launch, LaunchError};
use reflex_runtime::types::{Image, JointState, Observation, TensorSample};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::msgpack::{Value, Writer};
use crate::ndarray::NdArray;

/// `keys` of `[serve]` and of `[policy] kind = "openpi"`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ObservationKeys {
    /// The state vector: the joint positions in launch-file order, then the
    /// gripper's opening when the robot has one (LeRobot's and openpi's layout).
    #[serde(default = "default_state")]
    pub state: String,
    /// Camera name -> key of its image (uint8, `[H, W, 3]` or `[3, H, W]`).
    #[serde(default)]
    pub images: BTreeMap<String, String>,
    /// Tensor or audio stream name -> key of its float values.
    #[serde(default)]
    pub tensors: BTreeMap<String, String>,
    /// The instruction string; `""`: none is sent or read.
    #[serde(default = "default_prompt")]
    pub prompt: String,
}

fn default_state() -> String {
    "observation/state".into()
}

fn default_prompt() -> String {
    "prompt".into()
}

/// What a request holds for one robot: its joints, gripper, cameras and
/// tensor streams (name, values per sample), in launch-file order.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    pub joints: usize,
    pub gripper: bool,
    pub cameras: Vec<String>,
    pub tensors: Vec<(String, usize)>,
}

impl Layout {
    pub fn of(launch: &Launch) -> Self {
        Self {
            joints: launch.config.robot.joints.len(),
            gripper: launch.config.robot.gripper.is_some(),
            cameras: launch.camera_names(),
            tensors: launch
                .streams
                .iter()
                .filter(|s| s.is_tensor())
                .map(|s| (s.name.clone(), s.kind.values()))
                .collect(),
        }
    }

    /// Values of the state vector: the joints, then the gripper's opening.
    pub fn state_width(&self) -> usize {
        self.joints + usize::from(self.gripper)
    }
}

impl Default for ObservationKeys {
    fn default() -> Self {
        Self {
            state: default_state(),
            images: BTreeMap::new(),
            tensors: BTreeMap::new(),
            prompt: default_prompt(),
        }
    }
}

/// Decodes a compressed image into RGB: (width, height, pixels).
pub type ImageDecoder = fn(&[u8]) -> Result<(usize, usize, Vec<u8>), String>;

/// What one request carries (the client side).
pub struct Request<'a> {
    pub obs: &'a Observation,
    pub layout: &'a Layout,
    pub prompt: Option<&'a str>,
    /// Camera i's image to send instead of the observation's, when given
    /// (resized for sending).
    pub images: &'a [Option<Image>],
}

impl ObservationKeys {
    /// Every camera and tensor stream under its own name (`images/<camera>`,
    /// `tensors/<stream>`), the state under `state`: reflex's own protocol,
    /// where both ends are reflex and streams match by name.
    pub fn by_name(layout: &Layout) -> Self {
        Self {
            state: "state".into(),
            images: layout
                .cameras
                .iter()
                .map(|c| (c.clone(), format!("images/{c}")))
                .collect(),
            tensors: layout
                .tensors
                .iter()
                .map(|(t, _)| (t.clone(), format!("tensors/{t}")))
                .collect(),
            prompt: default_prompt(),
        }
    }

    /// Checks the names against the launch file's streams (`at` is where the
    /// keys table sits, e.g. `policy.keys`).
    pub fn check(&self, launch: &Launch, at: &str) -> Result<(), LaunchError> {
        let cameras = launch.camera_names();
        for name in self.images.keys() {
            if !cameras.contains(name) {
                return Err(launch.error_at(
                    &format!("{at}.images.{name}"),
                    format!("no camera named `{name}`; cameras: {}", list(&cameras)),
                ));
            }
        }
        let tensors = launch.tensor_names();
        for name in self.tensors.keys() {
            if !tensors.contains(name) {
                return Err(launch.error_at(
                    &format!("{at}.tensors.{name}"),
                    format!(
                        "no tensor stream named `{name}`; streams: {}",
                        list(&tensors)
                    ),
                ));
            }
        }
        if self.state.is_empty() {
            return Err(launch.error_at(&format!("{at}.state"), "must name a key"));
        }
        Ok(())
    }

    /// The observation a request describes; cameras and streams without a key are
    /// absent (black, `seq` 0) and policy inputs that must see them fail.
    /// Images sent as msgpack `bin` (compressed) go through `decoder`; without
    /// one they are refused.
    pub fn observation(
        &self,
        request: &Value<'_>,
        layout: &Layout,
        tick: u64,
        decoder: Option<ImageDecoder>,
    ) -> Result<Observation, String> {
        if !matches!(request, Value::Map(_)) {
            return Err(format!("the request is {}, not a map", request.type_name()));
        }
        let (joints, has_gripper) = (layout.joints, layout.gripper);
        let state = self.array(request, &self.state)?.to_f64();
        let width = layout.state_width();
        if state.len() != width && state.len() != joints {
            return Err(format!(
                "`{}` has {} values; the robot takes {joints} joint positions{}",
                self.state,
                state.len(),
                if has_gripper {
                    format!(" and the gripper's opening ({width})")
                } else {
                    String::new()
                }
            ));
        }
        if let Some(bad) = state.iter().position(|v| !v.is_finite()) {
            return Err(format!("`{}`[{bad}] is not finite", self.state));
        }
        let mut joint_state = JointState::empty(joints);
        joint_state.seq = tick + 1;
        joint_state.position[..joints].copy_from_slice(&state[..joints]);
        joint_state.gripper = state.get(joints).copied().filter(|_| has_gripper);
        let mut images = Vec::new();
        for camera in &layout.cameras {
            images.push(match self.images.get(camera) {
                Some(key) => match (lookup(request, key), decoder) {
                    (Some(Value::Bin(bytes)), Some(decode)) => {
                        let (width, height, rgb) =
                            decode(bytes).map_err(|e| format!("`{key}`: {e}"))?;
                        Image {
                            seq: tick + 1,
                            stamp_ns: 0,
                            width,
                            height,
                            rgb,
                        }
                    }
                    (Some(Value::Bin(_)), None) => {
                        return Err(format!(
                            "`{key}` is bytes; this protocol takes images as uint8 arrays"
                        ));
                    }
                    _ => image(self.array(request, key)?, key, tick)?,
                },
                None => Image::black(0, 0),
            });
        }
        let mut tensors = Vec::new();
        for (name, len) in &layout.tensors {
            let len = *len;
            tensors.push(match self.tensors.get(name) {
                Some(key) => {
                    let values: Vec<f32> = self
                        .array(request, key)?
                        .to_f64()
                        .iter()
                        .map(|&v| v as f32)
                        .collect();
                    if values.len() != len {
                        return Err(format!(
                            "`{key}` has {} values, stream `{name}` has {len}",
                            values.len()
                        ));
                    }
                    if values.iter().any(|v| !v.is_finite()) {
                        return Err(format!("`{key}` has values that are not finite"));
                    }
                    TensorSample {
                        seq: tick + 1,
                        stamp_ns: 0,
                        values,
                    }
                }
                None => TensorSample::zeros(len),
            });
        }
        Ok(Observation {
            images,
            tensors,
            ..Observation::of_joints(tick, joint_state)
        })
    }

    /// The request's instruction, when it has one.
    pub fn prompt<'a>(&self, request: &Value<'a>) -> Result<Option<&'a str>, String> {
        if self.prompt.is_empty() {
            return Ok(None);
        }
        match lookup(request, &self.prompt) {
            None | Some(Value::Nil) => Ok(None),
            Some(Value::Str(s)) => Ok(Some(s)),
            Some(other) => Err(format!(
                "`{}` is {}, not a string",
                self.prompt,
                other.type_name()
            )),
        }
    }

    fn array<'a>(&self, request: &Value<'a>, key: &str) -> Result<NdArray<'a>, String> {
        let value = lookup(request, key)
            .ok_or_else(|| format!("the request has no `{key}` (keys: {})", key_list(request)))?;
        match NdArray::from_value(value) {
            Some(array) => array.map_err(|e| format!("`{key}` {e}")),
            // A plain list of numbers is accepted for vectors.
            None => match value {
                Value::Array(items) => items
                    .iter()
                    .map(Value::as_f64)
                    .collect::<Option<Vec<f64>>>()
                    .map(|v| NdArray::from_f64(&[v.len()], &v))
                    .ok_or_else(|| format!("`{key}` is a list with values that are not numbers")),
                other => Err(format!(
                    "`{key}` is {}, not a numpy array",
                    other.type_name()
                )),
            },
        }
    }

    /// Writes `obs` as an openpi request (the client side): state as float64,
    /// images as uint8 `[H, W, 3]`, the prompt when there is one. `images[i]`
    /// replaces camera i's image when given (resized for sending). The map has
    /// room for `extra` more entries, which the caller writes after.
    pub fn write_request(&self, w: &mut Writer, request: Request<'_>, extra: usize) {
        let Request {
            obs,
            layout,
            prompt,
            images,
        } = request;
        let prompt = prompt.filter(|_| !self.prompt.is_empty());
        w.map(1 + self.images.len() + self.tensors.len() + usize::from(prompt.is_some()) + extra);
        let joints = obs.joints.joints;
        let mut state = obs.joints.position[..joints].to_vec();
        if layout.gripper {
            state.push(obs.joints.gripper.unwrap_or(0.0));
        }
        w.str(&self.state);
        NdArray::from_f64(&[state.len()], &state).write(w);
        for (camera, key) in &self.images {
            let index = layout.cameras.iter().position(|c| c == camera);
            let image =
                index.and_then(|i| images.get(i).and_then(Option::as_ref).or(obs.images.get(i)));
            w.str(key);
            match image {
                Some(img) => NdArray::from_u8(&[img.height, img.width, 3], &img.rgb).write(w),
                None => NdArray::from_u8(&[0, 0, 3], &[]).write(w),
            };
        }
        for (stream, key) in &self.tensors {
            let values = layout
                .tensors
                .iter()
                .position(|(t, _)| t == stream)
                .and_then(|i| obs.tensors.get(i))
                .map(|t| t.values.as_slice())
                .unwrap_or_default();
            w.str(key);
            NdArray::from_f32(&[values.len()], values).write(w);
        }
        if let Some(text) = prompt {
            w.str(&self.prompt).str(text);
        }
    }
}

/// `key` in a request: the literal key first, else a `/`-separated path
/// through nested maps.
pub fn lookup<'v, 'a>(request: &'v Value<'a>, key: &str) -> Option<&'v Value<'a>> {
    if let Some(value) = request.get(key) {
        return Some(value);
    }
    let mut at = request;
    for part in key.split('/') {
        at = at.get(part)?;
    }
    Some(at)
}

fn key_list(request: &Value<'_>) -> String {
    match request {
        Value::Map(entries) => list(
            &entries
                .iter()
                .map(|(k, _)| k.key_text().unwrap_or("?").to_string())
                .collect::<Vec<_>>(),
        ),
        _ => "none".into(),
    }
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// An RGB image from a uint8 array in HWC (`[H, W, 3]`) or CHW (`[3, H, W]`,
/// openpi's ALOHA examples) layout.
fn image(array: NdArray<'_>, key: &str, tick: u64) -> Result<Image, String> {
    let Some(bytes) = array.as_u8() else {
        return Err(format!(
            "`{key}` is {}, images are uint8 (openpi_client.image_tools.convert_to_uint8)",
            array.dtype.name()
        ));
    };
    let (height, width, rgb) = match array.shape.as_slice() {
        &[h, w, 3] => (h, w, bytes.to_vec()),
        &[3, h, w] => {
            let plane = h * w;
            let mut rgb = vec![0; plane * 3];
            for (i, pixel) in rgb.chunks_exact_mut(3).enumerate() {
                for (c, value) in pixel.iter_mut().enumerate() {
                    *value = bytes[c * plane + i];
                }
            }
            (h, w, rgb)
        }
        shape => {
            return Err(format!(
                "`{key}` has shape {shape:?}; images are [H, W, 3] or [3, H, W]"
            ));
        }
    };
    if height == 0 || width == 0 {
        return Err(format!("`{key}` is an empty image"));
    }
    Ok(Image {
        seq: tick + 1,
        stamp_ns: 0,
        width,
        height,
        rgb,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msgpack::decode;

    #[test]
    fn keys_are_found_flat_or_nested() {
        let mut w = Writer::new();
        w.map(2).str("observation/state").int(1).str("images");
        w.map(1).str("cam_high").int(2);
        let value = decode(&w.bytes).unwrap();
        assert_eq!(lookup(&value, "observation/state"), Some(&Value::Int(1)));
        assert_eq!(lookup(&value, "images/cam_high"), Some(&Value::Int(2)));
        assert_eq!(lookup(&value, "images/cam_low"), None);
    }

    #[test]
    fn chw_images_are_reordered_to_hwc() {
        // 3 x 1 x 2: R plane [1, 2], G plane [3, 4], B plane [5, 6].
        let array = NdArray::from_u8(&[3, 1, 2], &[1, 2, 3, 4, 5, 6]);
        let img = image(array, "im", 0).unwrap();
        assert_eq!((img.height, img.width), (1, 2));
        assert_eq!(img.rgb, vec![1, 3, 5, 2, 4, 6]);
        let float = NdArray::from_f32(&[1, 1, 3], &[0.0; 3]);
        assert!(image(float, "im", 0).unwrap_err().contains("uint8"));
    }
}
