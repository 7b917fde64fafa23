"""How an area-window is stored in the worker's changelogged window table.

In memory a window is ``{"p": partition, "m": {meter: {interval end: [register, interval
energy]}}}``. Written as that JSON, every commit's changed windows took ~1.3-1.5x the input's
bytes on the changelog (meter ids and interval ends repeat in every window, registers print 17
digits). Stored, the points are zlib-compressed JSON in base64 (``"z"``), the partition kept
readable: ~0.4x the input on the same records (docs/scaling.md, "Changelog bytes"). Faust's
"raw" values do not survive changelog recovery, hence text in a JSON value, as the detector
table does.

A stored window is read back equal to the one written (floats round-trip exactly through
JSON); windows written by earlier versions (plain ``"m"``) are read as they are.
"""

from __future__ import annotations

import base64
import zlib
from typing import Any

import orjson

# zlib level 1: 1.35x -> 0.37x the input on a simulated city, ~16 us per window; level 6 gives
# 0.35x for ~20 us, level 9 0.34x for ~25 us (base85 instead of base64 another ~6%, but
# Python's b85encode is pure Python: several times the compression's time). Level 9: windows
# are written once per commit each (streams/checkpoint.py), a few thousand a day-long replay of
# 80 areas, so its ~9 us more a write is ~0.1% of the worker's CPU there.
_LEVEL = 9


def encode_window(value: dict[str, Any]) -> dict[str, Any]:
    """The table value of a window (``{"p", "m"}``); any other value (a partition's
    watermarks) is returned unchanged.

    >>> w = {"p": 3, "m": {"M1": {900: [10.5, 0.25], 1800: [10.75, None]}}}
    >>> stored = encode_window(w)
    >>> sorted(stored), stored["p"], decode_window(stored) == w
    (['p', 'z'], 3, True)
    >>> encode_window({"sources": {}, "watermark": 0})
    {'sources': {}, 'watermark': 0}
    """
    if "m" not in value:
        return value
    points = orjson.dumps(value["m"], option=orjson.OPT_NON_STR_KEYS)
    return {"p": value["p"], "z": base64.b64encode(zlib.compress(points, _LEVEL)).decode("ascii")}


def decode_window(value: dict[str, Any]) -> dict[str, Any]:
    """The in-memory window of a table value written by :func:`encode_window` or by an earlier
    version (interval ends back to ints: JSON object keys are strings).

    >>> decode_window({"p": 0, "m": {"M1": {"900": [1.0, 0.5]}}})
    {'p': 0, 'm': {'M1': {900: [1.0, 0.5]}}}
    """
    points = orjson.loads(zlib.decompress(base64.b64decode(value["z"]))) if "z" in value else value["m"]
    return {"p": value["p"], "m": {m: {int(t): pair for t, pair in pts.items()} for m, pts in points.items()}}
