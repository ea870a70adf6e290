"""Per-operator profiles on every device and the fitted transfer model (Chrion's offline phase).

``profile_graph(graph, devices)`` times each distinct operator signature (ops with equal
``Op.signature`` share one compiled executable and one measurement, e.g. all steps of a layer) as
one jitted call on each device: ``warmup`` untimed calls, then ``repeats`` timed calls with
``block_until_ready``; the median is the cost, 1.4826 * MAD its spread. Inputs are committed to the
device (weights are the model's real constants). ``measure_transfers`` fits
``t = alpha + bytes / beta`` by least squares to median ``device_put`` copy times.

Timings on a shared 2-core machine are noisy: medians, never means.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from jaxlab.serving.cost import CostModel, DeviceSpec
from jaxlab.serving.graph import Graph, device_jit

__all__ = ["profile_graph", "calibrate_fusion", "measure_transfers", "measure_dispatch", "time_call", "timed_blocks"]


def time_call(fn, args, repeats: int = 20, warmup: int = 3) -> tuple:
    """(median seconds, robust std seconds) of ``fn(*args)`` including block_until_ready."""
    import jax
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    ts = np.empty(repeats)
    for k in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts[k] = time.perf_counter() - t0
    med = float(np.median(ts))
    return med, float(1.4826 * np.median(np.abs(ts - med)))


def timed_blocks(runners: dict, repeats: int, block: int = 20, gap_s: float = 0.05, warm: int = 3) -> dict:
    """Per-call wall seconds of each runner (name -> zero-argument call), ``repeats`` each.

    The runners take turns in blocks of ``block`` kept calls with ``gap_s`` of idle time before
    each block, after ``warm`` warm-up calls that are not kept (steady state, as a server runs).
    Why not call by call: ONNX Runtime's worker threads spin-wait after every run (its default,
    which is what makes it fast on small models), so whatever runs right after an ORT call shares
    the cores with them; interleaving call by call made our single-device path up to 2x slower than
    alone (measured: LSTM-h512-l4 3.4 ms alone, 6.9 ms right after ORT calls). Every comparison with
    ONNX Runtime in this package (``benchmarks.chrion``, ``experiments.chrion``) is timed this way.
    """
    if not runners:
        raise ValueError("timed_blocks: runners is empty; pass {name: zero-argument call}")
    if repeats < 1 or block < 1 or warm < 0 or gap_s < 0:
        raise ValueError(f"timed_blocks: repeats={repeats}, block={block} must be >= 1 and warm={warm}, "
                         f"gap_s={gap_s} >= 0")
    ts = {k: [] for k in runners}
    while min(len(v) for v in ts.values()) < repeats:
        for k, fn in runners.items():
            time.sleep(gap_s)
            for j in range(warm + block):
                t0 = time.perf_counter()
                fn()
                if j >= warm:
                    ts[k].append(time.perf_counter() - t0)
    return {k: v[:repeats] for k, v in ts.items()}


def measure_dispatch(device, repeats: int = 50) -> float:
    """Seconds of a trivial jitted call on ``device`` (the fixed cost every dispatch pays)."""
    import jax
    import jax.numpy as jnp
    x = jax.device_put(jnp.zeros((1,), jnp.float32), device)
    f = jax.jit(lambda a: a + 1.0)
    return time_call(f, (x,), repeats=repeats, warmup=5)[0]


def _example_inputs(graph: Graph, op, device, rng):
    import jax
    args = []
    for v in op.inputs:
        if v in graph.constants:
            a = graph.constants[v]
        else:
            info = graph.values[v]
            if np.dtype(info.dtype).kind == "f":
                a = rng.standard_normal(info.shape).astype(np.float32)
            else:
                a = np.zeros(info.shape, np.int32)
        args.append(jax.device_put(a, device))
    return args


def profile_graph(graph: Graph, devices: Sequence[DeviceSpec], repeats: int = 15, warmup: int = 3,
                  transfer_sizes: Sequence[int] = (256, 4096, 65536, 1 << 20), seed: int = 0) -> CostModel:
    """Measures every op on every device. Returns a :class:`CostModel` (seconds, bytes/s)."""
    import jax
    if not devices:
        raise ValueError("devices is empty: pass jaxlab.serving.cost.available_devices()")
    rng = np.random.default_rng(seed)
    n, nd = len(graph.ops), len(devices)
    rep = {}
    for i, op in enumerate(graph.ops):
        rep.setdefault(op.signature, []).append(i)
    times = np.zeros((n, nd))
    stds = np.zeros((n, nd))
    dispatch = np.array([measure_dispatch(d.device) for d in devices])
    for d, spec in enumerate(devices):
        for sig, members in rep.items():
            op = graph.ops[members[0]]
            f = device_jit(op.fn, spec.device)
            args = _example_inputs(graph, op, spec.device, rng)
            med, sd = time_call(f, args, repeats=repeats, warmup=warmup)
            times[members, d] = med
            stds[members, d] = sd
    compute = np.maximum(times - dispatch[None, :], 0.0)
    floor = np.zeros((n, nd))
    for d, spec in enumerate(devices):
        if spec.emulated:
            floor[:, d] = spec.launch_s + spec.speed_factor * compute[:, d]
    op_time = np.maximum(times, floor)
    alpha, beta = measure_transfers(devices, transfer_sizes)
    return CostModel(op_time=op_time, op_compute=compute, op_std=stds, floor=floor, dispatch_s=dispatch,
                     alpha=alpha, beta=beta, device_names=tuple(d.name for d in devices),
                     emulated=tuple(d.emulated for d in devices))


def measure_transfers(devices: Sequence[DeviceSpec], sizes: Sequence[int] = (256, 4096, 65536, 1 << 20),
                      repeats: int = 15) -> tuple:
    """Fits alpha [s] and beta [bytes/s] per ordered device pair from device_put copies."""
    import jax
    nd = len(devices)
    alpha = np.zeros((nd, nd))
    beta = np.full((nd, nd), np.inf)
    for a in range(nd):
        for b in range(nd):
            if a == b:
                continue
            xs, ys = [], []
            for s in sizes:
                src = jax.device_put(np.zeros(max(int(s) // 4, 1), np.float32), devices[a].device)
                jax.block_until_ready(src)
                med, _ = time_call(lambda x: jax.device_put(x, devices[b].device), (src,), repeats=repeats, warmup=2)
                xs.append(float(s)); ys.append(med)
            slope, icpt = np.polyfit(np.array(xs), np.array(ys), 1)
            al = max(float(icpt), float(min(ys)) if icpt <= 0 else float(icpt))
            inv_beta = max(float(slope), 1e-13)
            link = [devices[a], devices[b]]
            for spec in link:
                if spec.emulated:  # the emulated link is never faster than its PCIe-like model
                    al = max(al, spec.link_alpha_s)
                    inv_beta = max(inv_beta, 1.0 / spec.link_beta_Bps)
            alpha[a, b], beta[a, b] = al, 1.0 / inv_beta
    return alpha, beta


def calibrate_fusion(graph: Graph, cm: CostModel, devices: Sequence[DeviceSpec], max_ops: int = 48,
                     samples: int = 6, repeats: int = 10, include_whole: bool = True, seed: int = 0) -> CostModel:
    """Fits the fused-segment cost ``seg_fixed + seg_per_arg * n_args + seg_scale * sum compute``
    per device by non-negative least squares on measured segments: contiguous ranges of the
    topological order (random start, sizes 2 .. max_ops), the whole graph when ``include_whole``,
    and every profiled single op. [our choice: XLA fuses a segment's ops, so per-op dispatch and
    buffer handling are paid once per segment, and compute shrinks by a device-specific factor.]
    Returns ``cm`` with the three fields set."""
    import jax
    from scipy.optimize import nnls
    from jaxlab.serving.graph import compose, consumers
    rng = np.random.default_rng(seed)
    n = len(graph.ops)
    cons = consumers(graph)
    outs = set(graph.outputs)
    ranges = []
    sizes = np.unique(np.clip(np.geomspace(2, max(2, min(max_ops, n)), samples).astype(int), 1, n))
    for size in sizes:
        a = int(rng.integers(0, n - size + 1))
        ranges.append(list(range(a, a + size)))
    if include_whole and n > max_ops:
        ranges.append(list(range(n)))
    fixed, per_arg, scale = np.zeros(len(devices)), np.zeros(len(devices)), np.ones(len(devices))
    for d, spec in enumerate(devices):
        rows, ys = [], []
        seen = set()
        for i, op in enumerate(graph.ops):   # singletons: already measured
            if op.signature in seen:
                continue
            seen.add(op.signature)
            nargs = len(dict.fromkeys(op.inputs)) + len(op.outputs)
            rows.append([1.0, nargs, cm.op_compute[i, d]]); ys.append(cm.dispatch_s[d] + cm.op_compute[i, d])
        for members in ranges:
            mset = set(members)
            keep = {v for i in members for v in graph.ops[i].outputs
                    if v in outs or any(j not in mset for j in cons.get(v, []))}
            fused = compose([graph.ops[i] for i in members], keep, "calib")
            args = _example_inputs(graph, fused, spec.device, rng)
            med, _ = time_call(device_jit(fused.fn, spec.device), args, repeats=repeats, warmup=2)
            rows.append([1.0, len(fused.inputs) + len(fused.outputs), float(np.sum(cm.op_compute[members, d]))])
            ys.append(med)
        A, y = np.array(rows), np.array(ys)
        # Relative errors matter (segments span microseconds to milliseconds): weight rows by 1/y.
        coef, _ = nnls(A / y[:, None], np.ones_like(y))
        fixed[d], per_arg[d], scale[d] = coef
    return cm._replace(seg_fixed=fixed, seg_per_arg=per_arg, seg_scale=scale)
