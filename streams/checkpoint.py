"""The worker's commit protocol, in one place: persist, wait for the changelog, commit offsets.

A Faust offset commit goes: ``on_commit_initiated`` (sensors, synchronous) -> pick the acked
offsets -> flush the producer -> commit. :class:`Checkpoint` hooks the first and third steps:

1. when a commit starts, the area-windows changed since the last commit are written to the
   window table and its changelog (:meth:`Checkpoint.persist_windows`), before the offsets are
   picked, so every window change of a committed record is in the changelog first (changes of
   later records may be too: replay onto a superset changes nothing, the engine's state being a
   set of readings);
2. the flush Faust awaits before committing first runs the savers registered with
   :meth:`before_flush` (the detector state of the areas changed since the last commit: once per
   commit, however many steps changed an area), then waits for every changelog write of this
   commit to be acknowledged by the broker (the window writes, and the writes queued with
   :meth:`add`).

A kill anywhere in between leaves committed offsets at or behind the stored state.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import faust

from streams.engine import LineLossEngine
from streams.window_codec import encode_window


class Checkpoint:
    """Window persistence and the commit's wait for the changelog, for one worker."""

    def __init__(self, engine: LineLossEngine, table: Any, on_writes: Any = None) -> None:
        self.engine = engine
        self.table = table
        self.on_writes = on_writes  # called with the number of window writes of a persist
        self._sends: list[Any] = []  # changelog writes the next commit waits for
        self._savers: list[Callable[[], Awaitable[None]]] = []  # run by each commit's flush
        # Held by the worker while a step's results are applied and published (readings and
        # quiet partitions), and by the savers: a saver sees the state between steps only,
        # never an area that has learned intervals whose alerts are not sent yet.
        self.stepping = asyncio.Lock()

    def persist_windows(self) -> int:
        """Write the area-windows changed since the last commit to the window table and its
        changelog (explicit partitions: this runs from the commit, outside stream context)."""
        table = self.table
        sends = self._sends

        def write(partition: int, key: str, value: Any) -> None:
            if value is None:
                table.data.pop(key, None)
                sends.append(table.send_changelog(partition, key, None, value_serializer="raw"))
            else:
                value = encode_window(value)  # a window's points compressed; watermarks as they are
                table.data[key] = value
                sends.append(table.send_changelog(partition, key, value))

        n = self.engine.persist(write)
        if n and self.on_writes is not None:
            self.on_writes(n)
        return n

    def add(self, send: Any) -> None:
        """A changelog write of another table (detector state) the next commit waits for."""
        self._sends.append(send)

    def before_flush(self, saver: Callable[[], Awaitable[None]]) -> None:
        """Run ``saver`` in every commit's flush, after the offsets to commit were picked and
        before the writes are awaited, between two steps (:attr:`stepping`): what it saves
        (with :meth:`add`) is then at or ahead of those offsets, as the windows are."""
        self._savers.append(saver)

    def install(self, app: faust.App) -> None:
        """Persist on every commit and make the commit's flush wait for the writes."""
        app.sensors.add(_PersistOnCommit(self))
        self._guard_commit_flush(app)

    def _guard_commit_flush(self, app: faust.App) -> None:
        """Make the flush Faust awaits before committing offsets wait for every changelog
        write really sent.

        faust-streaming's ProducerBuffer.flush gives up when one message takes over 0.1 s
        (flush_atmost returns on its first timeout), and a message its sender task has taken
        off the buffer but not yet handed to aiokafka is in neither; offsets could then be
        committed ahead of the window state they depend on, and a kill right after would lose
        it. The window writes of this commit are awaited one by one (their futures resolve on
        the broker's ack); the buffer is drained for the other tables' writes.
        """
        producer = app.producer
        faust_flush = producer.flush

        async def flush() -> None:
            await faust_flush()
            deadline = time.monotonic() + 60.0
            while producer.buffer.size and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            if self._savers:
                async with self.stepping:
                    for saver in self._savers:
                        await saver()
            sends, self._sends = self._sends, []
            if sends:
                await asyncio.gather(*sends)
            await faust_flush()

        producer.flush = flush  # type: ignore[method-assign]


class _PersistOnCommit(faust.Sensor):
    """Persists changed windows when an offset commit starts.

    Faust calls ``on_commit_initiated`` synchronously right before it picks the acked offsets
    to commit, and flushes the producer before committing them.
    """

    def __init__(self, checkpoint: Checkpoint) -> None:
        super().__init__()
        self.checkpoint = checkpoint

    def on_commit_initiated(self, consumer: Any) -> Any:
        self.checkpoint.persist_windows()
        return None
