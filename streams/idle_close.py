"""Quiet sources and quiet partitions (docs/design.md, "Watermarks and lateness").

A source (topic) of a partition that has gone quiet and has read everything up to the
partition's high watermark stops holding the partition's watermark back; when every source of a
partition is quiet, its ended windows close. Quiet on the wall clock alone is not enough: a
topic with a backlog the consumer has not fetched yet is silent too. The same tick notices a
partition faust-streaming has stopped delivering (streams/faust_fixes.py) and the consumer lag
per topic is measured here too.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import faust

from streams.engine import LineLossEngine
from streams.faust_fixes import DeliveryGuard, stalled
from streams.metrics import Metrics
from streams.settings import Settings
from streams.topology_feed import TopologyFeed

# close(partition): close and publish the ended windows of a partition whose sources are all quiet
Close = Callable[[int], Awaitable[None]]


class SourceActivity:
    """When each (partition, source) last delivered a record, and what follows from it."""

    def __init__(
        self,
        app: faust.App,
        settings: Settings,
        engine: LineLossEngine,
        delivery: DeliveryGuard,
        topology_feed: TopologyFeed,
        metrics: Metrics,
    ) -> None:
        self.app = app
        self.settings = settings
        self.engine = engine
        self.delivery = delivery
        self.topology_feed = topology_feed
        self.metrics = metrics
        self._last_event_wall: dict[tuple[int, str], float] = {}
        self._last_offset: dict[tuple[int, str], int] = {}
        self._started = time.monotonic()
        self._recovered_since: float | None = None  # monotonic time table recovery last ended

    def seen(self, partition: int, topic: str, offset: int) -> None:
        """A record of ``topic`` at ``offset`` reached the worker now."""
        self._last_event_wall[(partition, topic)] = time.monotonic()
        self._last_offset[(partition, topic)] = offset

    def _stalled(self, tp: Any, now: float) -> bool:
        last = self._last_event_wall.get((tp.partition, tp.topic), 0.0)
        return stalled(last, self._recovered_since, now, self.settings.idle_close_s)

    async def measure_lag(self) -> None:
        """Records on the broker not processed yet, per input topic (high watermark minus the
        next offset to process, summed over this worker's partitions)."""
        assigned = [tp for tp in self.app.consumer.assignment() if tp.topic in self.engine.sources]
        lag = dict.fromkeys(self.engine.sources, 0)
        if assigned:
            highwaters = await self.app.consumer.highwaters(*assigned)
            committed = getattr(self.app.consumer, "_committed_offset", {})
            for tp in assigned:
                high = highwaters.get(tp)
                if high is None:
                    continue
                position = self.delivery.next_offset(tp.topic, tp.partition) or committed.get(tp) or 0
                lag[tp.topic] += max(0, high - position)
        for topic, n in lag.items():
            self.metrics.consumer_lag.labels(topic=topic).set(n)

    async def close_idle(self, close: Close) -> None:
        """Let caught-up, quiet sources stop holding watermarks back, and close the ended
        windows of partitions where every source is quiet.

        Quiet on the wall clock is not enough: a topic with a backlog the consumer has not
        fetched yet is silent too, and treating it as idle would let the other topic's
        watermark run ahead and refuse its readings as late. A source is idle only when it
        has also read everything up to the partition's high watermark.
        """
        now = time.monotonic()
        idle_s = self.settings.idle_close_s
        assigned = [tp for tp in self.app.consumer.assignment() if tp.topic in self.engine.sources]
        # A source already marked idle stays so until its next record, so only the others
        # need the high-watermark query (a broker round trip that outlasted this timer).
        quiet = {
            (tp.partition, tp.topic)
            for tp in assigned
            if now - self._last_event_wall.get((tp.partition, tp.topic), self._started) >= idle_s
        }
        to_check = [
            tp
            for tp in assigned
            if (tp.partition, tp.topic) in quiet and not self.engine.is_idle(tp.partition, tp.topic)
        ]
        # Table recovery is over only when no rebalance is under way too: Faust never clears
        # recovery.completed, and a partition newly assigned by a second rebalance is in the
        # assignment before its changelog is read back.
        recovery = self.app.tables.recovery
        await self.delivery.resume_recovery(now)
        recovered = (
            recovery.completed.is_set()
            and not recovery.in_recovery
            and not self.app.rebalancing
            and self.app.tables.actives_ready
        )
        if not recovered:
            self._recovered_since = None
        elif self._recovered_since is None:
            self._recovered_since = now
        if to_check:
            highwaters = await self.app.consumer.highwaters(*to_check)
            if time.monotonic() - now > idle_s and self._recovered_since is not None:
                # The broker took that long to answer: it was down or unreachable, and nothing
                # could be delivered meanwhile. A stall is judged on time with a broker that
                # answers (a resume-and-seek racing the group's rejoin after an outage was seen
                # in a run whose commit then never advanced again).
                self._recovered_since = time.monotonic()
            committed = getattr(self.app.consumer, "_committed_offset", {})
            at_start = await self.delivery.committed_at_start(to_check)
            to_resume: list[tuple[Any, int]] = []
            for tp in to_check:
                last = self._last_offset.get((tp.partition, tp.topic))
                position = max(
                    last + 1 if last is not None else 0,
                    committed.get(tp) or 0,
                    at_start.get((tp.topic, tp.partition), 0),
                )
                highwater = highwaters.get(tp)
                if highwater is not None and position >= highwater:
                    self.engine.mark_idle(tp.partition, tp.topic)
                elif highwater is not None and self._stalled(tp, now):
                    to_resume.append((tp, position))
            for tp, position in to_resume:
                await self.delivery.resume_stalled(tp, position, highwaters[tp])
                self._last_event_wall[(tp.partition, tp.topic)] = time.monotonic()  # one try per stall_s
        for partition in sorted({tp.partition for tp in assigned}):
            all_idle = all(
                (partition, src) in quiet and self.engine.is_idle(partition, src)
                for src in self.engine.sources
            )
            if not all_idle:
                continue  # records are coming: the first one loads the partition's windows
            if not self.topology_feed.covers(partition):
                continue  # its meters are still loading: judged without them, areas look empty
            if not self.engine.knows_partition(partition):
                if not recovered:
                    continue
                # A partition whose records were all processed before a restart gets none now:
                # its last windows must still close, from the recovered table.
                self.engine.recover_partition(partition)
            await close(partition)
