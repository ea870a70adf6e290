"""FedCod's adaptive upload redundancy (the official ``update_upload_r``), in integer arithmetic.

The official code compares round times with ``lambda = 1.2`` in floats and sets
``r = (r + r_thres) / 2``, which turned ``r`` into a float and broke its 3-character header. Here
times are integer milliseconds, ``lambda = lam_num / lam_den`` (12/10) and every comparison is
cross-multiplied, so ``r`` stays an int:

    t < lam * t_last and not flag:  r = max(bottom, r - r_delta); patience += 1
    t > lam * t_last:               r = min(r_thres, (r + r_thres) // 2)
                                    bottom = min(n + bottom, r_thres); flag = True; patience = 0
    t < t_last / lam and flag:      r = min(r_thres, (r + r_thres) // 2)
                                    bottom = min(r_delta + bottom, r_thres); patience = 0
    otherwise:                      flag = False; patience = 0
    patience > 5:                   bottom = max(bottom - r_delta, 0)

``t`` is the round's wall time from the start of distribution to the server's decode (it includes
local training, as in the official code); the new ``r`` goes to clients in the next round header.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["RedundancyState", "init_redundancy", "update_redundancy"]


class RedundancyState(NamedTuple):
    r: int
    bottom: int
    flag: bool
    patience: int
    t_last_ms: int  # -1 before the first round


def init_redundancy(r0: int = 9) -> RedundancyState:
    if int(r0) != r0 or r0 < 0:
        raise ValueError(f"r0={r0!r}: initial redundancy must be an int >= 0")
    return RedundancyState(int(r0), 0, False, 0, -1)


def update_redundancy(s: RedundancyState, t_ms: int, n_clients: int, r_thres: int = 45, r_delta: int = 9,
                      lam_num: int = 12, lam_den: int = 10) -> RedundancyState:
    t_ms = int(t_ms)
    if s.t_last_ms < 0:
        return s._replace(t_last_ms=t_ms)
    r, bottom, flag, p, tl = s.r, s.bottom, s.flag, s.patience, s.t_last_ms
    if lam_den * t_ms < lam_num * tl and not flag:
        r = max(bottom, r - r_delta)
        p += 1
    elif lam_den * t_ms > lam_num * tl:
        r = min(r_thres, (r + r_thres) // 2)
        bottom = min(n_clients + bottom, r_thres)
        flag, p = True, 0
    elif lam_num * t_ms < lam_den * tl and flag:
        r = min(r_thres, (r + r_thres) // 2)
        bottom = min(r_delta + bottom, r_thres)
        p = 0
    else:
        flag, p = False, 0
    if p > 5:
        bottom = max(bottom - r_delta, 0)
    return RedundancyState(int(r), int(bottom), bool(flag), int(p), t_ms)
