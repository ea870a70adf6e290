"""Chrion's online engine: runs a partition plan with one worker thread per device.

``Engine(graph, plan, devices, cm)`` compiles every fused segment of the plan with ``jax.jit``
(one XLA executable per segment; segments with equal structure share one), commits each
segment's weights to its device once, and runs requests:

* one worker thread per device walks its segments in the plan's static order;
* a segment starts when its dependency counter (external inputs not yet published) reaches 0;
* values that cross devices are copied explicitly with ``jax.device_put`` by the producer's
  worker right after the segment (on an emulated link the copy is also held back until
  ``alpha + bytes / beta`` has elapsed, the modelled transfer time);
* on an emulated accelerator a segment runs for real on its host device and then sleeps until
  its modelled time ``sum floor`` has passed (see :mod:`jaxlab.serving.cost`).

``run(inputs)`` serves one request; ``run_stream(requests, arrivals)`` serves many, pipelined across
devices (request r+1 can start on a device while request r finishes on the other), each
released at its arrival time (Poisson load). Both return outputs as numpy arrays and a trace of
(request, segment, device, start, end) for Gantt charts.

Concurrency on CPU host devices (measured on our 2-core VM, 2026-12-02): two jitted computations
on two XLA host devices overlap when each runs ~10 ms (two in 10.2-10.8 ms vs 20.0 ms in
sequence), but at ~1 ms each they take 2.1-3.4 ms, no better than in sequence: waking an idle
core's XLA worker costs about a millisecond here (with a low-priority busy process keeping the
cores awake the 1 ms pair overlapped in some trials). Plans whose segments are shorter than that
gain nothing from a second CPU core on such a machine; ONNX Runtime avoids the cost by spinning
its threads, which XLA:CPU's thread pool does not offer.
"""

from __future__ import annotations

import threading
import time
from typing import NamedTuple, Sequence

import numpy as np

from jaxlab.serving.cost import CostModel, DeviceSpec
from jaxlab.serving.graph import Graph, compose, device_jit
from jaxlab.serving.partition import Plan

__all__ = ["Engine", "RequestResult", "sleep_overshoot"]


class RequestResult(NamedTuple):
    outputs: dict        # output name -> np.ndarray
    arrival_s: float     # relative to the stream start
    done_s: float
    latency_s: float


def sleep_overshoot(samples: int = 30, target_s: float = 1e-4) -> float:
    """Median seconds by which ``time.sleep(target_s)`` overshoots on this machine."""
    d = []
    for _ in range(samples):
        t0 = time.perf_counter()
        time.sleep(target_s)
        d.append(time.perf_counter() - t0 - target_s)
    return float(max(np.median(d), 0.0))


def _sleep_until(t_abs: float, overshoot: float):
    rem = t_abs - time.perf_counter() - overshoot
    if rem > 0:
        time.sleep(rem)


class Engine:
    """Compiled, multi-device executor for one plan (see module docstring)."""

    def __init__(self, graph: Graph, plan: Plan, devices: Sequence[DeviceSpec], cm: CostModel):
        import jax
        if len(plan.placement) != len(graph.ops):
            raise ValueError(f"plan has {len(plan.placement)} ops, graph has {len(graph.ops)}: "
                             "build the plan on the same (fused) graph")
        if max(plan.placement) >= len(devices):
            raise ValueError(f"plan uses device {max(plan.placement)} but only {len(devices)} devices were given")
        self.graph, self.plan, self.devices, self.cm = graph, plan, list(devices), cm
        self.segments = list(plan.segments.segments)
        consumed_by = {}
        for k, seg in enumerate(self.segments):
            for i in seg.ops:
                for v in graph.ops[i].inputs:
                    consumed_by.setdefault(v, set()).add(k)
        outputs = set(graph.outputs)
        self._fns, self._seg_inputs, self._seg_outputs, self._floor = [], [], [], []
        self._dst = []            # per segment: {value: [destination devices]}
        cache = {}
        self._consts = {}
        self.producer_seg = {}
        for k, seg in enumerate(self.segments):
            ops = [graph.ops[i] for i in seg.ops]
            produced = {v for op in ops for v in op.outputs}
            keep = {v for v in produced if v in outputs or (consumed_by.get(v, set()) - {k})}
            fused = compose(ops, keep, name=f"seg{k}")
            key = (fused.signature, seg.device)
            if key not in cache:
                cache[key] = device_jit(fused.fn, self.devices[seg.device].device)
            self._fns.append(cache[key])
            self._seg_inputs.append(fused.inputs)
            self._seg_outputs.append(fused.outputs)
            for v in fused.outputs:
                self.producer_seg[v] = k
            dev = self.devices[seg.device]
            self._floor.append(float(np.sum(cm.floor[list(seg.ops), seg.device])) if dev.emulated else 0.0)
            for v in fused.inputs:
                if v in graph.constants and (v, seg.device) not in self._consts:
                    self._consts[(v, seg.device)] = jax.device_put(graph.constants[v], dev.device)
        for k, seg in enumerate(self.segments):
            dst = {}
            for v in self._seg_outputs[k]:
                ds = sorted({self.segments[c].device for c in consumed_by.get(v, set())} - {seg.device})
                if ds:
                    dst[v] = ds
            self._dst.append(dst)
        self._ext = [[v for v in self._seg_inputs[k] if v not in graph.constants] for k in range(len(self.segments))]
        self._order = [[k for k, s in enumerate(self.segments) if s.device == d] for d in range(len(self.devices))]
        self._overshoot = sleep_overshoot() if any(d.emulated for d in self.devices) else 0.0
        self._emulated_link = any(d.emulated for d in self.devices)
        self._nbytes = {v: info.nbytes for v, info in graph.values.items()}
        self._warm = False

    # ------------------------------------------------------------------------------------------
    def _link_delay(self, nbytes: int, a: int, b: int) -> float:
        if not (self.devices[a].emulated or self.devices[b].emulated):
            return 0.0   # real copies: jax orders them; their time is in the measurement
        return float(self.cm.alpha[a, b] + nbytes / self.cm.beta[a, b])

    def _queue(self, d):
        import queue
        if not hasattr(self, "_queues"):
            self._queues = {}
        if d not in self._queues:
            q = queue.SimpleQueue()

            def loop():
                while True:
                    job = q.get()
                    if job is None:
                        return
                    fn, dev, ev = job
                    try:
                        fn(dev)
                    finally:
                        ev.set()
            threading.Thread(target=loop, daemon=True, name=f"chrion-device-{d}").start()
            self._queues[d] = q
        return self._queues[d]

    def close(self):
        """Stops the worker threads (the engine can still be used; they restart on demand)."""
        for q in getattr(self, "_queues", {}).values():
            q.put(None)
        self._queues = {}

    def warmup(self, inputs: dict, times: int = 2):
        """Compiles every segment (first calls) so that timed runs exclude compilation."""
        for _ in range(times):
            self.run(inputs)
        self._warm = True

    def run(self, inputs: dict) -> tuple:
        """Serves one request. Returns (outputs dict of np.ndarray, trace list)."""
        res, trace = self.run_stream([inputs])
        return res[0].outputs, trace

    def run_stream(self, requests: Sequence[dict], arrivals: Sequence[float] | None = None) -> tuple:
        """Serves ``requests`` (dicts of input arrays) released at ``arrivals`` (seconds from the
        start; default all at 0, i.e. a batch served back to back, pipelined across devices).
        Returns (list of RequestResult, trace: list of (request, segment, device, start_s, end_s))."""
        import jax
        g = self.graph
        R = len(requests)
        for r, req in enumerate(requests):
            missing = [v for v in g.inputs if v not in req]
            if missing:
                raise ValueError(f"request {r} lacks inputs {missing} (graph inputs: {list(g.inputs)})")
        arrivals = np.zeros(R) if arrivals is None else np.asarray(arrivals, float)
        if arrivals.shape != (R,) or np.any(np.diff(arrivals) < 0):
            raise ValueError("arrivals must be one non-decreasing time (seconds) per request")
        nseg = len(self.segments)
        lock = threading.Lock()
        env = {}                          # (r, value, device) -> array
        ready_at = np.zeros((R, nseg))    # absolute perf_counter times
        if not hasattr(self, "_pending0"):
            # Graph inputs count as available at arrival: only values from other segments are counted.
            self._pending0 = np.array([sum(1 for v in self._ext[k] if v not in g.inputs) for k in range(nseg)], int)
            self._host_bytes = np.array([sum(g.values[v].nbytes for v in self._ext[k] if v in g.inputs)
                                         for k in range(nseg)], float)
        pending = np.tile(self._pending0, (R, 1))
        host_bytes = np.tile(self._host_bytes, (R, 1))
        events = [[threading.Event() for _ in range(nseg)] for _ in range(R)]
        trace = []
        seg_end = np.zeros((R, nseg))
        errors = []
        t_start = time.perf_counter()

        def publish(r, k, outs, now):
            d = self.segments[k].device
            moves: dict = {}
            for v, a in zip(self._seg_outputs[k], outs):
                env[(r, v, d)] = a
                for dst in self._dst[k].get(v, ()):
                    moves.setdefault(dst, []).append((v, a))
            # one batched copy per destination device (a segment can publish dozens of per-step values)
            for dst, items in moves.items():
                copies = jax.device_put([a for _, a in items], self.devices[dst].device)
                for (v, _), c in zip(items, copies):
                    env[(r, v, dst)] = c
            with lock:
                for v in self._seg_outputs[k]:
                    for c in self._consumers.get(v, ()):
                        dc = self.segments[c].device
                        delay = self._link_delay(self._nbytes[v], d, dc) if dc != d and self._emulated_link else 0.0
                        ready_at[r, c] = max(ready_at[r, c], now + delay)
                        pending[r, c] -= 1
                        if pending[r, c] == 0:
                            events[r][c].set()

        def worker(d):
            spec = self.devices[d]
            try:
                for r in range(R):
                    t_arr = t_start + arrivals[r]
                    for k in self._order[d]:
                        if pending[r, k] > 0:
                            events[r][k].wait()
                        ready = max(ready_at[r, k], t_arr)
                        if host_bytes[r, k] and d != 0:
                            ready = max(ready, t_arr + self._link_delay(host_bytes[r, k], 0, d))
                        _sleep_until(ready, self._overshoot if spec.emulated else 0.0)
                        args = []
                        for v in self._seg_inputs[k]:
                            if v in g.constants:
                                args.append(self._consts[(v, d)])
                            elif v in g.inputs:
                                key = (r, v, d)
                                if key not in env:
                                    env[key] = jax.device_put(requests[r][v], spec.device)
                                args.append(env[key])
                            else:
                                args.append(env[(r, v, d)])
                        t0 = time.perf_counter()
                        outs = jax.block_until_ready(self._fns[k](*args))
                        if spec.emulated and self._floor[k] > 0:
                            _sleep_until(t0 + self._floor[k], self._overshoot)
                        t1 = time.perf_counter()
                        seg_end[r, k] = t1
                        trace.append((r, k, d, t0 - t_start, t1 - t_start))
                        publish(r, k, outs, t1)
            except Exception as e:  # surface worker failures to the caller
                errors.append(e)
                for r in range(R):
                    for ev in events[r]:
                        ev.set()

        if not hasattr(self, "_consumers"):
            cons = {}
            for k in range(nseg):
                for v in self._ext[k]:
                    if v not in g.inputs:
                        cons.setdefault(v, []).append(k)
            self._consumers = cons
        # Device 0 (the host CPU) is served by the calling thread, the others by persistent worker
        # threads: no thread start-up or hand-off sits on the critical path of a CPU-only plan.
        done = []
        for d in range(1, len(self.devices)):
            if self._order[d]:
                ev = threading.Event()
                self._queue(d).put((worker, d, ev))
                done.append(ev)
        if self._order[0]:
            worker(0)
        for ev in done:
            ev.wait()
        if errors:
            raise errors[0]
        results = []
        for r in range(R):
            outs, done = {}, t_start + arrivals[r]
            for v in g.outputs:
                if v in g.inputs:
                    outs[v] = np.asarray(requests[r][v])
                    continue
                k = self.producer_seg[v]
                outs[v] = np.asarray(env[(r, v, self.segments[k].device)])
                done = max(done, seg_end[r, k])
            results.append(RequestResult(outputs=outs, arrival_s=float(arrivals[r]), done_s=done - t_start,
                                         latency_s=float(done - (t_start + arrivals[r]))))
        return results, sorted(trace, key=lambda x: x[3])

    def profile_segments(self, repeats: int = 15, warmup: int = 3, seed: int = 0) -> np.ndarray:
        """Measured seconds of each segment alone on its device (median; on an emulated device the
        modelled floor applies, as in ``run``). Equal compiled segments are timed once."""
        from jaxlab.serving.profiler import time_call
        rng = np.random.default_rng(seed)
        g = self.graph
        out = np.zeros(len(self.segments))
        memo = {}
        for k, seg in enumerate(self.segments):
            key = (id(self._fns[k]), seg.device, tuple(g.values[v] for v in self._seg_inputs[k]))
            if key not in memo:
                import jax
                args = []
                for v in self._seg_inputs[k]:
                    if v in g.constants:
                        args.append(self._consts[(v, seg.device)])
                    else:
                        info = g.values[v]
                        a = (rng.standard_normal(info.shape).astype(np.float32) if np.dtype(info.dtype).kind == "f"
                             else np.zeros(info.shape, np.int32))
                        args.append(jax.device_put(a, self.devices[seg.device].device))
                memo[key] = time_call(self._fns[k], args, repeats=repeats, warmup=warmup)[0]
            out[k] = max(memo[key], self._floor[k])
        return out

    def device_memory_stats(self) -> dict:
        """Measured peak bytes per device where the backend reports them (GPU), else None
        (XLA:CPU returns no memory stats: use the plan's analytic figures)."""
        out = {}
        for spec in self.devices:
            try:
                st = spec.device.memory_stats()
            except Exception:
                st = None
            out[spec.name] = None if not st else st.get("peak_bytes_in_use")
        return out
