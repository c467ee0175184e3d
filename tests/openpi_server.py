"""A small openpi-protocol policy server for tests/openpi.rs, written here from
the protocol (openpi's own server is not on PyPI): msgpack with numpy arrays as
maps of __ndarray__ / data / dtype / shape (byte keys), the metadata map sent
on connect, `server_timing` in every reply.

Its policy is analytic, so the test can check what reflex executed: action k of
a chunk is state + (TARGET - state) * (k + 1) / H, joints and gripper alike.
Every request is appended to --log as one JSON line (keys, state, image shapes,
prompt), so the test sees what reflex sent.

Run with the openpi venv's python: openpi_server.py --port P --log requests.jsonl
"""

import argparse
import json
import time

import msgpack
import numpy as np
from websockets.sync.server import serve

TARGET = np.array([0.3, -0.4, 0.5])
HORIZON = 10


def encode(value):
    """msgpack `default` hook: numpy arrays as openpi sends them."""
    if isinstance(value, np.ndarray):
        return {
            b"__ndarray__": True,
            b"data": value.tobytes(),
            b"dtype": value.dtype.str,
            b"shape": list(value.shape),
        }
    raise TypeError(f"cannot pack {type(value)}")


def decode(entries):
    """msgpack `object_hook`: maps that describe arrays become arrays."""
    if b"__ndarray__" not in entries:
        return entries
    dtype = np.dtype(entries[b"dtype"])
    return np.frombuffer(entries[b"data"], dtype=dtype).reshape(entries[b"shape"])


def serve_policy(port, policy, metadata, banner):
    """Serves `policy` (request dict -> actions array) in openpi's protocol on
    127.0.0.1:`port`; prints `banner` once listening."""

    def handler(connection):
        connection.send(msgpack.packb(metadata, default=encode))
        previous_total = None
        for message in connection:
            started = time.monotonic()
            actions = policy(msgpack.unpackb(message, object_hook=decode, raw=False))
            timing = {"infer_ms": (time.monotonic() - started) * 1e3}
            if previous_total is not None:
                timing["prev_total_ms"] = previous_total
            connection.send(msgpack.packb({"actions": actions, "server_timing": timing}, default=encode))
            previous_total = (time.monotonic() - started) * 1e3

    with serve(handler, "127.0.0.1", port, compression=None, max_size=None) as server:
        print(banner, flush=True)
        server.serve_forever()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", required=True)
    args = parser.parse_args()
    log = open(args.log, "a", buffering=1)

    def policy(request):
        state = np.asarray(request["observation/state"], dtype=np.float64)
        images = {
            key: list(value.shape) + [str(value.dtype)]
            for key, value in request.items()
            if isinstance(value, np.ndarray) and value.ndim == 3
        }
        record = {"time": time.time(), "keys": sorted(request), "state": state.tolist(), "images": images}
        log.write(json.dumps({**record, "prompt": request.get("prompt")}) + "\n")
        target = np.resize(TARGET, state.shape)
        steps = (np.arange(HORIZON) + 1)[:, None] / HORIZON
        return (state[None, :] + (target - state)[None, :] * steps).astype(np.float32)

    serve_policy(
        args.port, policy, {"server": "openpi-test", "action_horizon": HORIZON}, f"openpi test server on {args.port}"
    )


if __name__ == "__main__":
    main()
