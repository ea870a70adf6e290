"""Operator DAG for Chrion: records, topology, fusion of operators and memory footprints.

A :class:`Graph` is a static, topologically ordered list of :class:`Op` records. Every op is a
pure, jax-traceable function ``fn(*inputs) -> tuple(outputs)``; inputs are value names, which are
either graph inputs, outputs of earlier ops, or constants (weights, folded shapes) held in
``graph.constants``. Constants are passed to ``fn`` as ordinary arguments (never closed over), so
one compiled function serves every op with the same :attr:`Op.signature` (e.g. all time steps of a
layer) and weights can be committed to whichever device runs the op.

Values are float32/int64 arrays with static shapes (``ValueInfo``); sizes are in bytes.
"""

from __future__ import annotations

from typing import Callable, Hashable, NamedTuple, Sequence

import numpy as np

__all__ = ["ValueInfo", "Op", "Graph", "consumers", "producers", "op_preds", "op_succs",
           "compose", "fuse_light_chains", "evaluate", "value_bytes", "weight_bytes",
           "activation_peak_bytes", "HEAVY_KINDS", "CPU_COMPILER_OPTIONS", "device_jit"]

# Operators that carry most of the arithmetic; two heavy ops are never fused into one scheduling
# unit, so the parallelism across layers, directions and time stays visible to the partitioner.
HEAVY_KINDS = frozenset({"LSTMCell", "GRUCell", "RNNCell", "LSTMChunk", "GRUChunk", "RNNChunk", "LSTM", "GRU", "RNN",
                         "MatMul", "Gemm"})


# XLA compiler options for executables that run on a CPU device [our choice, measured 2026-12-05 on
# this 2-core AVX-512 CPU, jax 0.10.2]. XLA:CPU vectorises for 256-bit registers by default even where
# the CPU has 512-bit ones; the batch-1 recurrent product of an RNN step (a [1, H] x [H, G*H] matvec,
# run T times inside a lax.scan) is then compute-issue bound. Asking for 512-bit vectors took an LSTM
# scan (B=1, T=32) from 0.46 to 0.35 ms at hidden 256 and 2.38 to 2.15 ms at hidden 512 (medians,
# same process, interleaved; outputs within 3e-7 of the default build), and benchmarks.chrion's
# geometric-mean jax/ORT ratio from 1.64-1.70 to 1.22-1.43. Hidden 1024 (memory-bound) is unchanged.
# The option is per executable (``jax.jit(..., compiler_options=...)``), so nothing process-wide
# (XLA_FLAGS) is touched, and it is only passed to CPU compilations; on a CPU without AVX-512 XLA
# falls back to the widest vectors it has.
CPU_COMPILER_OPTIONS: dict = {"xla_cpu_prefer_vector_width": 512}


def device_jit(fn: Callable, device=None, compiler_options: dict | None = None):
    """``jax.jit(fn)`` with :data:`CPU_COMPILER_OPTIONS` when ``device`` (default: JAX's default
    device) is a CPU; other platforms get XLA's defaults. ``compiler_options`` replaces the CPU
    defaults (``{}``: XLA's own defaults, e.g. as a benchmark baseline)."""
    import jax
    platform = (device or jax.devices()[0]).platform
    opts = (dict(CPU_COMPILER_OPTIONS) if platform == "cpu" else {}) if compiler_options is None \
        else dict(compiler_options)
    return jax.jit(fn, compiler_options=opts) if opts else jax.jit(fn)


class ValueInfo(NamedTuple):
    shape: tuple
    dtype: str  # numpy dtype name, e.g. "float32"

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


class Op(NamedTuple):
    """One operator (scheduling unit).

    name: unique name. kind: operator type ("LSTMCell", "MatMul", "Fused", ...).
    inputs/outputs: value names. fn: ``fn(*input_arrays) -> tuple(output_arrays)``.
    signature: hashable key; ops with equal signatures compute the same function of inputs of the
    same shapes, so they share one compiled executable and one profile entry.
    flops: approximate floating-point operations (for reporting and tie-breaking only).
    group: provenance, e.g. "lstm_0/fwd" (ops of one group share weights).
    heavy: True when the op holds a matmul or a recurrent cell.
    """
    name: str
    kind: str
    inputs: tuple
    outputs: tuple
    fn: Callable
    signature: Hashable
    flops: float = 0.0
    group: str = ""
    heavy: bool = False


class Graph(NamedTuple):
    ops: tuple            # topological order
    values: dict          # name -> ValueInfo for every input, output, intermediate and constant
    constants: dict       # name -> np.ndarray
    inputs: tuple         # runtime input names
    outputs: tuple        # graph output names

    def op_index(self) -> dict:
        return {op.name: i for i, op in enumerate(self.ops)}


def producers(graph: Graph) -> dict:
    """value name -> index of the op producing it (graph inputs and constants have none)."""
    return {v: i for i, op in enumerate(graph.ops) for v in op.outputs}


def consumers(graph: Graph) -> dict:
    """value name -> list of op indices consuming it."""
    out: dict = {}
    for i, op in enumerate(graph.ops):
        for v in dict.fromkeys(op.inputs):
            out.setdefault(v, []).append(i)
    return out


def op_preds(graph: Graph) -> list:
    """For every op index, the sorted list of predecessor op indices (through activations)."""
    prod = producers(graph)
    return [sorted({prod[v] for v in op.inputs if v in prod}) for op in graph.ops]


def op_succs(graph: Graph) -> list:
    preds = op_preds(graph)
    succs = [[] for _ in graph.ops]
    for j, ps in enumerate(preds):
        for i in ps:
            succs[i].append(j)
    return succs


def value_bytes(graph: Graph, name: str) -> int:
    return graph.values[name].nbytes


def compose(ops: Sequence[Op], keep: set, name: str, constants: dict | None = None) -> Op:
    """Fuses a topologically ordered list of ops into one op.

    keep: value names produced inside that must be returned (consumed outside or graph outputs).
    The fused op's inputs are the values read but not produced inside, in first-use order.
    """
    produced = {v for op in ops for v in op.outputs}
    inputs = tuple(dict.fromkeys(v for op in ops for v in op.inputs if v not in produced))
    outputs = tuple(v for op in ops for v in op.outputs if v in keep)
    plan = [(op.fn, op.inputs, op.outputs) for op in ops]

    def fn(*args):
        env = dict(zip(inputs, args))
        for f, ins, outs in plan:
            res = f(*[env[v] for v in ins])
            env.update(zip(outs, res))
        return tuple(env[v] for v in outputs)

    # Position-based structure so that fused ops built from equal-signature parts (e.g. the same
    # step of different time indices) share a signature.
    index = {v: ("in", k) for k, v in enumerate(inputs)}
    struct = []
    for k, op in enumerate(ops):
        struct.append((op.signature, tuple(index[v] for v in op.inputs)))
        for m, v in enumerate(op.outputs):
            index[v] = ("op", k, m)
    sig = ("Fused", tuple(struct), tuple(index[v] for v in outputs))
    heavy = any(op.heavy for op in ops)
    kinds = [op.kind for op in ops]
    kind = kinds[0] if len(kinds) == 1 else "Fused(" + "+".join(kinds) + ")"
    group = next((op.group for op in ops if op.heavy), ops[0].group)
    return Op(name=name, kind=kind, inputs=inputs, outputs=outputs, fn=fn, signature=sig,
              flops=float(sum(op.flops for op in ops)), group=group, heavy=heavy)


def fuse_light_chains(graph: Graph) -> Graph:
    """Coarsens the DAG: contracts an edge a->b when at least one end is light (no matmul/cell)
    and either a's only consumer is b or b's only producer is a.

    Both conditions guarantee that the contraction cannot create a cycle. Two heavy ops are never
    merged, so the parallelism across layers, directions and time steps is kept. [our choice]
    """
    groups = [[i] for i in range(len(graph.ops))]   # member op indices per cluster
    owner = list(range(len(graph.ops)))
    ops = list(graph.ops)
    outputs = set(graph.outputs)
    changed = True
    while changed:
        changed = False
        alive = sorted({owner[i] for i in range(len(ops))})
        cl_ops = {c: [ops[i] for i in sorted(groups[c])] for c in alive}
        prod = {}
        for c in alive:
            for op in cl_ops[c]:
                for v in op.outputs:
                    prod[v] = c
        cl_in = {c: {v for op in cl_ops[c] for v in op.inputs if v in prod and prod[v] != c} for c in alive}
        cl_preds = {c: {prod[v] for v in cl_in[c]} for c in alive}
        cl_succs = {c: set() for c in alive}
        for c in alive:
            for p in cl_preds[c]:
                cl_succs[p].add(c)
        heavy = {c: any(o.heavy for o in cl_ops[c]) for c in alive}
        exports = {c: any(v in outputs for o in cl_ops[c] for v in o.outputs) for c in alive}
        merged = set()
        for a in alive:
            if a in merged:
                continue
            for b in sorted(cl_succs[a]):
                if b in merged or (heavy[a] and heavy[b]):
                    continue
                if (len(cl_succs[a]) == 1 and not exports[a]) or len(cl_preds[b]) == 1:
                    groups[a] = groups[a] + groups[b]
                    for i in groups[b]:
                        owner[i] = a
                    merged.update({a, b})
                    changed = True
                    break
    prod_all = producers(graph)
    cons_all = consumers(graph)
    clusters = sorted({owner[i] for i in range(len(ops))}, key=lambda c: min(groups[c]))
    new_ops = []
    for c in clusters:
        members = sorted(groups[c])
        if len(members) == 1:
            new_ops.append(ops[members[0]])
            continue
        mset = set(members)
        keep = {v for i in members for v in ops[i].outputs
                if v in outputs or any(j not in mset for j in cons_all.get(v, []))}
        new_ops.append(compose([ops[i] for i in members], keep, name="+".join(ops[i].name for i in members[:2])
                               + (f"+{len(members) - 2}" if len(members) > 2 else "")))
    # Clusters sorted by their first member are not necessarily topological: re-sort.
    return Graph(ops=tuple(_toposort(new_ops)), values=graph.values, constants=graph.constants,
                 inputs=graph.inputs, outputs=graph.outputs)


def _toposort(ops: list) -> list:
    prod = {v: i for i, op in enumerate(ops) for v in op.outputs}
    indeg = [0] * len(ops)
    succ = [[] for _ in ops]
    for j, op in enumerate(ops):
        for i in {prod[v] for v in op.inputs if v in prod}:
            indeg[j] += 1
            succ[i].append(j)
    import heapq
    ready = [j for j in range(len(ops)) if indeg[j] == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(ops[i])
        for j in succ[i]:
            indeg[j] -= 1
            if indeg[j] == 0:
                heapq.heappush(ready, j)
    if len(order) != len(ops):
        raise ValueError("operator graph has a cycle: the ONNX model is malformed (node outputs feed back into their inputs)")
    return order


def evaluate(graph: Graph, inputs: dict) -> dict:
    """Runs the graph op by op (eager jax on the default device). Returns {output name: np.ndarray}."""
    env = {k: v for k, v in graph.constants.items()}
    env.update(inputs)
    for op in graph.ops:
        res = op.fn(*[env[v] for v in op.inputs])
        env.update(zip(op.outputs, res))
    return {v: np.asarray(env[v]) for v in graph.outputs}


def weight_bytes(graph: Graph, placement: Sequence[int], device: int) -> int:
    """Bytes of constants (weights) that must reside on ``device``: each constant read by any op
    placed there counts once."""
    names = {v for op, d in zip(graph.ops, placement) if d == device for v in op.inputs if v in graph.constants}
    return int(sum(graph.constants[v].nbytes for v in names))


def activation_peak_bytes(graph: Graph, placement: Sequence[int], start: Sequence[float],
                          finish: Sequence[float], device: int, arrival: dict | None = None) -> int:
    """Liveness-based peak of activation bytes on ``device`` for a given schedule.

    A value occupies its producer's device from the producer's start until the last consumer on
    that device finishes (at least until the producer finishes); a copy on another device lives from
    its arrival (``arrival[(value, device)]``, default the producer's finish) until the last consumer
    there finishes. Graph inputs live on the devices that read them from time 0; graph outputs stay
    until the end. Units: bytes.
    """
    prod = producers(graph)
    cons = consumers(graph)
    end = max(finish) if len(finish) else 0.0
    events = []
    for v, info in graph.values.items():
        if v in graph.constants:
            continue
        users = [j for j in cons.get(v, []) if placement[j] == device]
        if v in prod:
            i = prod[v]
            if placement[i] == device:
                t0 = start[i]
            elif users:
                t0 = (arrival or {}).get((v, device), finish[i])
            else:
                continue
            t1 = max([finish[j] for j in users] + [finish[i] if placement[i] == device else t0])
        elif v in graph.inputs:
            if not users:
                continue
            t0, t1 = 0.0, max(finish[j] for j in users)
        else:
            continue
        if v in graph.outputs and (v not in prod or placement[prod[v]] == device):
            t1 = end
        events.append((t0, 1, info.nbytes))
        events.append((t1, 0, -info.nbytes))
    events.sort()
    cur = peak = 0
    for _, _, b in events:
        cur += b
        peak = max(peak, cur)
    return int(peak)
