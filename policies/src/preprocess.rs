//! From an observation to model inputs: image resize (box filter when the size
//! divides evenly, else bilinear with half-pixel centres, as OpenCV's
//! `INTER_AREA` / `INTER_LINEAR`; optionally keeping the aspect ratio and padding
//! with black, as openpi's `resize_with_pad`), pixel range mapping, layout, camera
//! masks, and normalization and zero padding of joint vectors. Buffers are sized
//! once; filling them does not allocate.

use crate::config::{
    ChannelOrder, ImageLayout, ImagePreprocess, InputConfig, ObservationSource, PixelRange,
    ResizeFilter, ResizeMode, TensorDtype,
};
use reflex_runtime::stream::StreamKind;
use reflex_runtime::types::{Frame, Image, Observation};

use std::borrow::Cow;

use ort::session::SessionInputValue;
use ort::value::TensorRef;

use crate::normalize::VectorNorm;
use crate::prompt::PromptTokenizer;

/// An all-black, zero-state observation shaped like the launch file's sensors, for
/// warming up models before the first real one arrives.
pub fn blank_observation(launch: &reflex_runtime::launch::Launch) -> Observation {
    let image_sizes: Vec<(usize, usize)> = launch
        .streams
        .iter()
        .filter_map(|s| match s.kind {
            StreamKind::Image { width, height } => Some((width, height)),
            _ => None,
        })
        .collect();
    let tensor_lens: Vec<usize> = launch
        .streams
        .iter()
        .filter(|s| s.is_tensor())
        .map(|s| s.kind.values())
        .collect();
    Observation::blank(
        launch.config.robot.joints.len(),
        &image_sizes,
        &tensor_lens,
        launch.policy().history(),
        0,
    )
}

/// One model input: where its values come from and the buffer they go into.
pub struct MappedInput {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: TensorDtype,
    source: Source,
    image: Option<ImagePreprocess>,
    /// Per value (vectors) or per channel (cameras).
    pub normalize: Option<VectorNorm>,
    /// The statistics entry named by the input's `stats` (set by the policy).
    pub stats_key: Option<String>,
    /// Observations along the time axis (1: no time axis), the current one last.
    pub history: usize,
    /// Kept between frames; rebuilt only when the camera's size changes.
    plan: Option<ResizePlan>,
    pub values: Vec<f32>,
    pub bytes: Vec<u8>,
    pub flags: Vec<bool>,
    pub ids: Vec<i64>,
}

impl MappedInput {
    /// True for joint positions (normalized with the `state` statistics).
    pub fn is_joint_positions(&self) -> bool {
        matches!(self.source, Source::Positions)
    }

    pub fn is_camera(&self) -> bool {
        matches!(self.source, Source::Camera(_))
    }

    /// Colour channels of a camera input (the layout's channel axis).
    pub fn channels(&self) -> usize {
        let per_frame = &self.shape[self.shape.len().saturating_sub(3)..];
        match self.image.as_ref().map(|i| i.layout) {
            Some(ImageLayout::Nhwc) => per_frame.last().copied().unwrap_or(1),
            _ => per_frame.first().copied().unwrap_or(1),
        }
    }

    /// Values of one observation (one frame of the time axis).
    pub fn values_per_frame(&self) -> usize {
        self.shape.iter().product::<usize>() / self.history
    }
}

enum Source {
    Positions,
    Velocities,
    /// The index into the observation's images; None for an optional camera the
    /// launch file does not have.
    Camera(Option<usize>),
    CameraMask(Option<usize>),
    /// The index into the observation's tensors.
    Tensor(usize),
    /// Set by [`InputMapper::set_prompt`], not by observations.
    PromptIds,
    PromptMask,
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
    /// Tokenizes the instruction for `prompt.*` inputs.
    prompt: Option<PromptTokenizer>,
}

impl InputMapper {
    /// `cameras` are the observation's image names, `tensors` its tensor and audio
    /// stream names, in order.
    pub fn new(
        configs: &[InputConfig],
        cameras: &[String],
        tensors: &[String],
    ) -> Result<Self, String> {
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
                    ObservationSource::Tensor(name) => {
                        match tensors.iter().position(|n| n == name) {
                            Some(i) => Source::Tensor(i),
                            None => return Err(format!("no tensor stream `{name}`")),
                        }
                    }
                    ObservationSource::PromptIds => Source::PromptIds,
                    ObservationSource::PromptMask => Source::PromptMask,
                    ObservationSource::Stream { stream, field } => {
                        return Err(format!(
                            "`{stream}.{field}` was not resolved against the launch file's streams"
                        ));
                    }
                };
                // Dynamic dimensions (-1) are a batch of one here.
                let shape: Vec<usize> = c
                    .shape
                    .iter()
                    .map(|&d| if d < 0 { 1 } else { d as usize })
                    .collect();
                let len = shape.iter().product();
                let (mut values, mut bytes, mut flags, mut ids) =
                    (Vec::new(), Vec::new(), Vec::new(), Vec::new());
                match c.dtype {
                    TensorDtype::Float32 => values = vec![0.0; len],
                    TensorDtype::Uint8 => bytes = vec![0; len],
                    TensorDtype::Bool => flags = vec![false; len],
                    TensorDtype::Int64 => ids = vec![0; len],
                }
                Ok(MappedInput {
                    name: c.name.clone(),
                    shape,
                    dtype: c.dtype,
                    source,
                    image: c.image.clone(),
                    normalize: c.normalize.as_ref().map(VectorNorm::inline),
                    stats_key: c.stats.clone(),
                    history: c.history.max(1),
                    plan: None,
                    values,
                    bytes,
                    flags,
                    ids,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Self {
            inputs,
            prompt: None,
        })
    }

    /// Tokenizes `text` with `tokenizer` into the `prompt.*` inputs; later
    /// instructions go through [`set_prompt`](Self::set_prompt).
    pub fn with_prompt(
        mut self,
        tokenizer: PromptTokenizer,
        text: &str,
    ) -> Result<Self, crate::prompt::PromptError> {
        self.prompt = Some(tokenizer);
        self.set_prompt(text)?;
        Ok(self)
    }

    /// A new task instruction for the `prompt.*` inputs (allocates: call it when
    /// the instruction changes, on the inference thread).
    pub fn set_prompt(&mut self, text: &str) -> Result<(), crate::prompt::PromptError> {
        let Some(tokenizer) = &self.prompt else {
            return Ok(());
        };
        let encoded = tokenizer.encode(text)?;
        if encoded.truncated {
            tracing::warn!(
                "the instruction is longer than prompt.max_length = {} tokens and was cut",
                tokenizer.max_length()
            );
        }
        for input in &mut self.inputs {
            let from = match input.source {
                Source::PromptIds => &encoded.input_ids,
                Source::PromptMask => &encoded.attention_mask,
                _ => continue,
            };
            for (i, v) in from.iter().enumerate() {
                if let Some(out) = input.ids.get_mut(i) {
                    *out = *v;
                }
                if let Some(out) = input.flags.get_mut(i) {
                    *out = *v != 0;
                }
                if let Some(out) = input.values.get_mut(i) {
                    *out = *v as f32;
                }
            }
        }
        Ok(())
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
                TensorDtype::Int64 => TensorRef::from_array_view((shape, &input.ids[..]))?.into(),
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
            let frames = input.history;
            // Oldest first: the time axis runs forward, the current observation last.
            for f in 0..frames {
                input.fill_frame(f, &obs.frame(frames - 1 - f), obs);
            }
        }
    }
}

impl MappedInput {
    /// Fills the `f`-th of the input's frames from one observation's joints and
    /// images (`obs` for what has no history: camera masks).
    fn fill_frame(&mut self, f: usize, frame: &Frame<'_>, obs: &Observation) {
        let (joints, images) = (frame.joints, frame.images);
        let per = |len: usize| len / self.history;
        match self.source {
            Source::Tensor(index) => {
                let n = per(self.values.len());
                let out = &mut self.values[f * n..(f + 1) * n];
                match frame.tensors.get(index).filter(|t| t.seq != 0) {
                    Some(sample) => {
                        for (j, (o, v)) in out.iter_mut().zip(&sample.values).enumerate() {
                            *o = match &self.normalize {
                                Some(norm) => norm.normalize(j, *v),
                                None => *v,
                            };
                        }
                    }
                    // Nothing yet, or masked as stale: zeros.
                    None => out.fill(0.0),
                }
            }
            Source::Positions | Source::Velocities => {
                let (values, gripper) = match self.source {
                    Source::Positions => (joints.positions(), joints.gripper),
                    _ => (joints.velocities(), None),
                };
                let n = per(self.values.len());
                // The gripper's opening follows the joints; entries past them stay
                // zero (padding).
                let gripper = gripper.map(|g| (values.len(), g));
                let frame = &mut self.values[f * n..(f + 1) * n];
                frame.fill(0.0);
                for (j, v) in values.iter().copied().enumerate().chain(gripper) {
                    if let Some(out) = frame.get_mut(j) {
                        *out = match &self.normalize {
                            Some(norm) if j < norm.len() => norm.normalize(j, v as f32),
                            _ => v as f32,
                        };
                    }
                }
            }
            // Set when the instruction changes, not per observation.
            Source::PromptIds | Source::PromptMask => {}
            Source::CameraMask(index) => {
                let seen = present(obs, index).is_some();
                self.flags.fill(seen);
                self.values.fill(if seen { 1.0 } else { 0.0 });
            }
            Source::Camera(index) => {
                let Some(pre) = &self.image else { return };
                let image = index
                    .and_then(|i| images.get(i))
                    .filter(|image| image.width > 0 && image.height > 0);
                if let Some(image) = image
                    && !self.plan.as_ref().is_some_and(|p| p.fits(image))
                {
                    self.plan = Some(ResizePlan::new(image.width, image.height, pre));
                }
                let (nv, nb) = (per(self.values.len()), per(self.bytes.len()));
                let values = &mut self.values[f * nv..(f + 1) * nv];
                let bytes = &mut self.bytes[f * nb..(f + 1) * nb];
                match (image, &mut self.plan, self.dtype) {
                    (Some(image), Some(plan), TensorDtype::Float32) => {
                        plan.apply(image, pre, values, |v| map_range(v, pre.range))
                    }
                    (Some(image), Some(plan), _) => {
                        plan.apply(image, pre, bytes, |v| v.round() as u8)
                    }
                    // A missing view is a black image (openpi), masked false.
                    _ => {
                        values.fill(map_range(0.0, pre.range));
                        bytes.fill(0);
                    }
                }
                if let Some(norm) = &self.normalize {
                    normalize_channels(values, norm, pre.layout);
                }
            }
        }
    }
}

/// Per-channel normalization of one float image in `layout` (LeRobot's VISUAL
/// statistics, one value per channel).
fn normalize_channels(values: &mut [f32], norm: &VectorNorm, layout: ImageLayout) {
    let channels = norm.len().max(1);
    let plane = values.len() / channels;
    for (i, v) in values.iter_mut().enumerate() {
        let c = match layout {
            ImageLayout::Nchw => i / plane.max(1),
            ImageLayout::Nhwc => i % channels,
        };
        *v = norm.normalize(c.min(channels - 1), *v);
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
/// resampled channel value (0..=255 as f32) through `convert`. Builds the plan each
/// call; [`InputMapper`] keeps it between frames.
pub fn resize_into<T: Copy>(
    image: &Image,
    pre: &ImagePreprocess,
    out: &mut [T],
    convert: impl Fn(f32) -> T,
) {
    ResizePlan::new(image.width, image.height, pre).apply(image, pre, out, convert);
}

/// Where every output pixel reads from, for one input size and one setting.
///
/// `area`: box filter when the (inner) size divides the input evenly (OpenCV's
/// `INTER_AREA`), else bilinear with half-pixel centres (OpenCV's `INTER_LINEAR`,
/// torch's `interpolate(mode="bilinear")`), which `bilinear` uses at every size. With `mode = "pad"`
/// the image keeps its aspect ratio inside the output (openpi's `resize_with_pad`:
/// integer sizes, extra padding pixel at the end) and the rest is black.
#[derive(Debug, Clone, PartialEq)]
pub struct ResizePlan {
    input: (usize, usize),
    /// The resized image's rectangle in the output: top, left, height, width.
    top: usize,
    left: usize,
    height: usize,
    width: usize,
    /// Box filter block size, when it applies.
    block: Option<(usize, usize)>,
    /// Per output column / row of the rectangle: the two source indices and the
    /// weight of the second.
    columns: Vec<(usize, usize, f32)>,
    rows: Vec<(usize, usize, f32)>,
    /// Pillow's resampling, when asked for.
    pil: Option<PilResize>,
}

/// Pillow's convolution resampling of 8-bit images (`Image.resize(...,
/// BILINEAR)`, which openpi's `resize_with_pad` calls): a triangle filter widened by
/// the downscaling factor (antialiasing), coefficients in 22-bit fixed point, two
/// passes with rounding to uint8 in between. Written from Pillow's published
/// algorithm so that the bytes match (checked against Pillow 13 in the tests).
#[derive(Debug, Clone, PartialEq)]
struct PilResize {
    horizontal: PilAxis,
    vertical: PilAxis,
    /// Pillow 13 runs the vertical pass first when the height shrinks by more than
    /// twice as many pixels as the width (Pillow 12 and older: always horizontal
    /// first; the two orders can differ by one level on such images).
    vertical_first: bool,
    /// The first pass's output.
    scratch: Vec<u8>,
    /// Horizontal first: the first source row the vertical pass reads.
    first_row: usize,
    /// Per-row accumulators and one output row, sized for the wider pass.
    acc: Vec<i32>,
    line: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq)]
struct PilAxis {
    /// Per output index: the first source index and how many taps.
    bounds: Vec<(usize, usize)>,
    coefficients: Vec<i32>,
    taps: usize,
    /// False when the size does not change (Pillow skips the pass).
    active: bool,
}

const PIL_PRECISION_BITS: u32 = 32 - 8 - 2;

impl PilAxis {
    fn new(input: usize, output: usize) -> Self {
        let scale = input as f64 / output as f64;
        let filter_scale = scale.max(1.0);
        let support = filter_scale; // bilinear support 1.0, widened when downscaling
        let taps = support.ceil() as usize * 2 + 1;
        // Multiplied by the reciprocal, as Pillow does: dividing rounds differently.
        let ss = 1.0 / filter_scale;
        let mut bounds = Vec::with_capacity(output);
        let mut coefficients = vec![0i32; output * taps];
        let mut weights = vec![0f64; taps];
        for (out, k) in coefficients.chunks_mut(taps).enumerate() {
            let center = (out as f64 + 0.5) * scale;
            // C's (int) cast truncates toward zero, as Rust's `as` does.
            let first = ((center - support + 0.5) as i64).max(0) as usize;
            let last = ((center + support + 0.5) as i64).min(input as i64) as usize;
            let count = last.saturating_sub(first).min(taps);
            let mut total = 0.0;
            for (x, w) in weights.iter_mut().enumerate().take(count) {
                let d = ((x + first) as f64 - center + 0.5) * ss;
                *w = (1.0 - d.abs()).max(0.0);
                total += *w;
            }
            for (dst, w) in k.iter_mut().zip(&weights).take(count) {
                let w = if total != 0.0 { w / total } else { *w };
                let fixed = w * f64::from(1u32 << PIL_PRECISION_BITS);
                *dst = if w < 0.0 {
                    (fixed - 0.5) as i32
                } else {
                    (fixed + 0.5) as i32
                };
            }
            bounds.push((first, count));
        }
        Self {
            bounds,
            coefficients,
            taps,
            active: input != output,
        }
    }
}

impl PilAxis {
    /// Resamples interleaved RGB `src` (one row) into `dst` (one row).
    fn horizontal(&self, src: &[u8], dst: &mut [u8]) {
        for (x, out) in dst.chunks_exact_mut(3).enumerate() {
            let (first, count) = self.bounds[x];
            let k = &self.coefficients[x * self.taps..][..count];
            let mut acc = [1i32 << (PIL_PRECISION_BITS - 1); 3];
            for (px, &c) in src[first * 3..].chunks_exact(3).zip(k) {
                for (a, &v) in acc.iter_mut().zip(px) {
                    *a += i32::from(v) * c;
                }
            }
            for (o, a) in out.iter_mut().zip(acc) {
                *o = (a >> PIL_PRECISION_BITS).clamp(0, 255) as u8;
            }
        }
    }

    /// Output row `y` from the rows of `src` (each `row` values long, the first
    /// being source row `shift`), accumulating in `acc`.
    fn vertical(
        &self,
        y: usize,
        src: &[u8],
        row: usize,
        shift: usize,
        acc: &mut [i32],
        dst: &mut [u8],
    ) {
        let (first, count) = self.bounds[y];
        let k = &self.coefficients[y * self.taps..][..count];
        acc.fill(1 << (PIL_PRECISION_BITS - 1));
        for (t, &c) in k.iter().enumerate() {
            let line = &src[(first - shift + t) * row..][..row];
            for (a, &v) in acc.iter_mut().zip(line) {
                *a += i32::from(v) * c;
            }
        }
        for (o, &a) in dst.iter_mut().zip(acc.iter()) {
            *o = (a >> PIL_PRECISION_BITS).clamp(0, 255) as u8;
        }
    }
}

impl PilResize {
    fn new(in_w: usize, in_h: usize, width: usize, height: usize) -> Self {
        let horizontal = PilAxis::new(in_w, width);
        let vertical = PilAxis::new(in_h, height);
        let shrink_h = in_h as i64 - height as i64;
        let vertical_first = shrink_h > 0 && shrink_h > (in_w as i64 - width as i64) * 2;
        let (first_row, scratch_len) = if vertical_first {
            (0, height * in_w * 3)
        } else if vertical.active {
            // Only the source rows the vertical pass reads go through the first pass.
            let first = vertical.bounds[0].0;
            let (last_first, last_count) = vertical.bounds[height - 1];
            (first, (last_first + last_count - first) * width * 3)
        } else {
            (0, in_h * width * 3)
        };
        let widest = in_w.max(width) * 3;
        Self {
            horizontal,
            vertical,
            vertical_first,
            scratch: vec![0; scratch_len],
            first_row,
            acc: vec![0; widest],
            line: vec![0; widest],
        }
    }

    /// Resizes `image` and calls `put(y, row)` with every output row (interleaved RGB).
    fn run(
        &mut self,
        image: &Image,
        width: usize,
        height: usize,
        mut put: impl FnMut(usize, &[u8]),
    ) {
        let stride = image.width * 3;
        let row = width * 3;
        let (scratch, acc, line) = (&mut self.scratch, &mut self.acc, &mut self.line);
        if self.vertical_first {
            for y in 0..height {
                let dst = &mut scratch[y * stride..][..stride];
                self.vertical
                    .vertical(y, &image.rgb, stride, 0, &mut acc[..stride], dst);
            }
            for y in 0..height {
                let src = &scratch[y * stride..][..stride];
                match self.horizontal.active {
                    true => self.horizontal.horizontal(src, &mut line[..row]),
                    false => line[..row].copy_from_slice(&src[..row]),
                }
                put(y, &line[..row]);
            }
            return;
        }
        let rows = scratch.len() / row;
        for r in 0..rows {
            let src = &image.rgb[(self.first_row + r) * stride..][..stride];
            let dst = &mut scratch[r * row..][..row];
            match self.horizontal.active {
                true => self.horizontal.horizontal(src, dst),
                false => dst.copy_from_slice(&src[..row]),
            }
        }
        for y in 0..height {
            match self.vertical.active {
                true => {
                    let dst = &mut line[..row];
                    self.vertical
                        .vertical(y, scratch, row, self.first_row, &mut acc[..row], dst);
                }
                false => line[..row].copy_from_slice(&scratch[y * row..][..row]),
            }
            put(y, &line[..row]);
        }
    }
}

impl ResizePlan {
    pub fn new(in_w: usize, in_h: usize, pre: &ImagePreprocess) -> Self {
        let [oh, ow] = pre.resize;
        let (height, width) = if pre.mode == ResizeMode::Pad && oh * in_w != ow * in_h {
            let ratio = f64::max(in_w as f64 / ow as f64, in_h as f64 / oh as f64);
            (
                ((in_h as f64 / ratio) as usize).clamp(1, oh),
                ((in_w as f64 / ratio) as usize).clamp(1, ow),
            )
        } else {
            (oh, ow)
        };
        let block = (pre.filter == ResizeFilter::Area
            && in_h.is_multiple_of(height)
            && in_w.is_multiple_of(width))
        .then(|| (in_h / height, in_w / width));
        let taps = |out: usize, input: usize| -> Vec<(usize, usize, f32)> {
            // torch's order of operations (scale first, in f32), so the source
            // coordinates round as its `interpolate` rounds them.
            let scale = input as f32 / out as f32;
            (0..out)
                .map(|i| {
                    let s = ((i as f32 + 0.5) * scale - 0.5).clamp(0.0, (input - 1) as f32);
                    let i0 = s.floor() as usize;
                    (i0, (i0 + 1).min(input - 1), s - i0 as f32)
                })
                .collect()
        };
        let pil = (pre.filter == ResizeFilter::PilBilinear)
            .then(|| PilResize::new(in_w, in_h, width, height));
        Self {
            input: (in_w, in_h),
            top: (oh - height) / 2,
            left: (ow - width) / 2,
            height,
            width,
            block,
            columns: taps(width, in_w),
            rows: taps(height, in_h),
            pil,
        }
    }

    fn fits(&self, image: &Image) -> bool {
        self.input == (image.width, image.height)
    }

    /// The input size (width, height) the plan was made for.
    pub fn input(&self) -> (usize, usize) {
        self.input
    }

    pub fn apply<T: Copy>(
        &mut self,
        image: &Image,
        pre: &ImagePreprocess,
        out: &mut [T],
        convert: impl Fn(f32) -> T,
    ) {
        let [oh, ow] = pre.resize;
        let iw = image.width;
        let rgb = &image.rgb[..];
        // Output channel c reads source channel c (RGB) or 2 - c (BGR models).
        let order = match pre.channels {
            ChannelOrder::Rgb => [0, 1, 2],
            ChannelOrder::Bgr => [2, 1, 0],
        };
        let index = |y: usize, x: usize, c: usize| match pre.layout {
            ImageLayout::Nchw => (c * oh + y) * ow + x,
            ImageLayout::Nhwc => (y * ow + x) * 3 + c,
        };
        if self.height != oh || self.width != ow {
            let black = convert(0.0);
            for y in 0..oh {
                for x in 0..ow {
                    let inside = (self.top..self.top + self.height).contains(&y)
                        && (self.left..self.left + self.width).contains(&x);
                    if !inside {
                        for c in 0..3 {
                            out[index(y, x, c)] = black;
                        }
                    }
                }
            }
        }
        // out[base(y) + x * x_stride + c * c_stride] for the rectangle's pixels.
        let (x_stride, c_stride) = match pre.layout {
            ImageLayout::Nchw => (1, oh * ow),
            ImageLayout::Nhwc => (3, 1),
        };
        if let Some(pil) = &mut self.pil {
            let (top, left) = (self.top, self.left);
            pil.run(image, self.width, self.height, |y, row| {
                let base = index(y + top, left, 0);
                for (x, px) in row.chunks_exact(3).enumerate() {
                    let at = base + x * x_stride;
                    for (c, &src) in order.iter().enumerate() {
                        out[at + c * c_stride] = convert(f32::from(px[src]));
                    }
                }
            });
            return;
        }
        let stride = iw * 3;
        if self.input == (self.width, self.height) {
            // The same size: every filter reads one source pixel per output pixel
            // with weight 1, so this copy gives their values bit for bit, without
            // their per-pixel bookkeeping (about ten times faster at 224 x 224).
            for (y, row) in rgb.chunks_exact(stride).take(self.height).enumerate() {
                let base = index(y + self.top, self.left, 0);
                for (x, px) in row.chunks_exact(3).enumerate() {
                    let at = base + x * x_stride;
                    for (c, &src) in order.iter().enumerate() {
                        out[at + c * c_stride] = convert(f32::from(px[src]));
                    }
                }
            }
            return;
        }
        for (y, &(y0, y1, wy)) in self.rows.iter().enumerate() {
            let base = index(y + self.top, self.left, 0);
            let (row0, row1) = (&rgb[y0 * stride..][..stride], &rgb[y1 * stride..][..stride]);
            for (x, &(x0, x1, wx)) in self.columns.iter().enumerate() {
                let at = base + x * x_stride;
                match self.block {
                    Some((fy, fx)) => {
                        for (c, &src) in order.iter().enumerate() {
                            let mut sum = 0.0;
                            for sy in y * fy..(y + 1) * fy {
                                let block = &rgb[sy * stride + x * fx * 3..][..fx * 3];
                                sum += block
                                    .iter()
                                    .skip(src)
                                    .step_by(3)
                                    .map(|&v| f32::from(v))
                                    .sum::<f32>();
                            }
                            out[at + c * c_stride] = convert(sum / (fx * fy) as f32);
                        }
                    }
                    None => {
                        let (a, b) = (&row0[x0 * 3..][..3], &row0[x1 * 3..][..3]);
                        let (d, e) = (&row1[x0 * 3..][..3], &row1[x1 * 3..][..3]);
                        for (c, &src) in order.iter().enumerate() {
                            let top = f32::from(a[src]) * (1.0 - wx) + f32::from(b[src]) * wx;
                            let bottom = f32::from(d[src]) * (1.0 - wx) + f32::from(e[src]) * wx;
                            out[at + c * c_stride] = convert(top * (1.0 - wy) + bottom * wy);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reflex_runtime::types::PastFrame;

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
            filter: ResizeFilter::Area,
        }
    }

    #[test]
    fn same_size_images_are_copied_with_layout_and_range() {
        let img = image(5, 4, |x, y, c| (x * 37 + y * 11 + c * 5) as u8);
        for filter in [ResizeFilter::Area, ResizeFilter::Bilinear] {
            for layout in [ImageLayout::Nchw, ImageLayout::Nhwc] {
                let p = ImagePreprocess {
                    filter,
                    ..pre(4, 5, layout)
                };
                let mut out = vec![0.0f32; 60];
                resize_into(&img, &p, &mut out, |v| v / 255.0);
                for (y, x, c) in
                    (0..4).flat_map(|y| (0..5).flat_map(move |x| (0..3).map(move |c| (y, x, c))))
                {
                    let at = match layout {
                        ImageLayout::Nchw => (c * 4 + y) * 5 + x,
                        ImageLayout::Nhwc => (y * 5 + x) * 3 + c,
                    };
                    assert_eq!(out[at], f32::from(img.rgb[(y * 5 + x) * 3 + c]) / 255.0);
                }
            }
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
        use crate::config::InputConfig;
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
        let mut mapper = InputMapper::new(&parsed.inputs, &[], &[]).unwrap();
        let mut obs = Observation::of_joints(0, reflex_runtime::types::JointState::empty(3));
        obs.joints.position[..3].copy_from_slice(&[0.5, 1.0, 1.5]);
        mapper.fill(&obs);
        assert_eq!(mapper.inputs[0].values, vec![-1.0; 12]);
        assert_eq!(mapper.inputs[1].flags, vec![false]);
        // Three joints into a width-5 input: zero padded.
        assert_eq!(mapper.inputs[2].values, vec![0.5, 1.0, 1.5, 0.0, 0.0]);
    }

    #[test]
    fn history_inputs_hold_their_frames_oldest_first() {
        let toml_inputs = r#"
            [[inputs]]
            name = "state"
            source = "state.joint_positions"
            shape = [1, 3, 2]
            history = 3

            [[inputs]]
            name = "image"
            source = "camera.top"
            shape = [1, 2, 1, 1, 3]
            history = 2
            image = { resize = [1, 1], layout = "nhwc", range = "raw" }
        "#;
        #[derive(serde::Deserialize)]
        struct Inputs {
            inputs: Vec<InputConfig>,
        }
        let parsed: Inputs = toml::from_str(toml_inputs).unwrap();
        let mut mapper = InputMapper::new(&parsed.inputs, &["top".to_string()], &[]).unwrap();
        let joints = |x: f64| {
            let mut j = reflex_runtime::types::JointState::empty(2);
            j.position[..2].copy_from_slice(&[x, x + 0.5]);
            j
        };
        let pixel = |v: u8| Image {
            seq: 1,
            stamp_ns: 0,
            width: 1,
            height: 1,
            rgb: vec![v, v, v],
        };
        let past = |x: f64, v: u8| PastFrame {
            stamp_ns: 0,
            joints: joints(x),
            images: vec![pixel(v)],
            tensors: Vec::new(),
        };
        let mut obs = Observation::of_joints(0, joints(3.0));
        obs.images = vec![pixel(30)];
        // Newest first: one period back, then two.
        obs.history = vec![past(2.0, 20), past(1.0, 10)];
        mapper.fill(&obs);
        assert_eq!(mapper.inputs[0].values, vec![1.0, 1.5, 2.0, 2.5, 3.0, 3.5]);
        assert_eq!(
            mapper.inputs[1].values,
            vec![20.0, 20.0, 20.0, 30.0, 30.0, 30.0]
        );
        // Too little history: the oldest frame there is stands in.
        obs.history.truncate(1);
        mapper.fill(&obs);
        assert_eq!(mapper.inputs[0].values, vec![2.0, 2.5, 2.0, 2.5, 3.0, 3.5]);
    }

    #[test]
    fn a_joint_vector_of_an_arm_with_a_gripper_ends_with_its_opening() {
        #[derive(serde::Deserialize)]
        struct Inputs {
            inputs: Vec<InputConfig>,
        }
        let parsed: Inputs = toml::from_str(
            r#"
            [[inputs]]
            name = "state"
            source = "state.joint_positions"
            shape = [1, 5]
            normalize = { mean = [0.0, 0.0, 0.04], std = [1.0, 1.0, 0.02] }
        "#,
        )
        .unwrap();
        let mut mapper = InputMapper::new(&parsed.inputs, &[], &[]).unwrap();
        let mut joints = reflex_runtime::types::JointState::empty(2);
        joints.position[..2].copy_from_slice(&[0.5, -0.5]);
        joints.gripper = Some(0.06);
        mapper.fill(&Observation::of_joints(0, joints));
        let v = &mapper.inputs[0].values;
        assert!(
            (v[0] - 0.5).abs() < 1e-5 && (v[1] + 0.5).abs() < 1e-5,
            "{v:?}"
        );
        assert!((v[2] - 1.0).abs() < 1e-4, "normalized opening {}", v[2]);
        assert_eq!(&v[3..], &[0.0, 0.0], "padding");
        joints.gripper = None;
        mapper.fill(&Observation::of_joints(0, joints));
        assert_eq!(mapper.inputs[0].values[2], 0.0, "no gripper: padding");
    }

    #[test]
    fn tensor_inputs_take_their_stream_with_history_and_normalization() {
        use reflex_runtime::types::TensorSample;
        #[derive(serde::Deserialize)]
        struct Inputs {
            inputs: Vec<InputConfig>,
        }
        let parsed: Inputs = toml::from_str(
            r#"
            [[inputs]]
            name = "taxels"
            source = "pad.data"
            shape = [1, 2, 2]
            history = 2
            normalize = { mean = [1.0, 0.0], std = [2.0, 1.0] }
        "#,
        )
        .unwrap();
        let mut configs = parsed.inputs;
        configs[0].source = ObservationSource::Tensor("pad".into());
        let mut mapper = InputMapper::new(&configs, &[], &["other".into(), "pad".into()]).unwrap();
        let sample = |seq: u64, values: [f32; 2]| TensorSample {
            seq,
            stamp_ns: 0,
            values: values.to_vec(),
        };
        let mut obs = Observation::of_joints(0, reflex_runtime::types::JointState::empty(1));
        obs.tensors = vec![sample(1, [9.0, 9.0]), sample(2, [5.0, 3.0])];
        obs.history = vec![PastFrame {
            stamp_ns: 0,
            joints: obs.joints,
            images: Vec::new(),
            tensors: vec![sample(1, [9.0, 9.0]), sample(1, [3.0, -1.0])],
        }];
        mapper.fill(&obs);
        let v = &mapper.inputs[0].values;
        let want = [1.0, -1.0, 2.0, 3.0];
        assert!(
            v.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-5),
            "{v:?}"
        );
        // A stream with nothing yet (or masked as stale) is zeros.
        obs.tensors[1].seq = 0;
        mapper.fill(&obs);
        assert_eq!(&mapper.inputs[0].values[2..], &[0.0, 0.0]);
        assert!(InputMapper::new(&configs, &[], &["other".into()]).is_err());
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
