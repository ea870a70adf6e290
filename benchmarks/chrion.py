"""Chrion benchmark: our compiled single-device path vs ONNX Runtime (CPU) on the same ONNX RNNs.

    python -m benchmarks.chrion                 # LSTM grid of the spec (hidden 256-1024, 2-4 layers, uni/bi, T 16/64)
    python -m benchmarks.chrion --quick         # 4 models, fewer repeats
    python -m benchmarks.chrion --plans         # also: engine plans on [cpu, emulated accelerator]
    python -m benchmarks.chrion --single-thread # one core: ORT intra_op_num_threads=1 vs XLA, process pinned to a core
    python -m benchmarks.chrion --quick --cores 2 # also: Chrion's latency-optimal plan over 2 CPU cores

For every model: ONNX Runtime CPUExecutionProvider (default threads and options) and
``compile_single_device`` (the whole model as one jitted function, each RNN node a lax.scan over
time, compiled with ``graph.CPU_COMPILER_OPTIONS``: 512-bit vectors) run the same inputs, and, as a
baseline in the same loop, the same function compiled with XLA's default CPU options (column "XLA
defaults"; ``--no-xla-defaults`` drops it), ``--repeats`` calls each, taking turns in short blocks separated by
idle gaps (see ``jaxlab.serving.profiler.timed_blocks``: ORT's threads spin after each run and would otherwise steal the
cores from the next call); the figure is the ratio of medians (jax / ORT, < 1 means we are
faster) and the max abs difference of the outputs. The machine is shared: medians only, and the
load average is printed beside the numbers.

ORT's default splits each step over every core. XLA:CPU splits the per-step matrix-vector product
over its thread pool only for the larger products: measured 2026-12-02 on 2 cores, a scan of
``h @ R`` ran 1.7-1.9x faster than pinned to one core at hidden 512 and 1024 (process CPU / wall
1.9) and no faster at hidden 256 (1.0). The benchmark prints process CPU time / wall time of both
runtimes. ``--cores N`` adds our multi-core CPU path: the model imported at chunk granularity
(``rnn_chunk`` steps per operator), profiled on N XLA host devices (one per core,
``cost.cpu_core_devices``), partitioned by the latency-optimal planner and run by the engine
(one worker per core); its latency is interleaved with the others in the same loop.

With ``--plans`` the script re-executes itself with two XLA host devices and also measures the
threaded engine on the unrolled graph for cpu-only / accelerator-only / latency-optimal plans
(accelerator EMULATED: a second CPU device with a speed model; no GPU claim follows).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np


def _machine() -> str:
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    return (f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"load average {load[0]:.1f}; python {platform.python_version()}")


def _grid(quick: bool):
    if quick:
        return [("LSTM", 256, 2, False, 16), ("LSTM", 256, 2, True, 64), ("LSTM", 512, 4, False, 16),
                ("LSTM", 1024, 2, True, 16)]
    return [("LSTM", h, l, bi, t) for h in (256, 512, 1024) for l in (2, 4) for bi in (False, True)
            for t in (16, 64)] + [("GRU", 512, 2, True, 32), ("GRU", 256, 4, False, 64)]


GAP_S = 0.05  # idle gap before each timed block (see jaxlab.serving.profiler.timed_blocks)


def _cpu_ratio(fn, repeats: int = 10) -> float:
    """Process CPU seconds / wall seconds of ``fn`` (1.0: one core busy), after an idle gap."""
    time.sleep(GAP_S)
    fn()
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        fn()
    return (time.process_time() - c0) / max(time.perf_counter() - w0, 1e-12)


def _core_engine(model, x, cores: int, chunk: int):
    """Chrion's latency-optimal plan of ``model`` over ``cores`` CPU devices, warmed up."""
    from jaxlab.serving.cost import cpu_core_devices
    from jaxlab.serving.executor import Engine
    from jaxlab.serving.graph import fuse_light_chains
    from jaxlab.serving.onnx_import import import_onnx
    from jaxlab.serving.partition import make_problem, plan_latency_optimal
    from jaxlab.serving.profiler import calibrate_fusion, profile_graph
    devs = cpu_core_devices(cores)
    g = fuse_light_chains(import_onnx(model, rnn_chunk=chunk))
    cm = calibrate_fusion(g, profile_graph(g, devs), devs)
    plan = plan_latency_optimal(make_problem(g, cm), time_budget_s=10)
    eng = Engine(g, plan, devs, cm)
    eng.warmup(x)
    return eng, plan


def _max_diff(out: dict, ref: dict) -> float:
    return max(float(np.max(np.abs(np.asarray(out[k]) - ref[k]))) for k in ref)


def ort_vs_jax(grid, repeats: int, batch: int, ort_threads: int = 0, cores: int = 0, chunk_div: int = 4,
               xla_defaults: bool = True):
    import jax

    from jaxlab.serving.onnx_import import compile_single_device, import_onnx, make_rnn_model, ort_session
    from jaxlab.serving.profiler import timed_blocks
    rows = []
    for cell, h, l, bi, t in grid:
        model = make_rnn_model(cell, input_size=h, hidden=h, layers=l, bidirectional=bi, seq_len=t, batch=batch)
        x = {"x": np.random.default_rng(0).normal(size=(t, batch, h)).astype(np.float32)}
        sess = ort_session(model, threads=ort_threads)
        names = [o.name for o in sess.get_outputs()]
        g1 = import_onnx(model, expand_rnn=False)
        f = compile_single_device(g1)
        f0 = compile_single_device(g1, compiler_options={}) if xla_defaults else None
        ref = dict(zip(names, sess.run(names, x)))
        err = _max_diff(jax.block_until_ready(f(x)), ref)
        if f0 is not None:
            err = max(err, _max_diff(jax.block_until_ready(f0(x)), ref))
        eng = None
        if cores > 1:
            eng, plan = _core_engine(model, x, cores, max(1, t // chunk_div))
            out_e, _ = eng.run(x)
            err = max(err, _max_diff(out_e, ref))
        runners = {"ort": lambda: sess.run(names, x), "jax": lambda: jax.block_until_ready(f(x))}
        if f0 is not None:
            runners["jax0"] = lambda: jax.block_until_ready(f0(x))
        if eng is not None:
            runners["cores"] = lambda: eng.run_stream([x])
        ts = timed_blocks(runners, repeats, gap_s=GAP_S)
        to, tj, te = ts["ort"], ts["jax"], ts.get("cores", [])
        name = f"{cell}-h{h}-l{l}-{'bi' if bi else 'uni'}-T{t}-B{batch}"
        r = {"model": name, "ort_ms": np.median(to) * 1e3, "jax_ms": np.median(tj) * 1e3, "max_abs_err": err,
             "ort_min_ms": np.min(to) * 1e3, "jax_min_ms": np.min(tj) * 1e3,
             "ort_cpu_per_wall": _cpu_ratio(runners["ort"]), "jax_cpu_per_wall": _cpu_ratio(runners["jax"])}
        r["ratio"] = r["jax_ms"] / r["ort_ms"]
        r["ratio_min"] = r["jax_min_ms"] / r["ort_min_ms"]
        extra = ""
        if f0 is not None:
            r["jax_xla_defaults_ms"] = np.median(ts["jax0"]) * 1e3
            r["ratio_xla_defaults"] = r["jax_xla_defaults_ms"] / r["ort_ms"]
            r["gain_vs_xla_defaults"] = r["jax_xla_defaults_ms"] / r["jax_ms"]
            extra += (f" | XLA defaults {r['jax_xla_defaults_ms']:8.3f} ms /ORT {r['ratio_xla_defaults']:5.2f}"
                      f" (ours x{r['gain_vs_xla_defaults']:.2f} faster)")
        if eng is not None:
            r["cores_ms"] = np.median(te) * 1e3
            r["cores_ratio"] = r["cores_ms"] / r["ort_ms"]
            r["best_ratio"] = min(r["ratio"], r["cores_ratio"])
            extra += (f" | {cores}-core plan {r['cores_ms']:8.3f} ms ({len(plan.segments.segments)} segments, predicted "
                     f"{plan.predicted_s * 1e3:.3f}) /ORT {r['cores_ratio']:5.2f}")
            eng.close()
        rows.append(r)
        print(f"{name:28s} median: ORT {r['ort_ms']:9.3f} ms  jax(scan) {r['jax_ms']:9.3f} ms  jax/ORT {r['ratio']:5.2f}"
              f" | min: ORT {r['ort_min_ms']:9.3f}  jax {r['jax_min_ms']:9.3f}  jax/ORT {r['ratio_min']:5.2f}"
              f" | cpu/wall ORT {r['ort_cpu_per_wall']:.2f} jax {r['jax_cpu_per_wall']:.2f}{extra}"
              f" | max|diff| {err:.1e}", flush=True)
    return rows


def plans(repeats: int):
    from jaxlab.serving.cost import available_devices
    from jaxlab.serving.executor import Engine
    from jaxlab.serving.graph import fuse_light_chains
    from jaxlab.serving.onnx_import import import_onnx, make_rnn_model
    from jaxlab.serving.partition import make_problem, plan_latency_optimal, plan_single_device
    from jaxlab.serving.profiler import calibrate_fusion, profile_graph
    devs = available_devices()
    print("devices:", [d.name + (" [EMULATED]" if d.emulated else "") for d in devs])
    for cell, h, l, bi, t in [("LSTM", 256, 2, True, 16), ("GRU", 256, 2, False, 16)]:
        model = make_rnn_model(cell, input_size=h, hidden=h, layers=l, bidirectional=bi, seq_len=t, batch=1)
        x = {"x": np.random.default_rng(0).normal(size=(t, 1, h)).astype(np.float32)}
        g = fuse_light_chains(import_onnx(model))
        cm = calibrate_fusion(g, profile_graph(g, devs), devs)
        pb = make_problem(g, cm)
        ps = [plan_single_device(pb, d) for d in range(len(devs))] + [plan_latency_optimal(pb, time_budget_s=10)]
        engines = []
        for p in ps:
            e = Engine(g, p, devs, cm)
            e.warmup(x)
            engines.append((p, e, []))
        for _ in range(repeats):
            for p, e, ts in engines:
                ts.append(e.run_stream([x])[0][0].latency_s)
        base = np.median(engines[0][2])
        for p, e, ts in engines:
            print(f"{cell}-h{h}-l{l}-{'bi' if bi else 'uni'}-T{t}  {p.name:22s} p50 {np.median(ts) * 1e3:8.3f} ms "
                  f"(x{np.median(ts) / base:.2f} of cpu-only)  predicted {p.predicted_s * 1e3:8.3f} ms  segments {len(p.segments.segments)}")
            e.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--plans", action="store_true")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--cores", type=int, default=0, help="also run the latency-optimal plan over this many CPU cores")
    ap.add_argument("--chunk-div", type=int, default=4, help="--cores: RNN operators of T / chunk_div steps")
    ap.add_argument("--no-xla-defaults", action="store_true",
                    help="skip the baseline column: the same scan path compiled with XLA's default CPU options")
    ap.add_argument("--single-thread", action="store_true",
                    help="both runtimes on one core: ORT on one thread, XLA without its Eigen pool, the process pinned to one core")
    a = ap.parse_args()
    pinned = None
    if a.single_thread:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()
        # Without the pin XLA still ran work on the second core (process CPU / wall 1.95 on the
        # hidden-1024 models, measured 2026-12-02), so "single thread" was not a one-core match.
        if hasattr(os, "sched_setaffinity"):
            pinned = min(os.sched_getaffinity(0))
            os.sched_setaffinity(0, {pinned})
    repeats = a.repeats or (30 if a.quick else 20)
    n_host = max(2 if a.plans else 1, a.cores)
    if n_host > 1 and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={n_host}").strip()
    print("command: python -m benchmarks.chrion " + " ".join(sys.argv[1:]))
    print(_machine())
    import jax
    import onnxruntime
    print(f"jax {jax.__version__} ({jax.devices()}), onnxruntime {onnxruntime.__version__}")
    print("threads:", (f"ORT 1 / XLA no Eigen thread pool; process pinned to core {pinned}" if pinned is not None else
                       "ORT 1 / XLA no Eigen thread pool (not pinned: no sched_setaffinity here)")
          if a.single_thread else "ORT default / XLA default")
    rows = ort_vs_jax(_grid(a.quick), repeats, a.batch, ort_threads=1 if a.single_thread else 0, cores=a.cores,
                      chunk_div=a.chunk_div, xla_defaults=not a.no_xla_defaults)
    keys = [("ratio", "median"), ("ratio_min", "minimum (least disturbed by other load)")]
    if not a.no_xla_defaults:
        keys += [("ratio_xla_defaults", "median, scan path with XLA's default CPU options (baseline)")]
    if a.cores > 1:
        keys += [("cores_ratio", f"{a.cores}-core plan, median"), ("best_ratio", "best of scan and core plan, median")]
    for key, what in keys:
        ratios = np.array([r[key] for r in rows])
        print(f"jax/ORT {what} latency ratio: geometric mean {np.exp(np.mean(np.log(ratios))):.2f}, "
              f"models where jax is no slower: {int(np.sum(ratios <= 1.0))}/{len(rows)}")
    print(f"max |jax - ORT| over all outputs: {max(r['max_abs_err'] for r in rows):.1e}")
    print(_machine())
    if a.plans:
        plans(repeats)


if __name__ == "__main__":
    main()
