"""Geometry of a strided transposed convolution as stride^2 ordinary convolutions ("sub-pixel phases").

Output row ``y`` of a transposed convolution with stride ``s``, kernel ``k`` and top crop ``pt`` receives
``x[iy] * w[ky]`` for every ``iy * s + ky == y + pt``. Grouping output rows by ``r = (y + pt) mod s`` (the
phase), the kernel rows that reach them are ``ky = r + j * s`` (tap ``j``), and with ``y = q * s + r - pt``
the input row is ``iy = q - j``. So each phase is a small ordinary convolution over the input grid, writing
every ``s``-th output row: every multiply-accumulate is useful (no inserted zeros, no scatter-add).

Both axes factor the same way; a phase is a pair (row phase, column phase). Phases are independent GEMMs
``A_phase (pixels x taps*Cin) @ W_phase (taps*Cin x Cout)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import numpy as np


@dataclass(frozen=True)
class AxisPhase:
    """One phase along one axis: output positions ``q * s + r - pad`` for ``q`` in ``[q0, q0 + count)``, fed by
    kernel taps ``r + j * s`` for ``j`` in ``[0, taps)`` from input positions ``q - j``."""
    r: int
    q0: int
    count: int   # number of output positions of this phase (may be 0)
    taps: int    # kernel taps of this phase (may be 0: the outputs are bias only)
    out0: int    # first output position (q0 * s + r - pad)


def axis_phases(n_in: int, k: int, s: int, pad: int, n_out: int) -> List[AxisPhase]:
    """The s phases of one axis: input length n_in, kernel k, stride s, start crop pad, output length n_out."""
    phases = []
    for r in range(s):
        taps = max(0, -(-(k - r) // s))  # ceil((k - r) / s): ky = r, r + s, ... < k
        q0 = -(-(pad - r) // s)          # ceil((pad - r) / s): the first q with y >= 0
        q1 = (n_out - 1 + pad - r) // s  # the last q with y < n_out
        count = max(0, q1 - q0 + 1)
        phases.append(AxisPhase(r, q0, count, taps, q0 * s + r - pad))
    return phases


@dataclass(frozen=True)
class Phase:
    """One 2-D phase: its row and column AxisPhase and the flat kernel taps (ky, kx) in A's column order."""
    py: AxisPhase
    px: AxisPhase
    taps: Tuple[Tuple[int, int], ...]  # ((ky, kx), ...) in (jy, jx) order


def phases_2d(in_hw: Tuple[int, int], kernel: Tuple[int, int], stride: Tuple[int, int], pad: Tuple[int, int],
              out_hw: Tuple[int, int]) -> List[Phase]:
    """All stride_h * stride_w phases with at least one output position."""
    rows = axis_phases(in_hw[0], kernel[0], stride[0], pad[0], out_hw[0])
    cols = axis_phases(in_hw[1], kernel[1], stride[1], pad[1], out_hw[1])
    out = []
    for py in rows:
        for px in cols:
            if py.count == 0 or px.count == 0:
                continue
            taps = tuple((py.r + jy * stride[0], px.r + jx * stride[1]) for jy in range(py.taps)
                         for jx in range(px.taps))
            out.append(Phase(py, px, taps))
    return out


def im2col(x: np.ndarray, ph: Phase, pad_value) -> np.ndarray:
    """A of one phase from an NHWC batch x: (B * count_y * count_x, taps * C), input positions outside the
    grid read ``pad_value`` (0.0 for float input, the zero point for quantized input)."""
    B, H, W, C = x.shape
    ty, tx = ph.py.taps, ph.px.taps
    qy0, ny, qx0, nx = ph.py.q0, ph.py.count, ph.px.q0, ph.px.count
    # input rows needed: qy - jy for qy in [qy0, qy0 + ny), jy in [0, ty)
    lo_y, hi_y = qy0 - (ty - 1), qy0 + ny - 1
    lo_x, hi_x = qx0 - (tx - 1), qx0 + nx - 1
    top, bottom = max(0, -lo_y), max(0, hi_y - (H - 1))
    left, right = max(0, -lo_x), max(0, hi_x - (W - 1))
    if top or bottom or left or right:
        xp = np.full((B, H + top + bottom, W + left + right, C), pad_value, dtype=x.dtype)
        xp[:, top:top + H, left:left + W] = x
    else:
        xp = x
    a = np.empty((B, ny, nx, ty * tx, C), dtype=x.dtype)
    t = 0
    for jy in range(ty):
        y0 = qy0 - jy + top
        for jx in range(tx):
            x0 = qx0 - jx + left
            a[:, :, :, t, :] = xp[:, y0:y0 + ny, x0:x0 + nx, :]
            t += 1
    return a.reshape(B * ny * nx, ty * tx * C)


def phase_view(y: np.ndarray, ph: Phase, stride: Tuple[int, int]) -> np.ndarray:
    """The strided view of the NHWC output y that phase ``ph`` writes: (B, count_y, count_x, Cout)."""
    sy, sx = stride
    return y[:, ph.py.out0:ph.py.out0 + sy * (ph.py.count - 1) + 1:sy,
             ph.px.out0:ph.px.out0 + sx * (ph.px.count - 1) + 1:sx, :]
