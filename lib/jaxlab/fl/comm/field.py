"""Exact arithmetic over the prime field GF(p), p = 33554393 (the largest prime below 2^25).

Why this prime. Symbols are kept as *balanced* representatives in ``[-(p-1)/2, (p-1)/2]`` so that
they fit an ``int32`` on the wire (4 bytes, the size of the float32 they encode) and so that the
heavy work can run as float64 BLAS: a product of two balanced symbols is below 2^48, and a dot
product of up to ``CHUNK = 32`` such products stays below 2^53, where every float64 integer is
exact. Longer accumulations are split into chunks of 32 with a reduction after each chunk.

Reduction is ``y - p * rint(y / p)``: ``y`` and ``p * rint(y/p)`` are exact integers below 2^53,
so the result is exactly congruent to ``y``; rounding of ``y / p`` can only be off at a
half-integer, where either choice lands in ``[-(p+1)/2, (p+1)/2]``. The final canonical form
(:func:`canonical`) clamps that last unit.

Fixed point. An update ``u`` (float32) becomes ``rint(u * scale)`` with ``|u| <= clip``
(:func:`quantize`). :func:`update_scale` picks the largest scale for which the sum of ``n``
clients' pre-weighted quantised updates (weights summing to 1) stays inside the balanced range,
so the decoded sum is the exact integer sum: nothing wraps.
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["P", "HALF", "CHUNK", "reduce_f64", "canonical", "matmul_mod", "inv_mod_scalar",
           "inv_mod_matrix", "rank_mod", "quantize", "update_scale", "random_elements", "TILE", "BACKENDS"]

P = 33554393          # largest prime < 2**25
HALF = (P - 1) // 2   # balanced range is [-HALF, HALF]
CHUNK = 32            # products summed before a reduction: 32 * ((P+1)/2)**2 < 2**53
TILE = 1 << 15        # columns per BLAS tile, so the reduction passes stay in cache [our choice]
_INV_P = 1.0 / P

assert CHUNK * ((P + 1) // 2) ** 2 < 2 ** 53


def reduce_f64(y: np.ndarray, scratch: np.ndarray | None = None) -> np.ndarray:
    """In place: float64 integers ``|y| < 2^53`` -> congruent values in ``[-(P+1)/2, (P+1)/2]``.

    ``scratch``: optional float64 buffer of ``y``'s shape (saves an allocation per call)."""
    q = np.multiply(y, _INV_P, out=scratch)
    np.rint(q, out=q)
    q *= P
    y -= q
    return y


def canonical(x: np.ndarray) -> np.ndarray:
    """Any integer array -> its balanced representative in ``[-HALF, HALF]`` as int32."""
    x = np.asarray(x)
    if x.dtype.kind == "f":
        y = reduce_f64(np.array(x, dtype=np.float64))
        y = y.astype(np.int64)
    else:
        y = np.mod(x.astype(np.int64), P)
    y = np.where(y > HALF, y - P, y)
    y = np.where(y < -HALF, y + P, y)
    return y.astype(np.int32)


def _as_coef(a: np.ndarray) -> np.ndarray:
    return canonical(np.asarray(a, dtype=np.int64)).astype(np.float64)


_BLAS_CONTROLLER = None


def _one_blas_thread():
    """Context that pins BLAS to one thread. [our choice] Our GEMMs are cache-sized tiles with
    ~9 rows: threads buy nothing, and on a shared 2-core host OpenBLAS's per-call thread hand-off
    made ``matmul_mod`` 10x slower (measured: 23 vs 318 MB/s under load)."""
    global _BLAS_CONTROLLER
    try:
        if _BLAS_CONTROLLER is None:
            from threadpoolctl import ThreadpoolController

            _BLAS_CONTROLLER = ThreadpoolController()
        return _BLAS_CONTROLLER.limit(limits=1, user_api="blas")
    except Exception:  # threadpoolctl missing or unusable: run with the default threads
        import contextlib

        return contextlib.nullcontext()


BACKENDS = ("auto", "numba", "blas")


def matmul_mod(a: np.ndarray, x: np.ndarray, out: np.ndarray | None = None,
               backend: str = "auto") -> np.ndarray:
    """``(a @ x) mod P`` exactly.

    Two exact implementations: ``"numba"`` (:mod:`jaxlab.fl.comm.gfp_kernels`, one fused pass over
    memory, ~4x faster; needs ``h <= 32``) and ``"blas"`` (float64 BLAS on cache-sized tiles with
    chunked reductions; any ``h``). ``"auto"`` takes numba when it applies, else BLAS; the
    environment variable ``JAXLAB_GFP_BACKEND=blas`` forces BLAS.

    Args:
      a: ``[m, h]`` integer coefficients (any integers; reduced first).
      x: ``[h, L]`` int32 symbols in the balanced range (as produced by this module).
      out: optional ``[m, L]`` int32 output.
      backend: one of ``BACKENDS``.
    Returns:
      ``[m, L]`` int32 balanced symbols.
    """
    a = np.asarray(a)
    x = np.asarray(x)
    if a.ndim != 2 or x.ndim != 2 or a.shape[1] != x.shape[0]:
        raise ValueError(f"matmul_mod: shapes a{a.shape} @ x{x.shape} do not chain; need [m,h] @ [h,L]")
    if x.dtype != np.int32:
        raise TypeError(f"matmul_mod: x.dtype={x.dtype}; pass int32 balanced symbols (use canonical())")
    if backend not in BACKENDS:
        raise ValueError(f"matmul_mod: backend={backend!r}; choose one of {BACKENDS}")
    if out is not None and (out.shape != (a.shape[0], x.shape[1]) or out.dtype != np.int32):
        raise ValueError(f"matmul_mod: out must be int32 of shape {(a.shape[0], x.shape[1])}, "
                         f"got {out.dtype} {out.shape}")
    if backend == "auto" and os.environ.get("JAXLAB_GFP_BACKEND", "") == "blas":
        backend = "blas"
    if backend != "blas" and a.shape[0] and x.shape[1]:
        from jaxlab.fl.comm import gfp_kernels
        buf = out if out is not None else np.empty((a.shape[0], x.shape[1]), dtype=np.int32)
        if gfp_kernels.matmul_mod(_as_coef(a), x, buf, P, HALF) is not None:
            return buf
        if backend == "numba":
            raise RuntimeError(f"matmul_mod: the numba kernel cannot run here (h={a.shape[1]} > "
                               f"{gfp_kernels.MAX_H} or numba unavailable); use backend='auto' or 'blas'")
    if x.shape[1] <= TILE:
        return _matmul_mod(a, x, out)
    with _one_blas_thread():
        return _matmul_mod(a, x, out)


def _matmul_mod(a: np.ndarray, x: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    m, h = a.shape
    L = x.shape[1]
    if out is None:
        out = np.empty((m, L), dtype=np.int32)
    af = _as_coef(a)
    acc = np.empty((m, min(TILE, max(L, 1))), dtype=np.float64)
    part = np.empty_like(acc)
    scratch = np.empty_like(acc)
    xf = np.empty((min(CHUNK, h), acc.shape[1]), dtype=np.float64)
    for s in range(0, L, TILE):
        e = min(L, s + TILE)
        w = e - s
        acc_t = acc[:, :w]
        sc_t = scratch[:, :w]
        for c0 in range(0, h, CHUNK):
            c1 = min(h, c0 + CHUNK)
            xt = xf[: c1 - c0, :w]
            xt[...] = x[c0:c1, s:e]
            if c0 == 0:
                np.matmul(af[:, c0:c1], xt, out=acc_t)
                reduce_f64(acc_t, sc_t)
            else:
                pt = part[:, :w]
                np.matmul(af[:, c0:c1], xt, out=pt)
                reduce_f64(pt, sc_t)
                acc_t += pt
                reduce_f64(acc_t, sc_t)
        # one unit past HALF is possible after reduce_f64 (rare): fold it back in this tile only
        if acc_t.max() > HALF or acc_t.min() < -HALF:
            acc_t[acc_t > HALF] -= P
            acc_t[acc_t < -HALF] += P
        np.copyto(out[:, s:e], acc_t, casting="unsafe")
    return out


def inv_mod_scalar(a: int) -> int:
    a = int(a) % P
    if a == 0:
        raise ZeroDivisionError("inv_mod_scalar: 0 has no inverse in GF(p)")
    return pow(a, P - 2, P)


def _row_reduce(m: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Gauss-Jordan over GF(P) on an int64 matrix (entries in [0,P)); returns (rref, pivot cols).

    Products of two entries are below 2^50, so int64 never overflows.
    """
    m = np.mod(m.astype(np.int64), P)
    rows, cols = m.shape
    pivots: list[int] = []
    r = 0
    for c in range(cols):
        if r == rows:
            break
        nz = np.nonzero(m[r:, c])[0]
        if nz.size == 0:
            continue
        piv = r + int(nz[0])
        if piv != r:
            m[[r, piv]] = m[[piv, r]]
        m[r] = (m[r] * inv_mod_scalar(m[r, c])) % P
        others = np.nonzero(m[:, c])[0]
        others = others[others != r]
        if others.size:
            m[others] = (m[others] - np.outer(m[others, c], m[r]) % P) % P
        pivots.append(c)
        r += 1
    return m, pivots


def rank_mod(a: np.ndarray) -> int:
    """Rank of an integer matrix over GF(P)."""
    return len(_row_reduce(np.asarray(a))[1])


def inv_mod_matrix(a: np.ndarray) -> np.ndarray:
    """Inverse of a square integer matrix over GF(P) as int64 in [0, P).

    Raises ValueError when ``a`` is singular over GF(P).
    """
    a = np.asarray(a)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"inv_mod_matrix: need a square matrix, got shape {a.shape}")
    n = a.shape[0]
    aug = np.concatenate([np.mod(a.astype(np.int64), P), np.eye(n, dtype=np.int64)], axis=1)
    red, piv = _row_reduce(aug)
    if piv[:n] != list(range(n)):
        raise ValueError("inv_mod_matrix: matrix is singular over GF(p); collect another independent block")
    return red[:, n:]


def random_elements(rng: np.random.Generator, shape) -> np.ndarray:
    """Uniform random field elements (balanced, int64)."""
    return rng.integers(-HALF, HALF + 1, size=shape, dtype=np.int64)


def update_scale(n_clients: int, clip: float) -> float:
    """Fixed-point scale for updates clipped to ``|u| <= clip`` and pre-weighted by ``a_c``.

    Client c sends ``rint(a_c * u_c * scale)`` with ``sum(a_c) = 1``, so the sum over clients is at
    most ``clip * scale + n/2`` in magnitude (each rint adds <= 1/2). We require that to be <= HALF,
    so the decoded balanced symbol *is* the integer sum. With clip = 1 the resolution is ~6e-8.
    """
    if not (isinstance(n_clients, (int, np.integer)) and n_clients >= 1):
        raise ValueError(f"n_clients={n_clients!r}: need an int >= 1")
    if not (clip > 0 and np.isfinite(clip)):
        raise ValueError(f"clip={clip!r}: need a finite positive clipping range for updates")
    return float(np.floor((HALF - n_clients) / float(clip)))


def quantize(u: np.ndarray, scale: float, clip: float, weight: float = 1.0) -> tuple[np.ndarray, int]:
    """``rint(weight * clip(u, -clip, clip) * scale)`` as int32; returns (symbols, n_clipped).

    ``weight * clip * scale`` must be <= HALF (true for weight <= 1 and :func:`update_scale`).
    """
    u = np.asarray(u, dtype=np.float64)
    if not np.all(np.isfinite(u)):
        raise ValueError("quantize: update has NaN/inf entries; fix the local training (lr too large?)")
    if weight * clip * scale > HALF:
        raise ValueError(f"quantize: weight*clip*scale={weight * clip * scale:.4g} exceeds the field range {HALF}")
    n_clipped = int(np.count_nonzero(np.abs(u) > clip))
    q = np.rint(np.clip(u, -clip, clip) * (weight * scale))
    return q.astype(np.int32), n_clipped
