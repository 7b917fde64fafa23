"""Per-meter state held as columns: one numpy array per field, indexed by dense meter index.

Every per-meter detector (``meter_anomaly``, ``large_consumption``, ``tariff_class``) keeps its
state this way, so a meter's state is a row across the arrays and its cost is the sum of their
item sizes. The columns grow by doubling as new meter indices appear.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping

import numpy as np
import numpy.typing as npt


def new_columns(dtypes: Mapping[str, npt.DTypeLike], capacity: int) -> dict[str, npt.NDArray[np.generic]]:
    """Zeroed columns for ``capacity`` meters (at least one)."""
    return {k: np.zeros(max(1, capacity), dtype=t) for k, t in dtypes.items()}


def bytes_per_meter(dtypes: Mapping[str, npt.DTypeLike]) -> int:
    """Bytes of state per meter: the sum of the columns' item sizes.

    >>> bytes_per_meter({"n": "uint16", "mean": "float32"})
    6
    """
    return sum(np.dtype(t).itemsize for t in dtypes.values())


def grow_columns(columns: MutableMapping[str, npt.NDArray[np.generic]], size: int) -> None:
    """Grow every column, by doubling, until it holds ``size`` meters; new rows are zero.

    >>> cols = new_columns({"n": "uint16"}, 2)
    >>> cols["n"][1] = 7
    >>> grow_columns(cols, 5)
    >>> len(cols["n"]), int(cols["n"][1]), int(cols["n"][4])
    (8, 7, 0)
    """
    cap = len(next(iter(columns.values())))
    if size <= cap:
        return
    while cap < size:
        cap *= 2
    for k, arr in columns.items():
        new = np.zeros(cap, dtype=arr.dtype)
        new[: len(arr)] = arr
        columns[k] = new
