//! reflex cameras through OpenCV videoio: V4L2 devices, GStreamer pipelines, RTSP
//! streams and video files, each on its own thread into a preallocated frame slot.

pub mod camera;
pub mod frames;

use reflex_runtime::registry::Registry;

/// Registers the `opencv_camera` driver.
pub fn register(registry: &mut Registry) {
    registry.driver(camera::OpencvCameraKind);
}
