"""THOR's profiler: layer specs, 1-/2-/3-layer variant training steps, per-layer cost by subtraction.

A network is a :class:`Network` of layer specs (:class:`Conv`, :class:`Dense`, :class:`BatchNorm`,
:class:`Pool`, :class:`Act`, :class:`LSTM`) applied to a per-example ``input_shape`` at a given
``batch`` size. :func:`place` infers shapes and per-layer features, FLOPs and bytes without JAX;
:func:`make_train_step` builds the network as its own Flax model and one jitted training
iteration (forward + backward + SGD-momentum update). Each variant is its own compiled function,
because XLA fuses across layers: the cost of a layer is only defined inside a compiled step.

Subtraction [paper: 1-, 2- and 3-layer variants, cost "via subtractivity"]. A profiled *chain*
``(L1, L2, L3)`` is measured as its prefixes ``P0 = ()``, ``P1 = (L1,)``, ``P2 = (L1, L2)``,
``P3 = (L1, L2, L3)`` and

    cost(L_i) = cost(P_i) - cost(P_{i-1}),      cost(fixed) = cost(P0)

[our choice: prefixes of one chain, so each layer is measured in a realistic context and the
fixed costs -- dispatch, loss, optimizer bookkeeping -- cancel]. Variants end in a parameter-free
readout loss ``mean(out**2)``; because the readout of ``P_i`` cancels against that of ``P_{i+1}``,
summing the layer costs of a whole model telescopes to ``cost(model) - cost(P0)`` whatever the
readout costs, so the whole-model estimate is ``fixed + sum of layers`` exactly when costs are
additive. Whole models train with softmax cross-entropy on their last ``Dense(num_classes)``;
the difference to the readout on 10 logits is negligible.

Measurements live in an append-only JSONL :class:`ProfileDB` in the workdir, keyed by the
network and the meter, so a re-run or a resumed run re-uses everything already measured.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
import time
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from jaxlab.energy.meters import LayerCost, Measurement, Meter, measure_iterations

__all__ = [
    "Conv", "Dense", "BatchNorm", "Pool", "Act", "LSTM", "LAYER_KINDS", "FEATURES",
    "Network", "PlacedLayer", "place", "layer_kind", "feature_vector", "fixed_features",
    "network_train_flops", "spec_to_json", "spec_from_json", "network_to_json", "network_from_json",
    "network_key", "SpecNet", "make_train_step", "ProfileDB", "measure_network", "measure_networks", "prefixes",
    "WINDOW_STATISTICS", "LAYER_IMPLS", "DEFAULT_LAYER_IMPL", "LOOPS", "DEFAULT_LOOP", "unrolled_step",
    "LayerSample", "chain_samples", "loss_features", "loss_pair", "loss_sample", "cost_terms",
]


# ---------------------------------------------------------------------------------------------
# Layer specs
# ---------------------------------------------------------------------------------------------
class Conv(NamedTuple):
    """2-D convolution, NHWC; ``padding`` 'SAME' or 'VALID'; bias included."""

    features: int
    kernel: int = 3
    stride: int = 1
    padding: str = "SAME"


class Dense(NamedTuple):
    """Fully connected layer; flattens a non-vector input first (the flatten is part of it)."""

    features: int


class BatchNorm(NamedTuple):
    """Batch normalisation over all but the last axis (training mode: batch statistics)."""

    momentum: float = 0.9


class Pool(NamedTuple):
    """Max or average pooling, window = stride, VALID."""

    window: int = 2
    kind: str = "max"


class Act(NamedTuple):
    kind: str = "relu"


class LSTM(NamedTuple):
    """LSTM over a ``[T, F]`` sequence, returns all ``[T, hidden]`` states."""

    hidden: int


_KIND_OF = {Conv: "conv", Dense: "dense", BatchNorm: "bn", Pool: "pool", Act: "act", LSTM: "lstm"}
_SPEC_OF = {v: k for k, v in _KIND_OF.items()}
LAYER_KINDS = tuple(_KIND_OF.values())

# GP input features per layer kind (all positive, log-scaled by the GP). ``pos`` is 1 when no
# layer with parameters precedes the layer (backprop stops there: its input gradient is never
# computed, which roughly halves a conv's or a max-pool's backward) and 2 otherwise; ``max`` is 2
# for max pooling and 1 for average pooling (max pooling's backward is a select-and-scatter,
# 5-20x an average pool's on XLA:CPU); ``valid`` is 2 for a VALID conv and 1 for SAME (measured
# 2026-12-05: Conv(24, 3) VALID after a 28x28x32 input at batch 16 took 17.4 ms per training
# iteration against 9.1 ms SAME, though VALID has fewer outputs; its input gradient is a conv
# with explicit k-1 padding; 5-fold chain CV of a 240-chain wall-clock database: 24.8% vs 26.5%
# without the feature, conv chains 32.1% vs 35.2%); ``kbig`` is 2 when the conv's kernel is larger
# than its input's height or width and 1 otherwise (measured 2026-12-06, Conv(24) after a 1x1 conv
# on an HxHx32 input at batch 16, the second conv's subtracted cost per training FLOP: kernel 3 at
# H = 2 187 ps against 12-26 ps at H = 3-10; kernel 5 at H = 2 / 3 / 4 72 / 131 / 141 ps against
# 9-15 ps at H = 5-10: XLA:CPU leaves its fast conv path there; without the flag the GP spread
# the H = 4 cost to H = 6-8 convs and over-predicted held-out CNNs by up to 2x. Wall-clock study, 24
# held-out models, with / without the flag: seed 0 18.9% / 15.0% (worse: a VALID 5x5 conv predicted 24 ms),
# seed 1 database refitted 20.7% / 29.4% (CNNs 26.6 / 44.1%), fresh seed 2 14.0% / 16.6%; 5-fold chain CV
# 21.1 / 23.6%, 18.6 / 19.6% and 19.3 / 20.3%); ``flops`` and ``bytes`` are derived training
# FLOPs and bytes. [our choice: systems.md's proposed features plus these.] "fixed" is the empty network P0
# (per-iteration overhead). "loss" is the classifier loss: profiling variants train with a mean-square
# readout of their last output, whole models with softmax cross-entropy over their class logits; the
# difference is its own term (see :func:`loss_pair`).
FEATURES = {
    "conv": ("cin", "cout", "kernel", "stride", "valid", "kbig", "h", "w", "batch", "pos", "flops", "bytes"),
    "dense": ("fin", "fout", "batch", "pos", "flops", "bytes"),
    "bn": ("c", "hw", "batch", "pos", "flops", "bytes"),
    "pool": ("c", "h", "w", "window", "max", "batch", "pos", "flops", "bytes"),
    "act": ("elems", "batch", "pos", "flops", "bytes"),
    "lstm": ("fin", "hidden", "steps", "batch", "pos", "flops", "bytes"),
    "fixed": ("elems", "batch"),
    "loss": ("classes", "batch"),
}

_ACTS = ("relu", "tanh", "sigmoid", "gelu")


def layer_kind(spec: Any) -> str:
    try:
        return _KIND_OF[type(spec)]
    except KeyError:
        raise TypeError(f"layer spec {spec!r}: use one of Conv, Dense, BatchNorm, Pool, Act, LSTM") from None


class Network(NamedTuple):
    """A stack of layer specs.

    input_shape: per-example shape, (H, W, C) for images, (T, F) for sequences, (F,) for vectors;
    layers: tuple of specs; batch: examples per iteration; num_classes: None for a profiling
    variant (readout loss ``mean(out**2)``), else the model trains with softmax cross-entropy and
    its output must be ``[num_classes]``.
    """

    input_shape: tuple
    layers: tuple
    batch: int
    num_classes: int | None = None


class PlacedLayer(NamedTuple):
    """A layer in its network: shapes are per example; flops/bytes are per training iteration."""

    kind: str
    spec: Any
    in_shape: tuple
    out_shape: tuple
    batch: int
    position: int
    features: dict
    train_flops: float
    act_bytes: float
    param_bytes: float
    n_params: int

    def cost_record(self) -> LayerCost:
        return LayerCost(self.kind, self.train_flops, self.act_bytes, self.param_bytes)


def _out_shape_and_fwd(spec, kind, s, batch):
    """(out_shape, forward FLOPs for the batch, n_params)."""
    if kind == "conv":
        if len(s) != 3:
            raise ValueError(f"Conv needs an (H, W, C) input, got {s}")
        h, w, c = s
        k, st = spec.kernel, spec.stride
        if spec.padding == "SAME":
            ho, wo = -(-h // st), -(-w // st)
        elif spec.padding == "VALID":
            if h < k or w < k:
                raise ValueError(f"Conv kernel {k} VALID on a {h}x{w} input: input smaller than kernel")
            ho, wo = (h - k) // st + 1, (w - k) // st + 1
        else:
            raise ValueError(f"Conv padding {spec.padding!r}: use 'SAME' or 'VALID'")
        fwd = 2.0 * batch * ho * wo * spec.features * c * k * k + batch * ho * wo * spec.features
        return (ho, wo, spec.features), fwd, k * k * c * spec.features + spec.features
    if kind == "dense":
        fin = int(np.prod(s))
        return (spec.features,), 2.0 * batch * fin * spec.features + batch * spec.features, fin * spec.features + spec.features
    if kind == "bn":
        n = int(np.prod(s))
        return s, 8.0 * batch * n, 2 * s[-1]
    if kind == "pool":
        if len(s) != 3:
            raise ValueError(f"Pool needs an (H, W, C) input, got {s}")
        h, w, c = s
        wd = spec.window
        if h < wd or w < wd:
            raise ValueError(f"Pool window {wd} on a {h}x{w} input: input smaller than window")
        if spec.kind not in ("max", "avg"):
            raise ValueError(f"Pool kind {spec.kind!r}: use 'max' or 'avg'")
        ho, wo = h // wd, w // wd
        return (ho, wo, c), float(batch * ho * wo * c * wd * wd), 0
    if kind == "act":
        if spec.kind not in _ACTS:
            raise ValueError(f"Act kind {spec.kind!r}: use one of {_ACTS}")
        return s, float(batch * int(np.prod(s))), 0
    if kind == "lstm":
        if len(s) != 2:
            raise ValueError(f"LSTM needs a (T, F) input, got {s}")
        t, f = s
        hdim = spec.hidden
        fwd = batch * t * (2.0 * 4 * hdim * (f + hdim) + 10.0 * hdim)
        return (t, hdim), fwd, 4 * hdim * (f + hdim) + 4 * hdim
    raise TypeError(kind)


def _features(kind, spec, s, out, batch, grad_in, flops, nbytes):
    common = {"batch": batch, "pos": 2 if grad_in else 1, "flops": flops, "bytes": nbytes}
    if kind == "conv":
        return {"cin": s[2], "cout": spec.features, "kernel": spec.kernel, "stride": spec.stride,
                "valid": 2 if spec.padding == "VALID" else 1, "kbig": 2 if spec.kernel > min(s[0], s[1]) else 1,
                "h": s[0], "w": s[1], **common}
    if kind == "dense":
        return {"fin": int(np.prod(s)), "fout": spec.features, **common}
    if kind == "bn":
        return {"c": s[-1], "hw": int(np.prod(s[:-1])) if len(s) > 1 else 1, **common}
    if kind == "pool":
        return {"c": s[2], "h": s[0], "w": s[1], "window": spec.window, "max": 2 if spec.kind == "max" else 1, **common}
    if kind == "act":
        return {"elems": int(np.prod(s)), **common}
    if kind == "lstm":
        return {"fin": s[1], "hidden": spec.hidden, "steps": s[0], **common}
    raise TypeError(kind)


def place(net: Network) -> list[PlacedLayer]:
    """Shapes, features, training FLOPs (3x forward) and bytes of every layer of ``net``."""
    if not isinstance(net, Network):
        raise TypeError(f"place() needs a Network, got {type(net).__name__}")
    if net.batch < 1:
        raise ValueError(f"batch={net.batch}: must be >= 1")
    s = tuple(int(v) for v in net.input_shape)
    if not s or any(v < 1 for v in s):
        raise ValueError(f"input_shape={net.input_shape}: needs positive dimensions")
    out = []
    grad_in = False  # does a layer with parameters come before (so backprop reaches this layer's input)?
    for i, spec in enumerate(net.layers):
        kind = layer_kind(spec)
        o, fwd, n_params = _out_shape_and_fwd(spec, kind, s, net.batch)
        train_flops = 3.0 * fwd  # systems.md: backward ~ 2x forward
        act_bytes = 4.0 * net.batch * (int(np.prod(s)) + int(np.prod(o))) * 2.0  # read+write, fwd and bwd
        param_bytes = 4.0 * n_params
        feats = _features(kind, spec, s, o, net.batch, grad_in, train_flops, act_bytes + 3 * param_bytes)
        grad_in = grad_in or n_params > 0
        out.append(PlacedLayer(kind, spec, s, tuple(o), net.batch, i, feats, train_flops, act_bytes,
                               param_bytes, n_params))
        s = tuple(o)
    if net.num_classes is not None and s != (net.num_classes,):
        raise ValueError(f"network output shape {s} != ({net.num_classes},): end a classifier with "
                         f"Dense({net.num_classes}) or set num_classes=None for a profiling variant")
    return out


def fixed_features(net: Network) -> dict:
    """Features of the per-iteration overhead (the empty variant P0) of ``net``."""
    return {"elems": int(np.prod(net.input_shape)), "batch": net.batch}


def feature_vector(kind: str, feats: dict) -> np.ndarray:
    """[n_features] float64 in the order of FEATURES[kind] (raw, not log-scaled)."""
    if kind not in FEATURES:
        raise ValueError(f"layer kind {kind!r}: use one of {tuple(FEATURES)}")
    return np.array([float(feats[k]) for k in FEATURES[kind]], dtype=np.float64)


def network_train_flops(net: Network) -> float:
    """Training FLOPs of one iteration (3x forward), summed over layers."""
    return float(sum(p.train_flops for p in place(net)))


# ---------------------------------------------------------------------------------------------
# JSON round trip and keys
# ---------------------------------------------------------------------------------------------
def spec_to_json(spec) -> dict:
    return {"layer": layer_kind(spec), **spec._asdict()}


def spec_from_json(d: dict):
    d = dict(d)
    kind = d.pop("layer", None)
    if kind not in _SPEC_OF:
        raise ValueError(f"layer kind {kind!r} in JSON: use one of {LAYER_KINDS}")
    return _SPEC_OF[kind](**d)


def network_to_json(net: Network) -> dict:
    return {"input_shape": list(net.input_shape), "layers": [spec_to_json(s) for s in net.layers],
            "batch": int(net.batch), "num_classes": net.num_classes}


def network_from_json(d: dict) -> Network:
    return Network(tuple(d["input_shape"]), tuple(spec_from_json(s) for s in d["layers"]), int(d["batch"]),
                   d.get("num_classes"))


def network_key(net: Network, meter_name: str, extra: dict | None = None) -> str:
    """Stable key of (network, meter, measurement settings) for the profiling DB."""
    blob = json.dumps({"net": network_to_json(net), "meter": meter_name, "extra": extra or {}}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:20]


# ---------------------------------------------------------------------------------------------
# Flax model and training step
# ---------------------------------------------------------------------------------------------
# Which implementation of Conv and max-Pool a profiled network is built with [our choice; see
# :func:`SpecNet`]. "jaxlab": the layers of jaxlab's own models (``jaxlab.models.layers``: on CPU
# the im2col convolution and the reshape max-pool); "flax": ``nn.Conv`` and ``nn.max_pool``.
LAYER_IMPLS = ("jaxlab", "flax")
DEFAULT_LAYER_IMPL = "flax"  # see SpecNet: "jaxlab" was measured and not adopted for THOR


def _check_layer_impl(impl: str) -> str:
    if impl not in LAYER_IMPLS:
        raise ValueError(f"impl={impl!r}: use one of {LAYER_IMPLS} ('jaxlab': the layers of jaxlab.models, "
                         "'flax': nn.Conv and nn.max_pool)")
    return impl


def _impl_settings(impl: str, loop: str = "python") -> dict:
    """The layer implementation's and the iteration loop's part of a DB key: empty for "flax" and
    "python", so databases measured before the options existed keep their keys and are re-used only
    by runs with those settings."""
    out = {} if _check_layer_impl(impl) == "flax" else {"layers": impl}
    if _check_loop(loop) != "python":
        out["loop"] = loop
    return out


def _build_module():
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from jaxlab.models.layers import Conv as JaxlabConv
    from jaxlab.models.layers import max_pool as jaxlab_max_pool

    class SpecNet(nn.Module):
        """A Flax model built from a tuple of layer specs (see :class:`Network`)."""

        layers: tuple
        impl: str = DEFAULT_LAYER_IMPL

        @nn.compact
        def __call__(self, x, train: bool = True):
            jaxlab = _check_layer_impl(self.impl) == "jaxlab"
            for i, spec in enumerate(self.layers):
                kind = layer_kind(spec)
                name = f"{kind}{i}"
                if kind == "conv" and jaxlab:
                    # flax's initialisers (lecun-normal kernel, zero bias) and parameter names, so both
                    # implementations start from the same parameters.
                    x = JaxlabConv(spec.features, (spec.kernel, spec.kernel), strides=(spec.stride, spec.stride),
                                   padding=spec.padding, torch_init=False, name=name)(x)
                elif kind == "conv":
                    x = nn.Conv(spec.features, (spec.kernel, spec.kernel), strides=(spec.stride, spec.stride),
                                padding=spec.padding, name=name)(x)
                elif kind == "dense":
                    x = nn.Dense(spec.features, name=name)(x.reshape((x.shape[0], -1)))
                elif kind == "bn":
                    x = nn.BatchNorm(use_running_average=not train, momentum=spec.momentum, name=name)(x)
                elif kind == "pool" and jaxlab and spec.kind == "max":
                    x = jaxlab_max_pool(x, spec.window)
                elif kind == "pool":
                    f = nn.max_pool if spec.kind == "max" else nn.avg_pool
                    x = f(x, (spec.window, spec.window), strides=(spec.window, spec.window), padding="VALID")
                elif kind == "act":
                    x = {"relu": jax.nn.relu, "tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid, "gelu": jax.nn.gelu}[spec.kind](x)
                elif kind == "lstm":
                    x = nn.RNN(nn.OptimizedLSTMCell(spec.hidden), name=name)(x)
            return x

    return SpecNet


_SPECNET = None


def SpecNet(layers: tuple, impl: str = DEFAULT_LAYER_IMPL):
    """The Flax linen module of a layer-spec stack (built lazily so this module imports without JAX).

    ``impl`` (see :data:`LAYER_IMPLS`) [our choice]: ``"flax"`` (the default) uses ``nn.Conv`` and
    ``nn.max_pool``; ``"jaxlab"`` builds Conv and max Pool from ``jaxlab.models.layers``, the layers
    jaxlab's own models train with (``Conv(impl="auto")``: im2col + one GEMM on CPU,
    ``lax.conv_general_dilated`` elsewhere; max pooling as a reshape and a max, whose gradient is a mask).
    Both compute the same function from the same parameters (names, shapes and initial values), so
    the choice changes only what a training step costs. On XLA:CPU the flax layers leave the fast
    path in configuration-dependent ways (the conv slow paths that the ``valid`` and ``kbig``
    features flag; max pooling's backward is a ``select_and_scatter``): measured 2026-12-07, Conv(64,
    3x3, SAME) -> ReLU -> max-pool 2 at 28x28x1, batch 64: 67-69 ms per training iteration against
    6.5-6.9 ms without the pool; the same three layers 18-33 ms with the jaxlab layers. Not the default: THOR's wall-clock
    MAPE with the jaxlab layers, fresh profiles of the paper preset's seeds 9 / 10 (2026-12-07), was
    27.3 / 16.9% (CNNs 15.6 / 19.2%) against 16.6 / 13.2% (CNNs 16.9 / 12.5%) with the flax layers
    (see experiments/configs/thor.py)."""
    global _SPECNET
    if _SPECNET is None:
        _SPECNET = _build_module()
    return _SPECNET(tuple(layers), _check_layer_impl(impl))


def _loss(net: Network, out, y):
    import jax.numpy as jnp
    import optax

    if net.num_classes is None:
        return jnp.mean(jnp.square(out))
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(out, y))


def make_train_step(net: Network, *, lr: float = 0.01, momentum: float = 0.9, seed: int = 0,
                    variables: dict | None = None, impl: str = DEFAULT_LAYER_IMPL):
    """One jitted training iteration of ``net`` and its initial state.

    Returns ``(step, state, batch)`` with ``step(state, x, y) -> (state, loss)``, ``state =
    (params, batch_stats, opt_state)`` and a synthetic ``batch = (x [B, *input_shape] float32,
    y [B] int32)`` [our choice: one fixed on-device batch, so data loading is not measured].
    Optimizer: SGD with momentum [our choice]. ``variables`` overrides the initial parameters.
    ``impl``: the Conv / max-Pool implementation (see :func:`SpecNet`).
    """
    import jax
    import jax.numpy as jnp
    import optax

    place(net)  # validates shapes before tracing
    module = SpecNet(net.layers, impl)
    kx, ky, kp = jax.random.split(jax.random.PRNGKey(seed), 3)
    x = jax.random.normal(kx, (net.batch, *net.input_shape), jnp.float32)
    y = jax.random.randint(ky, (net.batch,), 0, net.num_classes or 2)
    if variables is None:
        variables = module.init(kp, x) if net.layers else {}
    params = variables.get("params", {})
    batch_stats = variables.get("batch_stats", {})
    tx = optax.sgd(lr, momentum=momentum)
    opt_state = tx.init(params)

    def loss_fn(p, bs, xb, yb):
        out, new = module.apply({"params": p, "batch_stats": bs}, xb, mutable=["batch_stats"])
        return _loss(net, out, yb), new.get("batch_stats", {})

    @jax.jit
    def step(state, xb, yb):
        p, bs, opt = state
        (loss, new_bs), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, bs, xb, yb)
        updates, opt = tx.update(grads, opt, p)
        return (optax.apply_updates(p, updates), new_bs, opt), loss

    return step, (params, batch_stats, opt_state), (x, y)


# ---------------------------------------------------------------------------------------------
# Profiling database
# ---------------------------------------------------------------------------------------------
class ProfileDB:
    """Append-only JSONL of measurements, ``{key, meter, network, joules, seconds, ...}`` per line.

    Loading tolerates a last line cut by a kill; a key measured twice keeps the first record.
    """

    def __init__(self, path: str | None):
        self.path = path
        self.records: dict[str, dict] = {}
        if path and os.path.exists(path):
            with open(path) as f:
                for line in f:
                    line = line.strip()
                    if not line:
                        continue
                    try:
                        r = json.loads(line)
                    except json.JSONDecodeError:
                        break
                    self.records.setdefault(r["key"], r)

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def __len__(self) -> int:
        return len(self.records)

    def get(self, key: str) -> dict | None:
        return self.records.get(key)

    def put(self, record: dict) -> None:
        if record["key"] in self.records:
            return
        self.records[record["key"]] = record
        if self.path:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()
                os.fsync(f.fileno())


# How a measurement's per-window times become one figure [our choice per study, recorded in its summary].
# 'median': robust to bursts in either direction. 'min': the least disturbed window; on a shared machine other
# load only ever adds time, so the minimum is the steadiest estimate of the step's own cost (the usual choice
# of timeit). Both read the same windows, so a study can be re-derived with either from its database.
WINDOW_STATISTICS = {"median": statistics.median, "min": min}


def _window_statistic(statistic: str) -> Callable[[Sequence[float]], float]:
    if statistic not in WINDOW_STATISTICS:
        raise ValueError(f"statistic={statistic!r}: use one of {tuple(WINDOW_STATISTICS)}")
    return WINDOW_STATISTICS[statistic]


# How the timed training iterations are driven [our choice, see :func:`unrolled_step`]. "python": one
# dispatch of the jitted step per iteration from a Python loop (how most training scripts run, and the
# only form before 2026-12-08); "unrolled": small steps are traced k times into one jitted function
# (k in 1, 2, 4, 8), so the host's per-dispatch cost is shared by k iterations.
LOOPS = ("python", "unrolled")
DEFAULT_LOOP = "python"
MAX_UNROLL = 8


def _check_loop(loop: str) -> str:
    if loop not in LOOPS:
        raise ValueError(f"loop={loop!r}: use one of {LOOPS} ('python': one dispatch per iteration, "
                         f"'unrolled': up to {MAX_UNROLL} iterations traced into one jitted call)")
    return loop


def unrolled_step(step, k: int):
    """``many(state, x, y)``: ``k`` iterations of ``step(state, x, y) -> (state, loss)`` traced one after
    the other into one jitted function (no loop construct: XLA sees k copies of the step).

    Why [measured 2026-12-08, /work/scratch/s6/, jax 0.10.2, this 2-core EPYC, medians of interleaved
    windows]: driven one dispatch per iteration from Python, small training steps cost tens of us per
    iteration more than inside one executable, and that host cost depends on what ran before: an
    8 x 784 -> 64 -> 64 -> 16 -> 10 MLP took 123-177 us per iteration (median 136) interleaved with
    other small MLPs and 160-206 (164) interleaved also with a 28x28 CNN, against 88-99 (93) and 89-126
    (103) unrolled 8 times; 8 x 64 -> 32 -> 256 -> 10: 54 / 59 against 31 / 30 us; 64 x 32 -> 64 -> 512
    -> 10: 381 / 387 against 346 / 336 us. Not a ``lax.fori_loop``/``scan`` loop: inside a while loop
    XLA:CPU runs convolutions on a slow path (Conv(16, 5) on 28x28x1 at batch 32: 9.2 ms per training
    iteration in a fori_loop or scan against 3.0 ms from Python and 3.0 ms unrolled), which would
    measure a step that no training loop runs; the MLPs there took 23-64 us (fewer per-op costs still).
    """
    import jax

    def many(state, xb, yb):
        for _ in range(k):
            state = step(state, xb, yb)[0]
        return state

    return jax.jit(many)


def _unroll_factor(one_s: float, min_window_s: float) -> int:
    """The power of two <= :data:`MAX_UNROLL` nearest above ``min_window_s / (4 one_s)``: steps of a
    quarter window or more run one per call (their dispatch cost is then well under 1%)."""
    want = min_window_s / (4.0 * max(one_s, 1e-9))
    k = 1
    while k < want and k < MAX_UNROLL:
        k *= 2
    return k


def _timed_steps(built, loop: str, min_window_s: float, cache: dict | None = None, keys=None):
    """Per network, ``(call, state, k)``: a function ``state -> state`` that runs ``k`` training
    iterations, for :func:`jaxlab.energy.meters.measure_interleaved` / ``measure_iterations``.
    ``loop="unrolled"`` times one step (after two warm-up calls) and picks ``k`` with
    :func:`_unroll_factor`; ``cache`` (with one key per network in ``keys``) keeps ``(k, many)``
    so measuring the same network again compiles nothing."""
    import jax

    out = []
    for i, (step, state, (x, y)) in enumerate(built):
        k, many = 1, None
        if _check_loop(loop) == "unrolled":
            hit = cache.get(keys[i]) if cache is not None else None
            if hit is None:
                for _ in range(2):
                    state = jax.block_until_ready(step(state, x, y)[0])
                t0 = time.perf_counter()
                state = jax.block_until_ready(step(state, x, y)[0])
                k = _unroll_factor(time.perf_counter() - t0, min_window_s)
                hit = (k, unrolled_step(step, k) if k > 1 else None)
                if cache is not None:
                    cache[keys[i]] = hit
            k, many = hit
        if many is None:
            out.append((lambda s, st=step, x=x, y=y: st(s[0], x, y), (state, 0.0), 1))
        else:
            out.append((lambda s, m=many, x=x, y=y: (m(s[0], x, y), 0.0), (state, 0.0), k))
    return out


def measure_network(meter: Meter, net: Network, db: ProfileDB | None = None, *, windows: int = 5,
                    min_window_s: float = 0.05, warmup: int = 2, tag: str = "",
                    impl: str = DEFAULT_LAYER_IMPL, loop: str = DEFAULT_LOOP) -> Measurement:
    """Per-iteration cost of training ``net`` under ``meter`` (re-used from ``db`` when present).

    Simulated meters evaluate their device model on the placed layers; real meters compile the
    network's own training step and measure medians of ``windows`` windows (see
    :func:`jaxlab.energy.meters.measure_iterations`). ``tag`` lets callers keep separate
    measurements of the same network (e.g. repeated held-out measurements). ``impl``: the layer
    implementation a real meter's training step is built with (see :func:`SpecNet`; part of the key).
    ``loop``: how the timed iterations are driven (:data:`LOOPS`, see :func:`unrolled_step`; part of
    the key when not "python").
    """
    settings = ({"windows": windows, "min_window_s": min_window_s, "tag": tag, **_impl_settings(impl, loop)}
                if meter.simulate is None else {"tag": tag})
    key = network_key(net, meter.name, settings)
    if db is not None and key in db:
        r = db.get(key)
        return Measurement(float(r["joules"]) if r["joules"] is not None else float("nan"), float(r["seconds"]))
    stats: dict = {}
    k = 1
    if meter.simulate is not None:
        m = meter.simulate([p.cost_record() for p in place(net)])
    else:
        (call, state, k), = _timed_steps([make_train_step(net, impl=impl)], loop, min_window_s)
        m = _per_iteration(measure_iterations(meter, call, state, warmup=warmup, windows=windows,
                                              min_window_s=min_window_s, stats=stats), stats, k)
    if db is not None:
        db.put({"key": key, "meter": meter.name, "network": network_to_json(net),
                "joules": None if math.isnan(m.joules) else m.joules, "seconds": m.seconds,
                "rel_spread": stats.get("rel_spread"), "iters": stats.get("iters"),
                "windows_s": stats.get("windows_s"), "unix": time.time(),
                **({"unroll": k} if k > 1 else {})})
    return m


def _per_iteration(m: Measurement, stats: dict, k: int) -> Measurement:
    """A measurement of calls that run ``k`` iterations each, made per iteration (``stats`` in place)."""
    if k == 1:
        return m
    for f in ("windows_s", "cpu_windows_s"):
        if f in stats:
            stats[f] = [v / k for v in stats[f]]
    if "cpu_seconds" in stats:
        stats["cpu_seconds"] /= k
    if "iters" in stats:
        stats["iters"] = stats["iters"] * k
    return Measurement(m.joules / k, m.seconds / k)


def _interleaved_key(net: Network, meter_name: str, windows: int, min_window_s: float, tag: str, impl: str,
                     loop: str = DEFAULT_LOOP) -> str:
    """DB key of an interleaved measurement (:func:`measure_networks`) of ``net``."""
    return network_key(net, meter_name, {"windows": windows, "min_window_s": min_window_s, "tag": tag, "interleaved": True,
                                         **_impl_settings(impl, loop)})


def measure_networks(meter: Meter, nets: Sequence[Network], db: ProfileDB | None = None, *, windows: int = 9,
                     min_window_s: float = 0.02, warmup: int = 2, tag: str = "", clock: str = "meter",
                     compiled: dict | None = None, statistic: str = "median",
                     impl: str = DEFAULT_LAYER_IMPL, loop: str = DEFAULT_LOOP) -> list[Measurement]:
    """Per-iteration costs of several networks, measured together with interleaved windows.

    Networks already in ``db`` are read back; the others are compiled (each its own jitted step)
    and measured with :func:`jaxlab.energy.meters.measure_interleaved`, which makes the
    subtraction between a chain's prefix variants robust to load bursts on a shared CPU.
    Simulated meters just evaluate their device model. Every window also records the process
    CPU time; ``clock='cpu'`` returns its median as ``seconds`` instead of the meter's reading
    (same measurement, same DB record). ``compiled`` (a dict the caller keeps) caches the compiled
    training steps by network, so measuring the same networks again (e.g. in rounds spread over a
    long study) does not compile them again.

    ``statistic`` (see :data:`WINDOW_STATISTICS`) reduces each network's per-window seconds to one
    figure when the result is read: ``'median'`` (the DB record's own ``seconds``) or ``'min'``.
    It is not part of the DB key, so one measurement serves both. It applies to time only
    (``joules`` stay the meter's median).

    ``impl``: the layer implementation the training steps are built with (see :func:`SpecNet`);
    part of the DB key, so measurements of the two implementations never stand in for each other.
    ``loop``: how the timed iterations are driven (:data:`LOOPS`, see :func:`unrolled_step`); part of
    the DB key when not "python". Results and records are per iteration either way; a record's
    ``unroll`` is the number of iterations per call.
    """
    from jaxlab.energy.meters import measure_interleaved

    reduce_windows = _window_statistic(statistic)

    if meter.simulate is not None:
        return [measure_network(meter, n, db, tag=tag) for n in nets]
    keys = [_interleaved_key(n, meter.name, windows, min_window_s, tag, impl, loop) for n in nets]
    todo = [i for i, k in enumerate(keys) if db is None or k not in db]
    fresh = {}
    if todo:
        cache = {} if compiled is None else compiled
        built = []
        for i in todo:
            ck = network_key(nets[i], "compiled", _impl_settings(impl))
            if ck not in cache:
                cache[ck] = make_train_step(nets[i], impl=impl)
            built.append(cache[ck])
        timed = _timed_steps(built, loop, min_window_s, cache,
                             [network_key(nets[i], "compiled", _impl_settings(impl, loop)) for i in todo])
        stats: list = []
        ms = measure_interleaved(meter, [c for c, _, _ in timed], [s for _, s, _ in timed], warmup=warmup,
                                 windows=windows, min_window_s=min_window_s, stats=stats)
        ms = [_per_iteration(m, st, k) for m, st, (_, _, k) in zip(ms, stats, timed)]
        for i, m, st, (_, _, k) in zip(todo, ms, stats, timed):
            rec = {"key": keys[i], "meter": meter.name, "network": network_to_json(nets[i]),
                   "joules": None if math.isnan(m.joules) else m.joules, "seconds": m.seconds,
                   "rel_spread": st["rel_spread"], "iters": st["iters"], "windows_s": st["windows_s"],
                   "cpu_seconds": st["cpu_seconds"], "cpu_windows_s": st["cpu_windows_s"],
                   "cpu_rel_spread": st["cpu_rel_spread"], "interleaved_with": len(todo), "unix": time.time()}
            if k > 1:
                rec["unroll"] = k
            if db is not None:
                db.put(rec)
            fresh[i] = (m, st["cpu_seconds"], rec)
    if clock not in ("meter", "cpu"):
        raise ValueError(f"clock={clock!r}: use 'meter' or 'cpu'")
    out = []
    for i, k in enumerate(keys):
        if i in fresh:
            m, cpu_s, rec = fresh[i]
        else:
            rec = db.get(k)
            m = Measurement(float(rec["joules"]) if rec["joules"] is not None else float("nan"), float(rec["seconds"]))
            cpu_s = rec.get("cpu_seconds")
        if statistic != "median":
            field = "windows_s" if clock == "meter" else "cpu_windows_s"
            if not rec.get(field):
                raise ValueError(f"statistic={statistic!r} needs the per-window times, and the DB record {k} has no "
                                 f"{field!r} (measured by an older version): use statistic='median' or delete the DB line")
            v = float(reduce_windows(rec[field]))
            m, cpu_s = (Measurement(m.joules, v), cpu_s) if clock == "meter" else (m, v)
        if clock == "cpu":
            if cpu_s is None:
                raise ValueError(f"DB record {k} has no CPU time (measured by an older version); delete the DB line")
            m = Measurement(float("nan"), float(cpu_s))
        out.append(m)
    return out


def pooled_measurements(meter: Meter, nets: Sequence[Network], db: ProfileDB, tags: Sequence[str], *,
                        windows: int = 9, min_window_s: float = 0.02, clock: str = "meter",
                        statistic: str = "median", impl: str = DEFAULT_LAYER_IMPL,
                        loop: str = DEFAULT_LOOP) -> list[Measurement]:
    """Per-iteration costs of ``nets`` from measurements already in ``db`` under several ``tags``
    (e.g. rounds taken at different times): the median (``statistic``, see
    :data:`WINDOW_STATISTICS`) of all their windows pooled.

    A median over windows spread across a long study follows the machine's average state over
    that span instead of its state during one short measurement. Raises ``KeyError`` naming the
    first network and tag not in ``db`` (measure them with :func:`measure_networks` first).
    """
    if clock not in ("meter", "cpu"):
        raise ValueError(f"clock={clock!r}: use 'meter' or 'cpu'")
    if not tags:
        raise ValueError("pooled_measurements: tags is empty")
    reduce_windows = _window_statistic(statistic)
    field = "windows_s" if clock == "meter" else "cpu_windows_s"
    out = []
    for n in nets:
        pooled = []
        for tag in tags:
            r = db.get(_interleaved_key(n, meter.name, windows, min_window_s, tag, impl, loop))
            if r is None or r.get(field) is None:
                raise KeyError(f"no {field} for tag {tag!r} of network {network_to_json(n)} in {db.path}: "
                               "measure it with measure_networks(..., tag=...) first")
            pooled += list(r[field])
        out.append(Measurement(float("nan"), float(reduce_windows(pooled))))
    return out


def prefixes(chain: Network) -> list[Network]:
    """The 0-, 1-, 2-, ..., n-layer prefix variants of ``chain`` (readout loss)."""
    return [Network(chain.input_shape, tuple(chain.layers[:i]), chain.batch, None) for i in range(len(chain.layers) + 1)]


class LayerSample(NamedTuple):
    """One GP training point: a layer kind (or 'fixed'), its raw features and its cost by subtraction."""

    kind: str
    features: dict
    cost: float
    chain: int
    context: float = 0.0  # sqrt(c_{i-1}^2 + c_i^2): scale of the measurements this cost is the difference of


def chain_samples(chain: Network, costs: Sequence[float], chain_id: int = 0) -> list[LayerSample]:
    """Per-layer costs of ``chain`` from its prefix costs ``[c0, c1, ..., cn]`` by subtraction.

    Returns the 'fixed' sample (c0) and one sample per layer, cost ``c_i - c_{i-1}`` (may be
    negative under noise or when XLA fuses a layer away; the GP floors it, see gp.py).
    """
    placed = place(Network(chain.input_shape, chain.layers, chain.batch, None))
    if len(costs) != len(placed) + 1:
        raise ValueError(f"costs has {len(costs)} entries; a {len(placed)}-layer chain needs {len(placed) + 1}")
    out = [LayerSample("fixed", fixed_features(chain), float(costs[0]), chain_id, float(abs(costs[0])))]
    for i, p in enumerate(placed):
        # a difference of two measurements with independent relative noise r has std r * this
        out.append(LayerSample(p.kind, p.features, float(costs[i + 1] - costs[i]), chain_id,
                               float(math.hypot(costs[i + 1], costs[i]))))
    return out


def loss_features(net: Network) -> dict:
    """Features of the classifier-loss term of ``net`` (which must have ``num_classes``)."""
    if net.num_classes is None:
        raise ValueError("loss_features: the network has num_classes=None (a profiling variant has no classifier loss)")
    return {"classes": int(net.num_classes), "batch": int(net.batch)}


def loss_pair(batch: int, classes: int = 10, width: int = 16) -> tuple[Network, Network]:
    """The two networks whose cost difference is the classifier-loss term at ``batch``.

    Both are ``Dense(classes)`` on a ``width``-vector input; the first trains with softmax
    cross-entropy over integer labels (as whole models do), the second with the mean-square
    readout of the profiling variants. Whole models end in ``Dense(classes)``, so their last
    layer's subtracted cost already contains the readout over ``[batch, classes]``; what the
    layer sum misses is ``cost(CE) - cost(readout)`` at that shape [our choice: the loss is not in
    systems.md's layer list. Measured 2026-12-06: this pair differs by 0.6-5 us per iteration
    (31 windows, batch 8-64); a whole Dense(16)-Act-Dense(10) MLP by ~10-15 us, CE vs readout,
    where the loss's gradient also flows into the earlier layers, which this pair does not see].
    """
    if batch < 1 or classes < 2:
        raise ValueError(f"loss_pair(batch={batch}, classes={classes}): need batch >= 1 and classes >= 2")
    layers = (Dense(int(classes)),)
    return Network((int(width),), layers, int(batch), int(classes)), Network((int(width),), layers, int(batch), None)


def loss_sample(ce_net: Network, ce_cost: float, readout_cost: float, chain_id: int = -1) -> LayerSample:
    """The 'loss' GP sample from the measured costs of a :func:`loss_pair`."""
    return LayerSample("loss", loss_features(ce_net), float(ce_cost - readout_cost), chain_id,
                       float(math.hypot(ce_cost, readout_cost)))


def cost_terms(net: Network, with_loss: bool = False) -> list[tuple[str, dict]]:
    """``[(kind, features)]`` of the additive estimate of ``net``: the overhead ('fixed'), every
    layer, and, when ``with_loss`` and ``net`` is a classifier, the 'loss' term."""
    terms = [("fixed", fixed_features(net))] + [(p.kind, p.features) for p in place(net)]
    if with_loss and net.num_classes is not None:
        terms.append(("loss", loss_features(net)))
    return terms
