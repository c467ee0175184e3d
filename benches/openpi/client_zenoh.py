"""Times the same requests as client.py against `reflex serve --protocol zenoh`
(benches/openpi): the observation packed with openpi-client's msgpack_numpy
(the same client-side work as openpi-client), sent as a zenoh query; prints
JSON with every round trip and the server's `infer_ms`.

Run with the openpi venv's python: client_zenoh.py --connect tcp/127.0.0.1:P
"""

import argparse
import json
import time

import numpy as np
import zenoh
from openpi_client import msgpack_numpy


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--connect", required=True)
    parser.add_argument("--key", default="reflex/policy")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args()
    config = zenoh.Config()
    config.insert_json5("mode", '"peer"')
    config.insert_json5("listen/endpoints", "[]")
    config.insert_json5("connect/endpoints", json.dumps([args.connect]))
    config.insert_json5("scouting/multicast/enabled", "false")
    rng = np.random.default_rng(0)
    rows = []
    with zenoh.open(config) as session:
        for i in range(args.warmup + args.requests):
            # reflex's own keys: every camera under its name.
            obs = {
                "state": rng.uniform(-0.5, 0.5, 3),
                "images/top": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
                "images/wrist": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
                "images/side": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
                "prompt": "reach the target",
                "tick": i,
            }
            started = time.perf_counter()
            replies = list(session.get(args.key, payload=msgpack_numpy.packb(obs), timeout=10.0))
            if not replies or replies[0].ok is None:
                raise SystemExit(f"request {i} failed: {replies[0].err.payload.to_string() if replies else 'no reply'}")
            reply = msgpack_numpy.unpackb(bytes(replies[0].ok.payload.to_bytes()))
            round_trip = (time.perf_counter() - started) * 1e3
            assert reply["actions"].shape == (10, 3), reply["actions"].shape
            if i >= args.warmup:
                rows.append([round_trip, float(reply["server_timing"]["infer_ms"])])
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
