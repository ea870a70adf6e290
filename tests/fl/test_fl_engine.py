import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from jaxlab.data import load_digits, make_federated
from jaxlab.fl.algorithms import get_algorithm
from jaxlab.fl.engine import NonFiniteLossError, Simulation
from jaxlab.models import get_model
from jaxlab.utils.workdir import Workdir


def small_data(num_clients=6):
    x, y = load_digits(16)
    return make_federated(np.array(x), np.array(y), num_clients, "dir", alpha=0.5, seed=2)


def small_cnn():
    return get_model("cnn", 10, channels=(4, 8), hidden=16)


def run_rounds(strategy, algorithm="fedavg", rounds=3, data=None, join_ratio=1.0, model=None):
    data = data or small_data()
    sim = Simulation(get_algorithm(algorithm, model or small_cnn(), lr=0.05, batch_size=10), data,
                     strategy=strategy, join_ratio=join_ratio, seed=0)
    s, c = sim.init()
    accs = []
    for r in range(rounds):
        s, c, ev, tm, sel = sim.round(s, c, r)
        accs.append(float(np.sum(ev["correct"])))
    return s, c, accs


def max_rel_diff(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    return max([float(np.abs(np.asarray(x) - np.asarray(y)).max() / (np.abs(np.asarray(y)).max() + 1e-12))
                for x, y in zip(la, lb)], default=0.0)


@pytest.mark.parametrize("algorithm", ["fedavg", "ditto"])
def test_executors_agree_after_three_rounds(algorithm):
    data = small_data()
    ref_s, ref_c, ref_acc = run_rounds("scan", algorithm, data=data, join_ratio=0.5)
    for strategy in ("sequential", "vmap"):
        s, c, acc = run_rounds(strategy, algorithm, data=data, join_ratio=0.5)
        assert max_rel_diff(s, ref_s) <= 1e-4, strategy
        assert max_rel_diff(c, ref_c) <= 1e-4, strategy
        assert acc == ref_acc
    # sequential and scan run the same per-client program: bitwise equal
    s, c, _ = run_rounds("sequential", algorithm, data=data, join_ratio=0.5)
    assert max_rel_diff(s, ref_s) == 0.0


def test_sharded_executor_on_four_host_devices():
    code = textwrap.dedent("""
        import os
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
        import jax, numpy as np, json
        assert jax.device_count() == 4
        from tests.fl.test_fl_engine import run_rounds, max_rel_diff
        ref_s, ref_c, ref_acc = run_rounds("scan")
        s, c, acc = run_rounds("sharded")          # 6 clients over 4 devices: padded to 8
        print(json.dumps({"server": max_rel_diff(s, ref_s), "clients": max_rel_diff(c, ref_c), "acc_equal": acc == ref_acc}))
    """)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=root, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["server"] <= 1e-4 and res["clients"] <= 1e-4 and res["acc_equal"], res


def test_resume_after_interruption_equals_uninterrupted(tmp_path):
    data = small_data(4)

    def sim():
        return Simulation(get_algorithm("fedper", small_cnn(), lr=0.05), data, strategy="scan", seed=3, join_ratio=0.5)

    full = sim().run(4, workdir=Workdir(tmp_path / "full"), show_progress=False)
    wd = Workdir(tmp_path / "resumed")
    first = sim().run(4, workdir=wd, show_progress=False, stop_after=2)
    assert first == {"stopped_at_round": 2}
    with open(wd.file("metrics.jsonl"), "a") as f:
        f.write('{"step": 2, "acc": 0.1234}\n{"step": 3, "ac')  # a crash mid-write leaves junk past the checkpoint
    s2 = sim()
    resumed = s2.run(4, workdir=wd, show_progress=False)
    drop = lambda d: {k: v for k, v in d.items() if k != "seconds_per_round"}
    assert drop(resumed) == drop(full)
    rows_full = [(r["step"], r["acc"], r["auc"]) for r in Workdir(tmp_path / "full").read_metrics()]
    rows_res = [(r["step"], r["acc"], r["auc"]) for r in wd.read_metrics()]
    assert rows_full == rows_res and [r[0] for r in rows_res] == [0, 1, 2, 3, 4]


def test_nan_loss_stops_and_names_round_and_client(tmp_path):
    data = small_data(4)
    tx = data.train_x.copy()
    tx[2, :5] = np.nan
    bad = type(data)(**{**data.__dict__, "train_x": tx})
    sim = Simulation(get_algorithm("fedavg", small_cnn(), lr=0.05), bad, strategy="scan")
    wd = Workdir(tmp_path)
    with pytest.raises(NonFiniteLossError, match=r"round 0 at client\(s\) \[2\]"):
        sim.run(3, workdir=wd, show_progress=False)
    assert not os.path.exists(os.path.join(wd.checkpoint_dir, "1"))  # nothing bad was checkpointed


@pytest.mark.parametrize("jr", [0.0, -0.1, 1.5])
def test_bad_join_ratio(jr):
    with pytest.raises(ValueError, match="join_ratio"):
        Simulation(get_algorithm("fedavg", small_cnn()), small_data(4), join_ratio=jr)


def test_unknown_names():
    with pytest.raises(ValueError, match="unknown client executor"):
        Simulation(get_algorithm("fedavg", small_cnn()), small_data(4), strategy="threads")
    with pytest.raises(ValueError, match="unknown algorithm"):
        get_algorithm("fedsomething", small_cnn())


def test_fedavg_server_update_is_train_size_weighted_mean():
    data = small_data(4)
    alg = get_algorithm("fedavg", small_cnn(), lr=0.05)
    sim = Simulation(alg, data, strategy="scan")
    s, c = sim.init()
    bc = alg.broadcast(s)
    ups = [alg.client_update(bc, jax.tree_util.tree_map(lambda a: a[i], c),
                             jax.tree_util.tree_map(lambda a: a[i], sim.arrays), jax.random.PRNGKey(i))[1] for i in range(4)]
    n = np.asarray(data.train_n, np.float64)
    stacked = jax.tree_util.tree_map(lambda *a: np.stack(a), *ups)
    new = alg.server_update(s, stacked, (n / n.sum()).astype(np.float32), None)
    leaf = lambda t: np.asarray(t["params"]["head"]["kernel"], np.float64)
    ref = sum(n[i] / n.sum() * leaf(ups[i]) for i in range(4))
    np.testing.assert_allclose(leaf(new), ref, rtol=1e-5, atol=1e-7)


def test_personal_state_semantics():
    data = small_data(4)
    m = small_cnn()
    for name, personal, shared in [("fedper", "head", "base"), ("fedrep", "head", "base")]:
        alg = get_algorithm(name, m, lr=0.05)
        s, c = Simulation(alg, data, strategy="scan").init()
        assert set(s) == {shared} and personal in c
        _, up, _ = alg.client_update(alg.broadcast(s), jax.tree_util.tree_map(lambda a: a[0], c),
                                     jax.tree_util.tree_map(lambda a: a[0], data.arrays()), jax.random.PRNGKey(0))
        assert set(up) == {shared}  # the personal head never leaves the client
    # Local never communicates: the server state stays empty and uploads are empty
    alg = get_algorithm("local", m)
    s, c = Simulation(alg, data, strategy="scan").init()
    assert s == {} and "params" in c
