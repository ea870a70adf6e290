"""Chrion: per-operator CPU/accelerator placement of ONNX RNNs under a latency SLO.

    python -m experiments.chrion --workdir=runs/chrion --config=experiments/configs/chrion.py:quick

For every model of the config: ONNX Runtime CPU latency and our compiled single-device path
(lax.scan) on the same model, timed in turns of blocks with idle gaps as in ``benchmarks.chrion``
(``jaxlab.serving.profiler.timed_blocks``); the unrolled operator DAG profiled on [cpu, accelerator]; four plans
(cpu-only, accelerator-only, latency-optimal = HEFT + local search, memory-optimal = least
accelerator memory under the SLO) executed by the threaded engine (p50/p99 latency, ORT parity,
analytic device memory); simulator-predicted vs measured makespan (MAPE); SLO violation rate
under Poisson load; a Gantt chart. Separately, HEFT + local search vs the exact MILP optimum on
small graphs.

Without a GPU the accelerator is a second XLA host device with an emulated speed model (see
jaxlab.serving.cost); results that involve it are labelled "emulated" and say nothing about a
real GPU. Needs XLA_FLAGS=--xla_force_host_platform_device_count=2 before jax is imported: the
command-line entry sets it, and ``run`` re-launches itself in a subprocess when jax was already
imported with one CPU device (e.g. inside the tour).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np

from jaxlab.serving.cost import host_device_count_flag
from jaxlab.utils.experiment import check_ints, check_number

CELLS = ("LSTM", "GRU", "RNN")  # jaxlab.serving.onnx_import.make_rnn_model


def _ensure_flag(n: int):
    flag = host_device_count_flag(n)
    cur = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in cur:
        os.environ["XLA_FLAGS"] = (cur + " " + flag).strip()


def _devices_ok(config) -> bool:
    import jax
    try:
        if jax.devices("gpu"):
            return True
    except RuntimeError:
        pass
    return len(jax.devices("cpu")) >= config.host_devices


def _pct(xs, q):
    return float(np.percentile(np.asarray(xs), q))


def _run_subprocess(config, workdir):
    """Runs this experiment in a fresh interpreter whose XLA_FLAGS gives the host devices."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + host_device_count_flag(config.host_devices)).strip()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root, os.path.join(root, "lib"), env.get("PYTHONPATH", "")])
    cfg_json = json.dumps(config.to_dict())
    code = ("import json, sys, ml_collections; from experiments.chrion import run; "
            "cfg = ml_collections.ConfigDict(json.loads(sys.argv[1])); run(cfg, sys.argv[2])")
    proc = subprocess.run([sys.executable, "-c", code, cfg_json, workdir], env=env, cwd=root)
    if proc.returncode != 0:
        raise RuntimeError(f"chrion subprocess failed with exit code {proc.returncode}")
    with open(os.path.join(workdir, "summary.json")) as f:
        return json.load(f)


def _exact_gap_study(config, devices):
    """HEFT (+ local search) vs the exact MILP optimum on random DAGs and on a tiny profiled RNN."""
    from jaxlab.serving.graph import fuse_light_chains
    from jaxlab.serving.onnx_import import import_onnx, make_rnn_model
    from jaxlab.serving.partition import exact_milp, heft, local_search, make_problem, random_problem
    from jaxlab.serving.profiler import profile_graph
    rows = []
    problems = [(f"random-dag-{s}", random_problem(config.exact.nodes, seed=config.seed + s, edge_p=0.3))
                for s in range(config.exact.random_graphs)]
    if len(devices) >= 2:
        for cell in ("LSTM", "GRU"):
            m = make_rnn_model(cell, input_size=config.exact.model_hidden, hidden=config.exact.model_hidden, layers=2,
                               bidirectional=False, seq_len=config.exact.model_seq_len, batch=1)
            g = fuse_light_chains(import_onnx(m))
            cm = profile_graph(g, devices[:2], repeats=5, warmup=1, transfer_sizes=(256, 65536))
            # The MILP charges one symmetric cost per crossing edge: symmetrise the link.
            a = np.maximum(cm.alpha, cm.alpha.T)
            b = np.minimum(cm.beta, cm.beta.T)
            problems.append((f"{cell.lower()}-2x{config.exact.model_seq_len} (profiled, emulated accel.)",
                             make_problem(g, cm._replace(alpha=a, beta=b))))
    for name, pb in problems:
        t0 = time.perf_counter()
        ex = exact_milp(pb, time_limit_s=config.exact.time_limit_s)
        t_exact = time.perf_counter() - t0
        h = heft(pb)
        t0 = time.perf_counter()
        _, v, evals = local_search(pb, h.placement, max_evals=2000, time_budget_s=30.0, seed=config.seed)
        v = min(v, h.makespan)
        rows.append({"graph": name, "ops": pb.n, "exact_ms": ex["makespan"] * 1e3, "exact_optimal": ex["optimal"],
                     "heft_ms": h.makespan * 1e3, "heft_ls_ms": v * 1e3,
                     "heft_gap_pct": 100 * (h.makespan / ex["makespan"] - 1),
                     "heft_ls_gap_pct": 100 * (v / ex["makespan"] - 1), "exact_s": t_exact,
                     "ls_s": time.perf_counter() - t0})
    return rows


def _gantt(path, plan, trace, devices, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(10, 3.2))
    colors = ["tab:blue", "tab:orange", "tab:green"]
    names = [d.name + (" [emulated]" if d.emulated else "") for d in devices]
    t_min = min(s for _, _, _, s, _ in trace)
    for _, k, d, s, e in trace:
        ax.barh(2 * d + 1, (e - s) * 1e3, left=(s - t_min) * 1e3, color=colors[d], edgecolor="k", lw=0.3)
    seg = plan.segments
    for k, sg in enumerate(seg.segments):
        ax.barh(2 * sg.device, (seg.finish[k] - seg.start[k]) * 1e3, left=seg.start[k] * 1e3,
                color=colors[sg.device], alpha=0.45, edgecolor="k", lw=0.3)
    ticks, labels = [], []
    for d, n in enumerate(names):
        ticks += [2 * d, 2 * d + 1]
        labels += [f"{n} predicted", f"{n} measured"]
    ax.set_yticks(ticks)
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xlabel("ms")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _run_model(mcfg, config, devices, wd, step, make_gantt):
    import jax

    from jaxlab.serving.executor import Engine
    from jaxlab.serving.graph import fuse_light_chains
    from jaxlab.serving.onnx_import import compile_single_device, import_onnx, make_rnn_model, ort_session
    from jaxlab.serving.partition import (make_problem, plan_latency_optimal, plan_memory_optimal,
                                          plan_single_device, segment_schedule)
    from jaxlab.serving.profiler import calibrate_fusion, profile_graph, timed_blocks

    import ml_collections
    mcfg = ml_collections.ConfigDict(dict(mcfg))
    name = (f"{mcfg.cell}-h{mcfg.hidden}-l{mcfg.layers}-{'bi' if mcfg.bidirectional else 'uni'}"
            f"-T{mcfg.seq_len}-B{mcfg.batch}")
    model = make_rnn_model(mcfg.cell, input_size=mcfg.input_size, hidden=mcfg.hidden, layers=mcfg.layers,
                           bidirectional=mcfg.bidirectional, seq_len=mcfg.seq_len, batch=mcfg.batch,
                           seed=config.seed)
    rng = np.random.default_rng(config.seed)
    make_x = lambda: {"x": rng.normal(size=(mcfg.seq_len, mcfg.batch, mcfg.input_size)).astype(np.float32)}
    x0 = make_x()
    sess = ort_session(model)
    onames = [o.name for o in sess.get_outputs()]
    ref0 = dict(zip(onames, sess.run(onames, x0)))
    scan = compile_single_device(import_onnx(model, expand_rnn=False), devices[0].device)
    scan_err = max(float(np.max(np.abs(np.asarray(v) - ref0[k]))) for k, v in scan(x0).items())

    t0 = time.perf_counter()
    g = fuse_light_chains(import_onnx(model))
    cm = profile_graph(g, devices, repeats=config.profile_repeats)
    cm = calibrate_fusion(g, cm, devices, max_ops=config.calibration_max_ops, samples=config.calibration_samples)
    t_profile = time.perf_counter() - t0
    pb = make_problem(g, cm)
    singles = [plan_single_device(pb, d) for d in range(len(devices))]
    # SLO relative to the accelerator-only plan, the paper's baseline [our choice of scale].
    slo = config.slo_scale * singles[-1].predicted_s
    t0 = time.perf_counter()
    lat = plan_latency_optimal(pb, slo=None, max_evals=config.search_evals, time_budget_s=config.search_time_s,
                               seed=config.seed)
    lat = lat._replace(meets_slo=bool(lat.predicted_s + config.k_sigma * lat.predicted_std_s <= slo))
    plans = singles + [lat]
    if len(devices) >= 2:
        if lat.meets_slo:
            mem = plan_memory_optimal(pb, slo=slo, k_sigma=config.k_sigma, start=lat)
        else:
            mem = plan_single_device(pb, len(devices) - 1, slo, config.k_sigma)._replace(
                name="memory-optimal", note="no plan meets the SLO: fell back to the accelerator alone")
        plans.append(mem)
    t_plan = time.perf_counter() - t0

    engines = []
    for p in plans:
        eng = Engine(g, p, devices, cm)
        eng.warmup(x0)
        eng.profile_segments(repeats=1, warmup=1)   # compiles nothing new; warms the timing path
        engines.append((p, eng, []))
    # ONNX Runtime against our single-device scan: in blocks with idle gaps (profiler.timed_blocks),
    # since ORT's worker threads spin after every run and slow whatever runs next on the cores.
    xs = [make_x() for _ in range(config.runs)]
    refs = [dict(zip(onames, sess.run(onames, x))) for x in xs]   # parity references
    peers = timed_blocks({"onnxruntime-cpu": lambda: sess.run(onames, xs[0]),
                          "jax-scan-cpu": lambda: jax.block_until_ready(scan(xs[0]))},
                         repeats=config.runs, block=max(1, config.runs // 3))
    lat_ms = {p.name: [] for p in plans}
    lat_ms.update({k: [t * 1e3 for t in v] for k, v in peers.items()})
    max_err = {p.name: 0.0 for p in plans}
    traces = {}
    time.sleep(0.05)  # let ORT's threads stop spinning before the engines run
    # Interleave the plans request by request so that machine load hits all alike.
    for x, ref in zip(xs, refs):
        for p, eng, preds in engines:
            # Segment profiles taken in the same iteration as the measurement, so that both see the
            # same machine load; the simulator composes them into a predicted makespan.
            preds.append(segment_schedule(pb, p.schedule, eng.profile_segments(repeats=1, warmup=0)).makespan)
            res, trace = eng.run_stream([x])
            lat_ms[p.name].append(res[0].latency_s * 1e3)
            max_err[p.name] = max(max_err[p.name], max(float(np.max(np.abs(res[0].outputs[k] - ref[k]))) for k in ref))
            traces[p.name] = trace
    p50 = {k: float(np.median(v)) for k, v in lat_ms.items()}
    rows = []
    acc_name = devices[-1].name if len(devices) > 1 else None
    for p, eng, preds in engines:
        pred_seg = float(np.median(preds))
        row = {"model": name, "plan": p.name, "ops": pb.n, "segments": len(p.segments.segments),
               "ops_on_accelerator": int(sum(1 for d in p.placement if d == len(devices) - 1)) if acc_name else 0,
               "p50_ms": p50[p.name], "p99_ms": _pct(lat_ms[p.name], 99),
               "pred_model_ms": p.predicted_s * 1e3, "pred_segprof_ms": pred_seg * 1e3,
               "ape_model_pct": 100 * abs(p.predicted_s * 1e3 - p50[p.name]) / p50[p.name],
               "ape_segprof_pct": 100 * abs(pred_seg * 1e3 - p50[p.name]) / p50[p.name],
               "max_abs_err_vs_ort": max_err[p.name], "meets_slo_pred": p.meets_slo, "pred_std_ms": p.predicted_std_s * 1e3,
               "note": p.note}
        for dname, m in p.memory.items():
            row[f"mem_{dname}_MB"] = m["total"] / 1e6
        meas = eng.device_memory_stats()
        row["mem_measured"] = {k: v for k, v in meas.items()}
        rows.append(row)
        wd.log(step, kind="plan", **row)
        step += 1
    # SLO violation rate under Poisson load (same arrivals for every plan).
    rate = config.poisson_load / (p50["latency-optimal"] / 1e3)
    arr = np.cumsum(rng.exponential(1.0 / rate, size=config.poisson_requests))
    arr -= arr[0]
    reqs = [make_x() for _ in range(config.poisson_requests)]
    for row, (p, eng, _) in zip(rows, engines):
        res, _ = eng.run_stream(reqs, arrivals=arr)
        eng.close()
        l = np.array([r.latency_s for r in res])
        row.update({"poisson_rate_rps": rate, "poisson_p50_ms": float(np.median(l) * 1e3),
                    "poisson_p99_ms": _pct(l * 1e3, 99), "slo_ms": slo * 1e3,
                    "slo_violation_rate": float(np.mean(l > slo))})
    if make_gantt:
        _gantt(wd.file("gantt.png"), lat, traces["latency-optimal"], devices,
               f"{name}: latency-optimal plan, one request (measured vs simulated)"
               + (" - accelerator EMULATED" if any(d.emulated for d in devices) else ""))
    model_row = {"model": name, "ops": pb.n, "profile_s": t_profile, "plan_s": t_plan, "slo_ms": slo * 1e3,
                 "ort_p50_ms": p50["onnxruntime-cpu"], "ort_p99_ms": _pct(lat_ms["onnxruntime-cpu"], 99),
                 "jax_scan_p50_ms": p50["jax-scan-cpu"], "jax_scan_p99_ms": _pct(lat_ms["jax-scan-cpu"], 99),
                 "jax_scan_over_ort": p50["jax-scan-cpu"] / p50["onnxruntime-cpu"], "jax_scan_max_abs_err": scan_err,
                 "cost_model": cm.describe()}
    wd.log(step, kind="model", **model_row)
    return model_row, rows, step + 1


def _check_config(config) -> None:
    """Rejects bad values with one ValueError naming the field, before a subprocess is started, anything is
    profiled or the workdir is touched."""
    check_ints(config, "seed", low=0)
    check_ints(config, "host_devices", "profile_repeats", "calibration_max_ops", "calibration_samples",
               "search_evals", "runs", "poisson_requests")
    check_number(config, "search_time_s", 0, low_open=True)
    check_number(config, "slo_scale", 0, low_open=True, why="SLO = slo_scale x accelerator-only latency")
    check_number(config, "k_sigma", 0)
    check_number(config, "poisson_load", 0, low_open=True, why="arrival rate / latency-optimal p50 throughput")
    check_number(config, "emulate.launch_s", 0)
    check_number(config, "emulate.speed_factor", 0, low_open=True)
    check_number(config, "emulate.link_alpha_s", 0)
    check_number(config, "emulate.link_beta_Bps", 0, low_open=True)
    check_ints(config, "exact.random_graphs", low=0)
    check_ints(config, "exact.nodes", "exact.model_seq_len", "exact.model_hidden")
    check_number(config, "exact.time_limit_s", 0, low_open=True)
    if not config.models:
        raise ValueError("models is empty: give at least one RNN (see experiments/configs/chrion.py)")
    for i, m in enumerate(config.models):
        m = dict(m)
        if m.get("cell") not in CELLS:
            raise ValueError(f"models[{i}].cell={m.get('cell')!r}: use one of {CELLS}")
        for key in ("hidden", "layers", "seq_len", "batch", "input_size"):
            v = m.get(key)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"models[{i}].{key}={v!r} must be an integer >= 1")


def run(config, workdir) -> dict:
    from jaxlab.utils.workdir import Workdir, markdown_table

    _check_config(config)

    # XLA_FLAGS is never changed inside a shared process (tour, tests): without enough devices the
    # run moves to a subprocess; the command-line entry sets the flag before jax is imported.
    if not _devices_ok(config):
        return _run_subprocess(config, workdir)
    from jaxlab.serving.cost import available_devices

    wd = Workdir(workdir)
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    devices = available_devices(True, **config.emulate.to_dict())
    emulated = any(d.emulated for d in devices)
    wd.write_config(config, devices=[d.name + (" [emulated]" if d.emulated else "") for d in devices])
    if os.path.exists(wd.file("metrics.jsonl")):
        wd.truncate_metrics(-1)   # a re-run starts a fresh log (each run is short; no checkpoints)
    gap_rows = _exact_gap_study(config, devices)
    for i, r in enumerate(gap_rows):
        wd.log(i, kind="exact_gap", **r)
    step = len(gap_rows)
    model_rows, plan_rows = [], []
    for k, mcfg in enumerate(config.models):
        mrow, prow, step = _run_model(mcfg, config, devices, wd, step, make_gantt=(k == 0))
        model_rows.append(mrow)
        plan_rows += prow
    label = " [accelerator EMULATED on a 2nd CPU device]" if emulated else ""
    by = lambda name: [r for r in plan_rows if r["plan"] == name]
    lat, cpu = by("latency-optimal"), by("cpu-only")
    summary = {
        "devices": [d.name + (" [emulated]" if d.emulated else "") for d in devices],
        "note": ("No GPU here: the accelerator is a second XLA host device with the emulated speed model "
                 f"{config.emulate.to_dict()}; GPU claims (19.4% latency, 67.5% memory) cannot be checked."
                 if emulated else "real GPU profiles"),
        "models": model_rows, "plans": plan_rows, "exact_gap": gap_rows,
        "max_abs_err_vs_ort": max(r["max_abs_err_vs_ort"] for r in plan_rows),
        "jax_scan_max_abs_err_vs_ort": max(r["jax_scan_max_abs_err"] for r in model_rows),
        "jax_scan_over_ort_per_model": {r["model"]: r["jax_scan_over_ort"] for r in model_rows},
        "mape_simulator_segment_profiles_pct": float(np.mean([r["ape_segprof_pct"] for r in plan_rows])),
        "mape_simulator_op_model_pct": float(np.mean([r["ape_model_pct"] for r in plan_rows])),
        "heft_ls_gap_mean_pct": float(np.mean([r["heft_ls_gap_pct"] for r in gap_rows])),
        "heft_ls_gap_max_pct": float(np.max([r["heft_ls_gap_pct"] for r in gap_rows])),
        "heft_gap_mean_pct": float(np.mean([r["heft_gap_pct"] for r in gap_rows])),
        "latency_opt_vs_cpu_only_p50": float(np.mean([a["p50_ms"] / c["p50_ms"] for a, c in zip(lat, cpu)])),
        "label": label,
        # The machine is shared: timings are only as good as its load (1-minute load average).
        "load_average_start_end": [load_start, os.getloadavg()[0] if hasattr(os, "getloadavg") else None],
        "cpu_count": os.cpu_count(),
    }
    if len(devices) > 1:
        acc = by(devices[-1].name + "-only")
        mem = by("memory-optimal")
        key = f"mem_{devices[-1].name}_MB"
        summary["latency_opt_vs_accel_only_p50"] = float(np.mean([a["p50_ms"] / g["p50_ms"] for a, g in zip(lat, acc)]))
        summary["memory_opt_accel_mem_vs_accel_only"] = float(np.mean([m[key] / g[key] for m, g in zip(mem, acc)]))
        summary["slo_violation_rate"] = {r["plan"]: r["slo_violation_rate"] for r in plan_rows
                                         if r["model"] == model_rows[0]["model"]}
    cols = ["model", "plan", "segments", "ops_on_accelerator", "p50_ms", "p99_ms", "pred_segprof_ms", "pred_model_ms",
            "max_abs_err_vs_ort", "slo_violation_rate"]
    table = markdown_table(plan_rows, cols)
    table += "\n" + markdown_table(model_rows, ["model", "ops", "ort_p50_ms", "jax_scan_p50_ms", "jax_scan_over_ort",
                                                "jax_scan_max_abs_err", "slo_ms"])
    table += "\n" + markdown_table(gap_rows, ["graph", "ops", "exact_ms", "heft_ms", "heft_ls_ms", "heft_ls_gap_pct",
                                              "exact_optimal"])
    wd.write_text("results.md", (f"Devices: {summary['devices']}{label}\n\n") + table)
    return wd.write_summary(summary)


def tour_row(workdir) -> dict:
    from experiments.configs.chrion import get_config
    s = run(get_config("quick"), workdir)
    m = s["models"][0]
    lat = [p for p in s["plans"] if p["plan"] == "latency-optimal" and p["model"] == m["model"]][0]
    emu = " (accel. emulated)" if "emulated" in s["label"].lower() else ""
    return {"system": "Chrion CPU+GPU RNN serving" + emu,
            "dataset": f"{len(s['models'])} ONNX RNNs, e.g. {m['model']}",
            "headline": (f"ORT parity {s['max_abs_err_vs_ort']:.1e}; jax-scan/ORT p50 "
                         + ", ".join(f"{v:.2f}" for v in s["jax_scan_over_ort_per_model"].values())
                         + f"; sim MAPE {s['mape_simulator_segment_profiles_pct']:.1f}% (seg. profiles); "
                         f"HEFT+LS gap {s['heft_ls_gap_mean_pct']:.1f}% (max {s['heft_ls_gap_max_pct']:.1f}%); "
                         f"lat-opt/cpu-only p50 {s['latency_opt_vs_cpu_only_p50']:.2f}"
                         + (f", mem-opt accel mem {100 * s.get('memory_opt_accel_mem_vs_accel_only', float('nan')):.0f}% of accel-only"
                            if "memory_opt_accel_mem_vs_accel_only" in s else ""))}


if __name__ == "__main__":
    _ensure_flag(2)
    from jaxlab.utils.experiment import cli

    cli(run, "chrion")
