"""Chrion's partitioner: list-scheduling simulator, HEFT + local search, an exact MILP, and the
latency-optimal / memory-optimal plans under an SLO.

Scheduling model (shared by the simulator, HEFT, local search and the MILP): op i on device d
runs for ``cm.op_time[i, d]`` seconds without preemption, one op at a time per device; a value
crossing devices arrives ``alpha + bytes / beta`` after its producer finishes (links are
contention-free, the classic HEFT model); graph inputs start on device 0 (the host CPU).

``list_schedule(pb, placement)`` is the simulator: ops in decreasing upward rank (computed with
the placement's own costs), each inserted into the earliest idle gap of its device that follows
its inputs' arrival (insertion-based). ``segment_schedule`` then turns each device's op order into
the fused segments the executor compiles (a segment ends after an op whose output leaves the
device, and starts at an op that reads from another device) and re-times it with the fused
segment costs: this is the makespan the executor is compared against.
"""

from __future__ import annotations

import bisect
import time
from typing import NamedTuple, Sequence

import numpy as np

from jaxlab.serving.cost import CostModel, edge_cost, segment_time
from jaxlab.serving.graph import Graph, activation_peak_bytes, producers, weight_bytes

__all__ = ["Problem", "Schedule", "Segment", "SegmentSchedule", "Plan", "make_problem", "list_schedule",
           "heft", "local_search", "exact_milp", "make_segments", "segment_schedule", "device_memory",
           "plan_single_device", "plan_latency_optimal", "plan_memory_optimal", "random_problem"]


class Problem(NamedTuple):
    """Static scheduling input. in_values[j]: tuple of (value, producer op or -1 for a graph input,
    bytes); preds/succs: per op, tuple of (other op, bytes over that edge)."""
    n: int
    n_dev: int
    in_values: tuple
    preds: tuple
    succs: tuple
    host_bytes: np.ndarray   # [n] bytes of graph inputs each op reads
    cm: CostModel
    graph: Graph | None
    op_consts: tuple = ()    # per op: constant names it reads
    op_outs: tuple = ()      # per op: ((value, consumer ops, is graph output), ...)


class Schedule(NamedTuple):
    placement: tuple
    start: np.ndarray
    finish: np.ndarray
    orders: tuple          # per device: op indices in start order
    makespan: float
    std: float             # predicted std of the makespan (seconds)


class Segment(NamedTuple):
    device: int
    ops: tuple


class SegmentSchedule(NamedTuple):
    segments: tuple        # Segment records in a global valid order
    start: np.ndarray
    finish: np.ndarray
    makespan: float
    std: float = 0.0       # predicted std of the makespan (seconds)


class Plan(NamedTuple):
    name: str
    placement: tuple
    schedule: Schedule
    segments: SegmentSchedule
    predicted_s: float     # segment-level predicted makespan (seconds)
    predicted_std_s: float
    memory: dict           # {device name: {"weights": B, "activations": B, "total": B}}
    meets_slo: bool | None
    note: str = ""


def make_problem(graph: Graph, cm: CostModel) -> Problem:
    if cm.op_time.shape[0] != len(graph.ops):
        raise ValueError(f"cost model has {cm.op_time.shape[0]} ops but the graph has {len(graph.ops)}: "
                         "profile the same (fused) graph you partition")
    prod = producers(graph)
    in_values, preds, succs = [], [], [[] for _ in graph.ops]
    host = np.zeros(len(graph.ops))
    for j, op in enumerate(graph.ops):
        vals, pb = [], {}
        for v in dict.fromkeys(op.inputs):
            if v in graph.constants:
                continue
            nb = graph.values[v].nbytes
            i = prod.get(v, -1)
            vals.append((v, i, nb))
            if i < 0:
                host[j] += nb
            else:
                pb[i] = pb.get(i, 0) + nb
        in_values.append(tuple(vals))
        preds.append(tuple(sorted(pb.items())))
        for i, nb in pb.items():
            succs[i].append((j, nb))
    cons = {}
    for j, op in enumerate(graph.ops):
        for v in dict.fromkeys(op.inputs):
            cons.setdefault(v, []).append(j)
    outs = set(graph.outputs)
    op_consts = tuple(tuple(v for v in dict.fromkeys(op.inputs) if v in graph.constants) for op in graph.ops)
    op_outs = tuple(tuple((v, tuple(cons.get(v, ())), v in outs) for v in op.outputs) for op in graph.ops)
    return Problem(n=len(graph.ops), n_dev=cm.n_devices, in_values=tuple(in_values), preds=tuple(preds),
                   succs=tuple(tuple(s) for s in succs), host_bytes=host, cm=cm, graph=graph,
                   op_consts=op_consts, op_outs=op_outs)


def segment_args(pb: Problem, ops) -> int | None:
    """Argument + result buffers of one fused segment (None when the problem has no graph)."""
    if not pb.op_outs:
        return None
    members = set(ops)
    ext = {v for i in ops for v, p, _ in pb.in_values[i] if p not in members}
    consts = {c for i in ops for c in pb.op_consts[i]}
    outs = {v for i in ops for v, users, is_out in pb.op_outs[i] if is_out or any(u not in members for u in users)}
    return len(ext) + len(consts) + len(outs)


def random_problem(n: int, n_dev: int = 2, seed: int = 0, edge_p: float = 0.3, comm_scale: float = 0.3) -> Problem:
    """A random DAG problem (no graph) for testing the schedulers: times ~ U(1, 10) ms per device,
    edges i<j with probability edge_p, transfer alpha = comm_scale ms, beta = 1 MB/ms."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(1e-3, 10e-3, (n, n_dev))
    preds = [[] for _ in range(n)]
    succs = [[] for _ in range(n)]
    for j in range(n):
        for i in range(j):
            if rng.random() < edge_p:
                nb = float(rng.integers(1, 4) * 1e6)
                preds[j].append((i, nb)); succs[i].append((j, nb))
    alpha = np.full((n_dev, n_dev), comm_scale * 1e-3); np.fill_diagonal(alpha, 0)
    beta = np.full((n_dev, n_dev), 1e9)
    cm = CostModel(op_time=t, op_compute=t, op_std=np.zeros_like(t), floor=np.zeros_like(t),
                   dispatch_s=np.zeros(n_dev), alpha=alpha, beta=beta,
                   device_names=tuple(f"d{k}" for k in range(n_dev)), emulated=(False,) * n_dev)
    iv = tuple(tuple((f"v{i}_{j}", i, nb) for i, nb in preds[j]) for j in range(n))
    return Problem(n=n, n_dev=n_dev, in_values=iv, preds=tuple(tuple(p) for p in preds),
                   succs=tuple(tuple(s) for s in succs), host_bytes=np.zeros(n), cm=cm, graph=None)


def _comm(cm, nb, a, b):
    return 0.0 if a == b else cm.alpha[a, b] + nb / cm.beta[a, b]


def _upward_rank(pb: Problem, w: np.ndarray, comm) -> np.ndarray:
    rank = np.zeros(pb.n)
    for i in range(pb.n - 1, -1, -1):
        best = 0.0
        for j, nb in pb.succs[i]:
            best = max(best, comm(i, j, nb) + rank[j])
        rank[i] = w[i] + best
    return rank


class _Timeline:
    """Busy intervals of one device, sorted; supports insertion into the earliest fitting gap."""

    def __init__(self):
        self.starts, self.finishes, self.ops = [], [], []

    def slot(self, ready: float, dur: float) -> tuple:
        k = bisect.bisect_right(self.finishes, ready)
        t = ready
        while k < len(self.starts):
            if t + dur <= self.starts[k] + 1e-15:
                break
            t = max(t, self.finishes[k])
            k += 1
        return t, k

    def insert(self, k, s, f, op):
        self.starts.insert(k, s); self.finishes.insert(k, f); self.ops.insert(k, op)

    def prev_op(self, k):
        return self.ops[k - 1] if k > 0 else None


def list_schedule(pb: Problem, placement: Sequence[int], insertion: bool = True) -> Schedule:
    """The simulator: schedules a fixed placement (device per op). Returns a Schedule."""
    cm = pb.cm
    pl = np.asarray(placement, dtype=int)
    if pl.shape != (pb.n,) or pl.min(initial=0) < 0 or pl.max(initial=0) >= pb.n_dev:
        raise ValueError(f"placement must be {pb.n} device indices in [0, {pb.n_dev}), got shape {pl.shape}")
    w = cm.op_time[np.arange(pb.n), pl]
    rank = _upward_rank(pb, w, lambda i, j, nb: _comm(cm, nb, pl[i], pl[j]))
    best = None
    # Two priority rules [our choice]: upward rank under this placement's costs, and under the
    # mean costs HEFT uses; the better schedule is kept (both are valid static orders).
    for r in (rank, _mean_rank(pb)):
        order = sorted(range(pb.n), key=lambda i: (-r[i], i))
        s = _schedule_in_order(pb, pl, order, insertion)
        if best is None or s.makespan < best.makespan - 1e-15:
            best = s
    return best


def _mean_rank(pb: Problem) -> np.ndarray:
    cm = pb.cm
    w = cm.op_time.mean(axis=1)
    nd = pb.n_dev
    pairs = [(a, b) for a in range(nd) for b in range(nd) if a != b]
    mean_alpha = np.mean([cm.alpha[a, b] for a, b in pairs]) if pairs else 0.0
    mean_invb = np.mean([1.0 / cm.beta[a, b] for a, b in pairs]) if pairs else 0.0
    return _upward_rank(pb, w, lambda i, j, nb: (mean_alpha + nb * mean_invb) * (nd - 1) / nd)


def _schedule_in_order(pb, pl, order, insertion=True, choose_device=False):
    cm = pb.cm
    start = np.zeros(pb.n); finish = np.zeros(pb.n); var = np.zeros(pb.n)
    lines = [_Timeline() for _ in range(pb.n_dev)]
    pl = np.array(pl, dtype=int)
    for j in order:
        cands = range(pb.n_dev) if choose_device else (pl[j],)
        best = None
        for d in cands:
            ready, rvar = 0.0, 0.0
            if pb.host_bytes[j] > 0 and d != 0:
                ready = _comm(cm, pb.host_bytes[j], 0, d)
            for i, nb in pb.preds[j]:
                t = finish[i] + _comm(cm, nb, pl[i], d)
                if t > ready:
                    ready, rvar = t, var[i]
            dur = cm.op_time[j, d]
            if insertion:
                s, k = lines[d].slot(ready, dur)
            else:
                k = len(lines[d].starts)
                s = max(ready, lines[d].finishes[-1] if k else 0.0)
            if best is None or s + dur < best[0] + best[1] - 1e-15:
                best = (s, dur, d, k, rvar)
        s, dur, d, k, rvar = best
        pl[j] = d
        prev = lines[d].prev_op(k)
        if prev is not None and finish[prev] >= s - 1e-12:
            rvar = max(rvar, var[prev])
        lines[d].insert(k, s, s + dur, j)
        start[j], finish[j] = s, s + dur
        var[j] = rvar + cm.op_std[j, d] ** 2
    makespan = float(finish.max()) if pb.n else 0.0
    last = int(np.argmax(finish)) if pb.n else 0
    return Schedule(placement=tuple(int(x) for x in pl), start=start, finish=finish,
                    orders=tuple(tuple(l.ops) for l in lines), makespan=makespan,
                    std=float(np.sqrt(var[last])) if pb.n else 0.0)


def heft(pb: Problem) -> Schedule:
    """HEFT (Topcuoglu et al. 2002): upward rank on mean costs, then each op on the device giving
    the earliest finish time with insertion. The returned schedule is the simulator's
    (``list_schedule``) for HEFT's placement, so every plan is scored by the same model."""
    rank = _mean_rank(pb)
    order = sorted(range(pb.n), key=lambda i: (-rank[i], i))
    built = _schedule_in_order(pb, np.zeros(pb.n, int), order, insertion=True, choose_device=True)
    sim = list_schedule(pb, built.placement)
    # HEFT's own schedule is valid too; keep it when it beats the simulator's rank order.
    return sim if sim.makespan <= built.makespan else built


def local_search(pb: Problem, placement: Sequence[int], objective=None, max_evals: int = 4000,
                 time_budget_s: float = 20.0, seed: int = 0, allowed: Sequence[int] | None = None) -> tuple:
    """First-improvement local search over single-op moves (to another device) and swaps (two ops
    on different devices exchange devices, tried between neighbours in the DAG and on random
    pairs). objective(placement) -> seconds (default: list_schedule makespan).
    Returns (best placement tuple, best value, evaluations)."""
    objective = objective or (lambda p: list_schedule(pb, p).makespan)
    t0 = time.perf_counter()
    best, best_v, evals = _descent(pb, placement, objective, max_evals, time_budget_s, seed, allowed)
    # Iterated local search [our choice]: kick a few ops to random devices and descend again while
    # budget remains; keep the best.
    rng = np.random.default_rng(seed + 1)
    devs = list(allowed) if allowed is not None else list(range(pb.n_dev))
    kicks = 0
    while evals < max_evals and time.perf_counter() - t0 < time_budget_s and pb.n > 1:
        trial = list(best)
        for i in rng.choice(pb.n, size=max(1, min(pb.n, int(rng.integers(2, 5)))), replace=False):
            trial[i] = int(rng.choice(devs))
        p2, v2, e2 = _descent(pb, trial, objective, max_evals - evals, time_budget_s - (time.perf_counter() - t0),
                              seed + 2 + kicks, allowed)
        evals += e2
        kicks += 1
        if v2 < best_v - 1e-12:
            best, best_v = list(p2), v2
    return tuple(best), float(best_v), evals


def _descent(pb, placement, objective, max_evals, time_budget_s, seed, allowed):
    rng = np.random.default_rng(seed)
    devs = list(allowed) if allowed is not None else list(range(pb.n_dev))
    best = list(int(x) for x in placement)
    best_v = objective(best)
    evals, t0 = 1, time.perf_counter()
    improved = True
    while improved and evals < max_evals and time.perf_counter() - t0 < time_budget_s:
        improved = False
        cands = []
        for i in rng.permutation(pb.n):
            for d in devs:
                if d != best[i]:
                    cands.append(((int(i), d),))
        nbr = [(i, j) for i in range(pb.n) for j, _ in pb.succs[i]]
        nbr += [tuple(rng.choice(pb.n, 2, replace=False)) for _ in range(min(4 * pb.n, 2000))] if pb.n > 1 else []
        for i, j in nbr:
            if best[i] != best[j]:
                cands.append(((int(i), best[j]), (int(j), best[i])))
        for mv in cands:
            if evals >= max_evals or time.perf_counter() - t0 >= time_budget_s:
                break
            trial = list(best)
            for i, d in mv:
                trial[i] = d
            v = objective(trial)
            evals += 1
            if v < best_v - 1e-12:
                best, best_v, improved = trial, v, True
    return best, float(best_v), evals


def exact_milp(pb: Problem, time_limit_s: float = 60.0) -> dict:
    """Exact minimum makespan of the scheduling model for 2 devices (scipy.optimize.milp/HiGHS).

    Variables: x_i (1 = device 1), start s_i, makespan C, z_e (edge crosses devices), and for every
    pair not ordered by a path, same_ij (same device) and y_ij (i before j), with big-M
    disjunctions. Returns {"makespan", "placement", "status", "optimal"}.
    """
    from scipy.optimize import Bounds, LinearConstraint, milp
    if pb.n_dev != 2:
        raise ValueError(f"exact_milp supports 2 devices, the problem has {pb.n_dev}")
    n, cm = pb.n, pb.cm
    p0, p1 = cm.op_time[:, 0], cm.op_time[:, 1]
    edges = [(i, j, nb) for j in range(n) for i, nb in pb.preds[j]]
    reach = [set() for _ in range(n)]
    for i in range(n - 1, -1, -1):
        for j, _ in pb.succs[i]:
            reach[i] |= {j} | reach[j]
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n) if j not in reach[i] and i not in reach[j]]
    # variable layout
    X, S = 0, n
    Cv = 2 * n
    Z = Cv + 1
    SAME = Z + len(edges)
    Y = SAME + len(pairs)
    nv = Y + len(pairs)
    M = float(np.sum(np.maximum(p0, p1)) + sum(_comm(cm, nb, 0, 1) + _comm(cm, nb, 1, 0) for _, _, nb in edges)
              + _comm(cm, pb.host_bytes.sum(), 0, 1) + 1e-3)
    rows, lo, hi = [], [], []

    def add(coefs, lb, ub):
        r = np.zeros(nv)
        for k, c in coefs:
            r[k] += c
        rows.append(r); lo.append(lb); hi.append(ub)
    for i in range(n):
        # C >= s_i + p_i(x)
        add([(Cv, 1), (S + i, -1), (X + i, -(p1[i] - p0[i]))], p0[i], np.inf)
        if pb.host_bytes[i] > 0:
            add([(S + i, 1), (X + i, -_comm(cm, pb.host_bytes[i], 0, 1))], 0, np.inf)
    for e, (i, j, nb) in enumerate(edges):
        c = _comm(cm, nb, 0, 1)  # symmetric alpha/beta assumed for the crossing cost
        c = max(c, _comm(cm, nb, 1, 0))
        add([(S + j, 1), (S + i, -1), (X + i, -(p1[i] - p0[i])), (Z + e, -c)], p0[i], np.inf)
        add([(Z + e, 1), (X + i, -1), (X + j, 1)], 0, np.inf)
        add([(Z + e, 1), (X + i, 1), (X + j, -1)], 0, np.inf)
    for k, (i, j) in enumerate(pairs):
        sm, y = SAME + k, Y + k
        add([(sm, 1), (X + i, 1), (X + j, 1)], 1, np.inf)       # both on 0 -> same
        add([(sm, 1), (X + i, -1), (X + j, -1)], -1, np.inf)    # both on 1 -> same
        # y=1: i before j; only binding when same=1
        add([(S + j, 1), (S + i, -1), (X + i, -(p1[i] - p0[i])), (y, -M), (sm, -M)], p0[i] - 2 * M, np.inf)
        add([(S + i, 1), (S + j, -1), (X + j, -(p1[j] - p0[j])), (y, M), (sm, -M)], p0[j] - M, np.inf)
    c = np.zeros(nv); c[Cv] = 1.0
    integrality = np.zeros(nv); integrality[X:X + n] = 1; integrality[Z:nv] = 1
    lb = np.zeros(nv); ub = np.full(nv, np.inf); ub[X:X + n] = 1; ub[Z:nv] = 1
    res = milp(c, constraints=LinearConstraint(np.array(rows), lo, hi), integrality=integrality,
               bounds=Bounds(lb, ub), options={"time_limit": time_limit_s, "mip_rel_gap": 1e-6})
    if res.x is None:
        return {"makespan": float("nan"), "placement": None, "status": res.message, "optimal": False}
    pl = tuple(int(round(v)) for v in res.x[X:X + n])
    return {"makespan": float(res.x[Cv]), "placement": pl, "status": res.message, "optimal": res.status == 0}


def make_segments(pb: Problem, sched: Schedule) -> tuple:
    """Cuts each device's op order into fused segments (one dispatch each).

    A segment is cut before an op that reads a value from another device which, in the op-level
    schedule, is finished only after the segment's first op started (it would stall the ops
    already in the segment), and after an op whose output another device reads when that
    consumer is scheduled to start before the next op of this device ends (holding the value
    back to the end of a longer segment would delay it) [our choice: the schedule decides; the old
    rule cut at every cross-device edge and left e.g. 16 per-step concats of a bidirectional
    layer as 16 dispatches]. No cycle can arise: a value that depends on the segment's own ops
    finishes after its first op starts, so its consumer opens a new segment."""
    pl = sched.placement
    segs = []
    for d, order in enumerate(sched.orders):
        cur = []
        for n, i in enumerate(order):
            if cur and any(pl[p] != d and sched.finish[p] > sched.start[cur[0]] for p, _ in pb.preds[i]):
                segs.append(Segment(d, tuple(cur))); cur = []
            cur.append(i)
            nxt = order[n + 1] if n + 1 < len(order) else None
            if nxt is not None and any(pl[j] != d and sched.start[j] < sched.finish[nxt] for j, _ in pb.succs[i]):
                segs.append(Segment(d, tuple(cur))); cur = []
        if cur:
            segs.append(Segment(d, tuple(cur)))
    segs.sort(key=lambda s: (sched.start[s.ops[0]], s.device))
    return tuple(segs)


def segment_schedule(pb: Problem, sched: Schedule, seg_times: Sequence[float] | None = None) -> SegmentSchedule:
    """Re-times the schedule at segment granularity (fused costs, one transfer per value and
    destination device) in the executor's static per-device order. ``seg_times`` (seconds, one per
    segment of ``make_segments``) replaces the modelled segment costs with measured ones
    (``Engine.profile_segments``)."""
    cm = pb.cm
    segs = make_segments(pb, sched)
    seg_of = {}
    for k, s in enumerate(segs):
        for i in s.ops:
            seg_of[i] = k
    start = np.zeros(len(segs)); finish = np.zeros(len(segs)); var = np.zeros(len(segs))
    free = np.zeros(pb.n_dev)
    last_on = [-1] * pb.n_dev
    for k, s in enumerate(segs):
        ready = free[s.device]
        rvar = var[last_on[s.device]] if last_on[s.device] >= 0 else 0.0
        members = set(s.ops)
        host = sum(nb for i in s.ops for v, p, nb in pb.in_values[i] if p < 0)
        if host and s.device != 0:
            ready = max(ready, _comm(cm, host, 0, s.device))
        seen = set()
        for i in s.ops:
            for v, p, nb in pb.in_values[i]:
                if p < 0 or p in members or v in seen:
                    continue
                seen.add(v)
                q = seg_of[p]
                t = finish[q] + _comm(cm, nb, segs[q].device, s.device)
                if t > ready:
                    ready, rvar = t, var[q]
        start[k] = ready
        dur = seg_times[k] if seg_times is not None else segment_time(cm, s.ops, s.device, segment_args(pb, s.ops))
        finish[k] = ready + dur
        free[s.device] = finish[k]
        last_on[s.device] = k
        # Relative spread of a sum of independent op times, applied to the segment's duration.
        ops = list(s.ops)
        tot = float(np.sum(cm.op_time[ops, s.device]))
        rel = float(np.sqrt(np.sum(cm.op_std[ops, s.device] ** 2))) / tot if tot > 0 else 0.0
        var[k] = rvar + (rel * dur) ** 2
    last = int(np.argmax(finish)) if len(segs) else 0
    return SegmentSchedule(segments=segs, start=start, finish=finish,
                           makespan=float(finish.max()) if len(segs) else 0.0,
                           std=float(np.sqrt(var[last])) if len(segs) else 0.0)


def device_memory(pb: Problem, sched: Schedule) -> dict:
    """{device name: {"weights", "activations", "total"}} in bytes (analytic: constants read by the
    device's ops + liveness-based activation peak over the schedule)."""
    if pb.graph is None:
        return {}
    out = {}
    for d, name in enumerate(pb.cm.device_names):
        wb = weight_bytes(pb.graph, sched.placement, d)
        ab = activation_peak_bytes(pb.graph, sched.placement, sched.start, sched.finish, d)
        out[name] = {"weights": wb, "activations": ab, "total": wb + ab}
    return out


def _plan(pb, name, placement, slo=None, k_sigma=0.0, note=""):
    sched = list_schedule(pb, placement)
    seg = segment_schedule(pb, sched)
    meets = None if slo is None else bool(seg.makespan + k_sigma * seg.std <= slo)
    return Plan(name=name, placement=sched.placement, schedule=sched, segments=seg, predicted_s=seg.makespan,
                predicted_std_s=seg.std, memory=device_memory(pb, sched), meets_slo=meets, note=note)


def plan_single_device(pb: Problem, device: int, slo: float | None = None, k_sigma: float = 0.0) -> Plan:
    if not 0 <= device < pb.n_dev:
        raise ValueError(f"device {device} is not in [0, {pb.n_dev})")
    return _plan(pb, f"{pb.cm.device_names[device]}-only", (device,) * pb.n, slo, k_sigma)


def _segment_objective(pb):
    return lambda p: segment_schedule(pb, list_schedule(pb, p)).makespan


def plan_latency_optimal(pb: Problem, slo: float | None = None, k_sigma: float = 1.0, max_evals: int = 3000,
                         time_budget_s: float = 20.0, seed: int = 0) -> Plan:
    """HEFT, then local search on the segment-level predicted makespan (the executor's cost).
    Single-device plans are candidates too, so the result is never predicted slower than them.
    If the best plan misses ``slo`` (mean + k_sigma * std), falls back to the accelerator alone."""
    obj = _segment_objective(pb)
    h = heft(pb)
    cands = [h.placement] + [(d,) * pb.n for d in range(pb.n_dev)]
    start = min(cands, key=obj)
    pl, _, evals = local_search(pb, start, objective=obj, max_evals=max_evals, time_budget_s=time_budget_s, seed=seed)
    plan = _plan(pb, "latency-optimal", pl, slo, k_sigma, note=f"HEFT + local search ({evals} evaluations)")
    if slo is not None and not plan.meets_slo:
        acc = pb.n_dev - 1
        fb = plan_single_device(pb, acc, slo, k_sigma)
        return fb._replace(name="latency-optimal", note=f"no plan meets the SLO {slo * 1e3:.3f} ms "
                           f"(best {plan.predicted_s * 1e3:.3f} ms): fell back to {pb.cm.device_names[acc]} only")
    return plan


def plan_memory_optimal(pb: Problem, slo: float, k_sigma: float = 1.0, accelerator: int | None = None,
                        start: Plan | None = None, max_evals: int = 2000) -> Plan:
    """Least accelerator memory whose predicted latency (mean + k_sigma * std) meets ``slo``.

    Greedy [proposal in the spec]: from the latency-optimal plan, repeatedly move to the CPU the op
    group (ops sharing weights, e.g. one layer-direction's cells; other ops singly) with the most
    accelerator bytes freed per second of latency added, while the SLO holds. Falls back to the
    accelerator alone when even the latency-optimal plan misses the SLO."""
    acc = pb.n_dev - 1 if accelerator is None else accelerator
    if pb.graph is None:
        raise ValueError("plan_memory_optimal needs a Problem built from a Graph (make_problem)")
    name = pb.cm.device_names[acc]
    start = start or plan_latency_optimal(pb, slo, k_sigma)
    if not start.meets_slo:
        fb = plan_single_device(pb, acc, slo, k_sigma)
        return fb._replace(name="memory-optimal", note=f"no plan meets the SLO: fell back to {name} only")
    groups = {}
    for i, op in enumerate(pb.graph.ops):
        groups.setdefault(op.group or op.name, []).append(i)

    def score(pl):
        sched = list_schedule(pb, pl)
        seg = segment_schedule(pb, sched)
        mem = weight_bytes(pb.graph, pl, acc) + activation_peak_bytes(pb.graph, pl, sched.start, sched.finish, acc)
        return seg.makespan + k_sigma * seg.std, mem
    cur = list(start.placement)
    cur_lat, cur_mem = score(cur)
    evals = 0
    while evals < max_evals:
        best = None
        for g, members in groups.items():
            on = [i for i in members if cur[i] == acc]
            if not on:
                continue
            trial = list(cur)
            for i in on:
                trial[i] = 0
            lat, mem = score(trial)
            evals += 1
            if lat > slo or mem >= cur_mem:
                continue
            gain = (cur_mem - mem) / max(lat - cur_lat, 1e-9)
            if best is None or gain > best[0]:
                best = (gain, trial, lat, mem)
        if best is None:
            break
        _, cur, cur_lat, cur_mem = best
    return _plan(pb, "memory-optimal", cur, slo, k_sigma, note=f"greedy group moves ({evals} evaluations)")
