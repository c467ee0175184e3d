//! Camera frames to files: h264 MP4 through OpenCV's FFmpeg backend (Debian's
//! FFmpeg with libx264), and lossless PNG for LeRobot's `image` features.

use std::fs::File;
use std::path::{Path, PathBuf};

use opencv::core::{CV_8UC3, Mat, Scalar, Size, Vector};
use opencv::prelude::*;
use opencv::videoio::{VideoWriter, VideoWriterTrait};

/// One episode's video of one camera. Frame k is stamped k / fps in the file,
/// which is what LeRobot's loader expects of `timestamp`.
pub struct VideoEncoder {
    path: PathBuf,
    writer: VideoWriter,
    /// The frame in OpenCV's BGR order, reused.
    bgr: Mat,
    width: usize,
    height: usize,
}

fn cv(e: opencv::Error) -> String {
    e.to_string()
}

/// Packed RGB into a BGR matrix of the same size.
fn rgb_to_bgr(rgb: &[u8], bgr: &mut Mat) -> Result<(), String> {
    let out = bgr.data_bytes_mut().map_err(cv)?;
    for (o, i) in out.chunks_exact_mut(3).zip(rgb.chunks_exact(3)) {
        o[0] = i[2];
        o[1] = i[1];
        o[2] = i[0];
    }
    Ok(())
}

fn bgr_mat(width: usize, height: usize) -> Result<Mat, String> {
    Mat::new_rows_cols_with_default(height as i32, width as i32, CV_8UC3, Scalar::all(0.0))
        .map_err(cv)
}

impl VideoEncoder {
    pub fn create(path: &Path, width: usize, height: usize, fps: u32) -> Result<Self, String> {
        let fourcc = VideoWriter::fourcc('a', 'v', 'c', '1').map_err(cv)?;
        let name = path
            .to_str()
            .ok_or_else(|| format!("{} is not UTF-8", path.display()))?;
        let writer = VideoWriter::new(
            name,
            fourcc,
            f64::from(fps),
            Size::new(width as i32, height as i32),
            true,
        )
        .map_err(cv)?;
        if !writer.is_opened().map_err(cv)? {
            return Err(format!(
                "OpenCV cannot encode h264 into {} (is FFmpeg with libx264 installed? \
                 Debian: libavcodec59 with libx264-164)",
                path.display()
            ));
        }
        Ok(Self {
            path: path.to_path_buf(),
            writer,
            bgr: bgr_mat(width, height)?,
            width,
            height,
        })
    }

    pub fn write(&mut self, rgb: &[u8]) -> Result<(), String> {
        if rgb.len() != self.width * self.height * 3 {
            return Err(format!(
                "a {}x{} frame has {} bytes",
                self.width,
                self.height,
                rgb.len()
            ));
        }
        rgb_to_bgr(rgb, &mut self.bgr)?;
        self.writer.write(&self.bgr).map_err(cv)
    }

    /// Flushes the encoder, writes the MP4 index and fsyncs the file.
    pub fn finish(&mut self) -> Result<(), String> {
        self.writer.release().map_err(cv)?;
        File::open(&self.path)
            .and_then(|f| f.sync_all())
            .map_err(|e| format!("{}: {e}", self.path.display()))
    }

    /// Stops without caring for the file (a discarded episode).
    pub fn close(&mut self) {
        let _ = self.writer.release();
    }
}

/// A frame as PNG bytes (lossless).
pub fn encode_png(rgb: &[u8], width: usize, height: usize) -> Result<Vec<u8>, String> {
    let mut bgr = bgr_mat(width, height)?;
    rgb_to_bgr(rgb, &mut bgr)?;
    let mut out = Vector::<u8>::new();
    opencv::imgcodecs::imencode(".png", &bgr, &mut out, &Vector::new()).map_err(cv)?;
    Ok(out.to_vec())
}

/// Writes `out`: the video of `first` followed by `second`'s, packets copied
/// (no re-encoding), `second`'s stamps shifted by `offset_s` (the duration of
/// `first`: its frames / fps), so frame k of `second` plays at `offset_s + k / fps`.
pub fn concatenate(first: &Path, second: &Path, offset_s: f64, out: &Path) -> Result<(), String> {
    use ffmpeg_next as ffmpeg;
    let err = |what: &str, e: ffmpeg::Error| format!("{what}: {e}");
    ffmpeg::init().map_err(|e| err("FFmpeg", e))?;
    let mut output =
        ffmpeg::format::output(&out).map_err(|e| err(&out.display().to_string(), e))?;
    let mut inputs = Vec::new();
    for path in [first, second] {
        let input =
            ffmpeg::format::input(&path).map_err(|e| err(&path.display().to_string(), e))?;
        inputs.push(input);
    }
    let (index, time_base, parameters) = {
        let stream = inputs[0]
            .streams()
            .best(ffmpeg::media::Type::Video)
            .ok_or_else(|| format!("{}: no video stream", first.display()))?;
        (stream.index(), stream.time_base(), stream.parameters())
    };
    {
        let mut stream = output
            .add_stream(ffmpeg::encoder::find(ffmpeg::codec::Id::None))
            .map_err(|e| err("output stream", e))?;
        stream.set_parameters(parameters);
        stream.set_time_base(time_base);
        // SAFETY: the parameters belong to the stream just added; a zero tag lets
        // the muxer choose the one the container wants.
        unsafe {
            (*stream.parameters().as_mut_ptr()).codec_tag = 0;
        }
    }
    output.write_header().map_err(|e| err("MP4 header", e))?;
    let out_base = output
        .stream(0)
        .map(|s| s.time_base())
        .ok_or_else(|| "no output stream".to_string())?;
    let offset = (offset_s * f64::from(out_base.denominator()) / f64::from(out_base.numerator()))
        .round() as i64;
    // The muxer wants strictly increasing decode stamps. An episode's first packets
    // decode before their presentation (B-frames: dts < pts), so shifted by the
    // previous part's duration they can fall at or below the previous part's last
    // dts: those are moved just after it. Only dts moves, never beyond its pts:
    // the frames' presentation times (what LeRobot checks) stay exact.
    let mut last_dts: Option<i64> = None;
    for (i, input) in inputs.iter_mut().enumerate() {
        let shift = if i == 0 { 0 } else { offset };
        let video = input
            .streams()
            .best(ffmpeg::media::Type::Video)
            .map(|s| s.index())
            .unwrap_or(index);
        for (stream, mut packet) in input.packets() {
            if stream.index() != video {
                continue;
            }
            packet.rescale_ts(stream.time_base(), out_base);
            let pts = packet.pts().map(|t| t + shift);
            let dts = packet.dts().map(|t| {
                let after = last_dts.map_or(i64::MIN, |last| last + 1);
                (t + shift).max(after).min(pts.unwrap_or(i64::MAX))
            });
            if let Some(dts) = dts {
                last_dts = Some(dts);
            }
            packet.set_pts(pts);
            packet.set_dts(dts);
            packet.set_position(-1);
            packet.set_stream(0);
            packet
                .write_interleaved(&mut output)
                .map_err(|e| err("writing a packet", e))?;
        }
    }
    output.write_trailer().map_err(|e| err("MP4 index", e))?;
    File::open(out)
        .and_then(|f| f.sync_all())
        .map_err(|e| format!("{}: {e}", out.display()))
}

/// The number of video packets (frames) in `path`: what an encoder really wrote
/// (OpenCV's writer does not report a failed write, a full disk say).
pub fn count_frames(path: &Path) -> Result<u64, String> {
    use ffmpeg_next as ffmpeg;
    ffmpeg::init().map_err(|e| format!("FFmpeg: {e}"))?;
    let mut input = ffmpeg::format::input(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let video = input
        .streams()
        .best(ffmpeg::media::Type::Video)
        .map(|s| s.index())
        .ok_or_else(|| format!("{}: no video stream", path.display()))?;
    Ok(input.packets().filter(|(s, _)| s.index() == video).count() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Presentation times (s) of every video packet in `path`, in order.
    fn presentation_times(path: &Path) -> Vec<f64> {
        use ffmpeg_next as ffmpeg;
        let mut input = ffmpeg::format::input(&path).unwrap();
        let mut times: Vec<f64> = input
            .packets()
            .filter_map(|(stream, packet)| {
                let base = stream.time_base();
                packet
                    .pts()
                    .map(|t| t as f64 * f64::from(base.numerator()) / f64::from(base.denominator()))
            })
            .collect();
        times.sort_by(f64::total_cmp);
        times
    }

    /// Episodes of any length, short ones too (an episode ended by its first
    /// success), append one after the other: every frame is kept and plays at
    /// its episode's offset plus k / fps.
    #[test]
    fn short_and_long_episodes_append_with_exact_frame_times() {
        let dir = std::env::temp_dir().join(format!("reflex-video-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (width, height, fps) = (32, 24, 10);
        let file = dir.join("file.mp4");
        let mut frames = 0u64;
        for (episode, length) in [12usize, 3, 9, 1, 2, 15, 4, 7].into_iter().enumerate() {
            let staged = dir.join(format!("episode-{episode}.mp4"));
            let mut encoder = VideoEncoder::create(&staged, width, height, fps).unwrap();
            for k in 0..length {
                let value = ((episode * 31 + k * 17) % 255) as u8;
                encoder.write(&vec![value; width * height * 3]).unwrap();
            }
            encoder.finish().unwrap();
            if episode == 0 {
                std::fs::rename(&staged, &file).unwrap();
            } else {
                let merged = dir.join("merged.mp4");
                concatenate(&file, &staged, frames as f64 / f64::from(fps), &merged)
                    .unwrap_or_else(|e| panic!("episode {episode} ({length} frames): {e}"));
                std::fs::rename(&merged, &file).unwrap();
            }
            frames += length as u64;
            assert_eq!(
                count_frames(&file).unwrap(),
                frames,
                "after episode {episode}"
            );
            let times = presentation_times(&file);
            for (k, t) in times.iter().enumerate() {
                assert!(
                    (t - k as f64 / f64::from(fps)).abs() < 1e-4,
                    "after episode {episode}: frame {k} at {t} s"
                );
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
