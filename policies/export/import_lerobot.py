"""Imports a LeRobot policy directory (ACT or Diffusion Policy, as `save_pretrained`
and the pre/post processors' `save_pretrained` leave it) into reflex: ONNX graph(s),
the normalization statistics and a launch file that passes `reflex check`.

    python import_lerobot.py outputs/train/act_arm/checkpoints/last/pretrained_model \
        --out policies/act_arm --robot launch/sim_arm.toml [--camera top=top] [--fps 30]

ACT becomes one graph, act.onnx: `observation.state` [B, D] and one
`observation.images.<cam>` [B, 3, H, W] per camera -> `action` [B, chunk_size, D].
Diffusion Policy becomes the split form: dp_prefix.onnx (observation history ->
`global_cond`, once per chunk) and dp_step.onnx (`global_cond`, `noisy_actions`,
`timestep` -> `prediction`, once per denoising step). The graphs take and return
normalized values (what LeRobot's preprocessor hands the model and what the model
gives its postprocessor); reflex normalizes with the copied statistics file and
runs the sampler from the copied config.json.

The launch file is --robot's with its [policy...] and [execution] tables replaced
and its relative file names rewritten relative to --out. After export, onnxruntime
must reproduce LeRobot's torch model (relative error 1e-4) at batch sizes 1 and 3,
or the script exits non-zero.

Exporter settings (torch 2.5.1, legacy TorchScript exporter):
  - dynamo=False (the dynamo exporter needs onnxscript), opset 17 (ir_version 8).
    Opset 17 has no GroupNormalization or Mish op; torch writes both out in
    primitive ops.
  - Axis 0 of every input and output is declared dynamic. The example batch is 2,
    so a size-1 batch cannot be specialised into the graph; with torch 2.5.1 a
    batch-1 example gives the same graphs (checked at B = 3), but that is luck of
    the models' code, not something the tracer promises.
  - torchvision's CenterCrop (Diffusion Policy's eval-mode crop) does not trace: it
    calls round() on the image height, a tensor while tracing (TypeError: type Tensor
    doesn't define __round__). It is exported as tensor slicing with torchvision's
    offsets, checked equal to CenterCrop before export.
  - Diffusion Policy's optional resize_shape (torchvision Resize, antialiased
    bilinear: aten::_upsample_bilinear2d_aa) has no ONNX symbolic in torch 2.5.1 at
    opset 17 or any other; such policies are refused.
  - The legacy exporter imports the `onnx` package even for plain graphs, so the
    parity venv needs onnx (and its ml_dtypes).
  - Past protobuf's 2 GB the exporter writes external data by itself, one file per
    tensor; --external-data rewrites any graph with all its weights in one
    `<graph>.onnx.data` beside it (ONNX Runtime and reflex load it from there).
"""

import argparse
import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
import tomllib
import warnings

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from lerobot.configs.types import NormalizationMode

OBS_STATE = "observation.state"
OBS_IMAGES = "observation.images"
TOLERANCE = 1e-4


class ActGraph(nn.Module):
    """ACT in eval: the transformer with the latent at zero (no VAE encoder), as
    ACTPolicy.predict_action_chunk calls it."""

    def __init__(self, policy):
        super().__init__()
        self.model = policy.model

    def forward(self, state, *images):
        return self.model({OBS_STATE: state, OBS_IMAGES: list(images)})[0]


class DiffusionPrefix(nn.Module):
    """Observation history -> the unet's global conditioning, once per chunk."""

    def __init__(self, policy):
        super().__init__()
        self.diffusion = policy.diffusion

    def forward(self, state, *images):
        # select_action stacks the cameras at dim -4: [B, S, N, 3, H, W].
        batch = {OBS_STATE: state, OBS_IMAGES: torch.stack(images, dim=-4)}
        return self.diffusion._prepare_global_conditioning(batch)


class SliceCrop(nn.Module):
    """torchvision's CenterCrop for a fixed input size, as plain slicing with the same
    offsets (torchvision: int(round((size - crop) / 2.0))). CenterCrop itself cannot be
    traced: it calls round() on the image size, which the tracer makes a tensor."""

    def __init__(self, in_hw, crop_hw):
        super().__init__()
        (h, w), (self.ch, self.cw) = in_hw, crop_hw
        self.top = int(round((h - self.ch) / 2.0))
        self.left = int(round((w - self.cw) / 2.0))

    def forward(self, x):
        return x[..., self.top:self.top + self.ch, self.left:self.left + self.cw]


@contextlib.contextmanager
def traceable_crops(policy):
    """Swaps the rgb encoders' eval-time CenterCrop for SliceCrop while exporting,
    after checking the two agree exactly; LeRobot's own crop is put back afterwards
    so the parity check compares against the unmodified model."""
    config = policy.config
    encoders = policy.diffusion.rgb_encoder
    encoders = list(encoders) if isinstance(encoders, nn.ModuleList) else [encoders]
    image_hw = tuple(next(iter(config.image_features.values())).shape[1:])
    in_hw = tuple(config.resize_shape) if config.resize_shape is not None else image_hw
    saved = []
    for encoder in encoders:
        if not encoder.do_crop:
            continue
        crop = SliceCrop(in_hw, tuple(config.crop_shape))
        probe = torch.randn(2, 3, *in_hw)
        if not torch.equal(crop(probe), encoder.center_crop(probe)):
            sys.exit("the slicing crop differs from torchvision's CenterCrop")
        saved.append((encoder, encoder.center_crop))
        encoder.center_crop = crop
    try:
        yield
    finally:
        for encoder, original in saved:
            encoder.center_crop = original


class DiffusionStep(nn.Module):
    """One denoising network call: the unet's prediction (epsilon or sample)."""

    def __init__(self, policy):
        super().__init__()
        self.unet = policy.diffusion.unet

    def forward(self, global_cond, noisy_actions, timestep):
        return self.unet(noisy_actions, timestep, global_cond=global_cond)


# Set from --external-data: weights go to one `<graph>.onnx.data` file beside the graph.
EXTERNAL_DATA = False


def export(module, example, path, input_names, output_name, opset):
    axes = {name: {0: "batch"} for name in [*input_names, output_name]}
    with contextlib.ExitStack() as stack:
        target = path
        if EXTERNAL_DATA:
            # torch writes external data by itself only past protobuf's 2 GB, one file
            # per tensor: export to a scratch directory, then save the graph with all
            # its weights in one `<graph>.onnx.data` (ONNX Runtime finds it beside it).
            scratch = stack.enter_context(tempfile.TemporaryDirectory())
            target = os.path.join(scratch, os.path.basename(path))
        with torch.no_grad(), warnings.catch_warnings():
            # The tracer warns where ACT unbinds tensors into token lists: their lengths
            # are the feature map's H*W and the fixed 1-D token count, both constant for
            # the fixed image size the graph takes, so freezing them is right.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(module, example, target, input_names=input_names, output_names=[output_name],
                              dynamic_axes=axes, opset_version=opset, do_constant_folding=True, dynamo=False)
        if EXTERNAL_DATA:
            import onnx

            onnx.save_model(onnx.load(target), path, save_as_external_data=True, all_tensors_to_one_file=True,
                            location=os.path.basename(path) + ".data", size_threshold=1024)
    return path


def ir_version(path):
    """ModelProto.ir_version (field 1, a varint) without needing the onnx package."""
    with open(path, "rb") as f:
        head = f.read(11)
    if head[:1] != b"\x08":
        return None
    value, shift = 0, 0
    for byte in head[1:]:
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value
    return None


def compare(name, path, torch_fn, feeds_fn):
    """Runs the graph and torch on the same random inputs at B = 1 and B = 3."""
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch in (1, 3):
        feeds = feeds_fn(batch)
        with torch.no_grad():
            expected = torch_fn(*[torch.from_numpy(v) for v in feeds.values()]).numpy()
        got = session.run(None, feeds)[0]
        if got.shape != expected.shape:
            sys.exit(f"{name}: onnxruntime gives {got.shape}, torch {expected.shape} (batch {batch})")
        diff = float(np.max(np.abs(got - expected)))
        rel = diff / max(float(np.max(np.abs(expected))), 1e-6)
        print(f"  {name} batch {batch}: max |onnx - torch| = {diff:.3g} (relative {rel:.3g})")
        worst = max(worst, rel)
    return worst


def camera_names(config, mapping):
    """LeRobot image key -> reflex camera name (--camera, else the key's last part)."""
    names, known = {}, set()
    for key in config.image_features:
        short = key[len(OBS_IMAGES) + 1:] if key.startswith(OBS_IMAGES + ".") else key.split(".")[-1]
        names[key] = mapping.get(key, mapping.get(short, short))
        known |= {key, short}
    if set(mapping) - known:
        sys.exit(f"--camera names {sorted(set(mapping) - known)}, the policy's cameras are {sorted(names)}")
    return names


def normalizer_file(policy_dir):
    """The state file of the preprocessor's normalizer step (its name carries the step index)."""
    with open(os.path.join(policy_dir, "policy_preprocessor.json")) as f:
        pipeline = json.load(f)
    for step in pipeline["steps"]:
        if step.get("registry_name") == "normalizer_processor" and step.get("state_file"):
            return step["state_file"]
    sys.exit(f"{policy_dir}/policy_preprocessor.json has no normalizer_processor step with statistics")


# ---- the launch file ----

HEADER = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_.\-\"' ]+?)\s*\]\]?\s*(#.*)?$")
TOKEN = re.compile(r"\"(?:[^\"\\\n]|\\.)*\"|'[^'\n]*'|#.*$")


def base_text(base_path, out_dir):
    """The base launch file's lines without its [policy...] and [execution] tables, with
    string values that name files next to it rewritten relative to out_dir."""
    base_dir = os.path.dirname(os.path.abspath(base_path))
    with open(base_path) as f:
        lines = f.read().splitlines()

    # Tables own the lines from their header to the next one; a comment block right
    # above a header (no blank line between) describes that table and goes with it.
    owner, table, depth = [], None, 0
    for line in lines:
        match = HEADER.match(line) if depth == 0 else None
        if match:
            table = match.group(1).replace('"', "").replace("'", "").replace(" ", "")
            k = len(owner)
            while k > 0 and lines[k - 1].lstrip().startswith("#") and owner[k - 1] != table:
                k -= 1
                owner[k] = table
        owner.append(table)
        # Multi-line arrays: a line starting with `[` inside one is not a header.
        code = TOKEN.sub(lambda m: "" if m.group(0).startswith("#") else '""', line)
        depth += code.count("[") - code.count("]") if not match else 0

    def dropped(name):
        return name is not None and name.split(".")[0] in ("policy", "execution")

    def rewrite(match):
        token = match.group(0)
        if token.startswith("#") or "\\" in token or len(token) < 3:
            return token
        value = token[1:-1]
        full = os.path.join(base_dir, value)
        if os.path.isabs(value) or not os.path.exists(full):
            return token
        rel = os.path.relpath(full, out_dir)
        return token[0] + rel + token[0]

    kept = [TOKEN.sub(rewrite, line) for line, name in zip(lines, owner) if not dropped(name)]
    while kept and not kept[-1].strip():
        kept.pop()
    return "\n".join(kept) + "\n"


def norm_mode(config, feature_type):
    # LeRobot leaves a feature type missing from the mapping unnormalized.
    mode = NormalizationMode(config.normalization_mapping.get(feature_type, "IDENTITY")).value
    if mode not in ("MEAN_STD", "MIN_MAX", "IDENTITY"):
        print(f"warning: {feature_type} is normalized with {mode}, which the launch file's norm_stats "
              "modes (mean_std, min_max, identity) do not cover", file=sys.stderr)
    return mode.lower()


def policy_text(kind, config, cameras, stats_file):
    state_dim = config.robot_state_feature.shape[0]
    lines = ["[policy]"]
    if kind == "act":
        lines += ['kind = "chunk"', 'model = "act.onnx"']
        history = None
    else:
        steps = config.num_inference_steps or config.num_train_timesteps
        lines += ['kind = "diffusion"', 'prefix_model = "dp_prefix.onnx"', 'model = "dp_step.onnx"',
                  f"num_steps = {steps}"]
        history = config.n_obs_steps

    def shape(*dims):
        full = [1] + ([history] if history else []) + list(dims)
        return "[" + ", ".join(str(d) for d in full) + "]"

    lines += ["", "[[policy.inputs]]", f'name = "{OBS_STATE}"', 'source = "state.joint_positions"',
              f"shape = {shape(state_dim)}"]
    if history:
        lines.append(f"history = {history}")
    for key, camera in cameras.items():
        c, h, w = config.image_features[key].shape
        lines += ["", "[[policy.inputs]]", f'name = "{key}"', f'source = "camera.{camera}"',
                  f"shape = {shape(c, h, w)}"]
        if history:
            lines.append(f"history = {history}")
        lines += [f'image = {{ resize = [{h}, {w}], layout = "nchw", range = "zero_one" }}',
                  f'stats = "{key}"']

    lines += ["", "[policy.actions]"]
    if kind == "act":
        lines += ['output = "action"', f"horizon = {config.chunk_size}"]
    else:
        lines += [f"horizon = {config.horizon}", f"dim = {config.action_feature.shape[0]}",
                  "", "[policy.schedule]", 'config = "config.json"',
                  "", "[policy.ports]", 'noisy_actions = "noisy_actions"', 'timestep = "timestep"',
                  'output = "prediction"']
    lines += ["", "[policy.norm_stats]", f'file = "{stats_file}"', f'state_key = "{OBS_STATE}"',
              'actions_key = "action"', f'state_mode = "{norm_mode(config, "STATE")}"',
              f'actions_mode = "{norm_mode(config, "ACTION")}"', f'image_mode = "{norm_mode(config, "VISUAL")}"']
    return "\n".join(lines) + "\n"


def check_cameras(base, cameras):
    """Warns about cameras the base launch file's drivers do not seem to provide."""
    known = set()
    for driver in base.get("drivers", []):
        known.add(driver.get("name"))
        if isinstance(driver.get("camera"), dict):
            known.add(driver["camera"].get("name"))
    for key, camera in cameras.items():
        if camera not in known:
            print(f"warning: no driver in the base launch file names a camera `{camera}` (for {key}); "
                  f"map it with --camera {key.split('.')[-1]}=<camera>", file=sys.stderr)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("policy_dir", help="LeRobot pretrained_model directory (config.json, model.safetensors, "
                                           "policy_preprocessor*)")
    parser.add_argument("--out", required=True, help="directory for the graphs, statistics and launch.toml")
    parser.add_argument("--robot", required=True, help="launch file whose robot, drivers and safety to keep")
    parser.add_argument("--camera", action="append", default=[], metavar="LEROBOT_CAM=REFLEX_CAMERA",
                        help="map a LeRobot camera (observation.images.<LEROBOT_CAM>) to a reflex camera; "
                             "default: the same name")
    parser.add_argument("--fps", type=float, help="action rate (the dataset's fps); default: the base launch's")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--external-data", action="store_true",
                        help="weights in one <graph>.onnx.data file beside each graph (needed past 2 GB; "
                             "torch alone writes one file per tensor there)")
    args = parser.parse_args()
    global EXTERNAL_DATA
    EXTERNAL_DATA = args.external_data

    with open(os.path.join(args.policy_dir, "config.json")) as f:
        kind = json.load(f).get("type")
    if kind == "act":
        from lerobot.policies.act.modeling_act import ACTPolicy as Policy
    elif kind == "diffusion":
        from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy as Policy
    else:
        sys.exit(f"{args.policy_dir}/config.json: policy type {kind!r}; this importer handles act and diffusion")
    policy = Policy.from_pretrained(args.policy_dir)
    policy.eval()
    config = policy.config
    if config.robot_state_feature is None or config.env_state_feature is not None or not config.image_features:
        sys.exit("the importer handles policies with observation.state and cameras (no environment_state)")
    if getattr(config, "resize_shape", None) is not None:
        # Resize runs antialiased bilinear (aten::_upsample_bilinear2d_aa), which no
        # opset of torch 2.5.1's exporter supports; resizing outside the graph would
        # not match it exactly, so refuse rather than export something else.
        sys.exit(f"resize_shape = {list(config.resize_shape)}: torchvision's antialiased Resize does not export "
                 "to ONNX (torch 2.5.1); retrain without resize_shape or resize the dataset's images instead")

    if kind == "act" and config.temporal_ensemble_coeff is not None:
        print("warning: this ACT uses temporal ensembling; reflex executes the newest chunk instead "
              "(replace strategy), so actions will differ from LeRobot's", file=sys.stderr)

    mapping = {}
    for item in args.camera:
        lerobot_cam, sep, reflex_cam = item.partition("=")
        if not sep:
            sys.exit(f"--camera {item}: expected LEROBOT_CAM=REFLEX_CAMERA")
        mapping[lerobot_cam] = reflex_cam
    cameras = camera_names(config, mapping)

    with open(args.robot, "rb") as f:
        base = tomllib.load(f)
    rate = args.fps or base.get("execution", {}).get("action_rate_hz")
    if not rate:
        sys.exit(f"{args.robot} has no execution.action_rate_hz: pass --fps (the dataset's fps)")
    check_cameras(base, cameras)

    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)
    state_dim = config.robot_state_feature.shape[0]
    image_keys = list(config.image_features)
    image_shapes = [tuple(config.image_features[k].shape) for k in image_keys]
    names = [OBS_STATE, *image_keys]
    written, worst = [], 0.0

    rng = np.random.default_rng(0)

    def randn(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    if kind == "act":
        graph = ActGraph(policy).eval()
        path = os.path.join(args.out, "act.onnx")
        example = (torch.randn(2, state_dim), *[torch.randn(2, *s) for s in image_shapes])
        written.append(export(graph, example, path, names, "action", args.opset))
        # The reference is LeRobot's own entry point, not the wrapper that was exported.
        worst = compare("act.onnx", path,
                        lambda state, *images: policy.predict_action_chunk(
                            {OBS_STATE: state, **dict(zip(image_keys, images))}),
                        lambda b: dict(zip(names, [randn(b, state_dim), *[randn(b, *s) for s in image_shapes]])))
    else:
        steps = config.n_obs_steps
        prefix = DiffusionPrefix(policy).eval()
        step = DiffusionStep(policy).eval()
        prefix_path = os.path.join(args.out, "dp_prefix.onnx")
        step_path = os.path.join(args.out, "dp_step.onnx")
        example = (torch.randn(2, steps, state_dim), *[torch.randn(2, steps, *s) for s in image_shapes])
        with traceable_crops(policy):
            written.append(export(prefix, example, prefix_path, names, "global_cond", args.opset))
        with torch.no_grad():
            cond_dim = prefix(*example).shape[1]
        horizon, action_dim = config.horizon, config.action_feature.shape[0]
        step_names = ["global_cond", "noisy_actions", "timestep"]
        example = (torch.randn(2, cond_dim), torch.randn(2, horizon, action_dim), torch.tensor([3, 40]))
        written.append(export(step, example, step_path, step_names, "prediction", args.opset))

        worst = compare("dp_prefix.onnx", prefix_path, prefix, lambda b: dict(
            zip(names, [randn(b, steps, state_dim), *[randn(b, steps, *s) for s in image_shapes]])))
        train_steps = config.num_train_timesteps
        worst = max(worst, compare("dp_step.onnx", step_path, step, lambda b: {
            "global_cond": randn(b, cond_dim), "noisy_actions": randn(b, horizon, action_dim),
            "timestep": rng.integers(0, train_steps, b).astype(np.int64)}))
    for path in written:
        print(f"  {os.path.basename(path)}: ir_version {ir_version(path)}, opset {args.opset}")
    if worst > TOLERANCE:
        sys.exit(f"the exported graphs differ from LeRobot's model by {worst:.3g} (relative; limit {TOLERANCE})")

    stats_file = normalizer_file(args.policy_dir)
    for name in ("config.json", stats_file):
        source, target = os.path.join(args.policy_dir, name), os.path.join(args.out, name)
        if not (os.path.exists(target) and os.path.samefile(source, target)):
            shutil.copyfile(source, target)
        written.append(target)

    replan = config.n_action_steps
    first = 0 if kind == "act" else config.n_obs_steps - 1
    launch = base_text(args.robot, os.path.abspath(args.out))
    launch += (f"\n[execution]\naction_rate_hz = {float(rate)}\nreplan_after = {replan}\n"
               f"first_action = {first}\n\n")
    launch += policy_text(kind, config, cameras, stats_file)
    tomllib.loads(launch)  # the result must at least be TOML
    launch_path = os.path.join(args.out, "launch.toml")
    with open(launch_path, "w") as f:
        f.write(launch)
    written.append(launch_path)
    print("wrote:")
    for path in written:
        print(f"  {path}")


if __name__ == "__main__":
    main()
