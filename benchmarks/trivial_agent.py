"""The cheapest possible Faust worker over gridwatch's topics: decode each message, nothing else.

Run by ``benchmarks/throughput.py`` as ``python benchmarks/trivial_agent.py worker -l warn``,
configured through BENCH_* environment variables:

    BENCH_APP_ID        consumer group / Faust app id (fresh per run)
    BENCH_BOOTSTRAP     host:port of the broker
    BENCH_TOPICS        comma-separated topics to read (readings, supply)
    BENCH_EXPECTED      messages to read before writing the "done" mark
    BENCH_MARK_FILE     file receiving "first <unix time>" and "done <unix time> <msgs> <readings>"
    BENCH_DATADIR       Faust data dir
    BENCH_WEB_PORT      Faust web port

Same Faust settings as the gridwatch worker where they matter for throughput (raw value
serializer, earliest offset reset, commit interval, fetch wait), so that the gap between this and
``gridwatch worker`` is gridwatch's own work.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import faust  # noqa: E402

from streams.contracts import InvalidRecord, Reading, decode_readings  # noqa: E402
from streams.kafkaio import set_faust_fetch_wait  # noqa: E402
from streams.settings import Settings  # noqa: E402

APP_ID = os.environ.get("BENCH_APP_ID", "bench-trivial")
TOPICS = [t for t in os.environ.get("BENCH_TOPICS", "").split(",") if t]
EXPECTED = int(os.environ.get("BENCH_EXPECTED", "0"))
MARK = Path(os.environ.get("BENCH_MARK_FILE", "/tmp/bench-trivial.mark"))

app = faust.App(
    APP_ID,
    broker=f"kafka://{os.environ.get('BENCH_BOOTSTRAP', '127.0.0.1:9092')}",
    store="memory://",
    key_serializer="raw",
    value_serializer="raw",
    topic_partitions=int(os.environ.get("BENCH_PARTITIONS", "4")),
    topic_replication_factor=1,
    web_host="127.0.0.1",
    web_bind="127.0.0.1",
    web_port=int(os.environ.get("BENCH_WEB_PORT", "6067")),
    datadir=os.environ.get("BENCH_DATADIR", "/tmp/bench-trivial-data"),
    broker_session_timeout=10.0,
    broker_heartbeat_interval=1.0,
    broker_commit_interval=float(os.environ.get("BENCH_COMMIT_INTERVAL_S", "1.0")),
    consumer_auto_offset_reset="earliest",
)

set_faust_fetch_wait(app, Settings().fetch_max_wait_ms)  # as the worker's consumer

source = app.topic(*TOPICS) if TOPICS else app.topic("bench-none")


def _mark(line: str) -> None:
    with MARK.open("a") as f:
        f.write(line + "\n")


@app.agent(source, name="trivial")
async def trivial(stream: faust.StreamT) -> None:
    msgs = readings = 0
    async for event in stream.events():
        try:
            decoded = decode_readings(event.message.value)
            readings += 1 if isinstance(decoded, Reading) else len(decoded.values)
        except InvalidRecord:
            pass
        msgs += 1
        if msgs == 1:
            _mark(f"first {time.time():.6f}")
        if msgs == EXPECTED:
            _mark(f"done {time.time():.6f} {msgs} {readings}")


if __name__ == "__main__":
    app.main()
