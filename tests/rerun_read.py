"""Reads a `reflex run --rerun save=FILE.rrd` recording back with the Rerun
SDK (rerun-sdk from PyPI) for tests/rerun.rs; prints JSON: per entity, the
ticks and values it holds."""

import json
import sys

import numpy as np
import rerun as rr


def main():
    recording = rr.dataframe.load_recording(sys.argv[1])
    out = {"entities": sorted({c.entity_path for c in recording.schema().component_columns()})}
    table = recording.view(index="tick", contents="/**").select().read_all()
    # Timestamps of when things were logged: not what the test compares.
    table = table.drop_columns([c for c in ("log_time", "time") if c in table.column_names]).to_pydict()
    ticks = table["tick"]
    for column, values in table.items():
        if ":" not in column:
            continue
        entity, component = column.split(":", 1)
        rows = [(t, v) for t, v in zip(ticks, values) if v is not None]
        if component == "Scalars:scalars":
            out[entity] = [[t, v[0]] for t, v in rows]
        elif component == "LineStrips2D:strips":
            out[entity] = [[t, v[0]] for t, v in rows]
        elif component == "Image:format":
            out[entity + ":format"] = [[t, v[0]] for t, v in rows]
        elif component == "Image:buffer":
            out[entity] = [[t, len(v[0]), int(np.asarray(v[0], dtype=np.uint8).sum())] for t, v in rows]
        elif component == "BarChart:values":
            out[entity] = [[t, str(v)] for t, v in rows]
        elif component == "TextLog:text":
            out[entity] = [[t, v[0]] for t, v in rows]
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
