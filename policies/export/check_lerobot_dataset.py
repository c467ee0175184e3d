"""Loads a dataset `reflex run --record` wrote with the real `lerobot` package
(LeRobotDataset, pyav video decoding, offline) and checks it; prints a JSON report.

  python check_lerobot_dataset.py DATASET [--frames-from LOSSLESS] [--window]

- every frame is read through `LeRobotDataset.__getitem__` (video frames decoded at
  the row's timestamp, which LeRobot checks to 1e-4 s);
- `--window`: again with `delta_timestamps` windows that reach across episode
  boundaries (the padding flags must mark exactly the steps outside the episode);
- `--frames-from LOSSLESS`: a dataset of the same run recorded with `video = false`
  (PNG, exact pixels): each decoded video frame must be close to the lossless frame of
  the same index and closer to it than to its neighbours (an off-by-one frame passes
  a timestamp check, not this one).

Independent of reflex: only LeRobot, torch and numpy read the files.
"""

import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np  # noqa: E402
from lerobot.datasets.lerobot_dataset import LeRobotDataset  # noqa: E402


def load(root, delta_timestamps=None):
    return LeRobotDataset(
        "local/reflex",
        root=root,
        video_backend="pyav",
        delta_timestamps=delta_timestamps,
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("root")
    ap.add_argument("--frames-from", help="the same run recorded losslessly")
    ap.add_argument("--window", action="store_true")
    args = ap.parse_args()

    ds = load(args.root)
    meta = ds.meta
    fps = meta.fps
    cams = list(meta.camera_keys)
    report = {
        "episodes": meta.total_episodes,
        "frames": meta.total_frames,
        "len": len(ds),
        "fps": fps,
        "cameras": cams,
        "tasks": [str(t) for t in meta.tasks.index],
        "features": sorted(meta.features),
    }
    episode_lengths = {}
    done_rows, rewards, last_frame = [], [], {}
    images = {c: [] for c in cams}
    previous = None
    for i in range(len(ds)):
        item = ds[i]
        ep = int(item["episode_index"])
        fi = int(item["frame_index"])
        assert int(item["index"]) == i, (i, int(item["index"]))
        assert abs(float(item["timestamp"]) - fi / fps) < 1e-6
        if previous is not None and previous[0] == ep:
            assert fi == previous[1] + 1, (previous, ep, fi)
        else:
            assert fi == 0, (ep, fi)
        previous = (ep, fi)
        episode_lengths[ep] = fi + 1
        if bool(item["next.done"]):
            done_rows.append(i)
        rewards.append(float(item["next.reward"]))
        for c in cams:
            frame = item[c].numpy()  # [3, H, W] in [0, 1]
            images[c].append(np.round(frame * 255).astype(np.uint8))
        last_frame[ep] = i
    report["episode_lengths"] = [episode_lengths[e] for e in sorted(episode_lengths)]
    report["episode_indices"] = sorted(episode_lengths)
    # next.done on exactly the last row of every episode.
    report["done_on_last_rows"] = sorted(done_rows) == sorted(last_frame.values())
    report["rewards"] = sum(rewards)
    report["task_per_row"] = str(ds[0]["task"])

    if args.window:
        dt = 1.0 / fps
        deltas = [-3 * dt, -dt, 0.0, dt, 3 * dt]
        windowed = load(
            args.root,
            {"action": deltas, "observation.state": deltas, **{c: [-dt, 0.0] for c in cams}},
        )
        starts = {}
        for e in range(meta.total_episodes):
            ep = meta.episodes[e]
            starts[e] = (ep["dataset_from_index"], ep["dataset_to_index"])
        checked = 0
        for i in range(len(windowed)):
            item = windowed[i]
            ep = int(item["episode_index"])
            lo, hi = starts[ep]
            want = [not (lo <= i + round(d * fps) < hi) for d in deltas]
            got = item["action_is_pad"].tolist()
            assert got == want, (i, got, want)
            assert tuple(item["action"].shape) == (len(deltas), meta.shapes["action"][0])
            for c in cams:
                assert tuple(item[c].shape)[0] == 2
            checked += 1
        report["windows_checked"] = checked

    if args.frames_from:
        exact = load(args.frames_from)
        assert len(exact) == len(ds), (len(exact), len(ds))
        worst_mean, worst_max, nearest_ok, compared = 0.0, 0, True, 0
        for c in cams:
            truth = []
            for i in range(len(exact)):
                truth.append(np.round(exact[i][c].numpy() * 255).astype(np.uint8))
            for i in range(len(ds)):
                decoded = images[c][i].astype(np.int16)
                err = np.abs(decoded - truth[i].astype(np.int16))
                worst_mean = max(worst_mean, float(err.mean()))
                worst_max = max(worst_max, int(err.max()))
                # Closer to its own frame than to a neighbour that differs from it.
                ep = int(ds.hf_dataset[i]["episode_index"])
                for j in (i - 1, i + 1):
                    if 0 <= j < len(ds) and int(ds.hf_dataset[j]["episode_index"]) == ep:
                        if np.array_equal(truth[j], truth[i]):
                            continue
                        other = np.abs(decoded - truth[j].astype(np.int16)).mean()
                        if other <= err.mean():
                            nearest_ok = False
                        compared += 1
        report["pixels"] = {
            "worst_mean_abs": worst_mean,
            "worst_max_abs": worst_max,
            "nearest_is_own_frame": nearest_ok,
            "neighbour_comparisons": compared,
        }
    json.dump(report, sys.stdout)
    print()


if __name__ == "__main__":
    main()
