"""Executor: ONNX Runtime parity on every plan, with two devices (second one emulated) in a
subprocess, since XLA_FLAGS must be set before jax is imported and the test process is shared."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np

from jaxlab.serving.graph import fuse_light_chains
from jaxlab.serving.onnx_import import import_onnx, make_rnn_model, run_onnxruntime

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    import jax
    from jaxlab.serving.onnx_import import make_rnn_model, make_seq2seq_model, import_onnx, run_onnxruntime
    from jaxlab.serving.graph import fuse_light_chains
    from jaxlab.serving.cost import available_devices
    from jaxlab.serving.profiler import profile_graph
    from jaxlab.serving.partition import make_problem, plan_single_device, plan_latency_optimal, _plan
    from jaxlab.serving.executor import Engine
    devs = available_devices(launch_s=20e-6)
    out = {"n_devices": len(devs), "emulated": [d.emulated for d in devs], "cases": [],
           "has_gpu": any(d.platform == "gpu" for d in jax.devices())}
    rng = np.random.default_rng(0)
    models = [
        ("lstm_bi_seq", make_rnn_model("LSTM", input_size=5, hidden=6, layers=2, bidirectional=True, seq_len=4,
                                       batch=2, with_seq_lens=True, with_initial_state=True),
         lambda: {"x": rng.normal(size=(4, 2, 5)).astype(np.float32), "seq_lens": np.array([4, 2], np.int32),
                  "h0": rng.normal(size=(4, 2, 6)).astype(np.float32), "c0": rng.normal(size=(4, 2, 6)).astype(np.float32)}),
        ("gru_s2s", make_seq2seq_model("GRU", vocab=9, embed=5, hidden=6, src_len=4, tgt_len=3, batch=2),
         lambda: {"src": rng.integers(0, 9, (4, 2)).astype(np.int64), "tgt": rng.integers(0, 9, (3, 2)).astype(np.int64)}),
    ]
    for name, model, make_inputs in models:
        g = fuse_light_chains(import_onnx(model))
        cm = profile_graph(g, devs, repeats=3, warmup=1, transfer_sizes=(256, 65536))
        pb = make_problem(g, cm)
        alternating = tuple(i % 2 for i in range(pb.n))   # forces many cross-device edges
        plans = [plan_single_device(pb, 0), plan_single_device(pb, 1),
                 plan_latency_optimal(pb, max_evals=100, time_budget_s=2), _plan(pb, "alternating", alternating)]
        reqs = [make_inputs() for _ in range(3)]
        refs = [run_onnxruntime(model, r) for r in reqs]
        for p in plans:
            eng = Engine(g, p, devs, cm)
            res, trace = eng.run_stream(reqs, arrivals=[0.0, 0.001, 0.002])
            err = max(float(np.max(np.abs(r.outputs[k] - ref[k]))) for r, ref in zip(res, refs) for k in ref)
            out["cases"].append({"model": name, "plan": p.name, "max_abs_err": err,
                                 "devices_used": sorted({d for _, _, d, _, _ in trace}),
                                 "segments": len(p.segments.segments), "latencies": [r.latency_s for r in res]})
    # Two real CPU workers (cost.cpu_core_devices) on a chunked graph: nothing emulated.
    from jaxlab.serving.cost import cpu_core_devices
    cores = cpu_core_devices(2)
    model = make_rnn_model("LSTM", input_size=5, hidden=6, layers=2, bidirectional=True, seq_len=5, batch=2)
    g = fuse_light_chains(import_onnx(model, rnn_chunk=2))
    cm = profile_graph(g, cores, repeats=3, warmup=1, transfer_sizes=(256, 65536))
    pb = make_problem(g, cm)
    x = {"x": rng.normal(size=(5, 2, 5)).astype(np.float32)}
    ref = run_onnxruntime(model, x)
    for p in (plan_latency_optimal(pb, max_evals=100, time_budget_s=2), _plan(pb, "alternating", tuple(i % 2 for i in range(pb.n)))):
        res, trace = Engine(g, p, cores, cm).run_stream([x])
        out["core_cases"] = out.get("core_cases", []) + [{
            "plan": p.name, "emulated": [d.emulated for d in cores], "devices_used": sorted({d for _, _, d, _, _ in trace}),
            "max_abs_err": max(float(np.max(np.abs(res[0].outputs[k] - ref[k]))) for k in ref)}]
    print("RESULT" + json.dumps(out))
""")


def test_engine_two_devices_matches_onnxruntime():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               PYTHONPATH=os.pathsep.join([os.path.join(REPO, "lib"), REPO, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT"))
    out = json.loads(line[len("RESULT"):])
    assert out["n_devices"] == 2 and out["emulated"] == [False, not out["has_gpu"]]
    assert len(out["cases"]) == 8
    for c in out["cases"]:
        assert c["max_abs_err"] <= 1e-5, c
        assert all(l > 0 for l in c["latencies"]), c
    alt = [c for c in out["cases"] if c["plan"] == "alternating"]
    assert all(c["devices_used"] == [0, 1] and c["segments"] > 2 for c in alt)
    assert [c["devices_used"] for c in out["cases"] if c["plan"] == "cpu-only"] == [[0], [0]]
    assert len(out["core_cases"]) == 2
    for c in out["core_cases"]:
        assert c["max_abs_err"] <= 1e-5 and c["emulated"] == [False, False], c
    assert out["core_cases"][1]["devices_used"] == [0, 1]


def test_engine_single_device_in_process_matches_onnxruntime():
    import jax

    from jaxlab.serving.cost import DeviceSpec
    from jaxlab.serving.executor import Engine
    from jaxlab.serving.partition import make_problem, plan_single_device
    from jaxlab.serving.profiler import profile_graph
    model = make_rnn_model("LSTM", input_size=5, hidden=6, layers=2, seq_len=4, batch=2)
    g = fuse_light_chains(import_onnx(model))
    devs = [DeviceSpec("cpu", jax.devices("cpu")[0], "cpu")]
    cm = profile_graph(g, devs, repeats=3, warmup=1)
    plan = plan_single_device(make_problem(g, cm), 0)
    x = np.random.default_rng(3).normal(size=(4, 2, 5)).astype(np.float32)
    outs, trace = Engine(g, plan, devs, cm).run({"x": x})
    ref = run_onnxruntime(model, {"x": x})
    for k in ref:
        np.testing.assert_allclose(outs[k], ref[k], atol=1e-5, rtol=1e-5)
    assert len(trace) == 1, "a single-device plan is one fused segment (one dispatch)"
