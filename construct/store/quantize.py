"""int8 storage with one scale per token (or per spatial position): ~2x smaller than float16."""

from __future__ import annotations

import numpy as np

INT8_MAX = 127.0


def quantize_int8(x: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric absmax quantisation along `axis` (the feature axis); returns (int8 values, float32 scales)."""
    x = np.asarray(x, dtype=np.float32)
    scale = np.abs(x).max(axis=axis, keepdims=True) / INT8_MAX
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.clip(np.rint(x / scale), -INT8_MAX, INT8_MAX).astype(np.int8)
    return q, scale


def dequantize_int8(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return q.astype(np.float32) * scale
