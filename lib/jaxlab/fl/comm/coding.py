"""Linear codes over GF(p) for FedCod: RLNC (download), systematic Cauchy MDS (upload).

Everything is exact (see :mod:`field`): decoding returns the quantised source symbols bit for bit,
and coding is linear over the field, so the sum of encodings equals the encoding of the sum
("coded aggregation": a relay adds the same-index blocks of many clients without decoding).

Shapes: a payload of ``n`` int32 symbols is split into ``k`` source blocks ``[k, L]`` with
``L = ceil(n / k)`` (zero padded); a coded block is ``(coef [k] int64, data [L] int32)``.

Download (RLNC, as in the official code's ``NetworkCoding``): the server sends random
combinations; a relay client *recodes* (random combination of the blocks it holds, without
decoding); a receiver keeps a block only if it raises the rank (:class:`Decoder`), and decodes
once it holds ``k`` independent blocks.

Upload (systematic MDS, replacing the official real-valued Cauchy RS whose 9x9 parity submatrix
has condition number ~5e11): generator ``G = [I_k ; C]`` with ``C[i, j] = 1 / (x_i - y_j)`` over
GF(p), ``y_j = j``, ``x_i = k + i``. Every square submatrix of a Cauchy matrix is nonsingular, so
any ``k`` rows of ``G`` are invertible: the server decodes from any ``k`` distinct block indices.
"""

from __future__ import annotations

import numpy as np

from jaxlab.fl.comm import field
from jaxlab.fl.comm.field import P, HALF

__all__ = ["split", "join", "encode", "recode", "Decoder", "RankTracker", "cauchy_rows",
           "mds_encode", "mds_decode", "block_len"]


def block_len(n: int, k: int) -> int:
    if k < 1 or n < 1:
        raise ValueError(f"block_len: need n >= 1 symbols and k >= 1 blocks, got n={n}, k={k}")
    return -(-n // k)


def split(symbols: np.ndarray, k: int) -> np.ndarray:
    """``[n]`` int32 -> ``[k, L]`` int32 source blocks (zero padded at the end)."""
    symbols = np.asarray(symbols)
    if symbols.ndim != 1 or symbols.dtype != np.int32:
        raise TypeError(f"split: need a 1-D int32 symbol vector, got {symbols.dtype}{symbols.shape}")
    L = block_len(symbols.size, k)
    out = np.zeros(k * L, dtype=np.int32)
    out[: symbols.size] = symbols
    return out.reshape(k, L)


def join(blocks: np.ndarray, n: int) -> np.ndarray:
    """``[k, L]`` -> the first ``n`` symbols."""
    return np.asarray(blocks).reshape(-1)[:n]


def encode(coef: np.ndarray, source: np.ndarray) -> np.ndarray:
    """``[m, k] @ [k, L] -> [m, L]`` coded blocks (exact, mod p)."""
    return field.matmul_mod(coef, source)


def recode(rng: np.random.Generator, coefs: np.ndarray, data: np.ndarray, m: int = 1):
    """Random combinations of held coded blocks, without decoding.

    Args:
      coefs: ``[h, k]`` coefficient vectors of the held blocks; data: ``[h, L]`` their payloads.
    Returns:
      ``(new_coefs [m, k] int64 balanced, new_data [m, L] int32)``.
    """
    coefs = np.asarray(coefs)
    h = coefs.shape[0]
    if h == 0:
        raise ValueError("recode: no blocks held yet; receive at least one block before recoding")
    beta = field.random_elements(rng, (m, h))
    new_coef = field.canonical(field.matmul_mod(beta, field.canonical(coefs))).astype(np.int64)
    return new_coef, field.matmul_mod(beta, data)


class RankTracker:
    """Incremental Gaussian elimination on coefficient vectors (length ``k``) over GF(p).

    ``add(coef)`` returns True iff the vector is independent of those added before; cost O(k^2)
    per call, independent of the block length.
    """

    def __init__(self, k: int):
        self.k = int(k)
        self._rows: dict[int, np.ndarray] = {}  # pivot column -> row normalised to 1 at pivot

    @property
    def rank(self) -> int:
        return len(self._rows)

    @property
    def full(self) -> bool:
        return self.rank == self.k

    def reduce(self, coef) -> np.ndarray:
        v = np.mod(np.asarray(coef, dtype=np.int64), P)
        if v.shape != (self.k,):
            raise ValueError(f"RankTracker: coefficient vector has shape {v.shape}, expected ({self.k},)")
        for c, row in self._rows.items():
            if v[c]:
                v = (v - (int(v[c]) * row) % P) % P
        return v

    def add(self, coef) -> bool:
        v = self.reduce(coef)
        nz = np.nonzero(v)[0]
        if nz.size == 0:
            return False
        c = int(nz[0])
        v = (v * field.inv_mod_scalar(v[c])) % P
        for c2, row in list(self._rows.items()):
            if row[c]:
                self._rows[c2] = (row - (int(row[c]) * v) % P) % P
        self._rows[c] = v
        return True


class Decoder:
    """Collects coded blocks of one payload and decodes it from any ``k`` independent ones."""

    def __init__(self, k: int, L: int):
        self.k, self.L = int(k), int(L)
        self.tracker = RankTracker(k)
        self.coefs = np.zeros((k, k), dtype=np.int64)
        self.data = np.zeros((k, L), dtype=np.int32)

    @property
    def rank(self) -> int:
        return self.tracker.rank

    @property
    def full(self) -> bool:
        return self.tracker.full

    def add(self, coef, data) -> bool:
        """Keeps the block iff it is innovative (raises the rank); returns that decision."""
        data = np.asarray(data)
        if data.shape != (self.L,) or data.dtype != np.int32:
            raise ValueError(f"Decoder.add: payload {data.dtype}{data.shape}, expected int32({self.L},)")
        if self.full or not self.tracker.add(coef):
            return False
        r = self.tracker.rank - 1
        self.coefs[r] = field.canonical(np.asarray(coef, dtype=np.int64))
        self.data[r] = data
        return True

    def held(self) -> tuple[np.ndarray, np.ndarray]:
        r = self.rank
        return self.coefs[:r], self.data[:r]

    def decode(self) -> np.ndarray:
        """``[k, L]`` int32 source blocks; ValueError if fewer than ``k`` independent blocks."""
        if not self.full:
            raise ValueError(f"Decoder.decode: rank {self.rank} < k={self.k}; wait for more blocks")
        return field.matmul_mod(field.inv_mod_matrix(self.coefs), self.data)


def cauchy_rows(indices, k: int) -> np.ndarray:
    """Rows of the systematic generator ``G = [I_k ; C]`` for block ``indices`` -> ``[m, k]`` int64."""
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= P - k):
        raise ValueError(f"cauchy_rows: block indices must lie in [0, {P - k}), got {idx.min()}..{idx.max()}")
    out = np.zeros((idx.size, k), dtype=np.int64)
    y = np.arange(k, dtype=np.int64)
    for r, i in enumerate(idx):
        if i < k:
            out[r, i] = 1
        else:
            # x_i = i for parity index i >= k never collides with y_j = j < k
            out[r] = [field.inv_mod_scalar(int(i) - int(j)) for j in y]
    return out


def mds_encode(source: np.ndarray, indices) -> np.ndarray:
    """Systematic blocks ``G[indices] @ source`` -> ``[m, L]`` int32 (rows ``i < k`` are copies)."""
    k = source.shape[0]
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    out = np.empty((idx.size, source.shape[1]), dtype=np.int32)
    sys_rows = idx < k
    if sys_rows.any():
        out[sys_rows] = source[idx[sys_rows]]
    if (~sys_rows).any():
        out[~sys_rows] = field.matmul_mod(cauchy_rows(idx[~sys_rows], k), source)
    return out


def mds_decode(indices, blocks: np.ndarray, k: int) -> np.ndarray:
    """Source ``[k, L]`` from any ``k`` distinct block indices and their ``[k, L]`` blocks."""
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size != k or len(set(idx.tolist())) != k:
        raise ValueError(f"mds_decode: need exactly k={k} distinct block indices, got {idx.tolist()}")
    if np.all(idx == np.arange(k)):
        return np.asarray(blocks, dtype=np.int32).copy()
    return field.matmul_mod(field.inv_mod_matrix(cauchy_rows(idx, k)), np.asarray(blocks, dtype=np.int32))
