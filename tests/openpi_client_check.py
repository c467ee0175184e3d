"""Drives `reflex serve` with the real openpi-client from PyPI (tests/openpi.rs).

Writes the observation it sends (obs.npz, for `reflex infer`), the noise
(noise.npy) and every chunk it receives into --dir, and prints a JSON report.
Run with the openpi venv's python (openpi-client pins numpy < 2).
"""

import argparse
import json
import pathlib
import urllib.request
from urllib.parse import urlparse

import numpy as np
from openpi_client import websocket_client_policy


def text(value):
    """Metadata values as JSON (msgpack gives bytes for bin)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, dict):
        return {text(k): text(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [text(v) for v in value]
    return value


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--keyed-url", required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--dir", required=True)
    args = parser.parse_args()
    out = pathlib.Path(args.dir)
    url = urlparse(args.url)

    rng = np.random.default_rng(7)
    state = rng.uniform(-0.5, 0.5, 3)
    image = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    noise = rng.standard_normal((1, 10, 3)).astype(np.float32)
    np.savez(out / "obs.npz", joint_positions=state, **{"camera.top": image})
    np.save(out / "noise.npy", noise)
    obs = {"observation/state": state, "observation/image": image, "prompt": "reach the target"}

    report = {}
    with urllib.request.urlopen(f"http://{url.hostname}:{url.port}/healthz", timeout=10) as reply:
        report["healthz"] = [reply.status, reply.read().decode()]

    client = websocket_client_policy.WebsocketClientPolicy(url.hostname, url.port)
    report["metadata"] = text(client.get_server_metadata())
    first = client.infer(obs)
    np.save(out / "served_seeded.npy", first["actions"])
    report["first"] = {
        "dtype": str(first["actions"].dtype),
        "shape": list(first["actions"].shape),
        "server_timing": first["server_timing"],
        "policy_timing": first["policy_timing"],
    }
    second = client.infer({**obs, "noise": noise})
    np.save(out / "served_noise.npy", second["actions"])
    report["second_server_timing"] = second["server_timing"]
    # openpi's ALOHA layout: nested maps and CHW images.
    nested = client.infer(
        {
            "observation": {"state": state, "image": np.ascontiguousarray(image.transpose(2, 0, 1))},
            "prompt": "reach the target",
            "noise": noise,
        }
    )
    report["nested_equal"] = bool(np.array_equal(nested["actions"], second["actions"]))
    try:
        client.infer({"observation/state": np.zeros(2), "observation/image": image})
        report["bad_request"] = "answered"
    except RuntimeError as error:
        report["bad_request"] = str(error)
    try:
        client.infer(obs)
        report["after_error"] = "answered"
    except Exception as error:  # the server closed the connection, as openpi's does
        report["after_error"] = type(error).__name__

    keyed = urlparse(args.keyed_url)
    try:
        websocket_client_policy.WebsocketClientPolicy(keyed.hostname, keyed.port, api_key="wrong")
        report["wrong_key"] = "accepted"
    except Exception as error:
        report["wrong_key"] = f"{type(error).__name__}: {error}"
    try:
        websocket_client_policy.WebsocketClientPolicy(keyed.hostname, keyed.port)
        report["no_key"] = "accepted"
    except Exception as error:
        report["no_key"] = f"{type(error).__name__}: {error}"
    right = websocket_client_policy.WebsocketClientPolicy(keyed.hostname, keyed.port, api_key=args.api_key)
    report["right_key_shape"] = list(right.infer(obs)["actions"].shape)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
