"""Reads an MCAP file with the `mcap` package (an independent reader) and prints,
as JSON, what tests/export.rs compares with the run log: per topic its schema
name and encodings, message count and every message (JSON-decoded), the log
times in order, and the metadata records.

    .venv/bin/python tests/mcap_read.py run.mcap
"""

import json
import sys

from mcap.reader import make_reader


def main():
    with open(sys.argv[1], "rb") as f:
        reader = make_reader(f)
        summary = reader.get_summary()
        topics = {}
        for channel in summary.channels.values():
            schema = summary.schemas[channel.schema_id]
            topics[channel.topic] = {
                "schema": schema.name,
                "schema_encoding": schema.encoding,
                "schema_properties": sorted(json.loads(schema.data)["properties"]),
                "message_encoding": channel.message_encoding,
                "messages": [],
                "log_times": [],
            }
        for _schema, channel, message in reader.iter_messages(log_time_order=False):
            topic = topics[channel.topic]
            topic["messages"].append(json.loads(message.data))
            topic["log_times"].append(message.log_time)
        metadata = {m.name: dict(m.metadata) for m in reader.iter_metadata()}
        profile = reader.get_header().profile
    json.dump({"profile": profile, "topics": topics, "metadata": metadata}, sys.stdout)


if __name__ == "__main__":
    main()
