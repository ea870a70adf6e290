"""ONNX import: parity with ONNX Runtime, per-timestep expansion, clear errors."""

import io
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from jaxlab.serving.graph import evaluate, fuse_light_chains, op_preds
from jaxlab.serving.onnx_import import (UnsupportedOperatorError, compile_single_device, import_onnx,
                                        make_rnn_model, make_seq2seq_model, run_onnxruntime)

TOL = 1e-5


def _inputs(cell, T=5, B=3, I=6, H=7, layers=2, D=1, seq=False, init=False, seed=0):
    rng = np.random.default_rng(seed)
    inp = {"x": rng.normal(size=(T, B, I)).astype(np.float32)}
    if seq:
        inp["seq_lens"] = np.array([T, 2, 1][:B], np.int32)
    if init:
        inp["h0"] = rng.normal(size=(layers * D, B, H)).astype(np.float32)
        if cell == "LSTM":
            inp["c0"] = rng.normal(size=(layers * D, B, H)).astype(np.float32)
    return inp


def _check(model, inp):
    ref = run_onnxruntime(model, inp)
    # Unrolled per-step cells (coarsened as the partitioner sees them), chunks of 2 steps (T=5:
    # chunks of 2, 2 and a single cell) and of the whole sequence, and the lax.scan form.
    for expand, chunk in ((True, 1), (True, 2), (True, 64), (False, 1)):
        g = import_onnx(model, expand_rnn=expand, rnn_chunk=chunk)
        out = evaluate(fuse_light_chains(g) if expand else g, inp)
        for k in ref:
            np.testing.assert_allclose(out[k], ref[k], atol=TOL, rtol=TOL, err_msg=f"{k} expand={expand} chunk={chunk}")
    return ref


CASES = [
    dict(cell="LSTM", bidirectional=False),
    dict(cell="LSTM", bidirectional=True),
    dict(cell="LSTM", direction="reverse"),
    dict(cell="LSTM", bidirectional=True, with_seq_lens=True, with_initial_state=True),
    dict(cell="GRU", bidirectional=True),
    dict(cell="GRU", with_seq_lens=True, with_initial_state=True, direction="reverse"),
    dict(cell="RNN", bidirectional=True, with_seq_lens=True),
    dict(cell="RNN", with_initial_state=True),
]


@pytest.mark.parametrize("kw", CASES, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_stacked_rnn_parity_with_onnxruntime(kw):
    model = make_rnn_model(input_size=6, hidden=7, layers=2, seq_len=5, batch=3, num_classes=4, **kw)
    D = 2 if kw.get("bidirectional") else 1
    _check(model, _inputs(kw["cell"], D=D, seq=kw.get("with_seq_lens", False), init=kw.get("with_initial_state", False)))


def _single_rnn_node(cell, direction, attrs, T=5, B=3, I=4, H=6, peepholes=False, seq=False, seed=0):
    """One ONNX LSTM/GRU/RNN node with every output exposed (Y, Y_h and, for LSTM, Y_c)."""
    from onnx import numpy_helper
    rng = np.random.default_rng(seed)
    D, G = (2 if direction == "bidirectional" else 1), {"LSTM": 4, "GRU": 3, "RNN": 1}[cell]
    inits = [numpy_helper.from_array(rng.uniform(-0.5, 0.5, size).astype(np.float32), n)
             for n, size in (("W", (D, G * H, I)), ("R", (D, G * H, H)), ("B", (D, 2 * G * H)))]
    ins = ["x", "W", "R", "B", "seq_lens" if seq else ""]
    if peepholes:
        inits.append(numpy_helper.from_array(rng.uniform(-0.5, 0.5, (D, 3 * H)).astype(np.float32), "P"))
        ins += ["", "", "P"]
    outs = ["Y", "Y_h"] + (["Y_c"] if cell == "LSTM" else [])
    node = helper.make_node(cell, ins, outs, name="rnn", hidden_size=H, direction=direction, **attrs)
    graph_in = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [T, B, I])]
    if seq:
        graph_in.append(helper.make_tensor_value_info("seq_lens", TensorProto.INT32, [B]))
    shapes = {"Y": [T, D, B, H], "Y_h": [D, B, H], "Y_c": [D, B, H]}
    graph_out = [helper.make_tensor_value_info(o, TensorProto.FLOAT, shapes[o]) for o in outs]
    model = helper.make_model(helper.make_graph([node], "rnn", graph_in, graph_out, inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    inp = {"x": rng.normal(size=(T, B, I)).astype(np.float32) * 2}
    if seq:
        inp["seq_lens"] = np.array([T, 2, 1][:B], np.int32)
    return model, inp


RARE_ATTRS = [
    # peepholes + clip + input_forget: the stacked-direction scan slices P and the gates on the last axis
    ("LSTM", "bidirectional", dict(clip=1.5, input_forget=1), True, True),
    ("LSTM", "bidirectional", dict(clip=0.8), True, False),
    ("GRU", "bidirectional", dict(linear_before_reset=1), False, True),
    ("GRU", "bidirectional", dict(clip=1.0), False, False),
    # different activations per direction: one scan per direction (the fallback of the joint scan)
    ("LSTM", "bidirectional", dict(activations=["Sigmoid", "Tanh", "Tanh", "Sigmoid", "Relu", "Tanh"]), False, True),
    ("RNN", "bidirectional", dict(activations=["Tanh", "Relu"]), False, True),
    ("LSTM", "reverse", dict(clip=1.0), True, True),
    # GRU without linear_before_reset: the scan path's pre-split (R_zr, R_h), one scan per direction
    ("GRU", "reverse", dict(clip=1.0), False, True),
    ("GRU", "bidirectional", dict(activations=["Sigmoid", "Tanh", "Sigmoid", "Relu"]), False, True),
]


@pytest.mark.parametrize("cell,direction,attrs,peepholes,seq", RARE_ATTRS,
                         ids=lambda v: str(v) if not isinstance(v, dict) else "-".join(f"{k}" for k in v))
def test_rnn_attributes_parity_with_onnxruntime(cell, direction, attrs, peepholes, seq):
    model, inp = _single_rnn_node(cell, direction, attrs, peepholes=peepholes, seq=seq)
    _check(model, inp)


@pytest.mark.parametrize("cell,direction,attrs,peepholes,seq", RARE_ATTRS,
                         ids=lambda v: str(v) if not isinstance(v, dict) else "-".join(f"{k}" for k in v))
def test_rnn_attributes_parity_at_batch_one(cell, direction, attrs, peepholes, seq):
    # batch 1 keeps R in ONNX's [G*H, H] layout (onnx_import._rec); the cases above (batch 3) pre-transpose it
    model, inp = _single_rnn_node(cell, direction, attrs, B=1, peepholes=peepholes, seq=seq)
    _check(model, inp)


@pytest.mark.parametrize("B,name,shape", [(1, "rnn/R0", (24, 6)), (3, "rnn/R_T0", (6, 24))])
def test_recurrent_weight_layout_follows_the_batch(B, name, shape):
    model, _ = _single_rnn_node("LSTM", "forward", {}, B=B)
    for expand in (False, True):
        consts = import_onnx(model, expand_rnn=expand).constants
        assert consts[name].shape == shape
        assert not any(k.startswith("rnn/R") and k != name for k in consts), sorted(consts)


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_seq2seq_encoder_decoder_parity(cell):
    model = make_seq2seq_model(cell, vocab=11, embed=6, hidden=8, src_len=5, tgt_len=4, batch=2)
    rng = np.random.default_rng(1)
    inp = {"src": rng.integers(0, 11, (5, 2)).astype(np.int64), "tgt": rng.integers(0, 11, (4, 2)).astype(np.int64)}
    ref = _check(model, inp)
    assert ref["logp"].shape == (4, 2, 11)


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_torch_exported_bidirectional_model(cell):
    torch = pytest.importorskip("torch", reason="torch (interop extra) is needed for torch.onnx.export")

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = getattr(torch.nn, cell)(6, 9, num_layers=2, bidirectional=True)
            self.fc = torch.nn.Linear(18, 3)

        def forward(self, x):
            y, _ = self.rnn(x)
            return torch.softmax(self.fc(y[-1]), -1)

    torch.manual_seed(0)
    net = Net().eval()
    x = torch.randn(5, 2, 6)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Legacy (TorchScript) exporter: the dynamo exporter needs onnxscript, not installed here.
        torch.onnx.export(net, (x,), buf, dynamo=False, input_names=["x"], output_names=["p"], opset_version=17)
    model = onnx.load_from_string(buf.getvalue())
    assert cell in [n.op_type for n in model.graph.node]
    ref = _check(model, {"x": x.numpy()})
    np.testing.assert_allclose(ref["p"], net(x).detach().numpy(), atol=1e-5)


def test_expansion_exposes_layer_time_wavefront():
    T, L = 4, 3
    model = make_rnn_model("LSTM", input_size=5, hidden=6, layers=L, bidirectional=True, seq_len=T, batch=2)
    g = fuse_light_chains(import_onnx(model))
    cells = [i for i, op in enumerate(g.ops) if "LSTMCell" in op.kind]
    assert len(cells) == L * 2 * T
    # Transitive predecessors of layer 1, forward step 0 must not include all of layer 0:
    # it needs layer 0's step 0 in both directions, i.e. the forward step 0 and all backward steps.
    preds = op_preds(g)
    target = next(i for i, op in enumerate(g.ops) if op.group == "lstm_1/d0" and "lstm_1/d0/t0/h" in op.outputs)
    anc, stack = set(), [target]
    while stack:
        for p in preds[stack.pop()]:
            if p not in anc:
                anc.add(p); stack.append(p)
    layer0_fwd = [i for i in anc if g.ops[i].group == "lstm_0/d0" and g.ops[i].heavy]
    assert len(layer0_fwd) == 1, "layer 1 step 0 should wait only for layer 0 forward step 0"


def test_chunked_expansion_keeps_the_wavefront_at_chunk_grain():
    T, L, k = 8, 3, 4
    model = make_rnn_model("GRU", input_size=5, hidden=6, layers=L, seq_len=T, batch=2)
    g = fuse_light_chains(import_onnx(model, rnn_chunk=k))
    chunks = [i for i, op in enumerate(g.ops) if "GRUChunk" in op.kind]
    assert len(chunks) == L * T // k and not any("GRUCell" in op.kind for op in g.ops)
    # layer 1's first chunk waits for layer 0's first chunk only, not for its second
    preds = op_preds(g)
    target = next(i for i in chunks if g.ops[i].group == "gru_1/d0" and "gru_1/d0/t0-3/h" in g.ops[i].outputs)
    anc, stack = set(), [target]
    while stack:
        for p in preds[stack.pop()]:
            if p not in anc:
                anc.add(p); stack.append(p)
    assert [g.ops[i].outputs[0] for i in anc if i in chunks] == ["gru_0/d0/t0-3/h"]
    with pytest.raises(ValueError, match="rnn_chunk"):
        import_onnx(model, rnn_chunk=0)


def test_compiled_single_device_scan_matches_onnxruntime():
    model = make_rnn_model("GRU", input_size=6, hidden=7, layers=2, bidirectional=True, seq_len=5, batch=3,
                           with_seq_lens=True)
    inp = _inputs("GRU", D=2, seq=True)
    ref = run_onnxruntime(model, inp)
    f = compile_single_device(import_onnx(model, expand_rnn=False))
    out = f(inp)
    for k in ref:
        np.testing.assert_allclose(np.asarray(out[k]), ref[k], atol=TOL, rtol=TOL)


@pytest.mark.parametrize("kw", CASES[:2] + CASES[3:], ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_scan_weight_stationary_projection_matches_onnxruntime(kw, monkeypatch):
    """The W @ x^T input projection (used for large weights only) on every small test model, compiled
    with the CPU compiler options the benchmark uses."""
    import jaxlab.serving.onnx_import as oi
    monkeypatch.setattr(oi, "_PROJ_WX_MIN_WEIGHTS", 0)
    model = make_rnn_model(input_size=6, hidden=7, layers=2, seq_len=5, batch=3, num_classes=4, **kw)
    D = 2 if kw.get("bidirectional") else 1
    inp = _inputs(kw["cell"], D=D, seq=kw.get("with_seq_lens", False), init=kw.get("with_initial_state", False))
    ref = run_onnxruntime(model, inp)
    g = import_onnx(model, expand_rnn=False)
    assert any(k.endswith("/W0") for k in g.constants) and not any("/W_T" in k for k in g.constants)
    out = compile_single_device(g)(inp)
    for k in ref:
        np.testing.assert_allclose(np.asarray(out[k]), ref[k], atol=TOL, rtol=TOL, err_msg=k)


def test_device_jit_passes_cpu_compiler_options(monkeypatch):
    import jax
    import jaxlab.serving.graph as graph
    x = np.ones(3, np.float32)
    assert graph.CPU_COMPILER_OPTIONS == {"xla_cpu_prefer_vector_width": 512}
    np.testing.assert_array_equal(np.asarray(graph.device_jit(lambda a: a * 2)(x)), 2 * x)
    # an option XLA does not know proves the options reach the CPU compilation ...
    monkeypatch.setattr(graph, "CPU_COMPILER_OPTIONS", {"xla_cpu_no_such_option": 1})
    with pytest.raises(Exception, match="xla_cpu_no_such_option"):
        graph.device_jit(lambda a: a * 3)(x)
    # ... and {} compiles with XLA's defaults
    np.testing.assert_array_equal(np.asarray(graph.device_jit(lambda a: a * 4, jax.devices()[0], {})(x)), 4 * x)


def _tiny(nodes, inits=(), inputs=None, outputs=None):
    inputs = inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])]
    outputs = outputs or [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])]
    m = helper.make_model(helper.make_graph(nodes, "t", inputs, outputs, list(inits)),
                          opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_unsupported_operator_names_node_and_type():
    m = _tiny([helper.make_node("Erf", ["x"], ["y"], name="my_erf")])
    with pytest.raises(UnsupportedOperatorError, match=r"my_erf.*'Erf'"):
        import_onnx(m)


def test_malformed_model_raises_value_error():
    m = _tiny([helper.make_node("Relu", ["nope"], ["y"], name="bad_relu")])
    with pytest.raises(ValueError, match="malformed|nope"):
        import_onnx(m)
    with pytest.raises(TypeError, match="onnx.ModelProto"):
        import_onnx(42)


def test_symbolic_shape_needs_input_shapes():
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])]
    m = _tiny([helper.make_node("Tanh", ["x"], ["y"], name="t")], inputs=inputs, outputs=outputs)
    with pytest.raises(ValueError, match="input_shapes"):
        import_onnx(m)
    g = import_onnx(m, input_shapes={"x": (4, 3)})
    x = np.linspace(-2, 2, 12, dtype=np.float32).reshape(4, 3)
    np.testing.assert_allclose(evaluate(g, {"x": x})["y"], np.tanh(x.astype(np.float64)), atol=1e-6)


def test_rnn_with_runtime_weights_is_rejected():
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 1, 2]),
              helper.make_tensor_value_info("W", TensorProto.FLOAT, [1, 4, 2]),
              helper.make_tensor_value_info("R", TensorProto.FLOAT, [1, 4, 1])]
    outputs = [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [3, 1, 1, 1])]
    m = _tiny([helper.make_node("LSTM", ["x", "W", "R"], ["Y"], hidden_size=1, name="lstm_dyn")],
              inputs=inputs, outputs=outputs)
    with pytest.raises(UnsupportedOperatorError, match="lstm_dyn.*W"):
        import_onnx(m)
