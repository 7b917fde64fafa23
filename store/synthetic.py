"""Synthetic line-loss records in the worker's contract, for the store's benchmark and tests."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Literal

from streams.contracts import LineLossRecord, encode


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def lineloss_record(
    area_id: str,
    window_start: int,
    *,
    window_s: int = 900,
    revision: int = 0,
    seed: int = 0,
    rng: random.Random | None = None,
) -> LineLossRecord:
    """One plausible area-window result; ``seed`` varies the figures (a correction), ``rng``
    draws them from a shared generator instead (fast, for bulk)."""
    rng = rng or random.Random(f"{area_id}|{window_start}|{seed}")
    supply = round(rng.uniform(20.0, 400.0), 3)
    loss_rate = rng.gauss(0.04, 0.03)
    sales = round(supply * (1 - loss_rate), 3)
    lower, upper = 0.0, 0.10
    rate = (supply - sales) / supply
    state: Literal["qualified", "high_loss", "negative_loss"] = "qualified"
    if rate > upper:
        state = "high_loss"
    elif rate < lower:
        state = "negative_loss"
    n = rng.randint(50, 300)
    return LineLossRecord(
        v=1,
        area_id=area_id,
        area_class=("urban", "rural", "industrial")[sum(area_id.encode()) % 3],
        window_start=_iso(window_start),
        window_end=_iso(window_start + window_s),
        window_s=window_s,
        state=state,
        supply_kwh=supply,
        sales_kwh=sales,
        loss_kwh=round(supply - sales, 3),
        loss_rate=round(rate, 6),
        completeness=1.0,
        customers_expected=n,
        customers_reported=n,
        supplies_expected=1,
        supplies_reported=1,
        lower=lower,
        upper=upper,
        rollbacks=0,
        revision=revision,
    )


def city_day(areas: int, day_start: int, *, window_s: int = 900) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) of every area-window of one day, window by window, as the worker keys them."""
    rng = random.Random(day_start)
    names = [f"A{a:05d}" for a in range(areas)]
    for w in range(day_start, day_start + 86400, window_s):
        for area in names:
            yield f"{area}|{w}".encode(), encode(lineloss_record(area, w, window_s=window_s, rng=rng))


def alert_record(
    kind: str,
    entity: str,
    type_: str,
    start: int,
    event: str,
    evidence: dict[str, object],
    score: float = 42.0,
) -> bytes:
    """An alert record as the worker's alert book writes it (``id`` = kind:entity:type:start)."""
    at = _iso(start)
    return encode(
        {
            "v": 1,
            "id": f"{kind}:{entity}:{type_.split('_', 1)[1]}:{start}",
            "type": type_,
            "severity": "warning",
            "entity_kind": kind,
            "entity_id": entity,
            "window_start": at,
            "window_end": at,
            "score": score,
            "evidence": evidence,
            "event": event,
            "at": at,
        }
    )


def meter_record(meter: str, area: str, customer_class: str) -> bytes:
    """A topology (archive) record of a customer meter."""
    return encode(
        {
            "meter_id": meter,
            "area_id": area,
            "role": "customer",
            "multiplier": 1.0,
            "customer_class": customer_class,
            "active": True,
            "effective_from": "2026-01-01T00:00:00Z",
            "v": 1,
        }
    )
