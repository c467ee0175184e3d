#!/usr/bin/env bash
# Installs what `make run` and `make test` need and is missing: Debian packages
# (when root), and a project-local .venv with ONNX Runtime and the Python tooling
# from PyPI. Safe to run again; it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
# OpenCV (videoio with FFMPEG, GStreamer and V4L2) for cameras; clang for the
# opencv crate's bindings; GStreamer's base and good plugins for pipelines
# (videotestsrc, v4l2src, jpeg).
pkg-config --exists opencv4 2>/dev/null || need_apt+=(libopencv-dev pkg-config)
# (the binding generator runs the clang binary as well as loading libclang)
{ command -v clang >/dev/null 2>&1 \
    && { [ -e /usr/lib/llvm-14/lib/libclang.so ] || ls /usr/lib/x86_64-linux-gnu/libclang-*.so* >/dev/null 2>&1; }; } \
    || need_apt+=(clang libclang-dev)
gst-inspect-1.0 videotestsrc >/dev/null 2>&1 && gst-inspect-1.0 jpegenc >/dev/null 2>&1 \
    || need_apt+=(gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-tools)
# FFmpeg's headers: recorded episodes' videos are appended to a dataset's files
# without re-encoding (ffmpeg-next); libopencv-dev usually brings them.
pkg-config --exists libavformat libavcodec libavutil libswresample libswscale 2>/dev/null \
    || need_apt+=(libavformat-dev libavcodec-dev libavutil-dev libswresample-dev libswscale-dev pkg-config)
# libudev's headers for gamepads (gilrs finds and hot-plugs them through udev).
pkg-config --exists libudev 2>/dev/null || need_apt+=(libudev-dev pkg-config)
# ALSA's headers for microphone capture (cpal; the audio driver's `device`).
pkg-config --exists alsa 2>/dev/null || need_apt+=(libasound2-dev pkg-config)
# The RTSP camera test's server: gst-rtsp-server through the system python3.
/usr/bin/python3 -c 'import gi; gi.require_version("GstRtspServer", "1.0")' 2>/dev/null \
    || need_apt+=(python3-gi gir1.2-gstreamer-1.0 gir1.2-gst-rtsp-server-1.0)
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing Debian packages: ${need_apt[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
    else
        echo "setup: missing ${need_apt[*]}; install them (sudo apt-get install ${need_apt[*]})" >&2
        exit 1
    fi
fi

stamp=.venv/.reflex-requirements
if [ ! -f "$stamp" ] || ! cmp -s policies/export/requirements.txt "$stamp"; then
    echo "setup: creating .venv with onnxruntime, onnx, numpy, eclipse-zenoh, yourdfpy, ..."
    [ -x .venv/bin/python ] || python3 -m venv .venv
    .venv/bin/python -m pip install -q --disable-pip-version-check -r policies/export/requirements.txt
    cp policies/export/requirements.txt "$stamp"
fi
