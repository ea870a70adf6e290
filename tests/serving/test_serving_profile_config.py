"""Profiler and fusion calibration on one CPU device; experiment presets."""

import time

import jax
import numpy as np
import pytest

from jaxlab.serving.cost import DeviceSpec, segment_time
from jaxlab.serving.graph import fuse_light_chains
from jaxlab.serving.onnx_import import import_onnx, make_rnn_model
from jaxlab.serving.profiler import calibrate_fusion, profile_graph, timed_blocks


def test_profile_shares_measurements_by_signature_and_calibrates_fusion():
    model = make_rnn_model("LSTM", input_size=4, hidden=5, layers=2, seq_len=4, batch=1)
    g = fuse_light_chains(import_onnx(model))
    devs = [DeviceSpec("cpu", jax.devices("cpu")[0], "cpu")]
    cm = profile_graph(g, devs, repeats=3, warmup=1, transfer_sizes=(256,))
    assert cm.op_time.shape == (len(g.ops), 1) and np.all(cm.op_time > 0)
    assert np.all(cm.floor == 0), "a real device has no emulated floor"
    sigs = {}
    for i, op in enumerate(g.ops):
        sigs.setdefault(op.signature, set()).add(cm.op_time[i, 0])
    assert all(len(v) == 1 for v in sigs.values()), "equal signatures share one measurement"
    assert len(sigs) < len(g.ops), "the steps of a layer share a signature"
    cm2 = calibrate_fusion(g, cm, devs, max_ops=6, samples=3, repeats=3)
    assert cm2.seg_fixed[0] >= 0 and cm2.seg_per_arg[0] >= 0 and cm2.seg_scale[0] >= 0
    # A single op keeps its own measured time; a segment of k ops uses the fitted model.
    np.testing.assert_allclose(segment_time(cm2, [0], 0), cm.dispatch_s[0] + cm.op_compute[0, 0])
    ops = list(range(len(g.ops)))
    expect = cm2.seg_fixed[0] + cm2.seg_per_arg[0] * 10 + cm2.seg_scale[0] * cm.op_compute[:, 0].sum()
    np.testing.assert_allclose(segment_time(cm2, ops, 0, n_args=10), expect)


def test_timed_blocks_takes_turns_in_blocks_after_warmup_calls():
    log = []

    def runner(name, sleep_s=0.0):
        def call():
            log.append(name)
            if sleep_s:
                time.sleep(sleep_s)
        return call

    ts = timed_blocks({"a": runner("a"), "b": runner("b", 0.002)}, repeats=5, block=2, warm=1, gap_s=0.0)
    assert {k: len(v) for k, v in ts.items()} == {"a": 5, "b": 5}
    # three turns each of 1 warm-up + 2 kept calls, one runner's whole block before the other's
    assert log == (["a"] * 3 + ["b"] * 3) * 3
    assert min(ts["b"]) >= 0.002 > max(ts["a"])
    with pytest.raises(ValueError, match="repeats=0"):
        timed_blocks({"a": runner("a")}, repeats=0)
    with pytest.raises(ValueError, match="runners is empty"):
        timed_blocks({}, repeats=3)


def test_experiment_presets():
    from experiments.configs.chrion import get_config
    q, p = get_config("quick"), get_config("paper")
    assert len(p.models) > len(q.models)
    assert {m["hidden"] for m in p.models} == {256, 512, 1024}
    with pytest.raises(ValueError, match="preset"):
        get_config("huge")
