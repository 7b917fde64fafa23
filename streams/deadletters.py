"""Refused records to the dead-letter topic, each with its reason, counted; nothing is dropped
without a trace (docs/design.md, "Refused input")."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from streams import contracts
from streams.contracts import Reading
from streams.engine import Reported
from streams.metrics import Metrics
from topology import Role

log = logging.getLogger("gridwatch")


class DeadLetters:
    """Sends dead letters for one worker: ``topic`` is the Faust topic they go to."""

    def __init__(self, topic: Any, metrics: Metrics) -> None:
        self.topic = topic
        self.metrics = metrics

    async def refuse(
        self,
        reason: str,
        detail: str,
        role: Role,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        *,
        item: int | None = None,
        meter_id: str | None = None,
    ) -> None:
        """A reading (or a whole record) refused: counted as late or rejected, dead-lettered."""
        outcome = "late" if reason == "late" else "rejected"
        self.metrics.readings.labels(outcome=outcome, role=role.value).inc()
        await self.send(reason, detail, topic, partition, offset, key, value, item, meter_id)

    async def send(
        self,
        reason: str,
        detail: str,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        item: int | None = None,
        meter_id: str | None = None,
    ) -> None:
        body = contracts.dead_letter(
            reason=reason,
            detail=detail,
            topic=topic,
            partition=partition,
            offset=offset,
            key=key,
            value=value,
            item=item,
            meter_id=meter_id,
        )
        # Keyed by the original key, or its digest when that alone would not fit a message.
        dl_key = contracts.dead_letter_key(key)
        try:
            await self.topic.send(key=dl_key, value=body)
        except Exception as exc:  # never lose the record's trace: say where it is instead
            log.error(
                "dead letter for %s[%d]@%d not sent (%r); sending its position only",
                topic,
                partition,
                offset,
                exc,
            )
            body = contracts.dead_letter(
                reason=reason,
                detail=f"{detail[:1000]} (original bytes not kept: {exc!r})",
                topic=topic,
                partition=partition,
                offset=offset,
                key=None,
                value=None,
                item=item,
                meter_id=meter_id,
            )
            await self.topic.send(key=dl_key, value=body)
        self.metrics.rejected.labels(reason=reason).inc()


def reading_bytes(p: Reported, area_id: str, ts: int, extra_flag: str | None = None) -> bytes:
    """One point as a self-contained single reading (a refused batch item, a forward)."""
    flags = list(p.flags)
    if extra_flag and extra_flag not in flags:
        flags = [*flags[: contracts.MAX_FLAGS - 1], extra_flag]  # the forward keeps the contract
    return contracts.encode(
        Reading(
            meter_id=p.meter_id,
            register_kwh=p.register_kwh,
            energy_kwh=p.energy_kwh,
            flags=flags,
            area_id=area_id,
            ts=datetime.fromtimestamp(ts, UTC),
        )
    )
