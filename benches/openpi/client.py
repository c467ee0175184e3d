"""Times openpi-client's `infer` against one server (benches/openpi): three
224 x 224 cameras and the state per request, --warmup then --requests round
trips; prints JSON with every round trip and the server's `infer_ms`.

Run with the openpi venv's python: client.py --port P
"""

import argparse
import json
import time

import numpy as np
from openpi_client import websocket_client_policy


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    client = websocket_client_policy.WebsocketClientPolicy("127.0.0.1", args.port)
    rows = []
    for i in range(args.warmup + args.requests):
        obs = {
            "observation/state": rng.uniform(-0.5, 0.5, 3),
            "observation/image": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
            "observation/wrist_image": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
            "observation/side_image": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
            "prompt": "reach the target",
        }
        started = time.perf_counter()
        reply = client.infer(obs)
        round_trip = (time.perf_counter() - started) * 1e3
        assert reply["actions"].shape == (10, 3), reply["actions"].shape
        if i >= args.warmup:
            rows.append([round_trip, float(reply["server_timing"]["infer_ms"])])
    # openpi-client never closes; a clean close keeps the servers' logs quiet.
    client._ws.close()
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
