"""Theft models from the literature, each its own label type: how a tampered meter's reported
energy relates to the energy that really flowed through it.

Pure functions of a meter's true interval energies ``x`` (one chunk of its span), the model's
parameters (drawn once per thief by :func:`draw_params`) and a generator keyed by the chunk, so
each model decides its random days, hours and factors chunk by chunk (a chunk is one day) and a
seed gives the same series. docs/simulator.md lists the models and their sources.

>>> x = np.full(8, 0.5)
>>> y = reported("theft_cap", {"cap_kwh": 0.2}, x, np.random.default_rng(0), np.arange(8.0))
>>> float(y.max()), bool((y <= x).all())
(0.2, True)
"""

from __future__ import annotations

from typing import Any

import numpy as np

# The models (Jokar et al. 2016's h1-h6 stay in simulator/anomalies.py, as before):
#   theft_fdi           y = g_t x, g_t fresh in [0.2, 0.8] each interval (false data injection)
#   theft_days          on random days (share p) y = f_d x, f_d fresh in [0.1, 0.7] per day
#   theft_hours         in random hours (share p) y = a x, honest the other hours
#   theft_zero_hours    y = 0 in a chosen window of the day (e.g. a bypass every evening)
#   theft_cap           y = min(x, cap): the meter never registers more than a cap per interval
#   theft_shift         y = max(x - d, 0): a constant amount taken off every interval
#   theft_mixed         on random days (share p) y = g_t x with g_t fresh in [0.2, 0.8] per
#                       interval: intermittent and noisy, the thieves of the real case
REALISTIC_THEFTS = (
    "theft_fdi",
    "theft_days",
    "theft_hours",
    "theft_zero_hours",
    "theft_cap",
    "theft_shift",
    "theft_mixed",
)
FDI_RANGE = (0.2, 0.8)
DAY_FACTOR_RANGE = (0.1, 0.7)
ACTIVE_SHARE = (0.3, 0.7)  # share of days / hours an intermittent thief steals


def draw_params(kind: str, rng: np.random.Generator, mean_kwh: float) -> dict[str, Any]:
    """A thief's parameters; ``mean_kwh`` is its meter's mean interval energy."""
    if kind == "theft_fdi":
        return {"g_range": list(FDI_RANGE)}
    if kind == "theft_days":
        return {"p": round(float(rng.uniform(*ACTIVE_SHARE)), 3), "f_range": list(DAY_FACTOR_RANGE)}
    if kind == "theft_hours":
        a = round(float(rng.uniform(0.1, 0.5)), 3)
        return {"p": round(float(rng.uniform(*ACTIVE_SHARE)), 3), "a": a}
    if kind == "theft_zero_hours":
        length = int(rng.integers(3, 9))
        return {"from_hour": int(rng.integers(0, 24)), "hours": length}
    if kind == "theft_cap":
        return {"cap_kwh": round(float(rng.uniform(0.6, 1.2)) * mean_kwh, 4)}
    if kind == "theft_shift":
        return {"shift_kwh": round(float(rng.uniform(0.2, 0.6)) * mean_kwh, 4)}
    if kind == "theft_mixed":
        return {"p": round(float(rng.uniform(*ACTIVE_SHARE)), 3), "g_range": list(FDI_RANGE)}
    raise ValueError(f"unknown theft model {kind!r}; known: {', '.join(REALISTIC_THEFTS)}")


def reported(
    kind: str,
    params: dict[str, Any],
    x: np.ndarray,
    rng: np.random.Generator,
    local_hour: np.ndarray,
) -> np.ndarray:
    """What the meter reports for true energies ``x`` (one chunk, one day at most);
    ``local_hour`` is the local hour (0-24) at each interval's start."""
    if kind == "theft_fdi":
        return rng.uniform(*params["g_range"], size=len(x)) * x
    if kind == "theft_days":
        factor = rng.uniform(*params["f_range"]) if rng.random() < params["p"] else 1.0
        return float(factor) * x
    if kind == "theft_hours":
        hour = np.floor(local_hour).astype(np.int64)
        steal = rng.random(24) < params["p"]
        return np.where(steal[hour % 24], params["a"] * x, x)
    if kind == "theft_zero_hours":
        since = (local_hour - params["from_hour"]) % 24
        return np.where(since < params["hours"] - 1e-9, 0.0, x)
    if kind == "theft_cap":
        return np.minimum(x, params["cap_kwh"])
    if kind == "theft_shift":
        return np.maximum(x - params["shift_kwh"], 0.0)
    if kind == "theft_mixed":
        g = rng.uniform(*params["g_range"], size=len(x))
        return g * x if rng.random() < params["p"] else x.copy()
    raise ValueError(f"unknown theft model {kind!r}")
