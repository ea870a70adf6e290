"""FedCod vs the star baseline: FedAvg rounds over real TCP through an emulated WAN.

    python -m experiments.fedcod --workdir=runs/fedcod --config=experiments/configs/fedcod.py:quick
    python -m experiments.fedcod --workdir=runs/fedcod_wan --config=experiments/configs/fedcod.py:paper

Every silo (and the server) is its own OS process; with root each one lives in its own network
namespace behind htb-shaped veth links (``jaxlab.fl.comm.netem``), otherwise all run on loopback
with a token-bucket shaper in the transport (the summary's ``network`` says which). For each
scenario the same FedAvg federation runs twice, once with FedCod (RLNC download with recoding
relays and ACK-stop; systematic-MDS upload with coded aggregation at relays; adaptive redundancy)
and once with the star baseline (every byte through the server's links), on the same links.

Writes config.json, metrics.jsonl (one line per scenario x protocol x round), summary.json (mean
download/upload/comm/round time and CPU seconds per node per scenario and protocol, reductions,
bytes per link, redundancy over rounds, whether both protocols produced bit-identical global
models), timeline.png, comm_bars.png, redundancy.png and per-run node logs under runs/.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

from jaxlab.fl.comm import netem
from jaxlab.utils.experiment import check_choice, check_ints, check_number
from jaxlab.utils.workdir import Workdir, markdown_table

__all__ = ["run", "tour_row", "builtin_trace"]

SCENARIOS = ("wan", "homogeneous", "trace", "link_drop", "kill")
TASKS = ("digits_mlp", "jaxlab_fedavg")
BACKENDS = ("auto", "netns", "loopback")


def builtin_trace(n_clients: int, rounds_s: float, seed: int = 0) -> list[dict]:
    """[our choice] Time-varying links: every ~rounds_s/2 seconds three random client-client links
    drop to 5 Mbit/s (both directions) and the previous ones recover to 75 Mbit/s."""
    rng = np.random.default_rng(seed + 99)
    rows, prev = [], []
    for step in range(1, 12):
        t = step * rounds_s / 2
        for a, b in prev:
            rows += [{"t": t, "src": a, "dst": b, "rate_mbit": 75.0}, {"t": t, "src": b, "dst": a, "rate_mbit": 75.0}]
        prev = []
        for _ in range(3):
            a, b = rng.choice(n_clients, 2, replace=False)
            prev.append((int(a), int(b)))
            rows += [{"t": t, "src": int(a), "dst": int(b), "rate_mbit": 5.0},
                     {"t": t, "src": int(b), "dst": int(a), "rate_mbit": 5.0}]
    return sorted(rows, key=lambda r: r["t"])


def _task_spec(config) -> dict:
    if config.task == "digits_mlp":
        return {"kind": "digits_mlp", "n_clients": config.n_clients, "hidden": config.hidden, "lr": config.lr,
                "local_epochs": config.local_epochs, "seed": config.seed}
    if config.task == "jaxlab_fedavg":
        return {"kind": "jaxlab_fedavg", "n_clients": config.n_clients, "seed": config.seed,
                "lr": config.lr, "local_epochs": config.local_epochs}
    raise ValueError(f"config.task={config.task!r}: use 'digits_mlp' or 'jaxlab_fedavg'")


def _scenario(config, name: str, wd: Workdir | None = None):
    """(links, trace, events) for a named scenario."""
    n = config.n_clients
    wan = netem.wan_links(n, config.server_mbit, tuple(config.c2c_mbit), config.server_delay_ms,
                          tuple(config.c2c_delay_ms), seed=config.seed)
    if name == "wan":
        return wan, [], []
    if name == "homogeneous":
        return netem.homogeneous_links(n, config.homogeneous_mbit, config.homogeneous_delay_ms), [], []
    if name == "trace":
        path = config.trace_file
        if not path:  # write the built-in trace as a file, so the run goes through the trace reader
            path = wd.file("trace.csv")
            with open(path, "w") as f:
                f.write("t_s,src,dst,rate_mbit\n")
                for r in builtin_trace(n, 4.0, config.seed):
                    f.write(f"{r['t']},{r['src']},{r['dst']},{r['rate_mbit']}\n")
        return wan, netem.load_trace(path), []
    if name == "link_drop":  # client 3's link to the server dies 0.5 s into round 2
        return wan, [], [{"kind": "link_down", "node": min(3, n - 1), "round": min(2, config.rounds - 1), "after_s": 0.5}]
    if name == "kill":  # client 5 is SIGKILLed 1 s into round 2
        return wan, [], [{"kind": "kill", "node": min(5, n - 1), "round": min(2, config.rounds - 1), "after_s": 1.0}]
    raise ValueError(f"scenario {name!r} unknown; use one of {SCENARIOS}")


def _mean(xs):
    xs = [x for x in xs if x is not None and np.isfinite(x)]
    return float(np.mean(xs)) if xs else float("nan")


def _summarize_run(rows: list[dict]) -> dict:
    ok = [r for r in rows if r["ok"]]
    cpu_client = [np.mean(list(r["cpu_s"].values())) for r in rows if r["cpu_s"]]
    link_bytes: dict[str, int] = {}
    for r in rows:
        for src, per in r["bytes"].items():
            for dst, b in per.items():
                link_bytes[f"{src}->{dst}"] = link_bytes.get(f"{src}->{dst}", 0) + int(b)
    n_srv = str(max(int(s) for s in rows[0]["bytes"])) if rows and rows[0]["bytes"] else None
    server_link = sum(b for k, b in link_bytes.items() if n_srv and (k.startswith(n_srv + "->") or k.endswith("->" + n_srv)))
    return {"rounds": len(rows), "rounds_ok": len(ok),
            "download_s": _mean([r["download_s"] for r in ok]), "upload_s": _mean([r["upload_s"] for r in ok]),
            "comm_s": _mean([r["comm_s"] for r in ok]), "round_s": _mean([r["round_s"] for r in ok]),
            "train_s_max": _mean([r["train_s_max"] for r in ok]),
            "cpu_s_per_client_round": _mean(cpu_client), "cpu_s_server_round": _mean([r["cpu_s_server"] for r in rows]),
            "bytes_total": int(sum(link_bytes.values())), "bytes_server_links": int(server_link),
            "bytes_per_link": link_bytes, "r": [r["r"] for r in rows],
            "accuracy": [r["accuracy"] for r in rows], "global_sha": [r["global_sha"] for r in rows],
            "replicas_in_sync": all(r.get("replicas_in_sync", False) for r in rows),
            "E_final": [r["E_final"] for r in rows], "drops": [r["drops"] for r in rows if r["drops"]]}


def _plots(wd: Workdir, results: dict, scenarios: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # timeline: per round, download / training / upload segments for both protocols (first scenario)
    sc = scenarios[0]
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8), sharey=True, sharex=True)
    for ax, mode in zip(axes, ("fedcod", "star")):
        rows = results[sc][mode]["rows"]
        t = 0.0
        for r in rows:
            d = r["download_s"] if np.isfinite(r["download_s"]) else 0.0
            u = r["upload_s"] if np.isfinite(r["upload_s"]) else 0.0
            tr = max(r["round_s"] - d - u, 0.0)
            y = r["round"]
            ax.barh(y, d, left=t, color="tab:blue", label="download" if y == 0 else None)
            ax.barh(y, tr, left=t + d, color="tab:gray", label="training + overlap" if y == 0 else None)
            ax.barh(y, u, left=t + d + tr, color="tab:orange", label="upload" if y == 0 else None)
            t += r["round_s"]
        ax.set_title(f"{mode} ({sc}): cumulative wall time")
        ax.set_xlabel("seconds")
        ax.set_ylabel("round")
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(wd.file("timeline.png"), dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(scenarios), 3.8))
    xs = np.arange(len(scenarios))
    for off, mode, col in ((-0.2, "fedcod", "tab:green"), (0.2, "star", "tab:red")):
        dl = [results[s][mode]["summary"]["download_s"] for s in scenarios]
        ul = [results[s][mode]["summary"]["upload_s"] for s in scenarios]
        ax.bar(xs + off, dl, 0.38, color=col, alpha=0.55, label=f"{mode} download")
        ax.bar(xs + off, ul, 0.38, bottom=dl, color=col, label=f"{mode} upload")
    ax.set_xticks(xs, scenarios)
    ax.set_ylabel("mean comm time per round (s)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(wd.file("comm_bars.png"), dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.4))
    for s in scenarios:
        ax.plot(results[s]["fedcod"]["summary"]["r"], marker="o", label=s)
    ax.set_xlabel("round")
    ax.set_ylabel("upload redundancy r (parity blocks)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(wd.file("redundancy.png"), dpi=110)
    plt.close(fig)


def _check_config(config) -> None:
    """Rejects bad values with one ValueError naming the field, before any silo process starts and before
    the workdir is touched (an unknown scenario used to stop the run after the earlier scenarios ran)."""
    check_ints(config, "seed", low=0)
    check_ints(config, "n_clients", low=2)
    check_ints(config, "k", low=0, why="coded blocks per update; 0 = n_clients")
    check_ints(config, "hidden", "local_epochs", "rounds")
    check_ints(config, "r0", "r_thres", "r_delta", low=0)
    check_number(config, "lr", 0, low_open=True)
    check_number(config, "clip", 0, low_open=True, why="fixed-point range of an update entry")
    for name in ("server_mbit", "homogeneous_mbit", "upload_timeout_s", "round_timeout_s", "repair_s"):
        check_number(config, name, 0, low_open=True)
    check_number(config, "server_delay_ms", 0)
    check_number(config, "homogeneous_delay_ms", 0)
    for name, low_open in (("c2c_mbit", True), ("c2c_delay_ms", False)):
        lo_hi = tuple(config[name])
        if len(lo_hi) != 2 or not (lo_hi[0] > 0 if low_open else lo_hi[0] >= 0) or lo_hi[0] > lo_hi[1]:
            raise ValueError(f"{name}={lo_hi!r} must be a (low, high) range with "
                             f"{'0 <' if low_open else '0 <='} low <= high")
    check_choice(config, "download", ("recode", "forward"))
    check_choice(config, "backend", BACKENDS)
    check_choice(config, "task", TASKS)
    if not config.scenarios:
        raise ValueError(f"scenarios is empty: use some of {SCENARIOS}")
    check_choice(config, "scenarios", SCENARIOS)


def run(config, workdir) -> dict:
    _check_config(config)
    wd = Workdir(workdir)
    backend = config.backend
    note = ""
    if backend in ("auto", "netns"):
        ok, why = netem.netns_available()
        if ok:
            backend = "netns"
        elif backend == "netns":
            raise RuntimeError(f"backend='netns' requested but {why}; use --config.backend=loopback")
        else:
            backend, note = "loopback", f"network namespaces unavailable ({why}); loopback with token-bucket shaping"
    if note:
        print(f"[fedcod] {note}")
    wd.write_config(config, backend=backend, note=note)
    task = _task_spec(config)
    results: dict = {}
    step = 0
    scenarios = list(config.scenarios)
    for sc in scenarios:
        links, trace, events = _scenario(config, sc, wd)
        results[sc] = {}
        for mode in ("fedcod", "star"):
            cfg = netem.federation_config(
                config.n_clients, mode, links, task, rounds=config.rounds, k=config.k, download=config.download,
                clip=config.clip, r0=config.r0, r_thres=config.r_thres, r_delta=config.r_delta,
                upload_timeout_s=config.upload_timeout_s, round_timeout_s=config.round_timeout_s,
                repair_s=config.repair_s, trace=trace,
                seed=config.seed)
            run_dir = wd.file(os.path.join("runs", f"{sc}_{mode}"))
            t0 = time.perf_counter()
            out = netem.spawn_federation(cfg, run_dir, backend=backend, events=[dict(e) for e in events])
            wall = time.perf_counter() - t0
            rows = out["rows"]
            for r in rows:
                wd.log(step, scenario=sc, protocol=mode, **{k: v for k, v in r.items() if k not in ("bytes", "client_sha")},
                       bytes_sent=r["bytes"])
                step += 1
            summ = _summarize_run(rows)
            summ.update(wall_s=wall, network=out["network"], events=out["events"], tc_bytes_total=(
                int(sum(out["tc_bytes"].values())) if out["tc_bytes"] else None))
            results[sc][mode] = {"rows": rows, "summary": summ}
            print(f"[fedcod] {sc}/{mode}: comm {summ['comm_s']:.3f} s/round (dl {summ['download_s']:.3f}, "
                  f"up {summ['upload_s']:.3f}), round {summ['round_s']:.3f} s, ok {summ['rounds_ok']}/{summ['rounds']}")
    table, per = [], {}
    for sc in scenarios:
        f, s = results[sc]["fedcod"]["summary"], results[sc]["star"]["summary"]
        red = 1.0 - f["comm_s"] / s["comm_s"] if s["comm_s"] > 0 else float("nan")
        red_round = 1.0 - f["round_s"] / s["round_s"] if s["round_s"] > 0 else float("nan")
        same = f["global_sha"] == s["global_sha"]
        per[sc] = {"fedcod": {k: v for k, v in f.items() if k != "bytes_per_link"},
                   "star": {k: v for k, v in s.items() if k != "bytes_per_link"},
                   "fedcod_bytes_per_link": f["bytes_per_link"], "star_bytes_per_link": s["bytes_per_link"],
                   "comm_reduction": red, "round_reduction": red_round, "same_global_models": same}
        for mode, m in (("fedcod", f), ("star", s)):
            table.append({"scenario": sc, "protocol": mode, "download_s": m["download_s"], "upload_s": m["upload_s"],
                          "comm_s": m["comm_s"], "round_s": m["round_s"], "train_s": m["train_s_max"],
                          "cpu_client_s": m["cpu_s_per_client_round"], "cpu_server_s": m["cpu_s_server_round"],
                          "MB_total": m["bytes_total"] / 1e6, "MB_server_links": m["bytes_server_links"] / 1e6,
                          "rounds_ok": f"{m['rounds_ok']}/{m['rounds']}",
                          "final_acc": m["accuracy"][-1] if m["accuracy"] else float("nan"),
                          "comm_reduction": red if mode == "fedcod" else ""})
    md = markdown_table(table, list(table[0].keys()))
    wd.write_text("results.md", md)
    print(md)
    _plots(wd, results, scenarios)
    from jaxlab.fl.comm.fedavg_wire import make_task

    n_params = make_task(task).n_params
    summary = {"network": results[scenarios[0]]["fedcod"]["summary"]["network"], "backend_note": note,
               "n_clients": config.n_clients, "k": config.k, "n_params": n_params,
               "update_MB": n_params * 4 / 1e6, "rounds": config.rounds, "scenarios": per, "table": table,
               "codec": "GF(p) p=33554393: RLNC download, systematic Cauchy MDS upload, int32 symbols"}
    return wd.write_summary(summary)


def tour_row(workdir) -> dict:
    from experiments.configs.fedcod import get_config

    s = run(get_config("quick"), workdir)
    w = s["scenarios"]["wan"]
    return {"system": "FedCod (coded FL comm)",
            "dataset": f"digits MLP, {s['n_clients']} silos, {s['update_MB']:.2f} MB updates, {s['network']}",
            "headline": (f"comm/round {w['fedcod']['comm_s']:.2f}s vs star {w['star']['comm_s']:.2f}s "
                         f"({100 * w['comm_reduction']:.0f}% lower); same global models: {w['same_global_models']}")}


if __name__ == "__main__":
    from jaxlab.utils.experiment import cli

    cli(run, "fedcod")
