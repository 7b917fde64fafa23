"""Message contracts of gridwatch's topics, as msgspec structs.

The structs are the single source of truth: decoding validates against them, and the JSON
Schemas in docs/contracts/ are generated from them (``gridwatch schemas``). Every contract
carries ``v`` so a consumer can tell versions apart.
"""

from __future__ import annotations

import base64
import hashlib
import inspect
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

SCHEMA_VERSION = 1
MAX_FLAGS = 16  # flags a reading may carry

# Python's ``$`` also matches before a trailing newline (so "m1\n" passed as an id); the
# lookahead refuses it, and means the same in the JSON Schemas' ECMA-262 regexes.
ID_PATTERN = r"^[A-Za-z0-9_.:\-]+(?!\n)$"
MeterId = Annotated[str, Meta(min_length=1, max_length=64, pattern=ID_PATTERN)]
AreaId = Annotated[str, Meta(min_length=1, max_length=64, pattern=ID_PATTERN)]
# Upper limits are generous physical bounds: they reject inf and absurd numbers, not load.
RegisterKwh = Annotated[float, Meta(ge=0, le=1e10, description="cumulative register, kWh")]
EnergyKwh = Annotated[float, Meta(ge=0, le=1e7, description="energy of this interval, kWh")]
Instant = Annotated[datetime, Meta(tz=True, description="interval end, RFC 3339 with offset")]


class InvalidRecord(ValueError):
    """A record that breaks its contract; ``reason`` is a short stable code for counting."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class MeterValue(Struct, forbid_unknown_fields=True, omit_defaults=True):
    """What one meter reported for one interval (register and/or interval energy)."""

    meter_id: MeterId
    register_kwh: RegisterKwh | None = None
    energy_kwh: EnergyKwh | None = None
    voltage_v: Annotated[float, Meta(ge=0, le=1e6)] | None = None
    current_a: Annotated[float, Meta(ge=-1e6, le=1e6)] | None = None
    flags: Annotated[list[Annotated[str, Meta(max_length=32)]], Meta(max_length=MAX_FLAGS)] = []


class Reading(MeterValue, tag="reading", tag_field="kind", forbid_unknown_fields=True, kw_only=True):
    """A single meter reading, keyed by area id."""

    area_id: AreaId
    ts: Instant
    v: Literal[1] = 1


class Batch(Struct, tag="batch", tag_field="kind", forbid_unknown_fields=True):
    """A concentrator batch: one area, one interval end, many meters. Keyed by area id."""

    area_id: AreaId
    ts: Instant
    readings: Annotated[list[MeterValue], Meta(min_length=1, max_length=5000)]
    v: Literal[1] = 1


ReadingMessage = Reading | Batch


class _LenientBatch(Struct, tag="batch", tag_field="kind", forbid_unknown_fields=True):
    # Items stay raw so one bad item is refused alone, not with its good neighbours.
    area_id: AreaId
    ts: Instant
    readings: Annotated[list[msgspec.Raw], Meta(min_length=1, max_length=5000)]
    v: Literal[1] = 1


class RefusedItem(Struct):
    item: int
    error: InvalidRecord
    raw: bytes
    meter_id: str | None = None


class DecodedBatch(Struct):
    """A batch after decoding: the usable values and the items refused with their reason."""

    area_id: str
    ts: datetime
    values: list[MeterValue]
    refused: list[RefusedItem]


class TopologyRecord(Struct, forbid_unknown_fields=True):
    """One archive version of a meter, on the compacted topology topic keyed by meter id."""

    meter_id: MeterId
    area_id: AreaId
    role: Literal["customer", "supply"]
    multiplier: Annotated[float, Meta(gt=0, lt=1e6)]
    customer_class: Annotated[str, Meta(max_length=32)]
    active: bool
    effective_from: Instant
    v: Literal[1] = 1


class LineLossRecord(Struct):
    """One area-window result; a later record for the same key corrects an earlier one."""

    v: Literal[1]
    area_id: AreaId
    area_class: str
    window_start: str
    window_end: str
    window_s: int
    state: Literal["qualified", "high_loss", "negative_loss", "incomplete", "no_supply"]
    supply_kwh: float
    sales_kwh: float
    loss_kwh: float
    loss_rate: float | None
    completeness: Annotated[float, Meta(ge=0)]
    customers_expected: int
    customers_reported: int
    supplies_expected: int
    supplies_reported: int
    lower: float
    upper: float
    rollbacks: int
    revision: int


class SourcePosition(Struct):
    topic: str
    partition: int
    offset: int


class DeadLetter(Struct, omit_defaults=True):
    """A record gridwatch could not use, with why, and the original bytes (base64).

    A dead letter must fit in one Kafka message (the producer's 1 MB request limit), and base64
    grows the bytes by a third: so an original too large to fit whole keeps only its first bytes
    in ``value_b64`` (``key_b64`` likewise), and ``value_size`` / ``value_sha256`` (``key_size``)
    give the full length and digest. The whole record stays at ``source`` for the readings'
    retention (35 days, as long as the dead letter's own).
    """

    reason: str
    detail: str
    source: SourcePosition
    value_b64: str
    key_b64: str | None = None
    item: int | None = None  # index inside a concentrator batch, when one reading was refused
    meter_id: str | None = None
    at: str = ""
    # Set only when value_b64 / key_b64 hold a prefix of a larger original.
    value_size: int | None = None
    value_sha256: str | None = None
    key_size: int | None = None
    v: Literal[1] = 1


class Evidence(Struct, omit_defaults=True):
    """Why an alert fired: the named fields are typed, other keys are allowed (and forwarded)."""

    # Unknown keys pass decoding; the notifier forwards the original bytes, so they survive.
    expected_kwh: Annotated[float, Meta(ge=-1e10, le=1e10)] | None = None
    observed_kwh: Annotated[float, Meta(ge=-1e10, le=1e10)] | None = None
    share_of_area_loss: Annotated[float, Meta(ge=-1e6, le=1e6)] | None = None


AlertType = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=64,
        pattern=r"^[a-z][a-z0-9_]*(?!\n)$",
        description=(
            "what fired; known types: area_high_loss, area_negative_loss, area_loss_jump, "
            "area_incomplete, meter_zero_consumption, meter_consumption_drop, "
            "meter_consumption_rise, meter_consumption_spike, meter_flat_line, "
            "meter_register_rollback, meter_inactive_consumption, meter_missing, "
            "meter_arrears_risk, meter_theft_suspect, meter_mapping_error, consumption_drop, "
            "consumption_zero, meter_large_consumption_day, meter_large_consumption_month, "
            "meter_tariff_mismatch "
            "(docs/detection.md)"
        ),
    ),
]


class Alert(Struct, forbid_unknown_fields=True, kw_only=True):
    """An incident of one area or meter, opened or resolved; both records share the ``id``."""

    id: Annotated[str, Meta(min_length=1, max_length=128, pattern=ID_PATTERN)]
    type: AlertType
    severity: Literal["info", "warning", "page"]
    entity_kind: Literal["area", "meter"]
    entity_id: MeterId
    window_start: Annotated[datetime, Meta(tz=True, description="RFC 3339 with offset")]
    window_end: Annotated[datetime, Meta(tz=True, description="RFC 3339 with offset")]
    score: Annotated[float, Meta(ge=-1e12, le=1e12)]
    evidence: Evidence
    event: Literal["opened", "resolved"]
    at: Annotated[datetime, Meta(tz=True, description="when the detector decided, RFC 3339")]
    v: Literal[1] = 1


CONTRACTS: dict[str, Any] = {
    "reading": ReadingMessage,
    "topology": TopologyRecord,
    "lineloss": LineLossRecord,
    "deadletter": DeadLetter,
    "alert": Alert,
}

_reading_decoder = msgspec.json.Decoder(Reading | _LenientBatch)
# Tried first: a batch whose every item is valid decodes in one call, not one per item.
_strict_decoder = msgspec.json.Decoder(Reading | Batch)


class _IdCheckedValue(MeterValue, forbid_unknown_fields=True, omit_defaults=True):
    meter_id: Annotated[str, Meta(min_length=1, max_length=64)]  # pattern checked by the caller


class _IdCheckedBatch(Batch, tag="batch", tag_field="kind", forbid_unknown_fields=True):
    readings: Annotated[list[_IdCheckedValue], Meta(min_length=1, max_length=5000)]  # type: ignore[assignment]


_id_checked_decoder = msgspec.json.Decoder(Reading | _IdCheckedBatch)
_id_pattern = re.compile(ID_PATTERN)


def valid_meter_id(meter_id: str) -> bool:
    """Whether ``meter_id`` is a :data:`MeterId` (what decoding checks item by item).

    >>> valid_meter_id("A0001-M0001"), valid_meter_id("m 1"), valid_meter_id("m\\n")
    (True, False, False)
    """
    return 1 <= len(meter_id) <= 64 and _id_pattern.search(meter_id) is not None


def decode_checked(raw: bytes | None, checked: Callable[[list[str]], bool]) -> Reading | DecodedBatch | None:
    """:func:`decode_readings` of a valid record, with a batch's meter ids vouched for by
    ``checked`` (ids the caller found :func:`valid_meter_id` before, e.g. in its meter index)
    instead of matching each id's pattern again (~60% of a batch's decoding); None for
    anything else (an unknown id, any fault): :func:`decode_readings` gives it, with the
    reasons."""
    if not raw:
        return None
    try:
        batch = _id_checked_decoder.decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    if isinstance(batch, Reading):  # checked in full: one id
        return batch if batch.register_kwh is not None or batch.energy_kwh is not None else None
    items = batch.readings
    ids = [v.meter_id for v in items]
    if len(set(ids)) != len(ids) or not checked(ids):
        return None
    if not all(v.register_kwh is not None or v.energy_kwh is not None for v in items):
        return None
    values: list[MeterValue] = list(items)
    return DecodedBatch(batch.area_id, batch.ts, values, [])
_value_decoder = msgspec.json.Decoder(MeterValue)
_topology_decoder = msgspec.json.Decoder(TopologyRecord)
_encoder = msgspec.json.Encoder()


def decode_readings(raw: bytes | None) -> Reading | DecodedBatch:
    """Decode a reading or a batch; raises InvalidRecord with reason and a JSON path.

    >>> decode_readings(b'{"kind":"reading","area_id":"A","meter_id":"m","ts":"2026-01-01T00:15:00Z",'
    ...                 b'"register_kwh":12.5}').register_kwh
    12.5
    >>> try:
    ...     decode_readings(b'{"kind":"reading","area_id":"A","meter_id":"m","energy_kwh":1}')
    ... except InvalidRecord as exc:
    ...     print(exc.reason, "|", exc.detail)
    schema | Object missing required field `ts`
    >>> b = decode_readings(b'{"kind":"batch","area_id":"A","ts":"2026-01-01T00:15:00Z",'
    ...                     b'"readings":[{"meter_id":"m","energy_kwh":-1},{"meter_id":"n",'
    ...                     b'"energy_kwh":0.5}]}')
    >>> [v.meter_id for v in b.values], [(r.item, r.error.detail) for r in b.refused]
    (['n'], [(0, 'Expected `float` >= 0.0 - at `$.energy_kwh`')])
    """
    if not raw:
        raise InvalidRecord("empty", "record has no value")
    try:
        strict = _strict_decoder.decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError):
        pass  # decoded again below, item by item, for the reasons
    else:
        if isinstance(strict, Batch):
            items = strict.readings
            if len({v.meter_id for v in items}) == len(items) and all(
                v.register_kwh is not None or v.energy_kwh is not None for v in items
            ):
                return DecodedBatch(strict.area_id, strict.ts, items, [])
        elif strict.register_kwh is not None or strict.energy_kwh is not None:
            return strict
    try:
        msg = _reading_decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise InvalidRecord("schema", str(exc)) from None
    except msgspec.DecodeError as exc:
        raise InvalidRecord("json", str(exc)) from None
    if isinstance(msg, Reading):
        _check_value(msg)
        return msg
    values: list[MeterValue] = []
    refused: list[RefusedItem] = []
    seen: set[str] = set()
    for i, item in enumerate(msg.readings):
        try:
            value = _value_decoder.decode(item)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            refused.append(RefusedItem(i, InvalidRecord("schema", str(exc)), bytes(item)))
            continue
        if value.meter_id in seen:
            # One meter twice in one interval's batch: the first value counts, the repeat is
            # refused so that it is visible rather than silently replacing the first.
            err = InvalidRecord("batch_repeat", f"meter {value.meter_id!r} repeated in batch")
            refused.append(RefusedItem(i, err, bytes(item), value.meter_id))
            continue
        seen.add(value.meter_id)
        problem = check_value(value)
        if problem is not None:
            refused.append(RefusedItem(i, problem, bytes(item), value.meter_id))
            continue
        values.append(value)
    return DecodedBatch(msg.area_id, msg.ts, values, refused)


def _check_value(value: MeterValue) -> None:
    if value.register_kwh is None and value.energy_kwh is None:
        raise InvalidRecord("no_energy", "reading has neither register_kwh nor energy_kwh")


def check_value(value: MeterValue) -> InvalidRecord | None:
    """The per-meter check a batch item gets (a batch refuses items, not the whole batch)."""
    try:
        _check_value(value)
    except InvalidRecord as exc:
        return exc
    return None


def check_time(ts: datetime, now: datetime, *, max_past: timedelta, max_future: timedelta) -> None:
    """Refuse timestamps absurdly far from now (a concentrator buffers ~31 days, clocks drift)."""
    if ts < now - max_past:
        raise InvalidRecord("too_old", f"ts {ts.isoformat()} is more than {max_past} before now")
    if ts > now + max_future:
        raise InvalidRecord("future", f"ts {ts.isoformat()} is more than {max_future} after now")


def decode_topology(raw: bytes | None) -> TopologyRecord:
    if not raw:
        raise InvalidRecord("empty", "record has no value")
    try:
        return _topology_decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise InvalidRecord("schema", str(exc)) from None
    except msgspec.DecodeError as exc:
        raise InvalidRecord("json", str(exc)) from None


def encode(obj: Any) -> bytes:
    return _encoder.encode(obj)


# What one dead-letter message may take: the Faust producer refuses requests over 1,000,000
# bytes (``producer_max_request_size``), and the broker's default message.max.bytes is ~1 MiB.
DEADLETTER_MAX_BYTES = 900_000
_DEADLETTER_OVERHEAD = 1_024  # field names, source position, reason, timestamp, record header


# A dead letter is keyed by the original record's key, unless that key alone would make it too
# large to send: then by the key's SHA-256 (hex), and key_b64 keeps what fits of the original.
DEADLETTER_KEY_MAX_BYTES = 4_096


def dead_letter_key(key: bytes | None) -> bytes | None:
    """The Kafka key to send a dead letter with (the original key, or its digest if huge).

    >>> dead_letter_key(b"A0001"), len(dead_letter_key(b"k" * 1_000_000) or b"")
    (b'A0001', 64)
    """
    if key is None or len(key) <= DEADLETTER_KEY_MAX_BYTES:
        return key
    return hashlib.sha256(key).hexdigest().encode()


def _b64_room(budget: int) -> int:
    """How many raw bytes fit in ``budget`` bytes of base64."""
    return max(0, budget) // 4 * 3


def dead_letter(
    *,
    reason: str,
    detail: str,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    item: int | None = None,
    meter_id: str | None = None,
    now: datetime | None = None,
) -> bytes:
    """Encode a dead-letter record that keeps the original bytes and where they came from.

    The Kafka key of the dead letter counts against :data:`DEADLETTER_MAX_BYTES` too, as the
    original key (the worker sends it as is: send :func:`dead_letter_key` instead to survive
    keys near 1 MB); an original that does not fit keeps a prefix.

    >>> import msgspec
    >>> big = msgspec.json.decode(dead_letter(reason="json", detail="d", topic="t", partition=0,
    ...                                       offset=1, key=b"k", value=b"x" * 2_000_000))
    >>> big["value_size"], len(base64.b64decode(big["value_b64"])) < 700_000
    (2000000, True)
    """
    at = (now or datetime.now(UTC)).isoformat().replace("+00:00", "Z")
    value = value or b""
    detail = detail[:2000]
    # JSON escaping can grow the detail (a control character takes 6 bytes): measure it encoded.
    fixed = len(encode(detail)) + len(encode(meter_id)) + len(key or b"")
    room = DEADLETTER_MAX_BYTES - _DEADLETTER_OVERHEAD - fixed
    key_kept = key[: _b64_room(room)] if key is not None else None
    room -= 4 * ((len(key_kept) + 2) // 3) if key_kept is not None else 0
    value_kept = value[: _b64_room(room)]
    value_cut = len(value_kept) < len(value)
    key_cut = key is not None and key_kept is not None and len(key_kept) < len(key)
    return encode(
        DeadLetter(
            reason=reason,
            detail=detail,
            source=SourcePosition(topic, partition, offset),
            value_b64=base64.b64encode(value_kept).decode(),
            key_b64=base64.b64encode(key_kept).decode() if key_kept is not None else None,
            item=item,
            meter_id=meter_id,
            at=at,
            value_size=len(value) if value_cut else None,
            value_sha256=hashlib.sha256(value).hexdigest() if value_cut else None,
            key_size=len(key) if key is not None and key_cut else None,
        )
    )


def json_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema (2020-12) of every contract, as committed in docs/contracts/."""
    out = {}
    for name, typ in CONTRACTS.items():
        schema = _clean_descriptions(msgspec.json.schema(typ))
        schema = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"https://gridwatch.dev/contracts/{name}.v{SCHEMA_VERSION}.schema.json",
            "title": f"gridwatch {name} v{SCHEMA_VERSION}",
            **schema,
        }
        out[f"{name}.v{SCHEMA_VERSION}.schema.json"] = schema
    return out


def _clean_descriptions(node: Any) -> Any:
    """Descriptions dedented by ``inspect.cleandoc``, so the committed schemas do not depend on
    how a msgspec release copies docstrings (0.22 kept their indentation, 0.23 strips it)."""
    if isinstance(node, dict):
        return {
            k: inspect.cleandoc(v) if k == "description" and isinstance(v, str) else _clean_descriptions(v)
            for k, v in node.items()
        }
    if isinstance(node, list | tuple):
        return [_clean_descriptions(v) for v in node]
    return node
