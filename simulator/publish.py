"""Publish a simulation to the topics a worker reads: the archive to the topology topic first,
then readings and supply readings keyed by area, in arrival order."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from simulator.stream import Delivery
    from simulator.synth import Sim
    from streams.settings import Settings


class KafkaSink:
    """Creates missing topics (as ``gridwatch topics``), publishes the archive, then records.
    Record timestamps are the producer's clock; the reading's event time is in its value."""

    def __init__(self, settings: Settings, *, timeout_s: float = 10.0) -> None:
        self.settings = settings
        from streams.kafkaio import security_kwargs

        self.kw = {"bootstrap_timeout_ms": int(timeout_s * 1000), **security_kwargs(settings)}
        self.topics = {"readings": settings.topic_readings, "supply": settings.topic_supply}
        self._prod: Any = None
        self._errors: list[BaseException] = []

    def open(self, sim: Sim) -> None:
        from streams.kafkaio import create_topics, producer
        from streams.topics import topic_specs

        s = self.settings
        create_topics(s.bootstrap, topic_specs(s), **self.kw)
        self._prod = producer(s.bootstrap, **self.kw)
        for rec in sorted(sim.topology().records(), key=lambda r: (r.meter_id, r.effective_from)):
            self._send(s.topic_topology, rec.topic_key(), orjson.dumps(rec.to_dict()))
        self._prod.flush()
        self._check()

    def _send(self, topic: str, key: bytes, value: bytes) -> None:
        self._prod.send(topic, key=key, value=value).add_errback(self._errors.append)

    def _check(self) -> None:
        if self._errors:
            raise RuntimeError(f"publishing failed: {self._errors[0]}")

    def write(self, batch: Sequence[Delivery]) -> None:
        for d in batch:
            self._send(self.topics[d.kind], d.key.encode(), d.value)
        self._check()

    def close(self) -> None:
        if self._prod is not None:
            try:
                self._prod.flush()
            finally:
                self._prod.close()
                self._prod = None
        self._check()
