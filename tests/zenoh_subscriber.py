"""An independent zenoh subscriber in Python (eclipse-zenoh), as a non-Rust peer
would write it: decodes reflex joint commands from the documented wire format and
prints a JSON report."""

import argparse
import json
import struct
import time

import zenoh

HEADER = struct.Struct("<4sHHQQQQ")  # magic, version, joints, seq, tick, stamp_ns, unix_ns


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--connect", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()

    config = zenoh.Config()
    config.insert_json5("mode", '"peer"')
    config.insert_json5("listen/endpoints", "[]")
    config.insert_json5("connect/endpoints", json.dumps([args.connect]))
    config.insert_json5("scouting/multicast/enabled", "false")
    commands = []

    def on_sample(sample: zenoh.Sample) -> None:
        data = bytes(sample.payload.to_bytes())
        magic, version, joints, seq, tick, _, _ = HEADER.unpack_from(data)
        positions = struct.unpack_from(f"<{joints}d", data, HEADER.size)
        commands.append({"magic": magic.decode(), "version": version, "joints": joints, "seq": seq,
                         "tick": tick, "positions": positions})

    with zenoh.open(config) as session:
        session.declare_subscriber(args.key, on_sample)
        time.sleep(args.seconds)
    seqs = [c["seq"] for c in commands]
    print(json.dumps({
        "count": len(commands),
        "increasing": all(b > a for a, b in zip(seqs, seqs[1:])),
        "joints": commands[0]["joints"] if commands else 0,
        "version": commands[0]["version"] if commands else 0,
        "magic": commands[0]["magic"] if commands else "",
        "first": commands[0]["positions"] if commands else [],
    }))


if __name__ == "__main__":
    main()
