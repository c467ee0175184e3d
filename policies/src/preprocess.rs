//! From an observation to model inputs: image resize (box filter when the size
//! divides evenly, else bilinear with half-pixel centres, as OpenCV's
//! `INTER_AREA` / `INTER_LINEAR`; optionally keeping the aspect ratio and padding
//! with black, as openpi's `resize_with_pad`), pixel range mapping, layout, camera
//! masks, and normalization and zero padding of joint vectors. Buffers are sized
//! once; filling them does not allocate.

use reflex_runtime::launch::{
    ChannelOrder, ImageLayout, ImagePreprocess, InputConfig, ObservationSource, PixelRange,
    ResizeMode, TensorDtype,
};
use reflex_runtime::types::{Image, Observation};

use std::borrow::Cow;

use ort::session::SessionInputValue;
use ort::value::TensorRef;

use crate::normalize::VectorNorm;

/// An all-black, zero-state observation shaped like the launch file's sensors, for
/// warming up models before the first real one arrives.
pub fn blank_observation(launch: &reflex_runtime::launch::Launch) -> Observation {
    let images = launch
        .config
        .drivers
        .sim_arm
        .iter()
        .filter_map(|a| a.camera.as_ref())
        .map(|c| Image::black(c.width, c.height))
        .collect();
    Observation {
        tick: 0,
        stamp_ns: 0,
        joints: reflex_runtime::types::JointState::empty(launch.config.robot.joints.len()),
        images,
    }
}

/// One model input: where its values come from and the buffer they go into.
pub struct MappedInput {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: TensorDtype,
    source: Source,
    image: Option<ImagePreprocess>,
    pub normalize: Option<VectorNorm>,
    pub values: Vec<f32>,
    pub bytes: Vec<u8>,
    pub flags: Vec<bool>,
}

impl MappedInput {
    /// True for joint-vector inputs (positions or velocities).
    pub fn is_joint_vector(&self) -> bool {
        matches!(self.source, Source::Positions | Source::Velocities)
    }

    /// True for joint positions (normalized with the `state` statistics).
    pub fn is_joint_positions(&self) -> bool {
        matches!(self.source, Source::Positions)
    }
}

enum Source {
    Positions,
    Velocities,
    /// The index into the observation's images; None for an optional camera the
    /// launch file does not have.
    Camera(Option<usize>),
    CameraMask(Option<usize>),
}

/// The observation's image `index`, unless the camera is absent or sent nothing.
fn present(obs: &Observation, index: Option<usize>) -> Option<&Image> {
    index
        .and_then(|i| obs.images.get(i))
        .filter(|image| image.width > 0 && image.height > 0)
}

/// Fills every configured input from an observation.
pub struct InputMapper {
    pub inputs: Vec<MappedInput>,
}

impl InputMapper {
    /// `cameras` are the observation's image names, in order.
    pub fn new(configs: &[InputConfig], cameras: &[String]) -> Result<Self, String> {
        let inputs = configs
            .iter()
            .map(|c| {
                let index = |name: &String| cameras.iter().position(|n| n == name);
                let source = match &c.source {
                    ObservationSource::JointPositions => Source::Positions,
                    ObservationSource::JointVelocities => Source::Velocities,
                    ObservationSource::Camera(name) => match (index(name), c.optional) {
                        (None, false) => return Err(format!("no camera `{name}`")),
                        (found, _) => Source::Camera(found),
                    },
                    ObservationSource::CameraMask(name) => Source::CameraMask(index(name)),
                };
                // Dynamic dimensions (-1) are a batch of one here.
                let shape: Vec<usize> = c
                    .shape
                    .iter()
                    .map(|&d| if d < 0 { 1 } else { d as usize })
                    .collect();
                let len = shape.iter().product();
                let (values, bytes, flags) = match c.dtype {
                    TensorDtype::Float32 => (vec![0.0; len], Vec::new(), Vec::new()),
                    TensorDtype::Uint8 => (Vec::new(), vec![0; len], Vec::new()),
                    TensorDtype::Bool => (Vec::new(), Vec::new(), vec![false; len]),
                };
                Ok(MappedInput {
                    name: c.name.clone(),
                    shape,
                    dtype: c.dtype,
                    source,
                    image: c.image.clone(),
                    normalize: c.normalize.as_ref().map(VectorNorm::inline),
                    values,
                    bytes,
                    flags,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Self { inputs })
    }

    /// The filled buffers as session inputs (views, no copies).
    pub fn session_inputs(&self) -> Result<Vec<(Cow<'_, str>, SessionInputValue<'_>)>, ort::Error> {
        let mut inputs = Vec::with_capacity(self.inputs.len());
        for input in &self.inputs {
            let shape = input.shape.clone();
            let value: SessionInputValue<'_> = match input.dtype {
                TensorDtype::Float32 => {
                    TensorRef::from_array_view((shape, &input.values[..]))?.into()
                }
                TensorDtype::Uint8 => TensorRef::from_array_view((shape, &input.bytes[..]))?.into(),
                TensorDtype::Bool => TensorRef::from_array_view((shape, &input.flags[..]))?.into(),
            };
            inputs.push((Cow::from(input.name.as_str()), value));
        }
        Ok(inputs)
    }

    /// Normalizes joint-position inputs with `norm` (from a statistics file),
    /// unless the launch file gave one inline.
    pub fn set_state_normalization(&mut self, norm: &VectorNorm) {
        for input in &mut self.inputs {
            if input.is_joint_positions() && input.normalize.is_none() {
                input.normalize = Some(norm.clone());
            }
        }
    }

    pub fn fill(&mut self, obs: &Observation) {
        for input in &mut self.inputs {
            match input.source {
                Source::Positions | Source::Velocities => {
                    let values = match input.source {
                        Source::Positions => obs.joints.positions(),
                        _ => obs.joints.velocities(),
                    };
                    // Entries past the robot's joints stay zero (padding).
                    for (j, (out, v)) in input.values.iter_mut().zip(values).enumerate() {
                        *out = match &input.normalize {
                            Some(n) => n.normalize(j, *v as f32),
                            None => *v as f32,
                        };
                    }
                }
                Source::CameraMask(index) => {
                    let seen = present(obs, index).is_some();
                    input.flags.fill(seen);
                    input.values.fill(if seen { 1.0 } else { 0.0 });
                }
                Source::Camera(index) => {
                    let Some(pre) = &input.image else { continue };
                    match (present(obs, index), input.dtype) {
                        (Some(image), TensorDtype::Float32) => {
                            resize_into(image, pre, &mut input.values, |v| map_range(v, pre.range))
                        }
                        (Some(image), _) => {
                            resize_into(image, pre, &mut input.bytes, |v| v.round() as u8)
                        }
                        // A missing view is a black image (openpi), masked false.
                        (None, _) => {
                            input.values.fill(map_range(0.0, pre.range));
                            input.bytes.fill(0);
                        }
                    }
                }
            }
        }
    }
}

fn map_range(v: f32, range: PixelRange) -> f32 {
    match range {
        PixelRange::ZeroOne => v / 255.0,
        PixelRange::MinusOneOne => v / 255.0 * 2.0 - 1.0,
        PixelRange::Raw => v,
    }
}

/// Resizes `image` to `pre.resize` and writes it in `pre.layout`, mapping each
/// resampled channel value (0..=255 as f32) through `convert`.
pub fn resize_into<T>(
    image: &Image,
    pre: &ImagePreprocess,
    out: &mut [T],
    convert: impl Fn(f32) -> T,
) {
    let [oh, ow] = pre.resize;
    if pre.mode == ResizeMode::Pad && oh * image.width != ow * image.height {
        resize_with_pad(image, pre, out, convert)
    } else {
        resize_stretch(image, pre, out, convert)
    }
}

fn resize_stretch<T>(
    image: &Image,
    pre: &ImagePreprocess,
    out: &mut [T],
    convert: impl Fn(f32) -> T,
) {
    let [oh, ow] = pre.resize;
    let (ih, iw) = (image.height, image.width);
    // Output channel c reads source channel c (RGB) or 2 - c (BGR models).
    let bgr = pre.channels == ChannelOrder::Bgr;
    let pixel = |x: usize, y: usize, c: usize| {
        let c = if bgr { 2 - c } else { c };
        f32::from(image.rgb[(y * iw + x) * 3 + c])
    };
    let box_filter = ih % oh == 0 && iw % ow == 0;
    let (fy, fx) = (ih / oh.max(1), iw / ow.max(1));
    for y in 0..oh {
        for x in 0..ow {
            for c in 0..3 {
                let value = if box_filter {
                    let mut sum = 0.0;
                    for sy in y * fy..(y + 1) * fy {
                        for sx in x * fx..(x + 1) * fx {
                            sum += pixel(sx, sy, c);
                        }
                    }
                    sum / (fx * fy) as f32
                } else {
                    let sy = ((y as f32 + 0.5) * ih as f32 / oh as f32 - 0.5)
                        .clamp(0.0, (ih - 1) as f32);
                    let sx = ((x as f32 + 0.5) * iw as f32 / ow as f32 - 0.5)
                        .clamp(0.0, (iw - 1) as f32);
                    let (y0, x0) = (sy.floor() as usize, sx.floor() as usize);
                    let (y1, x1) = ((y0 + 1).min(ih - 1), (x0 + 1).min(iw - 1));
                    let (wy, wx) = (sy - y0 as f32, sx - x0 as f32);
                    let top = pixel(x0, y0, c) * (1.0 - wx) + pixel(x1, y0, c) * wx;
                    let bottom = pixel(x0, y1, c) * (1.0 - wx) + pixel(x1, y1, c) * wx;
                    top * (1.0 - wy) + bottom * wy
                };
                let index = match pre.layout {
                    ImageLayout::Nchw => (c * oh + y) * ow + x,
                    ImageLayout::Nhwc => (y * ow + x) * 3 + c,
                };
                out[index] = convert(value);
            }
        }
    }
}

/// Keeps the aspect ratio: the image is resized to fit inside `pre.resize` and
/// centred, the rest is black (pixel value 0 before `convert`). Sizes and offsets
/// follow openpi's `resize_with_pad` (integer division, extra pixel at the end).
fn resize_with_pad<T>(
    image: &Image,
    pre: &ImagePreprocess,
    out: &mut [T],
    convert: impl Fn(f32) -> T,
) {
    let [oh, ow] = pre.resize;
    let ratio = f64::max(
        image.width as f64 / ow as f64,
        image.height as f64 / oh as f64,
    );
    let rh = ((image.height as f64 / ratio) as usize).clamp(1, oh);
    let rw = ((image.width as f64 / ratio) as usize).clamp(1, ow);
    let (top, left) = ((oh - rh) / 2, (ow - rw) / 2);
    let inner = ImagePreprocess {
        resize: [rh, rw],
        layout: ImageLayout::Nhwc,
        range: pre.range,
        mode: ResizeMode::Stretch,
        channels: pre.channels,
    };
    let mut resized = vec![0.0f32; rh * rw * 3];
    resize_stretch(image, &inner, &mut resized, |v| v);
    for y in 0..oh {
        for x in 0..ow {
            for c in 0..3 {
                let inside = (top..top + rh).contains(&y) && (left..left + rw).contains(&x);
                let value = match inside {
                    true => resized[((y - top) * rw + (x - left)) * 3 + c],
                    false => 0.0,
                };
                let index = match pre.layout {
                    ImageLayout::Nchw => (c * oh + y) * ow + x,
                    ImageLayout::Nhwc => (y * ow + x) * 3 + c,
                };
                out[index] = convert(value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(w: usize, h: usize, f: impl Fn(usize, usize, usize) -> u8) -> Image {
        let mut img = Image::black(w, h);
        for y in 0..h {
            for x in 0..w {
                for c in 0..3 {
                    img.rgb[(y * w + x) * 3 + c] = f(x, y, c);
                }
            }
        }
        img
    }

    fn pre(h: usize, w: usize, layout: ImageLayout) -> ImagePreprocess {
        ImagePreprocess {
            resize: [h, w],
            layout,
            range: PixelRange::ZeroOne,
            mode: ResizeMode::Stretch,
            channels: ChannelOrder::Rgb,
        }
    }

    #[test]
    fn bgr_models_get_their_channels_swapped() {
        let img = image(2, 2, |_, _, c| [10, 20, 30][c]);
        let mut out = vec![0.0f32; 12];
        let bgr = ImagePreprocess {
            channels: ChannelOrder::Bgr,
            ..pre(2, 2, ImageLayout::Nhwc)
        };
        resize_into(&img, &bgr, &mut out, |v| v);
        assert_eq!(&out[..3], &[30.0, 20.0, 10.0]);
    }

    #[test]
    fn resize_with_pad_keeps_the_aspect_ratio_and_pads_black() {
        // 4x2 (w x h) white image into 4x4: resized to 4x2, rows 1..3 white.
        let img = image(4, 2, |_, _, _| 255);
        let mut out = vec![0.0f32; 4 * 4 * 3];
        let pad = ImagePreprocess {
            mode: ResizeMode::Pad,
            ..pre(4, 4, ImageLayout::Nhwc)
        };
        resize_into(&img, &pad, &mut out, |v| {
            map_range(v, PixelRange::MinusOneOne)
        });
        let row = |y: usize| out[y * 12..(y + 1) * 12].to_vec();
        assert_eq!(row(0), vec![-1.0; 12]);
        assert_eq!(row(1), vec![1.0; 12]);
        assert_eq!(row(2), vec![1.0; 12]);
        assert_eq!(row(3), vec![-1.0; 12]);
    }

    #[test]
    fn missing_optional_camera_is_black_and_masked() {
        use reflex_runtime::launch::InputConfig;
        let toml_inputs = r#"
            [[inputs]]
            name = "wrist"
            source = "camera.wrist"
            shape = [1, 3, 2, 2]
            optional = true
            image = { resize = [2, 2], range = "minus_one_one" }
            [[inputs]]
            name = "wrist_mask"
            source = "camera_mask.wrist"
            dtype = "bool"
            shape = [1]
            [[inputs]]
            name = "state"
            source = "state.joint_positions"
            shape = [1, 5]
        "#;
        #[derive(serde::Deserialize)]
        struct Inputs {
            inputs: Vec<InputConfig>,
        }
        let parsed: Inputs = toml::from_str(toml_inputs).unwrap();
        let mut mapper = InputMapper::new(&parsed.inputs, &[]).unwrap();
        let mut obs = Observation {
            tick: 0,
            stamp_ns: 0,
            joints: reflex_runtime::types::JointState::empty(3),
            images: Vec::new(),
        };
        obs.joints.position[..3].copy_from_slice(&[0.5, 1.0, 1.5]);
        mapper.fill(&obs);
        assert_eq!(mapper.inputs[0].values, vec![-1.0; 12]);
        assert_eq!(mapper.inputs[1].flags, vec![false]);
        // Three joints into a width-5 input: zero padded.
        assert_eq!(mapper.inputs[2].values, vec![0.5, 1.0, 1.5, 0.0, 0.0]);
    }

    #[test]
    fn box_filter_averages_blocks() {
        let img = image(4, 4, |x, y, _| if x < 2 && y < 2 { 200 } else { 0 });
        let mut out = vec![0.0f32; 3 * 2 * 2];
        resize_into(&img, &pre(2, 2, ImageLayout::Nchw), &mut out, |v| v);
        assert_eq!(&out[..4], &[200.0, 0.0, 0.0, 0.0]);
        let img = image(4, 2, |x, _, _| (x * 10) as u8);
        let mut out = vec![0.0f32; 3 * 2];
        resize_into(&img, &pre(1, 2, ImageLayout::Nhwc), &mut out, |v| v);
        assert_eq!(out, vec![5.0, 5.0, 5.0, 25.0, 25.0, 25.0]);
    }

    #[test]
    fn bilinear_matches_half_pixel_centres() {
        // 3 -> 2 pixels: centres at 0.25 and 1.75 of the source.
        let img = image(3, 1, |x, _, _| [0, 100, 200][x]);
        let mut out = vec![0.0f32; 3 * 2];
        resize_into(&img, &pre(1, 2, ImageLayout::Nhwc), &mut out, |v| v);
        assert!(
            (out[0] - 25.0).abs() < 1e-4 && (out[3] - 175.0).abs() < 1e-4,
            "{out:?}"
        );
    }

    #[test]
    fn channel_layouts_and_ranges() {
        let img = image(2, 2, |_, _, c| [255, 0, 51][c]);
        let mut nchw = vec![0.0f32; 12];
        resize_into(&img, &pre(2, 2, ImageLayout::Nchw), &mut nchw, |v| {
            map_range(v, PixelRange::MinusOneOne)
        });
        assert_eq!(&nchw[..4], &[1.0; 4]);
        assert_eq!(&nchw[4..8], &[-1.0; 4]);
        assert!((map_range(51.0, PixelRange::ZeroOne) - 0.2).abs() < 1e-6);
    }
}
