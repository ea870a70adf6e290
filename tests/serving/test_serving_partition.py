"""Scheduler, exact solver, memory model and plans (no devices needed: synthetic cost models)."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxlab.serving.cost import CostModel
from jaxlab.serving.graph import activation_peak_bytes, fuse_light_chains, weight_bytes
from jaxlab.serving.onnx_import import import_onnx, make_rnn_model
from jaxlab.serving.partition import (_comm, exact_milp, heft, list_schedule, local_search, make_problem,
                                      plan_latency_optimal, plan_memory_optimal, plan_single_device,
                                      make_segments, random_problem, segment_schedule)


def _brute_force(pb):
    """Exact optimum by enumeration: every placement x every topological order, each op ASAP at
    the end of its device (every optimal schedule is reproduced by ordering ops by start time)."""
    best = np.inf
    preds = [set(i for i, _ in pb.preds[j]) for j in range(pb.n)]

    def topo_orders(done, rest):
        if not rest:
            yield list(done)
            return
        for j in sorted(rest):
            if preds[j] <= set(done):
                yield from topo_orders(done + [j], rest - {j})
    orders = list(topo_orders([], set(range(pb.n))))
    for pl in itertools.product(range(pb.n_dev), repeat=pb.n):
        for order in orders:
            fin = np.zeros(pb.n); free = np.zeros(pb.n_dev)
            for j in order:
                ready = max([fin[i] + _comm(pb.cm, nb, pl[i], pl[j]) for i, nb in pb.preds[j]] + [free[pl[j]]])
                fin[j] = ready + pb.cm.op_time[j, pl[j]]
                free[pl[j]] = fin[j]
            best = min(best, fin.max())
    return best


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_milp_equals_brute_force_on_tiny_graphs(seed):
    pb = random_problem(5, seed=seed, edge_p=0.4)
    ex = exact_milp(pb)
    assert ex["optimal"]
    np.testing.assert_allclose(ex["makespan"], _brute_force(pb), rtol=1e-6)


def test_heft_plus_local_search_close_to_exact_optimum():
    gaps = []
    for seed in range(6):
        pb = random_problem(9, seed=seed, edge_p=0.3)
        ex = exact_milp(pb)
        assert ex["optimal"]
        h = heft(pb)
        _, v, _ = local_search(pb, h.placement, max_evals=1500, time_budget_s=1e9, seed=0)
        v = min(v, h.makespan)
        assert v >= ex["makespan"] * (1 - 1e-6), "a heuristic cannot beat the exact optimum"
        gaps.append(v / ex["makespan"] - 1)
    assert np.mean(gaps) <= 0.05, gaps


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 14), data=st.data())
def test_list_schedule_is_a_valid_schedule(seed, n, data):
    pb = random_problem(n, seed=seed, edge_p=0.35)
    pl = data.draw(st.lists(st.integers(0, 1), min_size=n, max_size=n))
    s = list_schedule(pb, pl)
    for j in range(n):
        np.testing.assert_allclose(s.finish[j] - s.start[j], pb.cm.op_time[j, pl[j]])
        for i, nb in pb.preds[j]:
            assert s.start[j] >= s.finish[i] + _comm(pb.cm, nb, pl[i], pl[j]) - 1e-12
    for d in range(2):
        iv = sorted((s.start[j], s.finish[j]) for j in range(n) if pl[j] == d)
        for (a0, a1), (b0, b1) in zip(iv, iv[1:]):
            assert b0 >= a1 - 1e-12, "two ops overlap on one device"
    assert s.makespan == pytest.approx(s.finish.max())
    # A lower bound: the longest device load and the critical path on the fastest device.
    assert s.makespan >= max(pb.cm.op_time[np.array(pl) == d, d].sum() for d in range(2)) - 1e-12


def test_simulator_closed_form_fork_join():
    # 0 -> {1, 2} -> 3 on two devices; op 2 alone on device 1; transfer alpha = 1 ms, 1 MB at 1 GB/s.
    pb = random_problem(4, seed=0, edge_p=0.0)
    t = np.array([[2., 9], [3., 9], [9., 4.], [1., 9.]]) * 1e-3
    pb = pb._replace(cm=pb.cm._replace(op_time=t, alpha=np.array([[0, 1e-3], [1e-3, 0]])),
                     preds=((), ((0, 1e6),), ((0, 1e6),), ((1, 1e6), (2, 1e6))),
                     succs=(((1, 1e6), (2, 1e6)), ((3, 1e6),), ((3, 1e6),), ()))
    s = list_schedule(pb, [0, 0, 1, 0])
    # op2 starts at 2 + (1 + 1) = 4, ends 8, arrives back at 10; op1 ends at 5; op3 runs 10..11.
    assert s.makespan == pytest.approx(11e-3)
    assert s.start[2] == pytest.approx(4e-3)


def test_liveness_peak_closed_form():
    model = make_rnn_model("RNN", input_size=4, hidden=5, layers=1, seq_len=3, batch=2, num_classes=3)
    g = import_onnx(model)
    n = len(g.ops)
    start, finish = np.arange(n, dtype=float), np.arange(n, dtype=float) + 1
    pl = [0] * n
    peak = activation_peak_bytes(g, pl, start, finish, 0)
    # Brute force over time: bytes of values alive at every instant t + 0.5.
    prod = {v: i for i, op in enumerate(g.ops) for v in op.outputs}
    users = {}
    for j, op in enumerate(g.ops):
        for v in op.inputs:
            users.setdefault(v, []).append(j)
    best = 0
    for t in np.arange(n) + 0.5:
        alive = 0
        for v, info in g.values.items():
            if v in g.constants:
                continue
            t0 = 0 if v in g.inputs else start[prod[v]] if v in prod else None
            if t0 is None:
                continue
            t1 = n if v in g.outputs else max([finish[j] for j in users.get(v, [])] + [finish[prod[v]] if v in prod else 0])
            alive += info.nbytes if t0 <= t < t1 else 0
        best = max(best, alive)
    assert peak == best
    assert weight_bytes(g, pl, 0) == sum(a.nbytes for a in g.constants.values())
    assert weight_bytes(g, pl, 1) == 0


def _synthetic_cm(g, fast_dev=1):
    """Cells 2x faster on device 1 but every op pays 50 us there; others cheap on device 0."""
    n = len(g.ops)
    t = np.zeros((n, 2))
    for i, op in enumerate(g.ops):
        base = 200e-6 if op.heavy else 10e-6
        t[i] = [base, base / 2 + 50e-6]
    a = np.array([[0, 20e-6], [20e-6, 0]])
    return CostModel(op_time=t, op_compute=t, op_std=t * 0.05, floor=np.zeros_like(t), dispatch_s=np.zeros(2),
                     alpha=a, beta=np.full((2, 2), 1e10), device_names=("cpu", "gpu"), emulated=(False, False))


def test_plans_latency_and_memory_optimal_with_slo():
    model = make_rnn_model("LSTM", input_size=6, hidden=8, layers=2, bidirectional=True, seq_len=4, batch=2)
    g = fuse_light_chains(import_onnx(model))
    pb = make_problem(g, _synthetic_cm(g))
    cpu, gpu = plan_single_device(pb, 0), plan_single_device(pb, 1)
    lat = plan_latency_optimal(pb, max_evals=800, time_budget_s=1e9)
    assert lat.predicted_s <= min(cpu.predicted_s, gpu.predicted_s) + 1e-12
    assert lat.predicted_s < 0.9 * min(cpu.predicted_s, gpu.predicted_s), "two devices should overlap work"
    slo = 1.05 * lat.predicted_s
    mem = plan_memory_optimal(pb, slo=slo, k_sigma=0.0, start=lat._replace(meets_slo=True))
    assert mem.meets_slo and mem.predicted_s <= slo + 1e-12
    assert mem.memory["gpu"]["total"] <= lat.memory["gpu"]["total"]
    assert mem.memory["gpu"]["total"] < gpu.memory["gpu"]["total"]
    # An impossible SLO falls back to the accelerator alone and says so.
    fb = plan_latency_optimal(pb, slo=1e-9, max_evals=50)
    assert fb.placement == (1,) * pb.n and "fell back" in fb.note
    assert plan_memory_optimal(pb, slo=1e-9, start=fb).placement == (1,) * pb.n


def test_segment_schedule_single_device_is_one_dispatch():
    model = make_rnn_model("GRU", input_size=6, hidden=8, layers=2, seq_len=3, batch=2)
    g = fuse_light_chains(import_onnx(model))
    cm = _synthetic_cm(g)
    pb = make_problem(g, cm)
    seg = segment_schedule(pb, list_schedule(pb, [0] * pb.n))
    assert len(seg.segments) == 1
    np.testing.assert_allclose(seg.makespan, cm.dispatch_s[0] + cm.op_compute[:, 0].sum())


@settings(max_examples=40, deadline=None)
@given(st.integers(3, 14), st.integers(0, 10_000), st.floats(0.0, 1.0))
def test_segments_cover_each_device_order_and_never_deadlock(n, seed, comm):
    """Segments partition each device's order into consecutive runs, and the segment graph is
    acyclic: the engine (one segment starts when all its cross-device inputs have arrived) can
    always make progress."""
    pb = random_problem(n, seed=seed, comm_scale=comm)
    pl = [int(v) for v in np.random.default_rng(seed).integers(0, pb.n_dev, n)]
    sched = list_schedule(pb, pl)
    segs = make_segments(pb, sched)
    for d, order in enumerate(sched.orders):
        assert [i for s in segs if s.device == d for i in s.ops] == list(order)
    seg_of = {i: k for k, s in enumerate(segs) for i in s.ops}
    edges = {k: {seg_of[p] for i in s.ops for p, _ in pb.preds[i]} - {k} for k, s in enumerate(segs)}
    for d in range(pb.n_dev):   # the engine also runs a device's segments in order
        ks = [k for k, s in enumerate(segs) if s.device == d]
        for a, b in zip(ks, ks[1:]):
            edges[b].add(a)
    state = {}

    def visit(k):
        state[k] = 1
        for q in edges[k]:
            assert state.get(q) != 1, "segment dependency cycle"
            if q not in state:
                visit(q)
        state[k] = 2
    for k in edges:
        if k not in state:
            visit(k)


def test_bidirectional_layer_glue_is_fused_per_device():
    """A bidirectional layer's per-step concats, split over two devices, are one segment per
    device, not one dispatch each."""
    model = make_rnn_model("LSTM", input_size=6, hidden=8, layers=2, bidirectional=True, seq_len=8, batch=1)
    g = fuse_light_chains(import_onnx(model, rnn_chunk=8))
    pb = make_problem(g, _synthetic_cm(g))
    chunks = [i for i, op in enumerate(g.ops) if "Chunk" in op.kind]
    pl = [0] * pb.n
    for i in chunks:
        pl[i] = int(g.ops[i].group.endswith("d1"))
    glue = [i for i in range(pb.n) if i not in chunks and i < max(chunks)]
    for j, i in enumerate(glue):   # the per-step concats of layer 0 alternate between devices
        pl[i] = j % 2
    segs = make_segments(pb, list_schedule(pb, pl))
    glue_segs = {k for k, s in enumerate(segs) for i in s.ops if i in glue}
    assert len(glue_segs) <= 2 * 2, [s for s in segs]


def test_bad_placement_raises():
    pb = random_problem(4)
    with pytest.raises(ValueError, match="placement"):
        list_schedule(pb, [0, 1, 2, 0])
