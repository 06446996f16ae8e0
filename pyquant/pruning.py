"""Magnitude pruning (CONTRACT section 3): the L0 projection.

Keep the ``t = round((1 - sparsity) * size)`` entries with the largest ``|w|`` and zero the rest (``round`` is
Python's, half to even). Ties in ``|w|`` are broken by index: among equal magnitudes the entry with the
smaller flat (C-order) index is kept first; for :func:`prune_global` the order is the list order, then the
flat index inside each array. The number of non-zeros kept is exactly ``t`` (entries already zero count as
the smallest magnitudes, so they are kept only when ``t`` exceeds the number of non-zero entries; the
returned mask then still holds exactly ``t`` True values).
"""
from __future__ import annotations

import numbers
from typing import List, Sequence, Tuple, Union

import numpy as np

from ._validate import check_finite

__all__ = ["prune_magnitude", "prune_global", "prune_n_m", "magnitude_mask"]


def _sparsity(sparsity, fn: str) -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real):
        raise TypeError(f"{fn}: sparsity must be a real number in [0, 1], got {type(sparsity).__name__}")
    s = float(sparsity)
    if not 0.0 <= s <= 1.0:
        raise ValueError(f"{fn}: sparsity must lie in [0, 1], got {sparsity}")
    return s


def _weights(w, name: str, fn: str) -> np.ndarray:
    a = np.asarray(w)
    if a.dtype.kind not in "fiu" or a.dtype == np.bool_:
        raise TypeError(f"{fn}: {name} must be a real numeric array, got dtype {a.dtype}")
    if a.dtype.kind == "f":
        check_finite(a, name, fn)
    return a


def _keep_count(sparsity: float, size: int) -> int:
    return int(round((1.0 - sparsity) * size))


def _top_mask(mag: np.ndarray, t: int) -> np.ndarray:
    """Boolean mask (1-D) of the t largest entries of mag; ties go to the smaller index. O(size)."""
    size = mag.size
    mask = np.zeros(size, dtype=bool)
    if t <= 0:
        return mask
    if t >= size:
        mask[:] = True
        return mask
    # the t-th largest value: everything strictly above it is kept, then the first equal ones by index
    v = np.partition(mag, size - t)[size - t]
    above = mag > v
    mask |= above
    need = t - int(np.count_nonzero(above))
    equal = np.flatnonzero(mag == v)
    mask[equal[:need]] = True
    return mask


def magnitude_mask(w, sparsity: float, *, per_row: bool = False) -> np.ndarray:
    """The boolean keep-mask of :func:`prune_magnitude` (same shape as ``w``)."""
    fn = "magnitude_mask"
    s = _sparsity(sparsity, fn)
    a = _weights(w, "w", fn)
    mag = np.abs(a.astype(np.float64, copy=False))
    if not per_row or a.ndim == 0:
        return _top_mask(mag.ravel(), _keep_count(s, a.size)).reshape(a.shape)
    if a.ndim < 2:
        raise ValueError(f"{fn}: per_row needs an array of at least 2 dimensions, got shape {a.shape}")
    rows = mag.reshape(a.shape[0], -1)
    t = _keep_count(s, rows.shape[1])
    mask = np.zeros(rows.shape, dtype=bool)
    if t > 0 and rows.shape[1]:
        # stable sort of -|w| per row: equal magnitudes keep their index order
        order = np.argsort(-rows, axis=1, kind="stable")[:, :t]
        np.put_along_axis(mask, order, True, axis=1)
    return mask.reshape(a.shape)


def _several(w) -> bool:
    """Whether ``w`` is several tensors (a list / tuple of arrays, or a dict of them) rather than one array: a
    list whose items are arrays (anything with a ``shape``: numpy, torch, ...), not nested lists of numbers."""
    if isinstance(w, dict):
        return True
    return isinstance(w, (list, tuple)) and len(w) > 0 and all(hasattr(t, "shape") for t in w)


def prune_magnitude(w, sparsity: float, *, per_row: bool = False,
                    return_mask: bool = False) -> Union[np.ndarray, list, dict, tuple]:
    """Zero all but the ``round((1 - sparsity) * size)`` largest-magnitude entries of ``w`` (L0 projection).

    Args:
        w: weight array (any real dtype; float NaN / Inf is a ValueError). Not modified. A list or tuple of
            arrays, or a dict of them (e.g. a model's layers by name), is pruned GLOBALLY: one threshold over
            all of them together (:func:`prune_global`), returned as numpy arrays in the same form (list or
            dict).
        sparsity: fraction of entries to zero, in [0, 1].
        per_row: prune each output row (``w[i]``, the first axis) separately to the same count, instead of
            the whole tensor at once (single arrays only).
        return_mask: also return the boolean keep-mask (masks, for several tensors).

    Returns:
        The pruned copy of ``w`` (same dtype and shape), or ``(pruned, mask)``. Ties in ``|w|`` are broken by
        index (the smaller C-order index is kept; across several tensors, their order first), so the result
        is deterministic and the mask holds exactly the target count of True values.
    """
    if _several(w):
        if per_row:
            raise ValueError("prune_magnitude: per_row applies to a single array, not to several tensors")
        names = list(w) if isinstance(w, dict) else None
        pruned, masks = prune_global([w[k] for k in names] if names is not None else list(w), sparsity,
                                     return_masks=True)
        if names is not None:
            pruned, masks = dict(zip(names, pruned)), dict(zip(names, masks))
        return (pruned, masks) if return_mask else pruned
    mask = magnitude_mask(w, sparsity, per_row=per_row)
    a = np.asarray(w)
    pruned = np.where(mask, a, np.zeros((), dtype=a.dtype)).astype(a.dtype, copy=False)
    return (pruned, mask) if return_mask else pruned


def prune_global(weights: Sequence, sparsity: float, *,
                 return_masks: bool = False) -> Union[List[np.ndarray], Tuple[List[np.ndarray], List[np.ndarray]]]:
    """One magnitude threshold across several tensors (a whole model): keep the
    ``round((1 - sparsity) * total_size)`` largest ``|w|`` over all of them together.

    Ties are broken by position: list order first, then the C-order index inside each array. Returns the
    list of pruned copies (and the list of masks when ``return_masks``).
    """
    fn = "prune_global"
    if isinstance(weights, np.ndarray) or not isinstance(weights, (list, tuple)):
        raise TypeError(f"{fn}: weights must be a list or tuple of arrays, got {type(weights).__name__}")
    s = _sparsity(sparsity, fn)
    arrays = [_weights(w, f"weights[{i}]", fn) for i, w in enumerate(weights)]
    if not arrays:
        return ([], []) if return_masks else []
    mags = np.concatenate([np.abs(a.astype(np.float64, copy=False)).ravel() for a in arrays])
    flat = _top_mask(mags, _keep_count(s, mags.size))
    masks, pruned, start = [], [], 0
    for a in arrays:
        m = flat[start:start + a.size].reshape(a.shape)
        start += a.size
        masks.append(m)
        pruned.append(np.where(m, a, np.zeros((), dtype=a.dtype)).astype(a.dtype, copy=False))
    return (pruned, masks) if return_masks else pruned


def prune_n_m(w, n: int = 2, m: int = 4, *,
              return_mask: bool = False) -> Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]:
    """N:M structured pruning: in every group of ``m`` consecutive entries along the LAST axis (the input
    dimension of a (out, in) weight), keep the ``n`` largest ``|w|`` (ties: the smaller index is kept).

    The last axis must be a multiple of ``m``; ``0 <= n <= m``.
    """
    fn = "prune_n_m"
    for name, v in (("n", n), ("m", m)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{fn}: {name} must be an int, got {type(v).__name__}")
    n, m = int(n), int(m)
    if m < 1 or not 0 <= n <= m:
        raise ValueError(f"{fn}: need m >= 1 and 0 <= n <= m, got n={n}, m={m}")
    a = _weights(w, "w", fn)
    if a.ndim < 1 or a.shape[-1] % m:
        raise ValueError(f"{fn}: the last axis of w (shape {a.shape}) must be a multiple of m={m}")
    groups = np.abs(a.astype(np.float64, copy=False)).reshape(-1, m)
    mask = np.zeros(groups.shape, dtype=bool)
    if n:
        order = np.argsort(-groups, axis=1, kind="stable")[:, :n]
        np.put_along_axis(mask, order, True, axis=1)
    mask = mask.reshape(a.shape)
    pruned = np.where(mask, a, np.zeros((), dtype=a.dtype)).astype(a.dtype, copy=False)
    return (pruned, mask) if return_mask else pruned
