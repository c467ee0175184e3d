//! From an observation to model inputs: image resize (box filter when the size
//! divides evenly, else bilinear with half-pixel centres, as OpenCV's
//! `INTER_AREA` / `INTER_LINEAR`), pixel range mapping, layout, and z-scoring of
//! joint vectors. Buffers are sized once; filling them does not allocate.

use reflex_runtime::launch::{
    ImageLayout, ImagePreprocess, InputConfig, Normalization, ObservationSource, PixelRange,
    TensorDtype,
};
use reflex_runtime::types::{Image, Observation};

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
    normalize: Option<Normalization>,
    pub values: Vec<f32>,
    pub bytes: Vec<u8>,
}

enum Source {
    Positions,
    Velocities,
    Camera(usize),
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
                let source = match &c.source {
                    ObservationSource::JointPositions => Source::Positions,
                    ObservationSource::JointVelocities => Source::Velocities,
                    ObservationSource::Camera(name) => Source::Camera(
                        cameras
                            .iter()
                            .position(|n| n == name)
                            .ok_or_else(|| format!("no camera `{name}`"))?,
                    ),
                };
                // Dynamic dimensions (-1) are a batch of one here.
                let shape: Vec<usize> = c
                    .shape
                    .iter()
                    .map(|&d| if d < 0 { 1 } else { d as usize })
                    .collect();
                let len = shape.iter().product();
                let (values, bytes) = match c.dtype {
                    TensorDtype::Float32 => (vec![0.0; len], Vec::new()),
                    TensorDtype::Uint8 => (Vec::new(), vec![0; len]),
                };
                Ok(MappedInput {
                    name: c.name.clone(),
                    shape,
                    dtype: c.dtype,
                    source,
                    image: c.image.clone(),
                    normalize: c.normalize.clone(),
                    values,
                    bytes,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Self { inputs })
    }

    pub fn fill(&mut self, obs: &Observation) {
        for input in &mut self.inputs {
            match input.source {
                Source::Positions | Source::Velocities => {
                    let values = match input.source {
                        Source::Positions => obs.joints.positions(),
                        _ => obs.joints.velocities(),
                    };
                    for (j, (out, v)) in input.values.iter_mut().zip(values).enumerate() {
                        *out = match &input.normalize {
                            Some(n) => (*v as f32 - n.mean[j]) / (n.std[j] + 1e-6),
                            None => *v as f32,
                        };
                    }
                }
                Source::Camera(index) => {
                    let Some(pre) = &input.image else { continue };
                    let image = &obs.images[index];
                    match input.dtype {
                        TensorDtype::Float32 => {
                            resize_into(image, pre, &mut input.values, |v| map_range(v, pre.range))
                        }
                        TensorDtype::Uint8 => {
                            resize_into(image, pre, &mut input.bytes, |v| v.round() as u8)
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
    let (ih, iw) = (image.height, image.width);
    let pixel = |x: usize, y: usize, c: usize| f32::from(image.rgb[(y * iw + x) * 3 + c]);
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
        }
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
