//! JPEG-compressed images for requests over slow links (OpenCV's codec, libjpeg).

use opencv::core::{Mat, Vec3b, Vector};
use opencv::prelude::*;
use opencv::{imgcodecs, imgproc};
use reflex_runtime::types::Image;

/// The largest image a request may carry, pixels per side: the frame size is
/// read from the JPEG header before decoding, so a tiny file cannot claim a
/// huge allocation.
pub const MAX_SIDE: usize = 8192;

/// Appends `image` as a JPEG of `quality` (1..=100) to `out`.
pub fn encode(image: &Image, quality: u8, out: &mut Vec<u8>) -> Result<(), String> {
    let run = || -> opencv::Result<Vector<u8>> {
        let flat = Mat::from_bytes::<Vec3b>(&image.rgb)?;
        let rgb = flat.reshape(0, image.height as i32)?;
        let mut bgr = Mat::default();
        imgproc::cvt_color_def(&rgb, &mut bgr, imgproc::COLOR_RGB2BGR)?;
        let mut buf = Vector::<u8>::new();
        let params = Vector::from_slice(&[imgcodecs::IMWRITE_JPEG_QUALITY, i32::from(quality)]);
        imgcodecs::imencode(".jpg", &bgr, &mut buf, &params)?;
        Ok(buf)
    };
    if image.rgb.len() != image.width * image.height * 3 || image.rgb.is_empty() {
        return Err(format!(
            "a {}x{} image with {} bytes",
            image.width,
            image.height,
            image.rgb.len()
        ));
    }
    let buf = run().map_err(|e| format!("JPEG encoding failed: {e}"))?;
    out.extend_from_slice(buf.as_slice());
    Ok(())
}

/// Decodes a JPEG into RGB: (width, height, pixels).
pub fn decode(bytes: &[u8]) -> Result<(usize, usize, Vec<u8>), String> {
    let (width, height) = frame_size(bytes)?;
    if width == 0 || height == 0 || width > MAX_SIDE || height > MAX_SIDE {
        return Err(format!(
            "the JPEG is {width}x{height}; at most {MAX_SIDE} pixels a side"
        ));
    }
    let run = || -> opencv::Result<(usize, usize, Vec<u8>)> {
        let buf = Mat::from_slice(bytes)?;
        let bgr = imgcodecs::imdecode(&buf, imgcodecs::IMREAD_COLOR)?;
        if bgr.empty() {
            return Ok((0, 0, Vec::new()));
        }
        let mut rgb = Mat::default();
        imgproc::cvt_color_def(&bgr, &mut rgb, imgproc::COLOR_BGR2RGB)?;
        Ok((
            rgb.cols() as usize,
            rgb.rows() as usize,
            rgb.data_bytes()?.to_vec(),
        ))
    };
    match run() {
        Ok((0, _, _)) => Err("the JPEG does not decode".into()),
        Ok(decoded) => Ok(decoded),
        Err(e) => Err(format!("the JPEG does not decode: {e}")),
    }
}

/// Width and height from the JPEG's start-of-frame segment.
fn frame_size(bytes: &[u8]) -> Result<(usize, usize), String> {
    const NOT: &str = "not a JPEG (no start-of-frame segment)";
    if bytes.get(..2) != Some(&[0xFF, 0xD8]) {
        return Err(NOT.into());
    }
    let mut at = 2;
    while at + 4 <= bytes.len() {
        if bytes[at] != 0xFF {
            return Err(NOT.into());
        }
        let marker = bytes[at + 1];
        if marker == 0xFF {
            // Fill byte.
            at += 1;
            continue;
        }
        let len = usize::from(u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]));
        // SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC).
        if (0xC0..=0xCF).contains(&marker) && ![0xC4, 0xC8, 0xCC].contains(&marker) {
            let segment = bytes.get(at + 4..at + 9).ok_or(NOT)?;
            let height = usize::from(u16::from_be_bytes([segment[1], segment[2]]));
            let width = usize::from(u16::from_be_bytes([segment[3], segment[4]]));
            return Ok((width, height));
        }
        if marker == 0xDA || len < 2 {
            break;
        }
        at += 2 + len;
    }
    Err(NOT.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(width: usize, height: usize) -> Image {
        let mut image = Image::black(width, height);
        for y in 0..height {
            for x in 0..width {
                let p = (y * width + x) * 3;
                image.rgb[p] = (x * 255 / width) as u8;
                image.rgb[p + 1] = (y * 255 / height) as u8;
                image.rgb[p + 2] = 128;
            }
        }
        image
    }

    #[test]
    fn round_trips_close_to_the_original_with_its_size_and_channel_order() {
        let image = gradient(64, 48);
        let mut jpeg = Vec::new();
        encode(&image, 95, &mut jpeg).unwrap();
        assert!(jpeg.len() < image.rgb.len() / 2, "{} bytes", jpeg.len());
        assert_eq!(frame_size(&jpeg).unwrap(), (64, 48));
        let (w, h, rgb) = decode(&jpeg).unwrap();
        assert_eq!((w, h), (64, 48));
        let worst = rgb
            .iter()
            .zip(&image.rgb)
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        // Red grows with x, green with y: swapped channels would be far off.
        assert!(worst <= 8, "largest error {worst}");
    }

    #[test]
    fn refuses_garbage_and_frames_claiming_huge_sizes_before_decoding() {
        assert!(decode(b"not a jpeg").is_err());
        assert!(decode(&[0xFF, 0xD8, 0xFF]).is_err());
        // SOI, then a baseline SOF0 claiming 60000 x 60000, and nothing else.
        let huge = [
            0xFF, 0xD8, 0xFF, 0xC0, 0x00, 0x11, 0x08, 0xEA, 0x60, 0xEA, 0x60, 0x03,
        ];
        let error = decode(&huge).unwrap_err();
        assert!(error.contains("60000x60000"), "{error}");
        let mut jpeg = Vec::new();
        encode(&gradient(16, 16), 90, &mut jpeg).unwrap();
        jpeg.truncate(jpeg.len() / 3);
        // A truncated file decodes partially or not at all, but never panics.
        let _ = decode(&jpeg);
    }
}
