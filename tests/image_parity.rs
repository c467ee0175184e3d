//! `filter = "pil_bilinear"` against Pillow itself: openpi's `resize_with_pad`
//! (policies/export/pil_resize_reference.py) and reflex give the same bytes, for
//! downscaling, upscaling, both aspect ratios and the identity.

mod common;

use std::process::Command;

use common::*;
use reflex_policies::config::{
    ChannelOrder, ImageLayout, ImagePreprocess, PixelRange, ResizeFilter, ResizeMode,
};
use reflex_policies::preprocess::resize_into;
use reflex_runtime::npy::{self, NpyData};
use reflex_runtime::types::Image;

fn test_image(width: usize, height: usize, seed: u64) -> Image {
    let mut image = Image::black(width, height);
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for (i, p) in image.rgb.iter_mut().enumerate() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        // Smooth gradients plus noise: both edges and flat areas.
        let x = (i / 3) % width;
        *p = ((x * 255 / width.max(1)) as u64 / 2 + (state % 128)) as u8;
    }
    image
}

#[test]
fn pil_bilinear_matches_pillow_byte_for_byte() {
    let dir = scratch("pil-parity");
    // (width, height) -> (out height, out width), padded like openpi; then plain
    // resizes that exercise each pass order (Pillow 13 shrinks tall images
    // vertically first) and one-axis resizes.
    let cases = [
        (640, 480, 224, 224, ResizeMode::Pad),
        (97, 61, 32, 32, ResizeMode::Pad),
        (50, 50, 224, 224, ResizeMode::Pad),
        (300, 100, 64, 64, ResizeMode::Pad),
        (100, 300, 48, 64, ResizeMode::Pad),
        (32, 32, 32, 32, ResizeMode::Pad),
        (124, 77, 29, 98, ResizeMode::Stretch),
        (156, 105, 9, 112, ResizeMode::Stretch),
        (25, 277, 157, 176, ResizeMode::Stretch),
        (120, 90, 90, 60, ResizeMode::Stretch),
        (120, 90, 45, 120, ResizeMode::Stretch),
        (33, 182, 156, 46, ResizeMode::Stretch),
    ];
    for (k, &(w, h, oh, ow, mode)) in cases.iter().enumerate() {
        let image = test_image(w, h, k as u64 + 1);
        let input = dir.join(format!("in{k}.npy"));
        let output = dir.join(format!("out{k}.npy"));
        npy::write_u8(&input, &[h, w, 3], &image.rgb).unwrap();
        let status = Command::new(repo().join(".venv/bin/python"))
            .arg(repo().join("policies/export/pil_resize_reference.py"))
            .args(["--input", input.to_str().unwrap()])
            .args(["--height", &oh.to_string(), "--width", &ow.to_string()])
            .args(["--out", output.to_str().unwrap()])
            .args(if mode == ResizeMode::Stretch {
                &["--stretch"][..]
            } else {
                &[]
            })
            .status()
            .unwrap();
        assert!(status.success());
        let NpyData::Uint8(expected) = npy::read(&output).unwrap().data else {
            panic!("Pillow wrote a non-uint8 array")
        };
        let pre = ImagePreprocess {
            resize: [oh, ow],
            layout: ImageLayout::Nhwc,
            range: PixelRange::Raw,
            mode,
            channels: ChannelOrder::Rgb,
            filter: ResizeFilter::PilBilinear,
        };
        let mut ours = vec![0u8; oh * ow * 3];
        resize_into(&image, &pre, &mut ours, |v| v as u8);
        let differing = ours.iter().zip(&expected).filter(|(a, b)| a != b).count();
        assert_eq!(
            differing, 0,
            "{w}x{h} -> {ow}x{oh}: {differing} bytes differ"
        );
        // The plain bilinear filter is not Pillow's when downscaling.
        if w > 2 * ow {
            let linear = ImagePreprocess {
                filter: ResizeFilter::Bilinear,
                ..pre.clone()
            };
            resize_into(&image, &linear, &mut ours, |v| v.round() as u8);
            assert!(ours.iter().zip(&expected).any(|(a, b)| a != b));
        }
    }
}

/// `area` and `bilinear` against OpenCV and torch themselves
/// (policies/export/resize_reference.py in the parity venv), on the sizes the
/// README documents: whole-factor shrinks (96 -> 48, 32; 640x480 -> 320x240),
/// fractional ones (96 -> 84, 640x480 -> 224x224), one axis, and an enlargement.
#[test]
fn area_and_bilinear_match_opencv_and_torch() {
    let dir = scratch("resize-parity");
    let py = parity_python();
    // (width, height, sizes as HxW)
    let cases: [(usize, usize, &[&str]); 2] = [
        (96, 96, &["48x48", "32x32", "84x84", "96x32", "120x100"]),
        (640, 480, &["240x320", "224x224", "120x160"]),
    ];
    for (k, &(w, h, sizes)) in cases.iter().enumerate() {
        let image = test_image(w, h, 40 + k as u64);
        let input = dir.join(format!("in{k}.npy"));
        let output = dir.join(format!("ref{k}.npz"));
        npy::write_u8(&input, &[h, w, 3], &image.rgb).unwrap();
        let status = Command::new(&py)
            .arg(repo().join("policies/export/resize_reference.py"))
            .args([
                "--image",
                input.to_str().unwrap(),
                "--out",
                output.to_str().unwrap(),
            ])
            .arg("--sizes")
            .args(sizes)
            .status()
            .unwrap();
        assert!(status.success());
        let reference = reflex::infer::read_arrays(&output).unwrap();
        let get = |name: &str| -> Vec<f64> {
            reference
                .iter()
                .find(|(n, _)| n == name)
                .unwrap_or_else(|| panic!("no {name}"))
                .1
                .to_f64()
        };
        for size in sizes {
            let (oh, ow) = size.split_once('x').unwrap();
            let (oh, ow): (usize, usize) = (oh.parse().unwrap(), ow.parse().unwrap());
            let ours = |filter: ResizeFilter| -> Vec<f64> {
                let pre = ImagePreprocess {
                    resize: [oh, ow],
                    layout: ImageLayout::Nhwc,
                    range: PixelRange::Raw,
                    mode: ResizeMode::Stretch,
                    channels: ChannelOrder::Rgb,
                    filter,
                };
                let mut out = vec![0f32; oh * ow * 3];
                resize_into(&image, &pre, &mut out, |v| v);
                out.iter().map(|&v| f64::from(v)).collect()
            };
            let max_diff = |a: &[f64], b: &[f64]| {
                a.iter()
                    .zip(b)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0.0, f64::max)
            };
            // Values are 0..255: 1e-3 and 1e-2 are far below one level. torch
            // rounds source coordinates in f32 as reflex does, OpenCV in f64.
            let bilinear = ours(ResizeFilter::Bilinear);
            let torch = get(&format!("torch_{size}"));
            let opencv_linear = get(&format!("linear_{size}"));
            assert!(
                max_diff(&bilinear, &torch) < 1e-3,
                "{w}x{h} -> {size}: bilinear vs torch {}",
                max_diff(&bilinear, &torch)
            );
            assert!(
                max_diff(&bilinear, &opencv_linear) < 1e-2,
                "{w}x{h} -> {size}: bilinear vs INTER_LINEAR {}",
                max_diff(&bilinear, &opencv_linear)
            );
            let area = ours(ResizeFilter::Area);
            let whole = h % oh == 0 && w % ow == 0;
            if whole {
                let opencv_area = get(&format!("area_{size}"));
                assert!(
                    max_diff(&area, &opencv_area) < 1e-3,
                    "{w}x{h} -> {size}: area vs INTER_AREA {}",
                    max_diff(&area, &opencv_area)
                );
                // Shrinking by 3 or more, area and bilinear are different filters:
                // the comparison tells them apart.
                if h / oh >= 3 {
                    assert!(
                        max_diff(&area, &torch) > 1.0,
                        "{w}x{h} -> {size}: area equals torch's bilinear"
                    );
                }
            } else {
                // Elsewhere `area` is bilinear.
                assert_eq!(area, bilinear, "{w}x{h} -> {size}");
            }
        }
    }
}
