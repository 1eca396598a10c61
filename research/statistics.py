"""Statistics shared by the evaluator and the report scripts (numpy only), so both compute them the same way."""

from __future__ import annotations

import numpy as np


def interquartile_mean(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """Mean after dropping the lowest and the highest ``n // 4`` values along ``axis`` (n = 5 keeps the middle 3).

    ``values`` is ``[..., n, ...]``; the result drops ``axis``. With fewer than 4 values nothing is dropped.
    """
    ordered = np.sort(np.asarray(values, dtype=float), axis=axis)
    n = ordered.shape[axis]
    cut = n // 4
    return np.mean(np.take(ordered, np.arange(cut, n - cut), axis=axis), axis=axis)
