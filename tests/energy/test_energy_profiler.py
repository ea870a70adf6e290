"""Layer specs, shape/FLOP inference, variant steps, subtraction and the profiling DB."""

import json
import math

import numpy as np
import pytest

from jaxlab.energy import gp as G
from jaxlab.energy import meters as M
from jaxlab.energy import profiler as P
from jaxlab.energy.profiler import LSTM, Act, BatchNorm, Conv, Dense, Network, Pool


def test_conv_flops_and_shapes_closed_form():
    net = Network((12, 12, 3), (Conv(8, 5, 1, "VALID"), Pool(2), Dense(10)), batch=4, num_classes=10)
    p = P.place(net)
    assert p[0].out_shape == (8, 8, 8) and p[1].out_shape == (4, 4, 8) and p[2].out_shape == (10,)
    assert p[0].train_flops == 3 * (2.0 * 4 * 8 * 8 * 8 * 3 * 25 + 4 * 8 * 8 * 8)
    assert p[2].n_params == 128 * 10 + 10
    assert p[0].features["pos"] == 1 and p[2].features["pos"] == 2
    assert p[1].features["max"] == 2
    assert p[0].features["valid"] == 2
    assert P.place(Network((12, 12, 3), (Conv(8, 5),), batch=4))[0].features["valid"] == 1
    # kbig: the kernel is larger than the input's height or width (XLA:CPU's slow conv path)
    assert p[0].features["kbig"] == 1
    assert [P.place(Network((h, 6, 3), (Conv(8, 5),), batch=4))[0].features["kbig"] for h in (4, 5)] == [2, 1]
    assert len(P.feature_vector("conv", p[0].features)) == len(P.FEATURES["conv"]) <= G.D_MAX
    assert P.network_train_flops(net) == pytest.approx(sum(q.train_flops for q in p))


def test_position_feature_marks_layers_that_backprop_reaches():
    """pos = 2 only after a layer with parameters: in Act -> Pool -> Conv -> Pool(avg) the first
    three never receive an input gradient."""
    p = P.place(Network((8, 8, 3), (Act("relu"), Pool(2), Conv(4), Pool(2, "avg")), batch=2))
    assert [q.features["pos"] for q in p] == [1, 1, 1, 2]
    assert [q.features["max"] for q in p if q.kind == "pool"] == [2, 1]


@pytest.mark.parametrize("bad, match", [
    (Network((8, 8, 1), (Conv(4, 9, 1, "VALID"),), 2), "smaller than kernel"),
    (Network((8,), (Conv(4),), 2), r"\(H, W, C\)"),
    (Network((8, 8, 1), (Pool(2, "median"),), 2), "max"),
    (Network((8,), (Dense(5),), 2, 10), "Dense\\(10\\)"),
    (Network((8,), (Dense(5),), 0), "batch"),
])
def test_bad_networks_raise(bad, match):
    with pytest.raises(ValueError, match=match):
        P.place(bad)


def test_unknown_spec_type_raises():
    with pytest.raises(TypeError, match="Conv, Dense"):
        P.place(Network((8,), ("dense",), 2))


def test_specnet_matches_placed_shapes_and_param_counts():
    import jax

    net = Network((10, 10, 2), (Conv(6, 3), BatchNorm(), Act("tanh"), Pool(2, "avg"), Dense(7)), batch=3)
    placed = P.place(net)
    module = P.SpecNet(net.layers)
    x = np.zeros((3, 10, 10, 2), np.float32)
    v = module.init(jax.random.PRNGKey(0), x)
    out = module.apply(v, x, mutable=["batch_stats"])[0]
    assert out.shape == (3, *placed[-1].out_shape)
    n = sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(v["params"]))
    assert n == sum(p.n_params for p in placed)
    seq = Network((5, 4), (LSTM(6), Dense(3)), batch=2)
    vs = P.SpecNet(seq.layers).init(jax.random.PRNGKey(0), np.zeros((2, 5, 4), np.float32))
    assert sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(vs["params"])) == sum(
        p.n_params for p in P.place(seq))


def test_layer_impls_compute_the_same_step_from_the_same_parameters():
    """SpecNet's 'jaxlab' layers (im2col conv, reshape max-pool) and flax's: same parameters, same
    outputs and the same training step, up to float32 rounding."""
    import jax

    net = Network((9, 9, 3), (Conv(5, 3, 2, "SAME"), Act("relu"), Conv(4, 3, 1, "VALID"), Pool(2, "max"),
                              Dense(10)), batch=4, num_classes=10)
    x = np.random.default_rng(0).normal(size=(4, 9, 9, 3)).astype(np.float32)
    vj = P.SpecNet(net.layers, "jaxlab").init(jax.random.PRNGKey(1), x)
    vf = P.SpecNet(net.layers, "flax").init(jax.random.PRNGKey(1), x)
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(lambda a, b: bool(np.array_equal(a, b)), vj, vf))
    outs = [P.SpecNet(net.layers, i).apply(vj, x) for i in ("jaxlab", "flax")]
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    steps = [P.make_train_step(net, impl=i) for i in ("jaxlab", "flax")]
    (pj, _, _), lj = steps[0][0](steps[0][1], *steps[0][2])
    (pf, _, _), lf = steps[1][0](steps[1][1], *steps[1][2])
    assert float(lj) == pytest.approx(float(lf), rel=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(pj), jax.tree_util.tree_leaves(pf)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="impl='torch'"):
        P.make_train_step(net, impl="torch")


def test_layer_impl_is_part_of_the_db_key_and_flax_keeps_the_legacy_key(tmp_path):
    db = P.ProfileDB(str(tmp_path / "db.jsonl"))
    meter = M.wallclock_meter()
    net = Network((6, 6, 1), (Conv(2, 3), Pool(2, "max")), batch=2)
    kw = dict(windows=2, min_window_s=0.001, tag="t")
    P.measure_networks(meter, [net], db, **kw)  # the default, "flax"
    P.measure_networks(meter, [net], db, impl="jaxlab", **kw)
    assert len(db) == 2  # one record per implementation, neither re-used for the other
    legacy = P.network_key(net, meter.name, dict(kw, interleaved=True))  # the key before the option existed
    assert db.get(legacy) is not None
    assert db.get(P.network_key(net, meter.name, dict(kw, interleaved=True, layers="jaxlab"))) is not None


def test_unrolled_step_runs_exactly_k_python_steps():
    import jax

    net = Network((6,), (Dense(5), Act("tanh"), Dense(3)), batch=4, num_classes=3)
    step, state, (x, y) = P.make_train_step(net, lr=0.1)
    many = P.unrolled_step(step, 4)
    ref = state
    for _ in range(4):
        ref, _ = step(ref, x, y)
    for a, b in zip(jax.tree_util.tree_leaves(many(state, x, y)), jax.tree_util.tree_leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # and not the state after 3 or 5 steps
    three = state
    for _ in range(3):
        three, _ = step(three, x, y)
    assert not np.allclose(jax.tree_util.tree_leaves(three)[0], jax.tree_util.tree_leaves(ref)[0])


def test_unroll_factor_is_the_power_of_two_above_a_quarter_window():
    w = 0.02  # a quarter window = 5 ms
    assert P._unroll_factor(5e-3, w) == 1 and P._unroll_factor(20e-3, w) == 1
    assert P._unroll_factor(2.5e-3, w) == 2 and P._unroll_factor(2.4e-3, w) == 4
    assert P._unroll_factor(1e-3, w) == 8 and P._unroll_factor(1e-6, w) == P.MAX_UNROLL == 8


def test_unrolled_loop_is_per_iteration_keyed_apart_and_re_used(tmp_path):
    db = P.ProfileDB(str(tmp_path / "db.jsonl"))
    meter = M.wallclock_meter()
    nets = [Network((6,), (Dense(4),), batch=2), Network((6,), (Dense(8), Act()), batch=2)]
    kw = dict(windows=3, min_window_s=0.004, tag="t")
    py = P.measure_networks(meter, nets, db, **kw)
    compiled: dict = {}
    un = P.measure_networks(meter, nets, db, loop="unrolled", compiled=compiled, **kw)
    assert len(db) == 4  # one record per loop, neither re-used for the other
    legacy = [db.get(P.network_key(n, meter.name, dict(kw, interleaved=True))) for n in nets]
    recs = [db.get(P.network_key(n, meter.name, dict(kw, interleaved=True, loop="unrolled"))) for n in nets]
    assert all(r is not None and "unroll" not in r for r in legacy)
    for m, r in zip(un, recs):
        # a ~20-50 us step against a 1 ms quarter window: unrolled the most; the record is per iteration
        assert r["unroll"] == P.MAX_UNROLL and r["iters"] % r["unroll"] == 0
        assert m.seconds == r["seconds"] == pytest.approx(float(np.median(r["windows_s"])))
        assert r["cpu_seconds"] == pytest.approx(float(np.median(r["cpu_windows_s"])))
    # per iteration, not per call of k iterations: within a few x of the Python loop's figure
    assert all(0.1 < u.seconds / p.seconds < 3.0 for u, p in zip(un, py))
    n_compiled = len(compiled)
    again = P.measure_networks(meter, nets, db, loop="unrolled", compiled=compiled, **dict(kw, tag="t2"))
    assert len(compiled) == n_compiled and len(db) == 6 and all(m.seconds > 0 for m in again)
    assert [m.seconds for m in P.measure_networks(meter, nets, db, loop="unrolled", **kw)] == [m.seconds for m in un]
    assert P.measure_network(meter, nets[0], db, windows=2, min_window_s=0.004, loop="unrolled").seconds > 0
    with pytest.raises(ValueError, match="loop='fori'"):
        P.measure_networks(meter, nets, db, loop="fori", **dict(kw, tag="t3"))


def test_train_step_matches_numpy_sgd_momentum_for_dense():
    """One jitted step of a 1-layer readout network vs a float64 numpy re-derivation."""
    net = Network((4,), (Dense(3),), batch=5)
    step, state, (x, y) = P.make_train_step(net, lr=0.1, momentum=0.9)
    params = state[0]
    W = np.asarray(params["dense0"]["kernel"], np.float64)
    b = np.asarray(params["dense0"]["bias"], np.float64)
    xn = np.asarray(x, np.float64)
    out = xn @ W + b
    g_out = 2.0 * out / out.size  # d mean(out^2)
    gW, gb = xn.T @ g_out, g_out.sum(0)
    (new_params, _, _), loss = step(state, x, y)
    assert float(loss) == pytest.approx(np.mean(out ** 2), rel=1e-5)
    np.testing.assert_allclose(np.asarray(new_params["dense0"]["kernel"]), W - 0.1 * gW, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(new_params["dense0"]["bias"]), b - 0.1 * gb, rtol=1e-5, atol=1e-6)


def test_subtraction_recovers_device_layer_costs_when_additive():
    dev = M.DeviceModel(gamma=0.0, noise=0.0)
    meter = M.simulated_meter(dev)
    chain = Network((16, 16, 3), (Conv(8, 3), Act(), Pool(2)), batch=8)
    costs = [P.measure_network(meter, v).joules for v in P.prefixes(chain)]
    samples = P.chain_samples(chain, costs)
    assert [s.kind for s in samples] == ["fixed", "conv", "act", "pool"]
    assert samples[0].cost == pytest.approx(dev.e_fixed)
    for s, p in zip(samples[1:], P.place(chain)):
        assert s.cost == pytest.approx(dev.layer_cost(p.cost_record())[0], rel=1e-12)
    # with interaction, layer 2's subtraction cost absorbs gamma * sqrt(e1 e2)
    dev_g = dev._replace(gamma=0.5)
    costs_g = [dev_g.iteration_cost([p.cost_record() for p in P.place(v)]).joules for v in P.prefixes(chain)]
    e = [dev.layer_cost(p.cost_record())[0] for p in P.place(chain)]
    assert P.chain_samples(chain, costs_g)[2].cost == pytest.approx(e[1] + 0.5 * math.sqrt(e[0] * e[1]), rel=1e-12)
    with pytest.raises(ValueError, match="needs 4"):
        P.chain_samples(chain, costs[:3])


def test_profile_db_reuses_measurements_and_tolerates_cut_line(tmp_path):
    calls = []
    base = M.simulated_meter(M.DeviceModel(noise=0.1), seed=3)
    meter = base._replace(simulate=lambda layers: (calls.append(1), base.simulate(layers))[1])
    path = str(tmp_path / "profile_db.jsonl")
    db = P.ProfileDB(path)
    nets = [Network((32,), (Dense(16),), 4), Network((32,), (Dense(16), Act()), 4)]
    first = [P.measure_network(meter, n, db) for n in nets]
    assert len(calls) == 2
    with open(path, "a") as f:
        f.write('{"key": "cut-by-a-kil')  # a kill mid-write
    db2 = P.ProfileDB(path)
    again = [P.measure_network(meter, n, db2) for n in nets]
    assert len(calls) == 2 and again == first
    rec = json.loads(open(path).readline())
    assert P.network_from_json(rec["network"]) == nets[0]


def test_json_round_trip_all_kinds():
    net = Network((6, 6, 2), (Conv(3, 3, 2, "VALID"), BatchNorm(0.8), Act("gelu"), Pool(1, "avg"), Dense(4)), 2, None)
    assert P.network_from_json(json.loads(json.dumps(P.network_to_json(net)))) == net
    seq = Network((3, 2), (LSTM(5),), 2)
    assert P.network_from_json(P.network_to_json(seq)) == seq
    with pytest.raises(ValueError, match="layer kind"):
        P.spec_from_json({"layer": "attention"})


def test_wallclock_variant_measurement_is_positive_and_cached(tmp_path):
    db = P.ProfileDB(str(tmp_path / "db.jsonl"))
    net = Network((8, 8, 1), (Conv(4, 3), Act()), batch=4)
    m = P.measure_network(M.wallclock_meter(), net, db, windows=3, min_window_s=0.005)
    assert m.seconds > 0 and math.isnan(m.joules)
    assert len(db) == 1 and db.records[next(iter(db.records))]["rel_spread"] is not None


def test_measure_networks_interleaved_records_wall_and_cpu(tmp_path):
    db = P.ProfileDB(str(tmp_path / "db.jsonl"))
    chain = Network((8, 8, 1), (Conv(4, 3), Act(), Dense(8)), batch=4)
    kw = dict(windows=3, min_window_s=0.002)
    wall = P.measure_networks(M.wallclock_meter(), P.prefixes(chain), db, **kw)
    assert len(db) == 4 and all(m.seconds > 0 for m in wall)
    cpu = P.measure_networks(M.wallclock_meter(), P.prefixes(chain), db, clock="cpu", **kw)  # read back, no re-run
    assert len(db) == 4
    recs = list(db.records.values())
    assert sorted(c.seconds for c in cpu) == sorted(r["cpu_seconds"] for r in recs)
    assert all(len(r["cpu_windows_s"]) == 3 and r["interleaved_with"] == 4 for r in recs)
    with pytest.raises(ValueError, match="clock"):
        P.measure_networks(M.wallclock_meter(), P.prefixes(chain), db, clock="gpu", **kw)


def test_pooled_measurements_take_the_median_of_all_rounds_windows(tmp_path):
    db = P.ProfileDB(str(tmp_path / "db.jsonl"))
    meter = M.wallclock_meter()
    nets = [Network((6,), (Dense(4),), batch=2), Network((6,), (Dense(8), Act()), batch=2)]
    kw = dict(windows=3, min_window_s=0.001)
    compiled: dict = {}
    for tag in ("r0", "r1"):
        P.measure_networks(meter, nets, db, tag=tag, compiled=compiled, **kw)
    assert len(compiled) == 2 and len(db) == 4  # compiled once, measured twice
    pooled = P.pooled_measurements(meter, nets, db, ["r0", "r1"], **kw)
    cpu = P.pooled_measurements(meter, nets, db, ["r0", "r1"], clock="cpu", **kw)
    for i, n in enumerate(nets):
        rec = [db.get(P.network_key(n, meter.name, dict(kw, tag=t, interleaved=True))) for t in ("r0", "r1")]
        assert pooled[i].seconds == pytest.approx(float(np.median(rec[0]["windows_s"] + rec[1]["windows_s"])))
        assert cpu[i].seconds == pytest.approx(float(np.median(rec[0]["cpu_windows_s"] + rec[1]["cpu_windows_s"])))
    # one round alone is that round's own median
    one = P.pooled_measurements(meter, nets[:1], db, ["r1"], **kw)[0].seconds
    assert one == pytest.approx(P.measure_networks(meter, nets[:1], db, tag="r1", **kw)[0].seconds)
    with pytest.raises(KeyError, match="tag 'r2'"):
        P.pooled_measurements(meter, nets, db, ["r0", "r2"], **kw)
    with pytest.raises(ValueError, match="tags is empty"):
        P.pooled_measurements(meter, nets, db, [], **kw)


def test_window_statistic_min_reads_the_same_windows(tmp_path):
    """statistic='min' is the least of the recorded windows, for fresh and cached records, wall and CPU,
    single and pooled; it is not part of the DB key (one measurement serves both statistics)."""
    db = P.ProfileDB(str(tmp_path / "db.jsonl"))
    meter = M.wallclock_meter()
    nets = [Network((6,), (Dense(4),), batch=2), Network((6,), (Dense(8), Act()), batch=2)]
    kw = dict(windows=4, min_window_s=0.001)
    fresh = P.measure_networks(meter, nets, db, tag="r0", statistic="min", **kw)
    assert len(db) == 2
    med = P.measure_networks(meter, nets, db, tag="r0", **kw)                 # cached: no new record
    again = P.measure_networks(meter, nets, db, tag="r0", statistic="min", **kw)
    cpu = P.measure_networks(meter, nets, db, tag="r0", statistic="min", clock="cpu", **kw)
    P.measure_networks(meter, nets, db, tag="r1", **kw)
    pooled = P.pooled_measurements(meter, nets, db, ["r0", "r1"], statistic="min", **kw)
    assert len(db) == 4
    for i, n in enumerate(nets):
        recs = [db.get(P.network_key(n, meter.name, dict(kw, tag=t, interleaved=True))) for t in ("r0", "r1")]
        w = recs[0]["windows_s"]
        assert fresh[i].seconds == again[i].seconds == min(w)
        assert med[i].seconds == recs[0]["seconds"] == pytest.approx(float(np.median(w)))
        assert min(w) <= med[i].seconds and (min(w) < med[i].seconds or len(set(w)) == 1)
        assert cpu[i].seconds == min(recs[0]["cpu_windows_s"])
        assert pooled[i].seconds == min(recs[0]["windows_s"] + recs[1]["windows_s"])
    with pytest.raises(ValueError, match="statistic='mean'"):
        P.measure_networks(meter, nets, db, tag="r0", statistic="mean", **kw)
    with pytest.raises(ValueError, match="statistic='p10'"):
        P.pooled_measurements(meter, nets, db, ["r0"], statistic="p10", **kw)
    # a record written before windows were kept cannot give a minimum: one clear error, the record stays
    k = P.network_key(nets[0], meter.name, dict(kw, tag="old", interleaved=True))
    db.put({"key": k, "meter": meter.name, "joules": None, "seconds": 1e-4})
    with pytest.raises(ValueError, match="no 'windows_s'"):
        P.measure_networks(meter, nets[:1], db, tag="old", statistic="min", **kw)
    assert P.measure_networks(meter, nets[:1], db, tag="old", **kw)[0].seconds == 1e-4
