"""Round trip of one inference request, three 224 x 224 cameras + state, over
loopback (README, "Remote inference"): reflex's own `remote` policy kind
(through `reflex infer --repeat`) and a Python zenoh client (client_zenoh.py,
openpi-client's msgpack) against `reflex serve --protocol zenoh`, and
openpi-client against `reflex serve` (openpi protocol) and against a minimal
Python openpi-protocol server (python_server.py, a re-implementation) running
the same ONNX model with ONNX Runtime. Every server runs the model on one thread.

Writes benches/openpi/results.json and prints a Markdown table. Run with .venv's
python (it builds the model with onnx); `make bench-openpi` does.
"""

import argparse
import json
import pathlib
import re
import socket
import subprocess
import sys

import numpy as np
from onnx import helper

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "policies/export"))
from onnx_graph import const, save, tensor  # noqa: E402

CAMERAS = ["top", "wrist", "side"]
KEYS = {"top": "observation/image", "wrist": "observation/wrist_image", "side": "observation/side_image"}


def write_model(path):
    """Per camera a strided 8 x 8 convolution to 8 channels, pooled; with the
    state, a linear map to a [1, 10, 3] chunk."""
    rng = np.random.default_rng(0)
    nodes, inits, pooled = [], [], []
    for cam in CAMERAS:
        inits += [
            const(f"w_{cam}", rng.normal(0, 0.05, (8, 3, 8, 8)).astype(np.float32)),
            const(f"b_{cam}", np.zeros(8, np.float32)),
        ]
        nodes += [
            helper.make_node("Conv", [f"image_{cam}", f"w_{cam}", f"b_{cam}"], [f"c_{cam}"], strides=[8, 8]),
            helper.make_node("Relu", [f"c_{cam}"], [f"r_{cam}"]),
            helper.make_node("ReduceMean", [f"r_{cam}"], [f"p_{cam}"], axes=[2, 3], keepdims=0),
        ]
        pooled.append(f"p_{cam}")
    inits += [
        const("w_out", rng.normal(0, 0.1, (8 * len(CAMERAS) + 3, 30)).astype(np.float32)),
        const("shape_out", np.array([1, 10, 3], np.int64)),
    ]
    nodes += [
        helper.make_node("Concat", pooled + ["state"], ["features"], axis=1),
        helper.make_node("MatMul", ["features", "w_out"], ["flat"]),
        helper.make_node("Reshape", ["flat", "shape_out"], ["actions"]),
    ]
    graph = helper.make_graph(
        nodes,
        "openpi_bench",
        [tensor(f"image_{c}", [1, 3, 224, 224]) for c in CAMERAS] + [tensor("state", [1, 3])],
        [tensor("actions", [1, 10, 3])],
        inits,
    )
    save(graph, str(path))


def write_launch(path, model):
    sim = (REPO / "launch/sim_arm.toml").read_text()
    head = sim[: sim.index("[[drivers]]")]
    inputs = "".join(
        f'\n[[policy.inputs]]\nname = "image_{c}"\nsource = "camera.{c}"\nshape = [1, 3, 224, 224]\n'
        f'image = {{ resize = [224, 224], layout = "nchw", range = "zero_one" }}\n'
        for c in CAMERAS
    )
    cameras = "".join(
        f'\n[[drivers]]\nkind = "opencv_camera"\nname = "{c}"\nurl = "rtsp://127.0.0.1:{8554 + i}/cam"\nwidth = 224\nheight = 224\nfps = 30.0\n'
        for i, c in enumerate(CAMERAS[1:])
    )
    images = "".join(f'{c} = "{KEYS[c]}"\n' for c in CAMERAS)
    path.write_text(
        head.replace('urdf = "sim_arm.urdf"', f'urdf = "{REPO}/launch/sim_arm.urdf"')
        + f"""
[[drivers]]
kind = "sim_arm"
name = "arm"
link_lengths = [0.4, 0.3, 0.2]

[drivers.camera]
name = "top"
width = 224
height = 224
fps = 30.0
{cameras}
[execution]
action_rate_hz = 10.0
replan_after = 5

[policy]
kind = "chunk"
model = "{model}"
intra_threads = 1
{inputs}
[[policy.inputs]]
name = "state"
source = "state.joint_positions"
shape = [1, 3]

[policy.actions]
horizon = 10

[serve]
[serve.keys]
state = "observation/state"
[serve.keys.images]
{images}"""
    )


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args, ready):
    process = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    if ready not in line:
        process.kill()
        raise SystemExit(f"{args[0]} did not start: {line!r}")
    return process, line


def measure(python, client, requests):
    """Round trips and server times, ms: [requests, 2]."""
    out = subprocess.run(
        [python, str(HERE / client[0]), *client[1:], "--requests", str(requests)],
        check=True,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    return json.loads(out.stdout)


def write_robot(path, serve_launch, port):
    """The serving launch file's robot with `[policy] kind = "remote"`."""
    text = serve_launch.read_text()
    path.write_text(
        text[: text.index("[policy]")]
        + f'[policy]\nkind = "remote"\nconnect = ["tcp/127.0.0.1:{port}"]\nhorizon = 10\ntimeout_ms = 5000.0\n'
    )


def measure_remote_kind(reflex, launch, work, requests):
    """reflex's own client (`kind = "remote"`, through `reflex infer --repeat`)
    against `reflex serve --protocol zenoh`: round trip p50 / p99 as the robot's
    inference thread sees it, and the server's p50 from its status line."""
    port = free_port()
    robot, obs = work / "robot_remote.toml", work / "obs.npz"
    write_robot(robot, launch, port)
    rng = np.random.default_rng(0)
    np.savez(
        obs,
        joint_positions=rng.uniform(-0.5, 0.5, 3),
        **{f"camera.{c}": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for c in CAMERAS},
    )
    # One status line, after every request was served.
    server = subprocess.Popen(
        [reflex, "serve", str(launch), "--protocol", "zenoh", "--listen", f"tcp/127.0.0.1:{port}",
         "--set", "serve.status_interval_s=4"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        if "reflex serve" not in server.stdout.readline():
            raise SystemExit("reflex serve --protocol zenoh did not start")
        out = subprocess.run(
            [reflex, "infer", str(robot), "--obs", str(obs), "--repeat", str(requests),
             "--out", str(work / "infer.json"), "--set", "zenoh.enabled=false"],
            check=True, capture_output=True, text=True, timeout=600,
        ).stdout
        latency = json.loads(out[out.index("{", out.index("latency over")):].splitlines()[0])
        status = ""
        while "server time" not in status:
            status = server.stderr.readline()
            if not status:
                raise SystemExit("reflex serve printed no status line")
        server_p50 = float(re.search(r"server time p50 ([0-9.]+) ms", status).group(1))
    finally:
        server.kill()
        server.wait()
    return latency, server_p50


def summarize(rows):
    rows = np.array(rows)
    rtt, server = rows[:, 0], rows[:, 1]
    transport = rtt - server
    return {
        "requests": len(rows),
        "round_trip_p50_ms": float(np.percentile(rtt, 50)),
        "round_trip_p99_ms": float(np.percentile(rtt, 99)),
        "server_p50_ms": float(np.percentile(server, 50)),
        "transport_p50_ms": float(np.percentile(transport, 50)),
        "transport_share_p50": float(np.percentile(transport / rtt, 50)),
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=300, help="per round and server")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reflex", default=str(REPO / "target/release/reflex"))
    args = parser.parse_args()
    work = HERE / "runs"
    work.mkdir(exist_ok=True)
    model, launch = work / "bench_model.onnx", work / "serve.toml"
    write_model(model)
    write_launch(launch, model)
    python = subprocess.run(
        ["bash", str(REPO / "scripts/openpi_venv.sh")], check=True, capture_output=True, text=True
    ).stdout.strip()
    # Each server, and the client that drives it: (start, client arguments).
    websocket = lambda port: ["client.py", "--port", str(port)]  # noqa: E731
    servers = {
        "Python zenoh client -> reflex serve (zenoh)": (
            lambda port: start(
                [args.reflex, "serve", str(launch), "--protocol", "zenoh", "--listen", f"tcp/127.0.0.1:{port}"],
                "reflex serve",
            ),
            lambda port: ["client_zenoh.py", "--connect", f"tcp/127.0.0.1:{port}"],
        ),
        "openpi-client -> reflex serve (openpi websocket)": (
            lambda port: start([args.reflex, "serve", str(launch), "--listen", f"127.0.0.1:{port}"], "reflex serve"),
            websocket,
        ),
        "openpi-client -> Python openpi-protocol server (re-implementation)": (
            lambda port: start(
                [python, str(HERE / "python_server.py"), "--model", str(model), "--port", str(port)], "python baseline"
            ),
            websocket,
        ),
    }
    # Rounds alternate the servers, so a slow spell of the machine hits both.
    rows = {name: [] for name in servers}
    for _ in range(args.rounds):
        for name, (launch_server, client) in servers.items():
            port = free_port()
            server, _ = launch_server(port)
            try:
                rows[name] += measure(python, client(port), args.requests)
            finally:
                server.kill()
                server.wait()
    results = {name: summarize(r) for name, r in rows.items()}
    # The robot's own client: the numbers `reflex run` with `kind = "remote"` sees.
    kind_rows = [measure_remote_kind(args.reflex, launch, work, args.requests) for _ in range(args.rounds)]
    p50 = float(np.median([latency["median_ms"] for latency, _ in kind_rows]))
    server = float(np.median([s for _, s in kind_rows]))
    results = {
        'reflex kind = "remote" (Rust client) -> reflex serve (zenoh)': {
            "requests": args.requests * args.rounds,
            "round_trip_p50_ms": p50,
            "round_trip_p99_ms": float(np.median([latency["p99_ms"] for latency, _ in kind_rows])),
            "server_p50_ms": server,
            "transport_p50_ms": p50 - server,
            "transport_share_p50": (p50 - server) / p50,
            "note": "medians over rounds of reflex infer --repeat percentiles; server p50 from reflex serve's status line",
        },
        **results,
    }
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print("| client -> server | round trip p50 | p99 | server infer p50 | transport p50 (share) |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['round_trip_p50_ms']:.2f} ms | {r['round_trip_p99_ms']:.2f} ms | "
            f"{r['server_p50_ms']:.2f} ms | {r['transport_p50_ms']:.2f} ms ({r['transport_share_p50']:.0%}) |"
        )


if __name__ == "__main__":
    main()
