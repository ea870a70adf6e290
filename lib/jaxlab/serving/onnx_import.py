"""ONNX -> operator DAG (:class:`jaxlab.serving.graph.Graph`) for Chrion.

``import_onnx(model, input_shapes=None, expand_rnn=True)`` checks the model with
``onnx.checker``, resolves static shapes, folds constants (``Shape``, ``Constant``, weight
transposes ...) and converts every node to a pure jax function.

With ``expand_rnn=True`` each ONNX ``LSTM``/``GRU``/``RNN`` node (forward, reverse or
bidirectional; with or without ``sequence_lens``, ``initial_h``/``initial_c``) becomes one
*cell operator per direction and time step*, so the parallelism across stacked layers (a
wavefront over layer x time), directions and time is visible to the partitioner. The sequence
output ``Y`` is kept as per-time-step slices as well as the full tensor; time-preserving ops that
follow it (``Transpose`` keeping axis 0, ``Reshape`` keeping dim 0, ``Squeeze``/``Unsqueeze`` off
axis 0, unary activations, ``MatMul`` by a constant, ``Gather``/``Slice`` on axis 0) are emitted per
slice too, so layer l+1's step t depends only on layer l's step t [our choice: dead-code
elimination afterwards keeps whichever form is used].

With ``expand_rnn=False`` an RNN node stays one operator that runs ``lax.scan`` over time (input
projection for all steps hoisted into one matmul): the "compiled single-device" path.

Supported operators: see ``SUPPORTED_OPS``. Anything else raises :class:`UnsupportedOperatorError`
naming the node and its op type; malformed models raise ``ValueError``.
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np

from jaxlab.serving.graph import HEAVY_KINDS, Graph, Op, ValueInfo, _toposort

__all__ = ["import_onnx", "UnsupportedOperatorError", "SUPPORTED_OPS", "make_rnn_model",
           "make_seq2seq_model", "ort_session", "run_onnxruntime", "compile_single_device"]


class UnsupportedOperatorError(ValueError):
    """An ONNX node whose op type (or attribute) jaxlab.serving cannot convert."""


def _jnp():
    import jax.numpy as jnp
    return jnp


_ACT = {"Sigmoid": lambda x: _jax().nn.sigmoid(x), "Tanh": lambda x: _jnp().tanh(x),
        "Relu": lambda x: _jnp().maximum(x, 0)}


def _jax():
    import jax
    return jax


def _attrs(node) -> dict:
    import onnx
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _s(x):
    return x.decode() if isinstance(x, bytes) else x


class _Builder:
    def __init__(self, opset: int, expand_rnn: bool, rnn_chunk: int = 1):
        self.opset = opset
        self.expand_rnn = expand_rnn
        self.rnn_chunk = rnn_chunk
        self.ops: list[Op] = []
        self.values: dict = {}
        self.constants: dict = {}
        self.split: dict = {}   # value -> list of per-time-step slice names ([1, ...] each)
        self._n = 0

    def fresh(self, base: str) -> str:
        self._n += 1
        return f"{base}__{self._n}"

    def const(self, name: str, arr) -> str:
        arr = np.asarray(arr)
        if arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        self.constants[name] = arr
        self.values[name] = ValueInfo(tuple(arr.shape), arr.dtype.name)
        return name

    def is_const(self, v: str) -> bool:
        return v in self.constants

    def cval(self, v: str, node, what: str) -> np.ndarray:
        if v not in self.constants:
            raise UnsupportedOperatorError(
                f"node '{node.name}' ({node.op_type}): input '{v}' ({what}) must be a constant or initializer "
                "for a static graph; export the model with constant folding and static shapes")
        return self.constants[v]

    def shape(self, v: str) -> tuple:
        return self.values[v].shape

    def emit(self, kind, inputs, outputs, fn, attr_key=(), flops=0.0, group="", heavy=None):
        """Adds an op, or folds it to constants when every input is constant."""
        import jax
        inputs = tuple(inputs)
        if all(self.is_const(v) for v in inputs):
            res = fn(*[self.constants[v] for v in inputs])
            for name, r in zip(outputs, res):
                self.const(name, np.asarray(r))
            return
        specs = [jax.ShapeDtypeStruct(self.values[v].shape, _jax_dtype(self.values[v].dtype)) for v in inputs]
        out_specs = jax.eval_shape(fn, *specs)
        for name, sp in zip(outputs, out_specs):
            self.values[name] = ValueInfo(tuple(sp.shape), np.dtype(sp.dtype).name)
        sig = (kind, attr_key, tuple(self.values[v] for v in inputs))
        heavy = (kind in HEAVY_KINDS) if heavy is None else heavy
        self.ops.append(Op(name=outputs[0] + "@op",
                           kind=kind, inputs=inputs, outputs=tuple(outputs), fn=fn, signature=sig,
                           flops=float(flops), group=group, heavy=heavy))


def _jax_dtype(name: str):
    # Without jax_enable_x64, int64/float64 arrays enter jax as 32-bit.
    return {"int64": np.int32, "float64": np.float32}.get(name, np.dtype(name))


# ---------------------------------------------------------------------------------------------
# Converters: (builder, node, inputs, outputs, attrs) -> None
# ---------------------------------------------------------------------------------------------

def _unary(jfn):
    def conv(b, node, ins, outs, at):
        b.emit(node.op_type, [ins[0]], outs, lambda x: (jfn(x),))
        _split_unary(b, ins[0], outs[0], lambda x: (jfn(x),), node.op_type)
    return conv


def _split_unary(b, x, y, fn, kind, attr_key=()):
    if x in b.split:
        names = []
        for t, s in enumerate(b.split[x]):
            n = f"{y}__t{t}"
            b.emit(kind, [s], [n], fn, attr_key)
            names.append(n)
        b.split[y] = names


def _binary(jfn):
    def conv(b, node, ins, outs, at):
        b.emit(node.op_type, ins[:2], outs, lambda x, y: (jfn(x, y),))
    return conv


def _identity(b, node, ins, outs, at):
    _unary(lambda x: x)(b, node, ins, outs, at)


def _constant(b, node, ins, outs, at):
    import onnx
    if "value" in at:
        b.const(outs[0], onnx.numpy_helper.to_array(at["value"]))
    elif "value_float" in at:
        b.const(outs[0], np.array(at["value_float"], np.float32))
    elif "value_floats" in at:
        b.const(outs[0], np.array(at["value_floats"], np.float32))
    elif "value_int" in at:
        b.const(outs[0], np.array(at["value_int"], np.int64))
    elif "value_ints" in at:
        b.const(outs[0], np.array(at["value_ints"], np.int64))
    else:
        raise UnsupportedOperatorError(f"node '{node.name}' (Constant): attribute {sorted(at)} is not supported")


def _shape(b, node, ins, outs, at):
    shp = np.array(b.shape(ins[0]), np.int64)
    start, end = at.get("start", 0), at.get("end", None)
    b.const(outs[0], shp[start:end])


def _constant_of_shape(b, node, ins, outs, at):
    import onnx
    shape = tuple(int(s) for s in b.cval(ins[0], node, "shape"))
    val = onnx.numpy_helper.to_array(at["value"]) if "value" in at else np.zeros(1, np.float32)
    b.const(outs[0], np.full(shape, val.reshape(-1)[0], dtype=val.dtype))


def _cast(b, node, ins, outs, at):
    import onnx
    to = onnx.helper.tensor_dtype_to_np_dtype(at["to"])
    b.emit("Cast", [ins[0]], outs, lambda x: (x.astype(to),), (str(to),))


def _matmul(b, node, ins, outs, at):
    a, w = ins[0], ins[1]
    sa, sw = b.shape(a), b.shape(w)
    flops = 2.0 * np.prod(sa) * (sw[-1] if len(sw) else 1)
    b.emit("MatMul", [a, w], outs, lambda x, y: (_jnp().matmul(x, y),), flops=flops)
    if a in b.split and b.is_const(w) and len(sw) == 2 and len(sa) >= 2:
        names = []
        for t, s in enumerate(b.split[a]):
            n = f"{outs[0]}__t{t}"
            b.emit("MatMul", [s, w], [n], lambda x, y: (_jnp().matmul(x, y),), flops=flops / sa[0])
            names.append(n)
        b.split[outs[0]] = names


def _gemm(b, node, ins, outs, at):
    alpha, beta = float(at.get("alpha", 1.0)), float(at.get("beta", 1.0))
    ta, tb = int(at.get("transA", 0)), int(at.get("transB", 0))
    has_c = len(ins) > 2 and ins[2] != ""

    def fn(a, w, *c):
        jnp = _jnp()
        a = a.T if ta else a
        w = w.T if tb else w
        y = jnp.matmul(a, w)
        if alpha != 1.0:
            y = alpha * y
        if c:
            y = y + (beta * c[0] if beta != 1.0 else c[0])
        return (y,)
    sa = b.shape(ins[0])
    sw = b.shape(ins[1])
    flops = 2.0 * np.prod(sa) * (sw[0] if tb else sw[1])
    b.emit("Gemm", ins[:3] if has_c else ins[:2], outs, fn, (alpha, beta, ta, tb), flops)


def _softmax(log: bool):
    def conv(b, node, ins, outs, at):
        rank = len(b.shape(ins[0]))
        axis = int(at.get("axis", -1 if b.opset >= 13 else 1))
        axis = axis + rank if axis < 0 else axis
        legacy = b.opset < 13

        def fn(x):
            jax = _jax()
            if legacy:  # opset < 13 coerces to 2-D at `axis`
                shp = x.shape
                x2 = x.reshape(int(np.prod(shp[:axis])), -1)
                y = jax.nn.log_softmax(x2, axis=1) if log else jax.nn.softmax(x2, axis=1)
                return (y.reshape(shp),)
            return (jax.nn.log_softmax(x, axis=axis) if log else jax.nn.softmax(x, axis=axis),)
        b.emit(node.op_type, [ins[0]], outs, fn, (axis, legacy))
    return conv


def _axes(b, node, ins, at, idx=1):
    if "axes" in at:
        return [int(a) for a in at["axes"]]
    if len(ins) > idx and ins[idx]:
        return [int(a) for a in b.cval(ins[idx], node, "axes")]
    return None


def _squeeze(b, node, ins, outs, at):
    shp = b.shape(ins[0])
    axes = _axes(b, node, ins, at)
    axes = [i for i, s in enumerate(shp) if s == 1] if axes is None else [a % len(shp) for a in axes]
    axes = tuple(sorted(axes))
    fn = lambda x: (_jnp().squeeze(x, axis=axes),)
    b.emit("Squeeze", [ins[0]], outs, fn, (axes,))
    if 0 not in axes:
        _split_unary(b, ins[0], outs[0], fn, "Squeeze", (axes,))


def _unsqueeze(b, node, ins, outs, at):
    rank = len(b.shape(ins[0]))
    axes = _axes(b, node, ins, at)
    out_rank = rank + len(axes)
    axes = tuple(sorted(a % out_rank for a in axes))
    fn = lambda x: (_jnp().expand_dims(x, axes),)
    b.emit("Unsqueeze", [ins[0]], outs, fn, (axes,))
    if 0 not in axes:
        _split_unary(b, ins[0], outs[0], fn, "Unsqueeze", (axes,))


def _transpose(b, node, ins, outs, at):
    rank = len(b.shape(ins[0]))
    perm = tuple(int(p) for p in at.get("perm", list(range(rank))[::-1]))
    fn = lambda x: (_jnp().transpose(x, perm),)
    b.emit("Transpose", [ins[0]], outs, fn, (perm,))
    if perm[0] == 0:
        _split_unary(b, ins[0], outs[0], fn, "Transpose", (perm,))


def _reshape(b, node, ins, outs, at):
    src = b.shape(ins[0])
    target = [int(s) for s in b.cval(ins[1], node, "shape")]
    allowzero = int(at.get("allowzero", 0))
    target = [src[i] if (s == 0 and not allowzero) else s for i, s in enumerate(target)]
    if -1 in target:
        known = int(np.prod([s for s in target if s != -1]))
        target[target.index(-1)] = int(np.prod(src)) // max(known, 1)
    if int(np.prod(target)) != int(np.prod(src)):
        raise ValueError(f"node '{node.name}' (Reshape): cannot reshape {src} to {target}")
    tgt = tuple(target)
    b.emit("Reshape", [ins[0]], outs, lambda x: (x.reshape(tgt),), (tgt,))
    if ins[0] in b.split and tgt[0] == src[0]:
        tslice = (1,) + tgt[1:]
        _split_unary(b, ins[0], outs[0], lambda x: (x.reshape(tslice),), "Reshape", (tslice,))


def _flatten(b, node, ins, outs, at):
    src = b.shape(ins[0])
    axis = int(at.get("axis", 1)) % max(len(src), 1)
    tgt = (int(np.prod(src[:axis])), int(np.prod(src[axis:])))
    b.emit("Reshape", [ins[0]], outs, lambda x: (x.reshape(tgt),), (tgt,))


def _concat(b, node, ins, outs, at):
    ins = [v for v in ins if v]
    rank = len(b.shape(ins[0]))
    axis = int(at["axis"]) % rank
    b.emit("Concat", ins, outs, lambda *xs: (_jnp().concatenate(xs, axis=axis),), (axis,))
    if axis != 0 and all(v in b.split for v in ins):
        names = []
        for t in range(len(b.split[ins[0]])):
            n = f"{outs[0]}__t{t}"
            b.emit("Concat", [b.split[v][t] for v in ins], [n],
                   lambda *xs: (_jnp().concatenate(xs, axis=axis),), (axis,))
            names.append(n)
        b.split[outs[0]] = names


def _slice(b, node, ins, outs, at):
    shp = b.shape(ins[0])
    if b.opset < 10:
        starts, ends = at["starts"], at["ends"]
        axes = at.get("axes", list(range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts = [int(s) for s in b.cval(ins[1], node, "starts")]
        ends = [int(s) for s in b.cval(ins[2], node, "ends")]
        axes = [int(s) for s in b.cval(ins[3], node, "axes")] if len(ins) > 3 and ins[3] else list(range(len(starts)))
        steps = [int(s) for s in b.cval(ins[4], node, "steps")] if len(ins) > 4 and ins[4] else [1] * len(starts)
    idx = [slice(None)] * len(shp)
    for s, e, a, st in zip(starts, ends, axes, steps):
        a = a % len(shp)
        idx[a] = slice(*slice(int(s), int(e), int(st)).indices(shp[a]))
    key = tuple((sl.start, sl.stop, sl.step) for sl in idx)
    tidx = tuple(idx)
    only_time = all(idx[k] == slice(0, shp[k], 1) for k in range(1, len(shp)))
    if ins[0] in b.split and only_time:
        # A time range of a per-step value: reuse the step slices (no barrier on the whole sequence).
        parts = [b.split[ins[0]][t] for t in range(shp[0])[idx[0]]]
        b.emit("Concat", parts, outs, lambda *xs: (_jnp().concatenate(xs, axis=0),), (0,))
        b.split[outs[0]] = parts
        return
    b.emit("Slice", [ins[0]], outs, lambda x: (x[tidx],), (key,))


def _gather(b, node, ins, outs, at):
    shp = b.shape(ins[0])
    axis = int(at.get("axis", 0)) % len(shp)
    data, ind = ins[0], ins[1]
    if b.is_const(ind) and np.ndim(b.constants[ind]) == 0 and axis == 0 and data in b.split:
        t = int(b.constants[ind]) % shp[0]
        s = b.split[data][t]
        rest = b.shape(s)[1:]
        b.emit("Reshape", [s], outs, lambda x: (x.reshape(rest),), (rest,))
        return
    if b.is_const(ind) and not b.is_const(data):
        iv = np.asarray(b.constants[ind])
        b.emit("Gather", [data], outs, lambda x: (_jnp().take(x, iv, axis=axis),), (axis, iv.tobytes(), iv.shape))
        return
    b.emit("Gather", [data, ind], outs, lambda x, i: (_jnp().take(x, i.astype(np.int32) % x.shape[axis], axis=axis),), (axis,))


def _split(b, node, ins, outs, at):
    shp = b.shape(ins[0])
    axis = int(at.get("axis", 0)) % len(shp)
    if "split" in at:
        sizes = [int(s) for s in at["split"]]
    elif len(ins) > 1 and ins[1]:
        sizes = [int(s) for s in b.cval(ins[1], node, "split")]
    else:
        n = len(outs)
        sizes = [shp[axis] // n] * n
    bounds = np.cumsum([0] + sizes)
    for o, lo, hi in zip(outs, bounds[:-1], bounds[1:]):
        idx = tuple([slice(None)] * axis + [slice(int(lo), int(hi))])
        b.emit("Slice", [ins[0]], [o], lambda x, idx=idx: (x[idx],), ((axis, int(lo), int(hi)),))


def _expand(b, node, ins, outs, at):
    shape = tuple(int(s) for s in b.cval(ins[1], node, "shape"))
    b.emit("Expand", [ins[0]], outs, lambda x: (x * _jnp().ones(shape, x.dtype),), (shape,))


def _argmax(b, node, ins, outs, at):
    axis, keep = int(at.get("axis", 0)), int(at.get("keepdims", 1))
    if int(at.get("select_last_index", 0)):
        raise UnsupportedOperatorError(f"node '{node.name}' (ArgMax): select_last_index=1 is not supported")
    b.emit("ArgMax", [ins[0]], outs,
           lambda x: (_jnp().argmax(x, axis=axis, keepdims=bool(keep)),), (axis, keep))


# ----- recurrent nodes ----------------------------------------------------------------------

_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
_SCAN_UNROLL = [1]
_JOINT_SCAN_MAX_HIDDEN = 512  # bidirectional layers below this hidden size: one scan for both directions
# Input projections of the scan path with at least this many weights are computed as W @ x^T
# (weights in ONNX's own [G*H, I] layout) and transposed back behind an optimization barrier;
# see _rnn_scan for the measurements behind the threshold [our choice].
_PROJ_WX_MIN_WEIGHTS = 1 << 19
_DEFAULT_ACTS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}


def _rnn_params(b, node, ins, at):
    kind = node.op_type
    if int(at.get("layout", 0)) != 0:
        raise UnsupportedOperatorError(f"node '{node.name}' ({kind}): layout=1 (batch-major) is not supported; export with layout=0")
    direction = _s(at.get("direction", b"forward"))
    if direction not in ("forward", "reverse", "bidirectional"):
        raise ValueError(f"node '{node.name}' ({kind}): unknown direction '{direction}'")
    D = 2 if direction == "bidirectional" else 1
    H = int(at["hidden_size"]) if "hidden_size" in at else None
    acts = [_s(a) for a in at.get("activations", [])] or _DEFAULT_ACTS[kind] * D
    if len(acts) == len(_DEFAULT_ACTS[kind]):
        acts = acts * D
    for a in acts:
        if a not in _ACT:
            raise UnsupportedOperatorError(f"node '{node.name}' ({kind}): activation '{a}' is not supported (Sigmoid, Tanh, Relu)")
    if "activation_alpha" in at or "activation_beta" in at:
        raise UnsupportedOperatorError(f"node '{node.name}' ({kind}): activation_alpha/beta are not supported")
    clip = float(at["clip"]) if "clip" in at else None
    W = b.cval(ins[1], node, "W").astype(np.float32)
    R = b.cval(ins[2], node, "R").astype(np.float32)
    G = _GATES[kind]
    H = H or R.shape[-1]
    if W.shape[0] != D or W.shape[1] != G * H or R.shape != (D, G * H, H):
        raise ValueError(f"node '{node.name}' ({kind}): W {W.shape} / R {R.shape} do not match "
                         f"directions={D}, gates={G}, hidden_size={H}")
    get = lambda k: ins[k] if len(ins) > k and ins[k] else None
    Bv = b.cval(get(3), node, "B").astype(np.float32) if get(3) else np.zeros((D, 2 * G * H), np.float32)
    P = None
    if kind == "LSTM" and get(7):
        P = b.cval(get(7), node, "P").astype(np.float32)
    return dict(kind=kind, direction=direction, D=D, H=H, G=G, acts=acts, clip=clip, W=W, R=R, B=Bv, P=P,
                seq=get(4), h0=get(5), c0=get(6) if kind == "LSTM" else None,
                input_forget=int(at.get("input_forget", 0)), lbr=int(at.get("linear_before_reset", 0)))


def _rec(h, R, rows: bool):
    """The recurrent product of a step: h [B, H] -> [B, G*H], or, both directions at once,
    h [D, B, H] -> [D, B, G*H] (a batched product).

    ``rows=True``: R in ONNX's own layout [G*H, H] (or [D, G*H, H]), the product ``h @ R^T``;
    ``rows=False``: R pre-transposed at import to R_T [H, G*H] (or [D, H, G*H]), ``h @ R_T``.
    :func:`_rnn_node` takes ``rows`` for batch 1 only [our choice, measured 2026-12-06 on this 2-core
    CPU, one LSTM scan, interleaved medians, /work/scratch/layout.py and layoutB.py]. At B=1 (T=64)
    XLA:CPU runs the rows form (each gate unit's weights one contiguous row, a dot product over h)
    faster: 11.6-12.0 vs 13.0-13.3 us per step at hidden 256, 28.5 vs 33.5 at 512, 131 vs 188 at 1024;
    parity 1.5e-7. At B = 2 / 4 / 8 (T=32) it is slower, rows / R_T per step: hidden 256 1.90 / 1.26 /
    1.03, 512 2.27 / 2.19 / 1.70, 1024 1.04 / 1.53 / 1.33.

    At hidden 256 this product is the whole step: in the same scan an LSTM step took 11.8 us, the
    product alone 11.4 and an empty step 0.3 (/work/scratch/floor.py), i.e. one core reading the
    1 MiB R; ONNX Runtime splits it over its two threads, XLA:CPU does not at this size (process
    CPU / wall ~1.0 at hidden 256, ~1.9 from hidden 512)."""
    if not rows:
        return h @ R
    lax = _jax().lax
    if R.ndim == 3:
        return lax.dot_general(h, R, (((2,), (2,)), ((0,), (0,))))
    return lax.dot_general(h, R, (((h.ndim - 1,), (1,)), ((), ())))


def _split_gru_r(R, H, rows: bool):
    """(R_zr, R_h): the update/reset gates' block and the candidate's block of a GRU's R."""
    return (R[..., :2 * H, :], R[..., 2 * H:, :]) if rows else (R[..., :2 * H], R[..., 2 * H:])


def _cell_math(p, d):
    """Returns step(xw, h, c, R, bR, P) -> (h, c) for direction d, where xw = x @ W_T + bias part
    and R is the recurrent weight in the layout ``p["r_rows"]`` chooses (see :func:`_rec`).

    Gate slices index the last axis, so the same step also runs both directions of a
    bidirectional layer at once: h, c [D, B, H], R [D, G*H, H] (or [D, H, G*H]), bR and P
    [D, 1, .] (the recurrent product is then a batched matmul).
    """
    kind, H, rows = p["kind"], p["H"], p["r_rows"]
    acts = [_ACT[a] for a in p["acts"][d * len(_DEFAULT_ACTS[kind]):(d + 1) * len(_DEFAULT_ACTS[kind])]]
    clip = p["clip"]
    cl = (lambda x: _jnp().clip(x, -clip, clip)) if clip is not None else (lambda x: x)
    input_forget, lbr = p["input_forget"], p["lbr"]

    if kind == "LSTM":
        f_act, g_act, h_act = acts

        def step(xw, h, c, R, bR, Pd):
            g = xw + _rec(h, R, rows) + bR
            if Pd is None and not input_forget:
                # i, o, f are contiguous in ONNX's iofc order: one activation over the block
                # (fewer XLA kernels per step; same values).
                s = f_act(cl(g[..., :3 * H]))
                c_new = s[..., 2 * H:] * c + s[..., :H] * g_act(cl(g[..., 3 * H:]))
                return s[..., H:2 * H] * h_act(c_new), c_new
            gi, go, gf, gc = g[..., :H], g[..., H:2 * H], g[..., 2 * H:3 * H], g[..., 3 * H:]
            if Pd is not None:
                gi = gi + Pd[..., :H] * c
                gf = gf + Pd[..., 2 * H:] * c
            i = f_act(cl(gi))
            f = (1.0 - i) if input_forget else f_act(cl(gf))
            c_new = f * c + i * g_act(cl(gc))
            if Pd is not None:
                go = go + Pd[..., H:2 * H] * c_new
            o = f_act(cl(go))
            return o * h_act(c_new), c_new
    elif kind == "GRU":
        f_act, g_act = acts

        def step(xw, h, c, R, bR, Pd):
            if lbr:
                gh = _rec(h, R, rows) + bR
                z = f_act(cl(xw[..., :H] + gh[..., :H]))
                r = f_act(cl(xw[..., H:2 * H] + gh[..., H:2 * H]))
                hh = g_act(cl(xw[..., 2 * H:] + r * gh[..., 2 * H:]))
            else:
                # R may come pre-split as (R_zr, R_h) (the scan path): a slice of the weights inside
                # a lax.scan body is copied on every step by XLA:CPU (measured 2026-12-05, T=32, B=1,
                # then on the transposed layout: 2.32 vs 0.45 ms at hidden 256, 10.2 vs 4.5 ms at 512).
                R_zr, R_h = R if isinstance(R, tuple) else _split_gru_r(R, H, rows)
                gzr = _rec(h, R_zr, rows) + bR[..., :2 * H]
                z = f_act(cl(xw[..., :H] + gzr[..., :H]))
                r = f_act(cl(xw[..., H:2 * H] + gzr[..., H:]))
                hh = g_act(cl(xw[..., 2 * H:] + _rec(r * h, R_h, rows) + bR[..., 2 * H:]))
            return (1.0 - z) * hh + z * h, c
    else:
        (f_act,) = acts

        def step(xw, h, c, R, bR, Pd):
            return f_act(cl(xw + _rec(h, R, rows) + bR)), c
    return step


def _rnn_node(b, node, ins, outs, at):
    p = _rnn_params(b, node, ins, at)
    X = ins[0]
    T, B, I = b.shape(X)
    kind, D, H, G = p["kind"], p["D"], p["H"], p["G"]
    base = node.name or outs[0]
    # Weights per direction: W pre-transposed once at import (x @ W_T is what both paths compute);
    # R in ONNX's [G*H, H] layout at batch 1, pre-transposed otherwise (see _rec).
    p["r_rows"] = B == 1
    # LSTM/RNN: both biases are summed into the input projection; GRU keeps Rb separate because
    # of the reset gate.
    consts = []
    for d in range(D):
        Wt = b.const(f"{base}/W_T{d}", p["W"][d].T.copy())
        Rt = (b.const(f"{base}/R{d}", np.ascontiguousarray(p["R"][d])) if p["r_rows"]
              else b.const(f"{base}/R_T{d}", p["R"][d].T.copy()))
        Wb, Rb = p["B"][d, :G * H], p["B"][d, G * H:]
        if kind == "GRU":
            bW, bR = b.const(f"{base}/bW{d}", Wb), b.const(f"{base}/bR{d}", Rb)
        else:
            bW, bR = b.const(f"{base}/bW{d}", Wb + Rb), b.const(f"{base}/bR{d}", np.zeros_like(Rb))
        Pd = b.const(f"{base}/P{d}", p["P"][d]) if p["P"] is not None else None
        consts.append((Wt, Rt, bW, bR, Pd))
    seq, h0, c0 = p["seq"], p["h0"], p["c0"]
    out_y = outs[0] if len(outs) > 0 and outs[0] else None
    out_h = outs[1] if len(outs) > 1 and outs[1] else None
    out_c = outs[2] if len(outs) > 2 and outs[2] else None
    flops_step = 2.0 * B * (I + H) * G * H
    if not b.expand_rnn:
        _rnn_scan(b, p, X, consts, seq, h0, c0, out_y, out_h, out_c, (T, B, I), flops_step, base)
        return
    xs = b.split.get(X)
    last_h, last_c, ys = [], [], [[None] * D for _ in range(T)]
    for d in range(D):
        reverse = p["direction"] == "reverse" or d == 1
        step = _cell_math(p, d)
        h_prev, c_prev = None, None
        chunk = max(1, int(b.rnn_chunk))
        for k0 in range(0, T, chunk):
            steps = [T - 1 - k if reverse else k for k in range(k0, min(k0 + chunk, T))]
            if len(steps) > 1:
                h_prev, c_prev = _emit_chunk(b, p, d, steps, xs, X, consts[d], step, h_prev, c_prev, h0, c0, seq,
                                             (B, H), flops_step, base, ys)
                continue
            t = steps[0]
            x_mode = "slice" if xs is not None else "full"
            names, vals, h_mode, c_mode = _cell_args(b, kind, ["x"], [xs[t] if xs is not None else X], consts[d],
                                                     h_prev, c_prev, h0, c0, seq, x_mode == "full", base, t)
            fn = _make_cell_fn(step, tuple(names), d, x_mode, h_mode, c_mode, B, H, kind)
            tag = f"{base}/d{d}/t{t}"
            o_names = [f"{tag}/h", f"{tag}/y"] + ([f"{tag}/c"] if kind == "LSTM" else [])
            b.emit(f"{kind}Cell", vals, o_names, fn,
                   (tuple(names), d, x_mode, h_mode, c_mode, bool(seq), tuple(p["acts"]), p["clip"],
                    p["input_forget"], p["lbr"]), flops_step, group=f"{base}/d{d}", heavy=True)
            h_prev = o_names[0]
            c_prev = o_names[2] if kind == "LSTM" else None
            ys[t][d] = o_names[1]
        last_h.append(h_prev)
        last_c.append(c_prev)
    # Y[t] = concat over directions, [1, D, B, H]; Y = concat over time; Y_h/Y_c stack directions.
    slices = []
    for t in range(T):
        if D == 1:
            slices.append(ys[t][0])
        else:
            n = f"{base}/y{t}"
            b.emit("Concat", ys[t], [n], lambda *a: (_jnp().concatenate(a, axis=1),), (1,))
            slices.append(n)
    if out_y:
        b.emit("Concat", slices, [out_y], lambda *a: (_jnp().concatenate(a, axis=0),), (0,))
        b.split[out_y] = slices
    if out_h:
        b.emit("Stack", last_h, [out_h], lambda *a: (_jnp().stack(a, axis=0),), ())
    if out_c:
        if kind != "LSTM":
            raise ValueError(f"node '{node.name}' ({kind}) has no cell-state output")
        b.emit("Stack", last_c, [out_c], lambda *a: (_jnp().stack(a, axis=0),), ())


def _cell_args(b, kind, x_names, x_vals, consts_d, h_prev, c_prev, h0, c0, seq, need_t, base, t):
    """Argument names/values of a cell or chunk operator and its (h_mode, c_mode): the inputs,
    the direction's weights, the recurrent state (previous op's, the graph's initial state, or
    zeros), sequence lengths, and the first step index ``t`` when the op needs it."""
    Wt, Rt, bW, bR, Pd = consts_d
    h_mode = "prev" if h_prev else ("init" if h0 else "zero")
    c_mode = "none" if kind != "LSTM" else ("prev" if c_prev else ("init" if c0 else "zero"))
    names, vals = list(x_names) + ["W", "R", "bW", "bR"], list(x_vals) + [Wt, Rt, bW, bR]
    if Pd is not None:
        names.append("P"); vals.append(Pd)
    if h_mode != "zero":
        names.append("h"); vals.append(h_prev or h0)
    if c_mode in ("prev", "init"):
        names.append("c"); vals.append(c_prev or c0)
    if seq:
        names.append("seq"); vals.append(seq)
    if need_t or seq:
        # The step index is an argument, not a closure constant, so every step (chunk) of a layer
        # shares one executable (and one profile entry) honestly.
        names.append("t"); vals.append(b.const(f"{base}/step{t}", np.array(t, np.int32)))
    return names, vals, h_mode, c_mode


def _initial_state(a, d, h_mode, c_mode, B, H, dt):
    jnp = _jnp()
    h = jnp.zeros((B, H), dt) if h_mode == "zero" else (a["h"][d] if h_mode == "init" else a["h"])
    if c_mode == "zero":
        return h, jnp.zeros((B, H), dt)
    if c_mode in ("init", "prev"):
        return h, (a["c"][d] if c_mode == "init" else a["c"])
    return h, h


def _make_cell_fn(step, names, d, x_mode, h_mode, c_mode, B, H, kind):
    def fn(*args):
        jnp = _jnp()
        a = dict(zip(names, args))
        if x_mode == "full":
            x = _jax().lax.dynamic_index_in_dim(a["x"], a["t"], axis=0, keepdims=False)
        else:
            x = a["x"].reshape(a["x"].shape[1:])
        h, c = _initial_state(a, d, h_mode, c_mode, B, H, x.dtype)
        xw = x @ a["W"] + a["bW"]
        h_new, c_new = step(xw, h, c, a["R"], a["bR"], a.get("P"))
        if "seq" in a:
            m = (a["t"] < a["seq"].astype(jnp.int32))[:, None]
            h_new = jnp.where(m, h_new, h)
            c_new = jnp.where(m, c_new, c)
            y = jnp.where(m, h_new, 0.0)
        else:
            y = h_new
        out = (h_new, y.reshape(1, 1, B, H))
        return out + ((c_new,) if kind == "LSTM" else ())
    return fn


def _emit_chunk(b, p, d, steps, xs, X, consts_d, step, h_prev, c_prev, h0, c0, seq, dims, flops_step, base, ys):
    """Emits the consecutive time steps ``steps`` (processing order) of direction ``d`` as one
    ``{kind}Chunk`` operator: the chunk's input projection as one matmul, then its cells in sequence.
    Outputs ``h`` (and ``c``) after the chunk and every step's ``y`` slice under the same names as
    the cell expansion, so time-preserving consumers still see per-step values (the wavefront across
    layers survives at chunk granularity). Returns the (h, c) value names."""
    kind = p["kind"]
    B, H = dims
    n = len(steps)
    sign = 1 if steps[-1] > steps[0] else -1
    x_mode = "slice" if xs is not None else "full"
    if x_mode == "slice":
        x_names, x_vals = [f"x{j}" for j in range(n)], [xs[t] for t in steps]
    else:
        x_names, x_vals = ["x"], [X]
    names, vals, h_mode, c_mode = _cell_args(b, kind, x_names, x_vals, consts_d, h_prev, c_prev, h0, c0, seq,
                                             x_mode == "full", base, steps[0])
    fn = _make_chunk_fn(step, tuple(names), d, x_mode, h_mode, c_mode, B, H, kind, n, sign)
    tag = f"{base}/d{d}/t{steps[0]}-{steps[-1]}"
    y_names = [f"{base}/d{d}/t{t}/y" for t in steps]
    o_names = [f"{tag}/h"] + ([f"{tag}/c"] if kind == "LSTM" else []) + y_names
    b.emit(f"{kind}Chunk", vals, o_names, fn,
           (tuple(names), d, x_mode, h_mode, c_mode, bool(seq), n, sign, tuple(p["acts"]), p["clip"],
            p["input_forget"], p["lbr"]), flops_step * n, group=f"{base}/d{d}", heavy=True)
    for t, y in zip(steps, y_names):
        ys[t][d] = y
    return o_names[0], (o_names[1] if kind == "LSTM" else None)


def _make_chunk_fn(step, names, d, x_mode, h_mode, c_mode, B, H, kind, n, sign):
    def fn(*args):
        jax, jnp = _jax(), _jnp()
        a = dict(zip(names, args))
        if x_mode == "full":
            first = a["t"] if sign > 0 else a["t"] - (n - 1)
            x = jax.lax.dynamic_slice_in_dim(a["x"], first, n, axis=0)   # [n, B, I], time order
            x = x[::-1] if sign < 0 else x                                # processing order
        else:
            x = jnp.concatenate([a[f"x{j}"] for j in range(n)], axis=0)  # [n, B, I]
        h, c = _initial_state(a, d, h_mode, c_mode, B, H, x.dtype)
        xw = (x.reshape(n * B, -1) @ a["W"]).reshape(n, B, -1) + a["bW"]
        t0 = a["t"] if "t" in a else jnp.int32(0)
        seqv = a["seq"].astype(jnp.int32) if "seq" in a else None

        # a lax.scan over the chunk, as the single-device path: XLA:CPU runs straight-line unrolled
        # cells markedly slower than the same cells in a loop body
        def body(carry, inp):
            h, c = carry
            xw_j, j = inp
            hn, cn = step(xw_j, h, c, a["R"], a["bR"], a.get("P"))
            if seqv is not None:
                m = ((t0 + sign * j) < seqv)[:, None]
                hn, cn = jnp.where(m, hn, h), jnp.where(m, cn, c)
                y = jnp.where(m, hn, 0.0)
            else:
                y = hn
            return (hn, cn), y
        (h, c), y = jax.lax.scan(body, (h, c), (xw, jnp.arange(n, dtype=jnp.int32)))
        ys = [y[j].reshape(1, 1, B, H) for j in range(n)]
        return (h,) + ((c,) if kind == "LSTM" else ()) + tuple(ys)
    return fn


def _rnn_scan(b, p, X, consts, seq, h0, c0, out_y, out_h, out_c, dims, flops_step, base):
    T, B, I = dims
    kind, D, H = p["kind"], p["D"], p["H"]
    steps = [_cell_math(p, d) for d in range(D)]
    n_act = len(_DEFAULT_ACTS[kind])
    # Both directions of a bidirectional layer in ONE lax.scan, the recurrent products as one batched
    # matmul [2, B, H] x [2, G*H, H]^T, below hidden 512 only [our choice, measured 2026-12-03 at B=1 on this
    # 2-core CPU with benchmarks.chrion, two runs each: hidden 256 0.77-0.93x the time of one scan per
    # direction; hidden 512 1.0-1.3x and hidden 1024 1.25-1.7x, with process CPU / wall about 1.9 either way,
    # so XLA:CPU's batched-matmul kernel, not its threading, is the slower one there]. Slicing a stacked R
    # inside the body copies it every step, so the stacked weights are import-time constants. Needs the
    # same activations in both directions (one step function); otherwise one scan per direction.
    # Also measured 2026-12-03 (scratch, B=1, hidden 256, T 64), not adopted: two independent scans in one
    # jitted function run one after the other on XLA:CPU (2.16-2.38 ms vs 1.10-1.18 ms for one), so a
    # stacked model's layers cannot overlap inside one executable; two host threads on one CPU device do
    # overlap two 1.1 ms calls (1.27 ms for both), but a layer wavefront cut into 2 or 4 chunks per layer
    # (two threads, or async dispatch over two host devices) took 3.3-6.1 ms against 2.8-3.3 ms for the
    # whole-model scan: at chunks of 0.3-0.7 ms the hand-offs cost more than the overlap gains. Splitting
    # the recurrent product by columns into a batched [2|4, H, .] matmul was 1.2x slower than one dot.
    # Also measured 2026-12-05, not adopted: the YNN/XNN library-fusion types (LIBRARY_FUSION_TYPE_DOT,
    # _INDIVIDUAL_DOT, +ELTWISE) as compiler options leave the in-loop [1, H] dot to XLA's own kernel and
    # change nothing (0.35-0.36 ms at hidden 256, 2.12-2.24 ms at 512, T=32); XLA without its Eigen pool
    # per compilation: 0.93-0.96x at hidden 256, 1.13x at 512 (2 layers, T=16); a numba LSTM layer calling
    # OpenBLAS sgemv per step: 2.5-6.9x ORT's time (hidden 256-1024, T=32; 2.5-4.2x with one BLAS
    # thread). Per step our scan is now within ~10% of ORT's LSTM (hidden 256, T 16 -> 64 slope 35.5 vs
    # 31.9 us per step for 2 layers); the rest of the gap on short sequences is a per-call intercept
    # (2 layers, hidden 256: T=1 0.26-0.27 ms vs ORT 0.16 ms; jit dispatch alone is ~0.02 ms).
    # GRU at hidden 512 (linear_before_reset=1, one layer, I=8, T 2 -> 34): 59.1 vs ORT's 35.6 us per step,
    # while the LSTM at hidden 512 is 67.0 vs 72.3. Our reading [not verified with counters]: ORT splits the
    # GRU's 3 MiB R over its two threads in a fixed way, so each core's half (1.5 MiB) stays in its own 2 MiB
    # L2. XLA's Eigen pool hands out column blocks dynamically, so the halves move between cores. The
    # LSTM's 4 MiB does not fit in L2 for either runtime.
    # Also measured 2026-12-06, not adopted: the recurrence as a C++ XLA FFI custom call that splits every
    # step over two threads (ORT's scheme; bidirectional: one direction per thread), the projection left
    # to one XLA GEMM and the input bias added in the kernel. Alone in a jit it ran 7-13 us per step at
    # hidden 256 (16-17 us on one thread) and matched ORT to 2.8e-7; one call plus its GEMM was additive
    # (hidden 256, T 64: 0.56-0.64 + 0.26-0.32 ms). In `benchmarks.chrion --repeats 20` with the scan as
    # the baseline column of the same run it lost overall: geometric mean jax/ORT 1.44 against 1.35 for
    # this scan; hidden-1024 bidirectional models 1.24-1.57x the scan's time (our reading, not verified
    # with counters: each direction's 16 MiB R is streamed by one core, where XLA splits each product over
    # both); heavy tails (h256-l2-uni-T16 median 2.85 ms, minimum 0.72). A private persistent worker
    # thread was worse still (oversubscribes the two cores next to XLA's pool: h256-l2-uni-T64 8.3 vs
    # 2.9 ms); the last version
    # ran its second half as a task on XLA's own pool (ffi::ThreadPool). Within XLA, neither form below
    # brings the second core in at hidden 256, T 64 (interleaved medians, 2026-12-06): the recurrent product
    # as two or four independent column-block dots in the scan body runs them one after the other (20.9 /
    # 21.7 / 24.3 us per step for one / two / four dots, CPU / wall 1.0-1.1, also with
    # xla_cpu_enable_concurrency_optimized_scheduler); as an elementwise product with R [4H, H] summed over
    # its minor axis XLA splits the fusion over both cores (CPU / wall 1.8) but at 33-39 us per step
    # against 18-20 for the dot; summed over the major axis of R [H, 4H] instead (h as a column, the output's
    # 4H kept minor) it is split too (CPU / wall 1.76) and took 24.6 us per step against 16.3 for the dot, and
    # 48.5 as a two-level sum over 8 row blocks (2026-12-06, same setting, parity 1.9e-7).
    # Also measured 2026-12-07, not adopted (hidden 256, T 64, B 1, interleaved medians): the step split by hidden
    # units into 2 / 4 / 8 independent (dot -> gates) chains, so that the loop body holds more thunks than the 8
    # below which XLA:CPU's thunk executor runs a sequence one by one: 19.5 / 21.1 / 22.2 us per step against 17.5
    # for one dot, CPU / wall 1.07, so the second core is still not used. R packed as [4H/64, H, 64] (contracted
    # by einsum or as a product summed over H): 14.3-15.7 us against 14.3. XLA_FLAGS=--xla_cpu_use_onednn=true:
    # the projection GEMM alone 81 vs 140 us at [16, 256] x [256, 1024], 3.2 vs 3.8 ms at [64, 1024] x [1024, 4096],
    # but `benchmarks.chrion --quick` geometric mean 1.32 against 1.37 without it, within run-to-run noise.
    # Where the time goes at hidden 256: R is 1 MiB, each core's L2 is 1 MiB, so a one-core step streams R
    # from L3; a C AVX-512 loop over R repacked in 64-column panels (gcc -O3 -march=native, scratch) took 10.8
    # us per step on one core, XLA's dot 14 us, and ONNX Runtime's whole LSTM step 8.4 us per layer (2 layers,
    # T 16 -> 64 slope). Faster than that one-core loop, so our reading is that ORT splits R over both cores' L2
    # (not verified with counters; the process CPU / wall that benchmarks.chrion prints for ORT is 1.0 there).
    # Also measured 2026-12-07, not adopted (LSTM, B 1, T 64, interleaved medians, /work/scratch/s4/wave.py): a layer
    # wavefront inside one executable, the sequence cut into K chunks and stage s running layer l on chunk s - l, the
    # active layers' steps as one batched product [L, 1, H] x [L, 4H, H] (as the joint bidirectional scan does): hidden
    # 256, 2 layers 0.94x the time of the layer-by-layer scans at K 4 and 1.03x at K 8; 4 layers 1.21x at K 4. The
    # batched step over two layers costs about 1.5x one layer's step, so fewer, wider steps do not pay.
    # Checked 2026-12-08: XLA's pre-thunk CPU runtime (one compiled function for the whole loop, no per-thunk
    # dispatch) is gone from jaxlib 0.10.2; XLA_FLAGS=--xla_cpu_use_thunk_runtime=false only warns "no longer supported".
    joint = D == 2 and H < _JOINT_SCAN_MAX_HIDDEN and p["acts"][:n_act] == p["acts"][n_act:]
    # The input projection of all T*B rows at once. XLA:CPU's Eigen GEMM runs x[T*B, I] @ W_T[I, G*H]
    # well below ONNX Runtime's prepacked MLAS GEMM at these shapes (measured 2026-12-05, T=16, I=H,
    # LSTM: 79 / 110 / 77 GFLOP/s at hidden 256 / 512 / 1024 against ORT's 165 / 141 / 165). The same
    # product with the operands swapped, W[G*H, I] @ x^T -> [G*H, T*B], took 0.29 vs 0.37 ms (hidden
    # 512) and 0.65 vs 1.41 ms (hidden 1024) at T=16, 2.02 vs 2.39 ms at hidden 1024 and T=64, but
    # 0.46 vs 0.37 ms at hidden 256 and T=64 (medians of 300 calls, interleaved, in one process,
    # including the transpose back). Hence the swapped form for weights of at least
    # _PROJ_WX_MIN_WEIGHTS elements [our choice, measured]. The optimization barrier keeps XLA from
    # folding the transpose back into the dot's output layout, which gives back the slow form.
    proj_wx = I * p["G"] * H >= _PROJ_WX_MIN_WEIGHTS
    # GRU without linear_before_reset multiplies h and r*h by separate blocks of R: those
    # blocks are separate import-time constants (see _cell_math).
    gru_split = kind == "GRU" and not p["lbr"]
    cst = b.constants

    def split_r(key, arr):
        zr, hh = _split_gru_r(arr, H, p["r_rows"])
        return [key + "zr", key + "h"], [b.const(f"{base}/{key}zr", np.ascontiguousarray(zr)),
                                         b.const(f"{base}/{key}h", np.ascontiguousarray(hh))]
    names = ["x"]
    vals = [X]
    for d in range(D):
        Wt, Rt, bW, bR, Pd = consts[d]
        if proj_wx:
            Wt = b.const(f"{base}/W{d}", np.ascontiguousarray(cst[Wt].T))
        names += [f"W{d}", f"bW{d}"]
        vals += [Wt, bW]
        if not joint:
            rn, rv = split_r(f"R{d}", cst[Rt]) if gru_split else ([f"R{d}"], [Rt])
            names += rn + [f"bR{d}"]
            vals += rv + [bR]
            if Pd is not None:
                names.append(f"P{d}"); vals.append(Pd)
    if joint:
        R2 = np.stack([cst[consts[d][1]] for d in range(2)])
        rn, rv = split_r("R", R2) if gru_split else (["R"], [b.const(f"{base}/R", R2)])
        names += rn + ["bR"]
        vals += rv + [b.const(f"{base}/bR", np.stack([cst[consts[d][3]] for d in range(2)])[:, None])]
        if consts[0][4] is not None:
            names.append("P")
            vals.append(b.const(f"{base}/P", np.stack([cst[consts[d][4]] for d in range(2)])[:, None]))
    for k, v in (("h0", h0), ("c0", c0), ("seq", seq)):
        if v:
            names.append(k); vals.append(v)
    names = tuple(names)
    direction = p["direction"]

    def masked(hn, cn, h, c, m):
        """Steps past a sequence's length keep the state and output zeros (ONNX sequence_lens)."""
        if m is None:
            return hn, cn, hn
        where = _jnp().where
        return where(m, hn, h), where(m, cn, c), where(m, hn, 0.0)

    def fn(*args):
        jax, jnp = _jax(), _jnp()
        a = dict(zip(names, args))
        x = a["x"]
        tidx = jnp.arange(T, dtype=jnp.int32)
        seqv = a["seq"].astype(jnp.int32) if "seq" in a else None
        x2 = x.reshape(T * B, I)
        if proj_wx:
            barrier = jax.lax.optimization_barrier
            xws = [barrier(a[f"W{d}"] @ x2.T).T.reshape(T, B, -1) + a[f"bW{d}"] for d in range(D)]
        else:
            xws = [(x2 @ a[f"W{d}"]).reshape(T, B, -1) + a[f"bW{d}"] for d in range(D)]
        if joint:
            # scan index s: the forward direction at time s, the backward one at time T-1-s
            xw = jnp.stack([xws[0], xws[1][::-1]], axis=1)                       # [T, 2, B, G*H]
            tt = jnp.stack([tidx, T - 1 - tidx], axis=1)                          # [T, 2]
            h = a["h0"] if "h0" in a else jnp.zeros((2, B, H), x.dtype)
            c = a["c0"] if "c0" in a else jnp.zeros((2, B, H), x.dtype)
            R = (a["Rzr"], a["Rh"]) if gru_split else a["R"]
            bR, P, step = a["bR"], a.get("P"), steps[0]

            def body(carry, inp):
                h, c = carry
                xw_t, t = inp
                hn, cn = step(xw_t, h, c, R, bR, P)
                m = None if seqv is None else (t[:, None] < seqv[None, :])[..., None]
                hn, cn, y = masked(hn, cn, h, c, m)
                return (hn, cn), y
            (h, c), y = jax.lax.scan(body, (h, c), (xw, tt), unroll=_SCAN_UNROLL[0])
            return jnp.stack([y[:, 0], y[::-1, 1]], axis=1), h, c
        ys, hs, cs = [], [], []
        for d in range(D):
            reverse = direction == "reverse" or d == 1
            h = a["h0"][d] if "h0" in a else jnp.zeros((B, H), x.dtype)
            c = a["c0"][d] if "c0" in a else jnp.zeros((B, H), x.dtype)
            R = (a[f"R{d}zr"], a[f"R{d}h"]) if gru_split else a[f"R{d}"]
            bR, Pd, step = a[f"bR{d}"], a.get(f"P{d}"), steps[d]

            def body(carry, inp, R=R, bR=bR, Pd=Pd, step=step):
                h, c = carry
                xw_t, t = inp
                hn, cn = step(xw_t, h, c, R, bR, Pd)
                hn, cn, y = masked(hn, cn, h, c, None if seqv is None else (t < seqv)[:, None])
                return (hn, cn), y
            (h, c), y = jax.lax.scan(body, (h, c), (xws[d], tidx), reverse=reverse, unroll=_SCAN_UNROLL[0])
            ys.append(y); hs.append(h); cs.append(c)
        return (jnp.stack(ys, axis=1), jnp.stack(hs, 0), jnp.stack(cs, 0))
    tmp = [out_y or b.fresh(f"{base}/Y"), out_h or b.fresh(f"{base}/Y_h"), out_c or b.fresh(f"{base}/Y_c")]
    b.emit(kind, vals, tmp, fn, (names, direction, tuple(p["acts"]), p["clip"], p["input_forget"], p["lbr"]),
           flops_step * T * D, group=base, heavy=True)


_CONVERTERS: dict[str, Callable] = {
    "Identity": _identity, "Constant": _constant, "Shape": _shape, "ConstantOfShape": _constant_of_shape,
    "Cast": _cast, "Add": _binary(lambda x, y: x + y), "Sub": _binary(lambda x, y: x - y),
    "Mul": _binary(lambda x, y: x * y), "Div": _binary(lambda x, y: x / y),
    "MatMul": _matmul, "Gemm": _gemm,
    "Relu": _unary(lambda x: _jnp().maximum(x, 0)), "Tanh": _unary(lambda x: _jnp().tanh(x)),
    "Sigmoid": _unary(lambda x: _jax().nn.sigmoid(x)), "Neg": _unary(lambda x: -x),
    "Exp": _unary(lambda x: _jnp().exp(x)),
    "Softmax": _softmax(False), "LogSoftmax": _softmax(True),
    "Squeeze": _squeeze, "Unsqueeze": _unsqueeze, "Transpose": _transpose, "Reshape": _reshape,
    "Flatten": _flatten, "Concat": _concat, "Slice": _slice, "Gather": _gather, "Split": _split,
    "Expand": _expand, "ArgMax": _argmax,
    "LSTM": _rnn_node, "GRU": _rnn_node, "RNN": _rnn_node,
}
SUPPORTED_OPS = tuple(sorted(_CONVERTERS))


def _load(model):
    import onnx
    if isinstance(model, (str, os.PathLike)):
        if not os.path.exists(model):
            raise FileNotFoundError(f"ONNX model file '{model}' does not exist")
        try:
            model = onnx.load(os.fspath(model))
        except Exception as e:
            raise ValueError(f"could not parse ONNX file '{model}': {e}; re-export the model") from e
    elif isinstance(model, (bytes, bytearray)):
        model = onnx.load_from_string(bytes(model))
    if not isinstance(model, onnx.ModelProto):
        raise TypeError(f"model must be an onnx.ModelProto, bytes or a path, got {type(model).__name__}")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise ValueError(f"malformed ONNX model (onnx.checker): {e}") from e
    return model


def import_onnx(model, input_shapes: dict | None = None, expand_rnn: bool = True, rnn_chunk: int = 1) -> Graph:
    """Builds the operator DAG of an ONNX model.

    model: onnx.ModelProto, serialized bytes or a file path. input_shapes: {input name: shape}
    for inputs whose ONNX shape has symbolic dims (static shapes are required). expand_rnn: unroll
    LSTM/GRU/RNN into per-step cell operators (True) or keep one lax.scan operator per node.
    rnn_chunk (with expand_rnn=True): time steps per operator; 1 gives one cell per step, k > 1
    one ``{kind}Chunk`` operator per k consecutive steps of a direction (its input projection as
    one matmul), still with per-step outputs, so the layer x time wavefront and the directions
    stay visible at a coarser grain: fewer dispatches per request [our choice: the granularity
    knob; systems.md §3.4 notes per-op dispatch costs tens of µs].
    Returns a Graph whose ops are topologically ordered, constant-folded and dead-code free.
    """
    import onnx
    if isinstance(rnn_chunk, bool) or not isinstance(rnn_chunk, (int, np.integer)) or rnn_chunk < 1:
        raise ValueError(f"rnn_chunk={rnn_chunk!r}: must be an integer >= 1 (time steps per RNN operator)")
    model = _load(model)
    opset = max([o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] or [13])
    b = _Builder(opset, expand_rnn, int(rnn_chunk))
    g = model.graph
    for init in g.initializer:
        b.const(init.name, onnx.numpy_helper.to_array(init))
    input_shapes = dict(input_shapes or {})
    inputs = []
    for vi in g.input:
        if vi.name in b.constants:
            continue
        tt = vi.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name
        if vi.name in input_shapes:
            shape = tuple(int(s) for s in input_shapes.pop(vi.name))
        else:
            dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
            if any(d is None or d <= 0 for d in dims):
                raise ValueError(f"input '{vi.name}' has a symbolic shape {[d.dim_param or d.dim_value for d in tt.shape.dim]}; "
                                 f"pass input_shapes={{'{vi.name}': (...)}} with static sizes")
            shape = tuple(dims)
        b.values[vi.name] = ValueInfo(shape, dtype)
        inputs.append(vi.name)
    if input_shapes:
        raise ValueError(f"input_shapes names {sorted(input_shapes)} that are not graph inputs "
                         f"(inputs: {inputs})")
    for node in g.node:
        if node.domain not in ("", "ai.onnx"):
            raise UnsupportedOperatorError(f"node '{node.name}' has op type '{node.domain}.{node.op_type}' from a custom domain; "
                                           "only the default ONNX domain is supported")
        conv = _CONVERTERS.get(node.op_type)
        if conv is None:
            raise UnsupportedOperatorError(
                f"node '{node.name}' has op type '{node.op_type}', which jaxlab.serving does not support "
                f"(supported: {', '.join(SUPPORTED_OPS)})")
        ins = list(node.input)
        for v in ins:
            if v and v not in b.values:
                raise ValueError(f"node '{node.name}' ({node.op_type}) reads '{v}', which no node, input or initializer defines")
        try:
            conv(b, node, ins, list(node.output), _attrs(node))
        except (UnsupportedOperatorError, ValueError):
            raise
        except Exception as e:
            raise ValueError(f"node '{node.name}' ({node.op_type}) could not be converted: {type(e).__name__}: {e}") from e
    outputs = tuple(o.name for o in g.output)
    for o in outputs:
        if o not in b.values:
            raise ValueError(f"graph output '{o}' is never produced")
    ops = _dce(b.ops, outputs)
    used = {v for op in ops for v in op.inputs} | set(outputs)
    constants = {k: v for k, v in b.constants.items() if k in used}
    values = {k: v for k, v in b.values.items() if k in used or any(k in op.outputs for op in ops) or k in inputs}
    return Graph(ops=tuple(_toposort(ops)), values=values, constants=constants,
                 inputs=tuple(inputs), outputs=outputs)


def _dce(ops, outputs):
    prod = {v: op for op in ops for v in op.outputs}
    need, stack = set(), list(outputs)
    live = set()
    while stack:
        v = stack.pop()
        if v in need:
            continue
        need.add(v)
        if v in prod:
            op = prod[v]
            if op.name not in live:
                live.add(op.name)
                stack.extend(op.inputs)
    return [op for op in ops if op.name in live]


# ---------------------------------------------------------------------------------------------
# Single-device compiled path and the ONNX Runtime peer
# ---------------------------------------------------------------------------------------------

def compile_single_device(graph: Graph, device=None, compiler_options: dict | None = None):
    """One jitted function for the whole graph on one device (use a graph imported with
    ``expand_rnn=False`` so recurrences run as lax.scan). Returns ``f(inputs: dict) -> dict`` of
    device arrays (call ``jax.block_until_ready``). Weights are committed to ``device`` once.

    ``compiler_options``: XLA options of the compilation; ``None`` takes
    :data:`jaxlab.serving.graph.CPU_COMPILER_OPTIONS` on a CPU device (512-bit vectors), ``{}``
    XLA's own defaults.

    Weights are executable *arguments*, not constants baked into the HLO [our choice]. Checked
    2026-12-06 on this 2-core CPU: the optimised HLO of an LSTM (hidden 512, T 16) has no copy or
    transpose of a weight inside the scan's while body (one dot on the loop-invariant R plus the
    gate fusions), and closing over the weights as compile-time constants measured 0.61 / 3.68 /
    31.1 / 8.90 / 7.98 ms against 0.65 / 2.93 / 30.0 / 9.18 / 7.96 ms as arguments (LSTM h256-l2-uni-T16,
    LSTM h512-l2-uni-T16, LSTM h1024-l2-bi-T16, GRU h512-l2-bi-T32, LSTM h256-l4-bi-T64; batch 1,
    medians of 60 interleaved calls): no gain beyond the machine's noise, and constants would
    recompile per weight set."""
    import jax
    from jaxlab.serving.graph import compose, device_jit
    device = device or jax.devices()[0]
    whole = compose(list(graph.ops), set(graph.outputs), "whole")
    consts = {k: jax.device_put(v, device) for k, v in graph.constants.items()}
    order = whole.inputs
    jf = device_jit(whole.fn, device, compiler_options)  # CPU: 512-bit vectors (graph.CPU_COMPILER_OPTIONS)

    slots = [(consts[v], None) if v in consts else (None, v) for v in order]
    on_default = device == jax.devices()[0]

    def run(inputs: dict):
        # numpy inputs go straight to the jitted call on the default device (its C++ path copies
        # them, cheaper than a separate device_put); elsewhere they are committed first.
        args = [c if v is None else (inputs[v] if on_default else jax.device_put(inputs[v], device))
                for c, v in slots]
        return dict(zip(whole.outputs, jf(*args)))
    return run


def ort_session(model, threads: int = 0):
    """An ONNX Runtime CPU InferenceSession (threads=0: ORT's default)."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    data = model.SerializeToString() if hasattr(model, "SerializeToString") else model
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def run_onnxruntime(model, inputs: dict) -> dict:
    sess = ort_session(model)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, inputs)))


# ---------------------------------------------------------------------------------------------
# Model builders (onnx.helper) for tests, benchmarks and the experiment
# ---------------------------------------------------------------------------------------------

def _rnn_weights(rng, cell, D, H, I, scale):
    G = _GATES[cell]
    W = rng.uniform(-scale, scale, (D, G * H, I)).astype(np.float32)
    R = rng.uniform(-scale, scale, (D, G * H, H)).astype(np.float32)
    B = rng.uniform(-scale, scale, (D, 2 * G * H)).astype(np.float32)
    return W, R, B


def make_rnn_model(cell: str = "LSTM", input_size: int = 8, hidden: int = 16, layers: int = 2,
                   bidirectional: bool = False, seq_len: int = 6, batch: int = 2, num_classes: int = 5,
                   with_seq_lens: bool = False, with_initial_state: bool = False, direction: str | None = None,
                   seed: int = 0, opset: int = 17):
    """A stacked (optionally bidirectional) RNN classifier as an ONNX model (onnx.helper).

    x [T, B, input_size] -> L x {cell} (Y [T, D, B, H] -> Transpose(0,2,1,3) -> Reshape [T, B, D*H],
    the layout torch exports) -> last step Y[T-1] -> Gemm -> Softmax: probs [B, num_classes].
    Also outputs the last layer's Y_h. Weights ~ U(-1/sqrt(H), 1/sqrt(H)) (torch's init).
    Optional runtime inputs: seq_lens [B] int32; h0 (and c0 for LSTM) [L*D, B, H].
    """
    from onnx import TensorProto, helper, numpy_helper
    if cell not in _GATES:
        raise ValueError(f"cell must be one of {sorted(_GATES)}, got {cell!r}")
    rng = np.random.default_rng(seed)
    D = 2 if bidirectional else 1
    direction = direction or ("bidirectional" if bidirectional else "forward")
    scale = 1.0 / np.sqrt(hidden)
    nodes, inits = [], []
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [seq_len, batch, input_size])]
    if with_seq_lens:
        inputs.append(helper.make_tensor_value_info("seq_lens", TensorProto.INT32, [batch]))
    if with_initial_state:
        inputs.append(helper.make_tensor_value_info("h0", TensorProto.FLOAT, [layers * D, batch, hidden]))
        if cell == "LSTM":
            inputs.append(helper.make_tensor_value_info("c0", TensorProto.FLOAT, [layers * D, batch, hidden]))
    cur, in_dim = "x", input_size
    inits.append(numpy_helper.from_array(np.array([seq_len, batch, D * hidden], np.int64), "rs_shape"))
    for l in range(layers):
        W, R, B = _rnn_weights(rng, cell, D, hidden, in_dim, scale)
        for n, a in (("W", W), ("R", R), ("B", B)):
            inits.append(numpy_helper.from_array(a, f"{n}{l}"))
        rnn_in = [cur, f"W{l}", f"R{l}", f"B{l}", "seq_lens" if with_seq_lens else ""]
        if with_initial_state:
            for s in (["h0", "c0"] if cell == "LSTM" else ["h0"]):
                inits.append(numpy_helper.from_array(np.array([l * D], np.int64), f"{s}_start{l}"))
                inits.append(numpy_helper.from_array(np.array([(l + 1) * D], np.int64), f"{s}_end{l}"))
                inits.append(numpy_helper.from_array(np.array([0], np.int64), f"{s}_axis{l}"))
                nodes.append(helper.make_node("Slice", [s, f"{s}_start{l}", f"{s}_end{l}", f"{s}_axis{l}"], [f"{s}_{l}"], name=f"slice_{s}_{l}"))
            rnn_in += [f"h0_{l}"] + ([f"c0_{l}"] if cell == "LSTM" else [])
        while rnn_in and rnn_in[-1] == "":
            rnn_in.pop()
        outs = [f"Y{l}", f"Yh{l}"]
        nodes.append(helper.make_node(cell, rnn_in, outs, name=f"{cell.lower()}_{l}", hidden_size=hidden,
                                      direction=direction, **({"linear_before_reset": 1} if cell == "GRU" else {})))
        nodes.append(helper.make_node("Transpose", [f"Y{l}"], [f"Yt{l}"], perm=[0, 2, 1, 3], name=f"tr_{l}"))
        nodes.append(helper.make_node("Reshape", [f"Yt{l}", "rs_shape"], [f"Yr{l}"], name=f"rs_{l}"))
        cur, in_dim = f"Yr{l}", D * hidden
    inits.append(numpy_helper.from_array(np.array(seq_len - 1, np.int64), "last_t"))
    nodes.append(helper.make_node("Gather", [cur, "last_t"], ["last"], axis=0, name="take_last"))
    inits.append(numpy_helper.from_array(rng.uniform(-scale, scale, (num_classes, D * hidden)).astype(np.float32), "Wc"))
    inits.append(numpy_helper.from_array(rng.uniform(-scale, scale, (num_classes,)).astype(np.float32), "bc"))
    nodes.append(helper.make_node("Gemm", ["last", "Wc", "bc"], ["logits"], transB=1, name="head"))
    nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=-1, name="softmax"))
    outputs = [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [batch, num_classes]),
               helper.make_tensor_value_info(f"Yh{layers - 1}", TensorProto.FLOAT, [D, batch, hidden])]
    graph = helper.make_graph(nodes, f"{cell.lower()}_classifier", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="jaxlab")
    model.ir_version = 8
    return model


def make_seq2seq_model(cell: str = "LSTM", vocab: int = 11, embed: int = 8, hidden: int = 16,
                       src_len: int = 5, tgt_len: int = 4, batch: int = 2, seed: int = 0, opset: int = 17):
    """Encoder-decoder (teacher forcing) as an ONNX model: token embeddings (Gather), encoder
    {cell} whose final state initialises a decoder {cell}, then MatMul+Add -> LogSoftmax over the
    vocabulary. Inputs: src [S, B] int64, tgt [T, B] int64. Output: logp [T, B, vocab]."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(seed)
    s = 1.0 / np.sqrt(hidden)
    inits = [numpy_helper.from_array(rng.normal(0, 1, (vocab, embed)).astype(np.float32), "emb")]
    nodes = [helper.make_node("Gather", ["emb", "src"], ["src_e"], axis=0, name="embed_src"),
             helper.make_node("Gather", ["emb", "tgt"], ["tgt_e"], axis=0, name="embed_tgt")]
    for part in ("enc", "dec"):
        W, R, B = _rnn_weights(rng, cell, 1, hidden, embed, s)
        for n, a in (("W", W), ("R", R), ("B", B)):
            inits.append(numpy_helper.from_array(a, f"{part}_{n}"))
    enc_out = ["enc_Y", "enc_h"] + (["enc_c"] if cell == "LSTM" else [])
    nodes.append(helper.make_node(cell, ["src_e", "enc_W", "enc_R", "enc_B"], enc_out, hidden_size=hidden, name="encoder"))
    dec_in = ["tgt_e", "dec_W", "dec_R", "dec_B", "", "enc_h"] + (["enc_c"] if cell == "LSTM" else [])
    nodes.append(helper.make_node(cell, dec_in, ["dec_Y"], hidden_size=hidden, name="decoder"))
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "ax1"))
    nodes.append(helper.make_node("Squeeze", ["dec_Y", "ax1"], ["dec_h"], name="squeeze_dir"))
    inits.append(numpy_helper.from_array(rng.uniform(-s, s, (hidden, vocab)).astype(np.float32), "Wo"))
    inits.append(numpy_helper.from_array(rng.uniform(-s, s, (vocab,)).astype(np.float32), "bo"))
    nodes.append(helper.make_node("MatMul", ["dec_h", "Wo"], ["proj"], name="proj"))
    nodes.append(helper.make_node("Add", ["proj", "bo"], ["logits"], name="bias"))
    nodes.append(helper.make_node("LogSoftmax", ["logits"], ["logp"], axis=-1, name="logsoftmax"))
    graph = helper.make_graph(
        nodes, "seq2seq",
        [helper.make_tensor_value_info("src", TensorProto.INT64, [src_len, batch]),
         helper.make_tensor_value_info("tgt", TensorProto.INT64, [tgt_len, batch])],
        [helper.make_tensor_value_info("logp", TensorProto.FLOAT, [tgt_len, batch, vocab])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="jaxlab")
    model.ir_version = 8
    return model
