"""Byzantine-robust aggregation rules as pure functions on a stacked update matrix.

Conventions (one set, used by every rule, attack and experiment in :mod:`jaxlab.fl.robust`):

* **Sign.** A client update is the pseudo-gradient ``g_i = w_t - w_i^local`` and the server steps
  ``w_{t+1} = w_t - eta_g * AGR(G)`` (SkyMask ``main.py``'s convention). ``updates`` is ``[n, d]``
  float32, one flattened update per row (see :mod:`jaxlab.fl.robust.flat`).
* **Attacker count.** ``f`` is the number of Byzantine clients *the defense assumes*. Attackers
  *replace* f of the n rows (they never add rows: SkyMask's repo prepends f rows, which makes the
  real fraction f/(n+f); we do not reproduce that). A rule refuses an ``f`` beyond its breakdown
  point with a ``ValueError`` (e.g. median needs ``2f < n``); experiments with more attackers than
  that run the rule at its largest admissible ``f`` and say so.
* **Krum neighbours.** ``s_i`` sums the squared distances to the ``n - f - 2`` nearest *other*
  updates (Blanchard et al. 2017; the zero self-distance is not counted). Krum and Multi-Krum need
  ``n > 2f + 2``; Bulyan needs ``n >= 4f + 3``.
* **Weights.** ``weights [n]`` (e.g. train-set sizes) enter FedAvg's mean, the geometric median's
  alphas and the final means of the selection rules only where stated; the other rules follow their
  papers and ignore them.
* **Pairwise distances** come from one Gram matrix ``|g_i|^2 + |g_j|^2 - 2 g_i.g_j``.
* **Non-finite rows.** Called eagerly on concrete arrays, every rule raises ``ValueError`` naming
  the rows with NaN/inf. Inside ``jit`` (the FL loop) it cannot raise, so [our choice] such a row
  is replaced by zeros (a "no change" vote), its weight set to 0, and the client is reported as
  *flagged* in ``AggOut.benign``; a NaN never reaches the aggregate.

Every rule returns ``AggOut(update [d], benign [n] bool)``: ``benign`` marks the clients whose
updates the rule kept (Krum's pick, Multi-Krum's/Bulyan's/DnC's/FLAME's selection, FLTrust's and
FoolsGold's non-zero weights). Rules that do not select clients (mean, median, trimmed mean,
geometric median, centered clipping) report all True and have ``Aggregator.selects = False``;
detection FPR/FNR is then "n/a".

The uniform record :class:`Aggregator` (``init``, ``apply``) wraps every rule with its state and
context so that the FL wrapper treats all of them alike; see :func:`make_aggregator`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["AggOut", "Aggregator", "DEFENSES", "REFERENCES", "make_aggregator", "oracle_mean", "max_admissible_f",
           "coordinate_window", "coordinate_kept_share",
           "check_updates", "reduce_rows",
           "pairwise_sq_dists", "gram", "add_rows_and_gram", "row_sq_norms_and_dots", "krum_scores", "sort_rows", "fedavg_mean", "krum", "multi_krum", "bulyan", "coordinate_median",
           "trimmed_mean", "geometric_median", "centered_clipping", "fltrust", "flame", "foolsgold", "dnc",
           "sample_without_replacement"]


class AggOut(NamedTuple):
    update: jax.Array  # [d] the aggregate pseudo-gradient
    benign: jax.Array  # [n] bool, clients kept by the rule


# ----------------------------------------------------------------------------------------------
# input checks
# ----------------------------------------------------------------------------------------------

def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_updates(updates, weights=None, name: str = "aggregate"):
    """Validates ``updates [n, d]`` and ``weights [n]``; returns ``(updates, weights, finite [n])``.

    Raises ``TypeError``/``ValueError`` for a wrong rank, mismatched shapes, or (eagerly) rows that
    hold NaN/inf. Under ``jit`` non-finite rows are zeroed and returned as ``finite=False``.
    """
    updates, weights = _validate_shapes(updates, weights, name)
    n = updates.shape[0]
    if _is_concrete(updates):
        bad = ~np.isfinite(np.asarray(updates)).all(axis=1)
        if bad.any():
            rows = np.flatnonzero(bad).tolist()
            raise ValueError(f"{name}: update rows {rows[:20]} contain NaN or inf; drop those clients before "
                             "aggregating (inside jit they are zeroed and reported as flagged)")
        return jnp.asarray(updates), jnp.asarray(weights, jnp.float32), jnp.ones((n,), bool)
    # a NaN/inf anywhere in a row makes the row's sum non-finite; one matrix-vector product is
    # ~10x faster on CPU than an all(isfinite) reduction (a row of finite values whose sum
    # overflows float32 would also be flagged, far beyond any real update)
    finite = jnp.isfinite(updates @ jnp.ones((updates.shape[1],), updates.dtype))
    updates = jnp.where(finite[:, None], updates, 0.0)
    weights = jnp.where(finite, weights, 0.0)
    return updates, weights, finite


def _validate_shapes(updates, weights, name: str):
    """Rank, dtype and shape checks shared by every rule; returns ``(updates, weights [n] float32)``."""
    if not hasattr(updates, "shape"):
        updates = jnp.asarray(updates)
    if updates.ndim != 2:
        raise ValueError(f"{name}: updates must be a stacked matrix [n_clients, n_params], got shape {updates.shape}; "
                         "flatten each update with jaxlab.fl.robust.flat.flattener and stack them")
    if not jnp.issubdtype(updates.dtype, jnp.floating):
        raise TypeError(f"{name}: updates must be floating point, got {updates.dtype}")
    n = updates.shape[0]
    if n < 1:
        raise ValueError(f"{name}: got 0 client updates")
    if weights is None:
        weights = jnp.full((n,), 1.0 / n, jnp.float32)
    if not hasattr(weights, "shape"):
        weights = jnp.asarray(weights, jnp.float32)
    if weights.shape != (n,):
        raise ValueError(f"{name}: weights has shape {weights.shape} but updates has {n} rows; pass one weight per client")
    return updates, weights


def _guarded(name: str, updates, weights, impl: Callable):
    """Runs ``impl(g, w, finite)`` with the non-finite-row contract of :func:`check_updates`, without
    its cost on the common path.

    Eagerly (concrete arrays) rows with NaN/inf raise ``ValueError`` as in :func:`check_updates`.
    Under ``jit`` the rows are probed once (``finite [n]`` from one matrix-vector product ``g @ 1``,
    a single pass over the matrix) and ``lax.cond`` runs ``impl`` on the untouched
    matrix when every row is finite; only when some row is not does it pay for a zeroed copy of the
    matrix (``where`` over ``[n, d]`` materialises 4 bytes x n x d, ~10x the rule's own cost for
    FedAvg or FLTrust at d = 1e6). Both branches give the same result on finite input.
    """
    if _is_concrete(updates) and (weights is None or _is_concrete(weights)):
        g, w, finite = check_updates(updates, weights, name)
        return impl(g, w, finite)
    g, w = _validate_shapes(updates, weights, name)
    n = g.shape[0]
    finite = jnp.isfinite(g @ jnp.ones((g.shape[1],), g.dtype))

    def clean():
        return impl(g, w, jnp.ones((n,), bool))

    def dirty():
        return impl(jnp.where(finite[:, None], g, 0.0), jnp.where(finite, w, 0.0), finite)

    return lax.cond(jnp.all(finite), clean, dirty)


def _check_f(f, n: int, name: str, need: str):
    if not isinstance(f, (int, np.integer)) or isinstance(f, bool):
        raise TypeError(f"{name}: f (assumed number of attackers) must be an int, got {type(f).__name__}")
    if f < 0:
        raise ValueError(f"{name}: f={f} must be >= 0")
    ok = {"2f<n": 2 * f < n, "2f+2<n": 2 * f + 2 < n, "4f+3<=n": 4 * f + 3 <= n, "f<n": f < n}[need]
    if not ok:
        raise ValueError(f"{name}: f={f} attackers among n={n} clients violates {_READABLE[need]}; "
                         f"the rule has no guarantee there. Use f <= {max_admissible_f(name, n)} or more clients")


_READABLE = {"2f<n": "2f < n", "2f+2<n": "2f + 2 < n", "4f+3<=n": "n >= 4f + 3", "f<n": "f < n"}
_NEED = {"krum": "2f+2<n", "multikrum": "2f+2<n", "bulyan": "4f+3<=n", "median": "2f<n", "trimmed_mean": "2f<n",
         "dnc": "f<n", "fang": "f<n"}


def max_admissible_f(rule: str, n: int) -> int:
    """Largest ``f`` a rule accepts for ``n`` clients (rules without an f return n - 1)."""
    need = _NEED.get(rule)
    if need == "2f+2<n":
        return max(0, (n - 3) // 2)
    if need == "4f+3<=n":
        return max(0, (n - 3) // 4)
    if need == "2f<n":
        return max(0, (n - 1) // 2)
    return n - 1


def coordinate_window(rule: str, n: int, f: int | None) -> tuple[int, int] | None:
    """Ranks ``[lo, hi)`` (0 = smallest) that a coordinate-wise rule averages in every coordinate
    of ``n`` updates: the trimmed mean's middle ``n - 2f``, the median's middle one (odd ``n``) or
    two (even ``n``). ``None`` for every other rule (they keep or drop whole updates, or none)."""
    if rule == "median":
        return (n - 1) // 2, n // 2 + 1
    if rule == "trimmed_mean":
        if f is None or not 0 <= 2 * f < n:
            raise ValueError(f"trimmed_mean's window needs 0 <= 2f < n, got f={f!r}, n={n}")
        return f, n - f
    return None


def coordinate_kept_share(updates, lo: int, hi: int) -> jax.Array:
    """``[n]``: the share of each row's coordinates whose rank among the ``n`` rows lies in
    ``[lo, hi)`` (:func:`coordinate_window`), i.e. that a coordinate-wise rule actually uses.

    Coordinate-wise rules flag no client, so FPR/FNR do not describe them; this share is their
    per-coordinate "detection" [our diagnostic]: an update whose values are trimmed away in most
    coordinates has been filtered out coordinate by coordinate. Ties are ranked by row index (the
    stable order), so every coordinate contributes exactly ``hi - lo`` kept entries and the shares
    sum to ``hi - lo``. Jittable; two stable argsorts over ``[n, d]`` (measured 0.17 s at n=10, d=1.2e5 and
    23 s at n=100, d=1e6 on 2 CPU cores, so the FL wrapper computes it only on request)."""
    g = jnp.asarray(updates)
    if g.ndim != 2:
        raise ValueError(f"updates must be [n, d], got shape {g.shape}")
    n = g.shape[0]
    if not 0 <= lo < hi <= n:
        raise ValueError(f"rank window [{lo}, {hi}) must satisfy 0 <= lo < hi <= n = {n}")
    ranks = jnp.argsort(jnp.argsort(g, axis=0, stable=True), axis=0, stable=True)
    return jnp.mean(((ranks >= lo) & (ranks < hi)).astype(jnp.float32), axis=1)


# ----------------------------------------------------------------------------------------------
# shared pieces
# ----------------------------------------------------------------------------------------------

_GRAM_CHUNK = 10_000


def gram(x):
    """``x @ x.T`` for ``x [n, d]``, accumulated over column chunks of ``_GRAM_CHUNK``.

    For d >> n the single dot streams the whole matrix through XLA:CPU's GEMM with poor cache
    reuse; chunks of [n, 10000] (4 MB at n = 100) stay in cache, which makes the product 1.6-2.5x
    faster on CPU at n = 100, d = 1e6 (on par with OpenBLAS's syrk that NumPy calls for
    ``a @ a.T``). The result is the same sum in a different order (float32 rounding differs)."""
    n, d = x.shape

    def step(acc, start, size):
        blk = _cols(x, start, size)
        return acc + blk @ blk.T
    return _over_chunks(d, step, jnp.zeros((n, n), x.dtype))


def _cols(x, start, size):
    """Columns ``[start, start + size)`` of ``x [n, d]`` (or entries of ``x [d]``); ``start`` may be traced."""
    return lax.dynamic_slice(x, (0,) * (x.ndim - 1) + (start,), x.shape[:-1] + (size,))


def _over_chunks(d: int, step, init):
    """``carry = step(carry, start, size)`` over the column chunks ``[start, start + size)`` of a
    ``d``-wide matrix: ``d // _GRAM_CHUNK`` full chunks in a ``fori_loop``, then the remainder; one
    step over all ``d`` columns when there are fewer than two full chunks. The loop of :func:`gram`,
    :func:`add_rows_and_gram` and :func:`row_sq_norms_and_dots`."""
    c = _GRAM_CHUNK
    nb = d // c
    if nb < 2:
        return step(init, 0, d)
    carry = lax.fori_loop(0, nb, lambda i, a: step(a, i * c, c), init)
    if nb * c < d:
        carry = step(carry, nb * c, d - nb * c)
    return carry


def add_rows_and_gram(state, g, ids=None, keep=None):
    """``(state', gram(state'[ids]))`` with ``state' = state.at[ids].add(g)`` (``state + g`` when
    ``ids`` is None), in ONE pass over the same column chunks as :func:`gram`. ``keep [n]`` (bool):
    rows of ``g`` where it is False are added as zeros (non-finite client rows, zeroed per chunk).

    FoolsGold's step: the history update and the Gram of the updated rows. Written as two ops
    (update, then :func:`gram` of the gathered rows) XLA:CPU materialises the new history and then
    a gathered copy of its rows before the Gram reads them; chunk by chunk, each updated block is
    written back into the state (in place in the loop carry) and multiplied while it is in cache.
    Measured 2026-12-07 on 2 CPU cores at n = N = 100, d = 1e6 (/work/scratch/s4/fg2.py): 316 vs 375 ms,
    208 ms when the caller donates ``state``. Same values as the two-op form."""
    d = state.shape[1]
    n = g.shape[0]

    def step(carry, start, size):
        st, acc = carry
        gb = _cols(g, start, size)
        if keep is not None:
            gb = jnp.where(keep[:, None], gb, 0.0)
        blk = _cols(st, start, size)
        new = blk + gb if ids is None else blk.at[ids].add(gb)
        h = new if ids is None else new[ids]
        return lax.dynamic_update_slice(st, new, (0, start)), acc + h @ h.T
    return _over_chunks(d, step, (state, jnp.zeros((n, n), g.dtype)))


def row_sq_norms_and_dots(x, v):
    """``(|x_i|^2, x_i . v)`` for ``x [n, d]``, ``v [d]``, in one pass over the same column chunks as
    :func:`gram`: per chunk a row reduction and a matrix-vector product, accumulated into ``[n, 2]``.

    As two sibling row reductions over the whole matrix XLA:CPU took 31-34 ms at n = 100, d = 1e6 on
    2 cores; chunked 20 ms (measured 2026-12-07, /work/scratch/s4/flt2.py; chunks of 2000 / 5000 took
    38 / 30 ms, 25000 the same as 10000). FLTrust as a whole: 32 vs 42-47 ms in a loop of its own
    calls; right after a NumPy call (as ``benchmarks.aggregators`` interleaves them) 42-57 vs 47-49 ms,
    i.e. no clear gain there. A NaN/inf in a row makes both of its entries non-finite."""
    n, d = x.shape

    def step(acc, start, size):
        b = _cols(x, start, size)
        return acc + jnp.stack([jnp.sum(b * b, axis=1), b @ _cols(v, start, size)], axis=1)
    out = _over_chunks(d, step, jnp.zeros((n, 2), x.dtype))
    return out[:, 0], out[:, 1]


def pairwise_sq_dists(updates):
    """``[n, n]`` squared Euclidean distances from one Gram matrix (diagonal exactly 0)."""
    g = updates.astype(jnp.float32)
    gm = gram(g)
    sq = jnp.diagonal(gm)
    d = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * gm, 0.0)
    return d * (1.0 - jnp.eye(d.shape[0], dtype=d.dtype))


def krum_scores(dists, k, valid=None):
    """``s_i`` = sum of the ``k`` smallest distances from row i to the *other* valid rows.

    ``dists [n, n]``; ``k`` may be traced; ``valid [n]`` bool excludes rows from both sides
    (invalid rows score +inf)."""
    n = dists.shape[0]
    valid = jnp.ones((n,), bool) if valid is None else valid
    other = valid[None, :] & ~jnp.eye(n, dtype=bool)
    srt = jnp.sort(jnp.where(other, dists, jnp.inf), axis=1)
    csum = jnp.cumsum(jnp.where(jnp.isfinite(srt), srt, 0.0), axis=1)
    k = jnp.clip(jnp.asarray(k, jnp.int32), 1, n - 1)
    s = jnp.take(csum, k - 1, axis=1)
    return jnp.where(valid, s, jnp.inf)


_NETWORK_MAX_ROWS = 256


def _sorted_row_list(x, groups=None) -> list:
    """The rows of ``x [n, d]`` sorted per coordinate, as a Python list of ``n`` arrays ``[d]``.

    Batcher's odd-even merge sort unrolled at trace time (~18% fewer compare-exchanges than a
    bitonic network; 2.3-2.8x faster than NumPy's vectorised ``np.sort(axis=0)`` at n = 100 on
    our 2-core CPU): ``n`` rows padded with +inf to a power of two, compare-exchanges with a padding
    row resolved statically (no op). Consumers combine the rows elementwise (e.g.
    :func:`_tree_sum`) so that XLA fuses the whole network and its consumer into one loop over
    coordinates with no intermediate written to memory; stacking the rows first (``jnp.stack``)
    breaks that fusion and costs 10-100x."""
    return _sort_network([x[i] for i in range(x.shape[0])], groups)


def _network_steps(n: int) -> list:
    """The static schedule of :func:`_sort_network` for ``n`` rows: ``('cx', lo, hi)``
    compare-exchanges and ``('mv', lo, hi)`` moves (a +inf padding row met a real row at ``hi``:
    the real row moves to ``lo``, no op), in order."""
    size = 1 << max(n - 1, 0).bit_length()
    pad = [i >= n for i in range(size)]
    steps = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            j = k % p
            while j + k < size:
                for i in range(min(k, size - j - k)):
                    lo_i, hi_i = i + j, i + j + k
                    if lo_i // (2 * p) != hi_i // (2 * p):
                        continue
                    if pad[lo_i]:                   # min(inf, b) = b, max(inf, b) = inf
                        if not pad[hi_i]:
                            steps.append(("mv", lo_i, hi_i))
                            pad[lo_i], pad[hi_i] = False, True
                    elif not pad[hi_i]:
                        steps.append(("cx", lo_i, hi_i))
                j += 2 * k
            k //= 2
        p *= 2
    return steps


def _prune_within_groups(steps: list, n: int, groups) -> list:
    """Drops the compare-exchanges whose two outputs go, with no later op, to output ranks of the
    same group: swapping two values inside a group changes no consumer that treats the group as a
    multiset (a sum). Walks the schedule backwards, so a dropped op can make an earlier one
    droppable too."""
    unknown = object()
    size = 1 << max(n - 1, 0).bit_length()
    dest = [groups[i] if i < n else unknown for i in range(size)]
    keep = [True] * len(steps)
    for s in range(len(steps) - 1, -1, -1):
        op, lo, hi = steps[s]
        if op == "mv":
            dest[hi], dest[lo] = dest[lo], unknown
        elif dest[lo] is not unknown and dest[lo] == dest[hi]:
            keep[s] = False
        else:
            dest[lo] = dest[hi] = unknown
    return [st for st, k in zip(steps, keep) if k]


def _sort_network(rows: list, groups=None) -> list:
    """:func:`_sorted_row_list` on a list of ``[d]`` arrays.

    ``groups`` (optional, one hashable label per output rank): a *partition* network instead of a
    sort, for consumers that only use the multiset of values in each group (e.g. the trimmed
    mean's middle ``n - 2f`` ranks, summed). The order of values within a group is then arbitrary;
    which group each value lands in is exact. At ``n = 100``, ``f = 20`` (the trimmed mean's
    bottom / middle / top) this drops 12% of the min/max ops that XLA keeps after dead-code
    elimination (2060 -> 1822 per coordinate, counted from the schedule)."""
    n = len(rows)
    steps = _network_steps(n)
    if groups is not None:
        if len(groups) != n:
            raise ValueError(f"_sort_network: {len(groups)} group labels for {n} rows")
        steps = _prune_within_groups(steps, n, list(groups))
    size = 1 << max(n - 1, 0).bit_length()
    rows = list(rows) + [None] * (size - n)   # None = +inf padding
    for op, lo, hi in steps:
        a, b = rows[lo], rows[hi]
        if op == "mv":
            rows[lo], rows[hi] = b, None
        else:
            rows[lo], rows[hi] = jnp.minimum(a, b), jnp.maximum(a, b)
    return rows[:n]


def _tree_sum(rows: list):
    """Elementwise sum of a list of equal-shape arrays as a balanced tree (a linear chain of adds
    is one long dependency chain that XLA:CPU splits into many passes over memory)."""
    return _tree_reduce(rows, jnp.add)


def _tree_reduce(rows: list, op):
    rows = list(rows)
    while len(rows) > 1:
        rows = [op(a, b) for a, b in zip(rows[0::2], rows[1::2])] + ([rows[-1]] if len(rows) % 2 else [])
    return rows[0]


def reduce_rows(x, op=jnp.add):
    """``op``-reduction of ``x [n, ...]`` over its leading (client) axis as a balanced tree of its
    ``n`` rows, each a contiguous array, so that XLA fuses the tree into one vectorised elementwise
    loop. XLA:CPU (jax 0.10) lowers ``jnp.sum/max/min(x, axis=0)`` to a loop whose inner step
    strides over the rows: measured on our 2-core CPU, the sum over ``[100, 1e6]`` took 540 ms
    against 43 ms as this tree (13 ms as ``ones @ x``, the better form for a plain sum), the max
    306 ms against 20 ms; and the forward+backward of SkyMask's mask mixing over ``[21, 119440]``
    30.7 ms against 8.2 ms. ``op``: a binary elementwise function (``jnp.add``, ``jnp.maximum``,
    ``jnp.minimum``)."""
    n = x.shape[0]
    if n == 0:
        raise ValueError("reduce_rows: empty leading axis")
    return _tree_reduce(jnp.unstack(x) if n > 1 else [x[0]], op)


def sort_rows(x):
    """Sorts ``x [n, d]`` along the client axis (ascending) for every coordinate.

    For ``n <= 256`` the sorting network of :func:`_sorted_row_list`, stacked; on CPU this is
    30-60x faster than ``jnp.sort`` along a short axis (XLA's comparison sort). Larger ``n``
    falls back to ``jnp.sort``. The rules below use the row list directly (see there)."""
    n = x.shape[0]
    if n > _NETWORK_MAX_ROWS or n < 2:
        return jnp.sort(x, axis=0)
    return jnp.stack(_sorted_row_list(x))


def _median_sorted(srt):
    n = srt.shape[0]
    return (srt[(n - 1) // 2] + srt[n // 2]) / 2


def _coordinate_median(x):
    """Per-coordinate median of ``x [n, d]`` (even n: mean of the two middle values)."""
    n = x.shape[0]
    if n > _NETWORK_MAX_ROWS or n < 2:
        return _median_sorted(jnp.sort(x, axis=0))
    rows = _sorted_row_list(x)
    return (rows[(n - 1) // 2] + rows[n // 2]) / 2


def _mean_of(updates, keep, weights=None):
    w = keep.astype(jnp.float32) if weights is None else keep * weights
    tot = w.sum()
    return jnp.where(tot > 0, (w @ updates) / jnp.maximum(tot, 1e-30), jnp.zeros(updates.shape[1], updates.dtype))


# ----------------------------------------------------------------------------------------------
# the rules
# ----------------------------------------------------------------------------------------------

def fedavg_mean(updates, weights=None, key=None) -> AggOut:
    """``sum_i w_i g_i / sum_i w_i`` (FedAvg; uniform weights when ``weights`` is None)."""
    del key
    if _is_concrete(updates) and (weights is None or _is_concrete(weights)):
        g, w, finite = check_updates(updates, weights, "fedavg")
        return AggOut(_mean_of(g, finite, w), finite)
    g, w = _validate_shapes(updates, weights, "fedavg")
    n = g.shape[0]
    # the weighted sum is its own NaN/inf probe: 0 * NaN and 0 * inf are NaN, so any non-finite
    # entry of the matrix, even in a row of weight 0, makes some coordinate of w @ g non-finite
    # (the dot does not skip zero weights); then the slow branch zeroes and flags the bad rows
    y = w.astype(g.dtype) @ g
    tot = w.sum()

    def clean():
        return AggOut(jnp.where(tot > 0, y / jnp.maximum(tot, 1e-30), 0.0), jnp.ones((n,), bool))

    def dirty():
        gz, wz, finite = check_updates(g, w, "fedavg")
        return AggOut(_mean_of(gz, finite, wz), finite)

    return lax.cond(jnp.all(jnp.isfinite(y)), clean, dirty)


def krum(updates, weights=None, key=None, *, f: int) -> AggOut:
    """Krum (Blanchard et al. 2017): the update with the smallest sum of squared distances to its
    ``n - f - 2`` nearest other updates. Needs ``n > 2f + 2``."""
    del key
    n = _validate_shapes(updates, weights, "krum")[0].shape[0]
    _check_f(f, n, "krum", "2f+2<n")

    def impl(g, w, finite):
        i = jnp.argmin(krum_scores(pairwise_sq_dists(g), n - f - 2, finite))
        return AggOut(g[i], jnp.arange(n) == i)

    return _guarded("krum", updates, weights, impl)


def multi_krum(updates, weights=None, key=None, *, f: int, m: int | None = None) -> AggOut:
    """Multi-Krum: the plain mean of the ``m`` updates with the lowest Krum scores (scores computed
    once, ByzFL's form; default ``m = n - f``). Needs ``n > 2f + 2``."""
    del key
    n = _validate_shapes(updates, weights, "multikrum")[0].shape[0]
    _check_f(f, n, "multikrum", "2f+2<n")
    m = n - f if m is None else int(m)
    if not 1 <= m <= n:
        raise ValueError(f"multikrum: m={m} must be in [1, n={n}]")

    def impl(g, w, finite):
        s = krum_scores(pairwise_sq_dists(g), n - f - 2, finite)
        keep = (jnp.argsort(jnp.argsort(s)) < m) & finite
        return AggOut(_mean_of(g, keep), keep)

    return _guarded("multikrum", updates, weights, impl)


def _iterated_krum(dists, finite, f: int, theta: int):
    """Bulyan's selection: Krum ``theta`` times, each on the rows not yet chosen (``k`` shrinks
    with the remaining set: ``n_rem - f - 2``, at least 1)."""
    n = dists.shape[0]

    def body(_, carry):
        remaining, chosen = carry
        k = jnp.maximum(remaining.sum() - f - 2, 1)
        i = jnp.argmin(krum_scores(dists, k, remaining))
        return remaining.at[i].set(False), chosen.at[i].set(True)

    _, chosen = lax.fori_loop(0, theta, body, (finite, jnp.zeros((n,), bool)))
    return chosen


def bulyan(updates, weights=None, key=None, *, f: int) -> AggOut:
    """Bulyan (El Mhamdi et al. 2018): select ``theta = n - 2f`` updates by iterated Krum, then per
    coordinate average the ``beta = theta - 2f`` selected values closest to their median.
    Needs ``n >= 4f + 3``."""
    del key
    n = _validate_shapes(updates, weights, "bulyan")[0].shape[0]
    _check_f(f, n, "bulyan", "4f+3<=n")
    theta, beta = n - 2 * f, n - 4 * f

    def impl(g, w, finite):
        chosen = _iterated_krum(pairwise_sq_dists(g), finite, f, theta)
        idx = jnp.argsort(~chosen)[:theta]           # indices of the chosen rows (stable)
        sel = [g[idx[i]] for i in range(theta)]      # theta rows [d]
        srt = _sort_network(sel)
        med = lax.optimization_barrier((srt[(theta - 1) // 2] + srt[theta // 2]) / 2)
        # the beta values nearest the median are those with |x - med| below the beta-th smallest
        # deviation r; [our choice] values tied at r share the remaining weight equally
        dev = [jnp.abs(x - med) for x in sel]
        r = lax.optimization_barrier(_sort_network(dev)[beta - 1])
        below = [e < r for e in dev]
        at = [e == r for e in dev]
        cnt_below = _tree_sum([b.astype(g.dtype) for b in below])
        sum_below = _tree_sum([jnp.where(b, x, 0.0) for b, x in zip(below, sel)])
        cnt_at = _tree_sum([a.astype(g.dtype) for a in at])
        sum_at = _tree_sum([jnp.where(a, x, 0.0) for a, x in zip(at, sel)])
        mean_at = sum_at / jnp.maximum(cnt_at, 1.0)
        return AggOut((sum_below + (beta - cnt_below) * mean_at) / beta, chosen)

    return _guarded("bulyan", updates, weights, impl)


def coordinate_median(updates, weights=None, key=None, *, f: int | None = None) -> AggOut:
    """Coordinate-wise median (Yin et al. 2018); even n averages the two middle values. ``f`` is
    only checked (``2f < n``) when given."""
    del key
    n = _validate_shapes(updates, weights, "median")[0].shape[0]
    if f is not None:
        _check_f(f, n, "median", "2f<n")
    return _guarded("median", updates, weights, lambda g, w, finite: AggOut(_coordinate_median(g), jnp.ones(n, bool)))


def trimmed_mean(updates, weights=None, key=None, *, f: int) -> AggOut:
    """Coordinate-wise trimmed mean (Yin et al. 2018): drop the ``f`` largest and ``f`` smallest
    values of every coordinate and average the other ``n - 2f``. Needs ``2f < n``."""
    del key
    n = _validate_shapes(updates, weights, "trimmed_mean")[0].shape[0]
    _check_f(f, n, "trimmed_mean", "2f<n")

    def impl(g, w, finite):
        # plain means as a matrix-vector product (XLA:CPU's leading-axis reduce: see reduce_rows)
        if f == 0:
            return AggOut(jnp.full((n,), 1.0 / n, g.dtype) @ g, jnp.ones(n, bool))
        if n > _NETWORK_MAX_ROWS:
            return AggOut(jnp.full((n - 2 * f,), 1.0 / (n - 2 * f), g.dtype) @ jnp.sort(g, axis=0)[f:n - f],
                          jnp.ones(n, bool))
        # only the middle ranks' sum is used: a partition network (bottom f / middle / top f)
        groups = [0] * f + [1] * (n - 2 * f) + [2] * f
        rows = _sorted_row_list(g, groups)
        return AggOut(_tree_sum(rows[f:n - f]) / (n - 2 * f), jnp.ones(n, bool))

    return _guarded("trimmed_mean", updates, weights, impl)


def geometric_median(updates, weights=None, key=None, *, nu: float = 1e-6, max_iter: int = 100,
                     ftol: float = 1e-10) -> AggOut:
    """RFA (Pillutla et al. 2022): smoothed Weiszfeld ``z <- sum b_i g_i / sum b_i`` with
    ``b_i = alpha_i / max(nu, |z - g_i|)``, ``alpha = weights``, from ``z_0`` = the weighted mean,
    until the relative objective change is below ``ftol`` or ``max_iter`` steps (fedlib defaults)."""
    del key

    def impl(g, w, finite):
        w = w / jnp.maximum(w.sum(), 1e-30)

        def dist(z):
            return jnp.sqrt(jnp.sum((g - z) ** 2, axis=1))

        def cond(c):
            i, _, _, obj_prev, obj = c
            return (i < max_iter) & (jnp.abs(obj_prev - obj) > ftol * obj)

        def body(c):
            # two passes over the matrix per step: the distances of the current point (reused for
            # its objective, computed in the previous step) and the weighted sum of the next
            i, z, dz, _, obj = c
            b = w / jnp.maximum(nu, dz)
            z = (b @ g) / b.sum()
            dz_new = dist(z)
            return i + 1, z, dz_new, obj, jnp.sum(w * dz_new)

        z0 = w @ g
        d0 = dist(z0)
        _, z, _, _, _ = lax.while_loop(cond, body, (0, z0, d0, jnp.inf, jnp.sum(w * d0)))
        return AggOut(z, finite)

    return _guarded("geomed", updates, weights, impl)


def centered_clipping(updates, weights=None, key=None, state=None, *, tau: float = 1.0, iters: int = 3):
    """Centered clipping (Karimireddy et al. 2021), stateful: ``v <- v + (1/n) sum clip_tau(g_i - v)``
    for ``iters`` steps from ``v_0`` = the previous aggregate (``state``, zeros at first), with
    ``clip_tau(x) = x min(1, tau/|x|)``. Returns ``(AggOut, new_state)``. [our choice] tau=1, L=3
    (epfml sweeps tau in {0.1..10}, L in {1,3,5}); clients use plain SGD, not momentum."""
    del key

    def impl(g, w, finite):
        v = jnp.zeros(g.shape[1], g.dtype) if state is None else state
        n_ok = jnp.maximum(finite.sum(), 1)

        def body(_, v):
            # sum_i s_i (g_i - v) = s @ g - (sum s) v with s_i = min(1, tau/|g_i - v|): two passes over
            # the matrix per step (the distances, a reduction XLA fuses with g - v, and one
            # matrix-vector product) and no [n, d] temporary
            nrm = jnp.sqrt(jnp.sum((g - v) ** 2, axis=1))
            sc = jnp.minimum(1.0, tau / jnp.maximum(nrm, 1e-30)) * finite
            return v + (sc @ g - sc.sum() * v) / n_ok

        v = lax.fori_loop(0, iters, body, v)
        return AggOut(v, finite), v

    return _guarded("cclip", updates, weights, impl)


def fltrust(updates, weights=None, key=None, *, root_update) -> AggOut:
    """FLTrust (Cao et al. 2021): ``TS_i = ReLU(cos(g_i, g_0))`` with the server's root-set update
    ``g_0``; ``AGR = sum TS_i (|g_0|/|g_i|) g_i / sum TS_i`` (zeros when every TS is 0)."""
    del key
    g, _ = _validate_shapes(updates, weights, "fltrust")
    g0 = jnp.asarray(root_update, g.dtype)
    if g0.shape != (g.shape[1],):
        raise ValueError(f"fltrust: root_update has shape {g0.shape}, expected ({g.shape[1]},) like each update row")
    n = g.shape[0]
    if _is_concrete(updates):
        check_updates(updates, weights, "fltrust")   # raises on NaN/inf rows
    n0 = jnp.sqrt(jnp.sum(g0 * g0))
    # |g_i|^2 and g_i . g_0 in one chunked pass over the matrix, which also serves as the NaN/inf
    # probe (a non-finite row has a non-finite squared norm or dot)
    sq, dots = row_sq_norms_and_dots(g, g0)
    finite = jnp.isfinite(sq) & jnp.isfinite(dots)

    def core(g, sq, dots, finite):
        ni = jnp.sqrt(sq)
        ts = jax.nn.relu(dots / jnp.maximum(ni * n0, 1e-30)) * finite
        coef = ts * n0 / jnp.maximum(ni, 1e-30)
        tot = ts.sum()
        agg = jnp.where(tot > 0, (coef @ g) / jnp.maximum(tot, 1e-30), 0.0)
        return AggOut(agg, ts > 0)

    def dirty():
        return core(jnp.where(finite[:, None], g, 0.0), jnp.where(finite, sq, 0.0), jnp.where(finite, dots, 0.0), finite)

    return lax.cond(jnp.all(finite), lambda: core(g, sq, dots, jnp.ones((n,), bool)), dirty)


def _hdbscan_labels(cos_dist, min_cluster_size: int):
    """Host-side HDBSCAN on a precomputed cosine-distance matrix; returns int32 labels."""
    from sklearn.cluster import HDBSCAN

    d = np.asarray(cos_dist, np.float64)
    d = np.maximum((d + d.T) / 2, 0.0)
    np.fill_diagonal(d, 0.0)
    if d.shape[0] < 2 or min_cluster_size > d.shape[0]:
        return np.zeros(d.shape[0], np.int32)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # tiny problem; BLAS pools oversubscribe a shared CPU
        lab = HDBSCAN(metric="precomputed", min_cluster_size=min_cluster_size, min_samples=1,
                      allow_single_cluster=True, copy=True).fit_predict(d)
    return lab.astype(np.int32)


def flame(updates, weights=None, key=None, *, noise_lambda: float = 0.001) -> AggOut:
    """FLAME (Nguyen et al. 2022).

    1. HDBSCAN (host, sklearn) on pairwise cosine distances, ``min_cluster_size = n//2 + 1``,
       ``min_samples=1``, ``allow_single_cluster=True``; keep the largest cluster
       ([our choice] keep everyone when HDBSCAN labels all points noise);
    2. ``S = median_i |g_i|`` over all clients; clip each kept update to norm S and average;
    3. add ``N(0, (lambda S)^2)`` per coordinate, ``lambda = noise_lambda`` ([unverified] FLAME's
       value for image classification is quoted as 0.001; the noise goes on the update, which is
       the same as on the model up to the server learning rate).
    """
    n = _validate_shapes(updates, weights, "flame")[0].shape[0]

    def impl(g, w, finite):
        gm = gram(g)
        nrm = jnp.sqrt(jnp.maximum(jnp.diagonal(gm), 0.0))
        inv = 1.0 / jnp.maximum(nrm, 1e-30)
        cos_dist = 1.0 - gm * inv[:, None] * inv[None, :]
        labels = jax.pure_callback(functools.partial(_hdbscan_labels, min_cluster_size=n // 2 + 1),
                                   jax.ShapeDtypeStruct((n,), jnp.int32), cos_dist)
        counts = jnp.sum(labels[None, :] == jnp.arange(n)[:, None], axis=1)
        best = jnp.argmax(counts)
        keep = jnp.where(counts[best] > 0, labels == best, True) & finite
        s = _masked_median(nrm, finite)
        scale = jnp.minimum(1.0, s / jnp.maximum(nrm, 1e-30))
        # mean of the clipped kept rows as one matrix-vector product (no clipped [n, d] copy)
        wk = keep * scale
        cnt = keep.sum()
        agg = jnp.where(cnt > 0, (wk @ g) / jnp.maximum(cnt, 1), 0.0)
        if key is not None and noise_lambda > 0:
            agg = agg + noise_lambda * s * jax.random.normal(key, agg.shape, agg.dtype)
        return AggOut(agg, keep)

    return _guarded("flame", updates, weights, impl)


def _masked_median(x, mask):
    """Median of ``x[mask]`` with static shapes (lower/upper middle averaged)."""
    k = mask.sum()
    srt = jnp.sort(jnp.where(mask, x, jnp.inf))
    lo = srt[jnp.maximum((k - 1) // 2, 0)]
    hi = srt[jnp.maximum(k // 2, 0)]
    return (lo + hi) / 2


def foolsgold(updates, weights=None, key=None, state=None, *, ids=None):
    """FoolsGold (Fung et al. 2020), stateful history ``H_i = sum_t g_i^t`` (``state [N_total, d]``,
    rows indexed by ``ids [n]``; default ``ids = arange(n)``, i.e. full participation).

    ``cs = cos(H) - I``; ``v_i = max_j cs_ij``; pardoning ``cs_ij *= v_i / v_j`` where ``v_i < v_j``;
    ``alpha = clip(1 - max_j cs_ij, 0, 1)``, ``alpha /= max alpha``, ``alpha = 1 -> 0.99``,
    ``alpha = clip(ln(alpha / (1 - alpha)) + 0.5, 0, 1)``. Aggregate [our choice, a FedAvg-scale
    step]: ``sum alpha_i g_i / sum alpha_i`` (the original sums, FedSGD style). Returns
    ``(AggOut, new_state)``; ``benign`` = ``alpha > 0``.
    """
    del key
    if _is_concrete(updates) and (weights is None or _is_concrete(weights)):
        g, _, finite = check_updates(updates, weights, "foolsgold")  # eagerly: NaN/inf rows raise
        keep = None
    else:
        # Not _guarded's lax.cond over the whole rule: a cond whose outputs include the [N, d] history
        # copies it out of the branch (measured 2026-12-07 at n = 100, d = 1e6: 420 vs 377 ms). Rows with
        # NaN/inf are zeroed chunk by chunk inside add_rows_and_gram instead, and in the mean below.
        g = _validate_shapes(updates, weights, "foolsgold")[0]
        finite = jnp.isfinite(g @ jnp.ones((g.shape[1],), g.dtype))
        keep = finite
    n, d = g.shape
    hist = jnp.zeros((n, d), g.dtype) if state is None else state
    # the history update and the Gram of the updated rows in one pass (add_rows_and_gram);
    # cosines from that Gram (no normalised [n, d] copy)
    hist, gm = add_rows_and_gram(hist, g, ids, keep=keep)
    inv = 1.0 / jnp.maximum(jnp.sqrt(jnp.maximum(jnp.diagonal(gm), 0.0)), 1e-30)
    cs = gm * inv[:, None] * inv[None, :] - jnp.eye(n, dtype=g.dtype)
    v = jnp.max(cs, axis=1)
    pardon = v[:, None] < v[None, :]
    cs = jnp.where(pardon, cs * v[:, None] / jnp.where(v[None, :] == 0, 1.0, v[None, :]), cs)
    alpha = jnp.clip(1.0 - jnp.max(cs, axis=1), 0.0, 1.0)
    amax = jnp.max(alpha)
    alpha = jnp.where(amax > 0, alpha / jnp.maximum(amax, 1e-30), 0.0)
    alpha = jnp.where(alpha == 1.0, 0.99, alpha)
    logit = jnp.log(jnp.maximum(alpha, 1e-30) / (1.0 - alpha)) + 0.5
    alpha = jnp.where(alpha > 0, jnp.clip(logit, 0.0, 1.0), 0.0) * finite
    if keep is None:
        update = _mean_of(g, alpha > 0, alpha)
    else:  # 0 * NaN is NaN in the product: the zeroed copy only when some row is not finite
        update = lax.cond(jnp.all(finite), lambda: _mean_of(g, alpha > 0, alpha),
                          lambda: _mean_of(jnp.where(finite[:, None], g, 0.0), alpha > 0, alpha))
    return AggOut(update, alpha > 0), hist


def dnc(updates, weights=None, key=None, *, f: int, niters: int = 5, b: int = 10000, c: float = 1.0) -> AggOut:
    """Divide-and-Conquer (Shejwalkar & Houmansadr 2021): ``niters`` times, sample ``b`` coordinates
    (without replacement), centre them, score ``s_i = ((g_i - mu) . v)^2`` with ``v`` the top right
    singular vector (from the eigenvector of the n x n Gram of the centred sample), keep the
    ``n - c f`` lowest; average the intersection of the kept sets (fedlib defaults)."""
    n, d = _validate_shapes(updates, weights, "dnc")[0].shape
    _check_f(f, n, "dnc", "f<n")
    if key is None:
        raise ValueError("dnc: needs a PRNG key to sample coordinates")
    b = min(int(b), d)
    n_keep = max(1, n - int(np.ceil(c * f)))

    def impl(g, w, finite):
        def one(k):
            idx = sample_without_replacement(k, d, b) if b < d else jnp.arange(d)
            x = g[:, idx]
            cnt = jnp.maximum(finite.sum(), 1)
            mu = (finite.astype(x.dtype) @ jnp.where(finite[:, None], x, 0.0)) / cnt
            xc = jnp.where(finite[:, None], x - mu, 0.0)
            evals, evecs = jnp.linalg.eigh(xc @ xc.T)
            s = evals[-1] * evecs[:, -1] ** 2
            s = jnp.where(finite, s, jnp.inf)
            return jnp.argsort(jnp.argsort(s)) < n_keep

        # a Python loop, not vmap: the batched gather and batched sort of the vmapped form cost
        # 3-5x more on CPU than niters separate ones
        keep = finite
        for k in jax.random.split(key, niters):
            keep = keep & one(k)
        return AggOut(_mean_of(g, keep), keep)

    return _guarded("dnc", updates, weights, impl)


def _dup_table_limit(b: int) -> int:
    """Largest ``d`` for which :func:`sample_without_replacement` finds repeats with a ``[d]`` table."""
    return max(1 << 22, 64 * b)


def sample_without_replacement(key, d: int, b: int):
    """``b`` distinct indices drawn uniformly from ``range(d)`` (a uniformly random b-subset, in
    random order), without the O(d log d) permutation of ``jax.random.choice(replace=False)``
    (0.4 s for d = 1e6 on CPU, more than DnC itself).

    Draw ``b`` indices with replacement, then redraw, round after round, every position that
    repeats an earlier one. The procedure treats all ``d`` values alike (it is equivariant under
    any relabelling of ``range(d)``), so the final set is uniform over the b-subsets; for
    ``b << d`` about ``b^2 / 2d`` positions are redrawn, in one or two rounds.

    Repeats are found with a ``[d]`` table of the last position holding each value (a scatter-max),
    which keeps the last occurrence, when the table is small (``d <= max(2^22, 64 b)``: 0.5 vs 3.8 ms
    at d = 1e6, b = 1e4 on this CPU), else by a stable sort of the ``b`` values (keeps the first)."""
    if not 0 < b <= d:
        raise ValueError(f"sample_without_replacement: need 0 < b={b} <= d={d}")
    pos = jnp.arange(b, dtype=jnp.int32)

    def dup_mask(idx):
        if d <= _dup_table_limit(b):
            last = jnp.full((d,), -1, jnp.int32).at[idx].max(pos)
            return last[idx] != pos
        order = jnp.argsort(idx, stable=True)
        srt = idx[order]
        dup_sorted = jnp.concatenate([jnp.zeros((1,), bool), srt[1:] == srt[:-1]])
        return jnp.zeros((b,), bool).at[order].set(dup_sorted)

    def cond(c):
        return jnp.any(c[2])

    def body(c):
        k, idx, dup = c
        k, sub = jax.random.split(k)
        idx = jnp.where(dup, jax.random.randint(sub, (b,), 0, d), idx)
        return k, idx, dup_mask(idx)

    k0, k1 = jax.random.split(key)
    idx = jax.random.randint(k1, (b,), 0, d)
    return lax.while_loop(cond, body, (k0, idx, dup_mask(idx)))[1]


# ----------------------------------------------------------------------------------------------
# the uniform record
# ----------------------------------------------------------------------------------------------

class Aggregator(NamedTuple):
    """``init(num_clients, d) -> state``; ``apply(updates, weights, key, state, ctx) -> (AggOut, state)``.

    ``ctx`` is a dict the FL wrapper fills: ``root_update [d]`` (the server's update on its root
    set), ``ids [n]`` (client ids of the rows), ``global_flat [d]`` (the broadcast model), and
    ``malicious [n]`` (the simulation's ground truth, read only by the reference rule ``oracle``)."""
    name: str
    init: Callable[[int, int], Any]
    apply: Callable
    selects: bool = True      # defines a kept set (detection FPR/FNR are meaningful)
    needs_root: bool = False  # needs ctx['root_update']
    f: int | None = None      # the f it was configured with


def _stateless(fn, **kw):
    def apply(updates, weights, key, state, ctx):
        del ctx
        return fn(updates, weights, key, **kw), state
    return apply


DEFENSES = ("fedavg", "krum", "multikrum", "bulyan", "median", "trimmed_mean", "geomed", "cclip", "fltrust",
            "flame", "foolsgold", "dnc")


REFERENCES = ("oracle",)  # not defenses: they read the simulation's ground truth


def oracle_mean(updates, weights=None, key=None, *, malicious) -> AggOut:
    """FedAvg over the benign rows only (``malicious [n]`` is the ground truth): a perfect detector.

    Not a defense (a server cannot know ``malicious``): the reference that separates what a
    selecting rule loses by its detection errors from what the attackers' absence costs anyway
    (their clients' data never reaches the model, which on a non-IID split shifts the label
    mix) [our addition, not in the papers]."""
    g, w = _validate_shapes(updates, weights, "oracle")
    mal = jnp.asarray(malicious)
    if mal.shape != (g.shape[0],):
        raise ValueError(f"oracle: malicious has shape {mal.shape}, expected ({g.shape[0]},) like the update rows")
    out = fedavg_mean(g, jnp.where(mal, 0.0, w))
    return AggOut(out.update, out.benign & ~mal)


def make_aggregator(name: str, *, f: int = 0, **hparams) -> Aggregator:
    """The :class:`Aggregator` for ``name`` in :data:`DEFENSES` or :data:`REFERENCES` (``'oracle'``, see
    :func:`oracle_mean`); SkyMask: :func:`jaxlab.fl.robust.skymask.skymask_aggregator`."""
    none = lambda n, d: ()  # noqa: E731
    if name == "fedavg":
        return Aggregator(name, none, _stateless(fedavg_mean), selects=False)
    if name == "krum":
        return Aggregator(name, none, _stateless(krum, f=f), f=f)
    if name == "multikrum":
        return Aggregator(name, none, _stateless(multi_krum, f=f, **hparams), f=f)
    if name == "bulyan":
        return Aggregator(name, none, _stateless(bulyan, f=f), f=f)
    if name == "median":
        return Aggregator(name, none, _stateless(coordinate_median, f=f), selects=False, f=f)
    if name == "trimmed_mean":
        return Aggregator(name, none, _stateless(trimmed_mean, f=f), selects=False, f=f)
    if name == "geomed":
        return Aggregator(name, none, _stateless(geometric_median, **hparams), selects=False)
    if name == "dnc":
        return Aggregator(name, none, _stateless(dnc, f=f, **hparams), f=f)
    if name == "flame":
        return Aggregator(name, none, _stateless(flame, **hparams))
    if name == "fltrust":
        def apply(updates, weights, key, state, ctx):
            if "root_update" not in ctx:
                raise ValueError("fltrust: ctx['root_update'] (the server's update on its root set) is missing")
            return fltrust(updates, weights, key, root_update=ctx["root_update"]), state
        return Aggregator(name, none, apply, needs_root=True)
    if name == "cclip":
        def apply(updates, weights, key, state, ctx):
            return centered_clipping(updates, weights, key, state, **hparams)
        return Aggregator(name, lambda n, d: jnp.zeros((d,), jnp.float32), apply, selects=False)
    if name == "foolsgold":
        def apply(updates, weights, key, state, ctx):
            return foolsgold(updates, weights, key, state, ids=ctx.get("ids"))
        return Aggregator(name, lambda n, d: jnp.zeros((n, d), jnp.float32), apply)
    if name == "oracle":
        def apply(updates, weights, key, state, ctx):
            if "malicious" not in ctx:
                raise ValueError("oracle: ctx['malicious'] (which rows are attackers) is missing; the oracle is a "
                                 "reference for simulations (jaxlab.fl.robust.fl.robust_fedavg provides it)")
            return oracle_mean(updates, weights, key, malicious=ctx["malicious"]), state
        return Aggregator(name, none, apply)
    raise ValueError(f"unknown defense {name!r}: choose one of {DEFENSES}, the reference {REFERENCES} "
                     "(or 'skymask' via the FL wrapper)")
