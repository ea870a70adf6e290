"""Emulated WAN for FedCod: one Linux network namespace per silo, tc-shaped links, a trace player.

Topology (``NetnsNetwork``): a hub namespace holds a Linux bridge; every node (clients ``0..N-1``
and the server ``N``) gets its own namespace ``<prefix>-n<i>`` with a veth pair to the bridge and
address ``10.200.0.<i+1>/24`` (namespace-local: nothing leaves the host). Each node's egress is an
``htb`` qdisc with one class per destination (``u32`` match on the destination address), so every
directed link ``i -> j`` has its own rate; a ``pfifo limit 100`` leaf keeps the queue short
(~60 ms at 20 Mbit/s) so that ACK-stop is not defeated by a deep buffer. The kernels we target
lack ``netem`` (see the spec), so one-way delay is added by the transport (``delay_ms`` per link,
applied by the receiver) and rate changes over time come from a trace applied with
``tc class change``.

Without root or network namespaces (``netns_available() == False``) the same federation runs on
loopback with an in-process token bucket per directed link (:class:`node.TokenBucket`); results
are labelled ``network = "loopback-tokenbucket"``.

Cleanup: every namespace name carries the creating pid; :meth:`NetnsNetwork.close` runs on normal
exit, ``atexit``, SIGINT/SIGTERM, and :func:`cleanup_stale` removes namespaces left by a crashed
run whose pid is gone. Child processes get ``PR_SET_PDEATHSIG = SIGKILL`` so they die with the
harness (set by the node itself at start-up, since the harness may be multithreaded), and each
runs in its own session so it can be killed by process group.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Iterable

import numpy as np

__all__ = ["netns_available", "cleanup_stale", "NetnsNetwork", "free_ports", "wan_links", "homogeneous_links",
           "load_trace", "spawn_federation", "federation_config"]

SUBNET = "10.200.0."
PORT = 7100
_PREFIX_RE = re.compile(r"^fcod(\d+)-")


def _run(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise RuntimeError(f"command failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr.strip()}")
    return p


def netns_available() -> tuple[bool, str]:
    """(True, "") when we are root and can create a namespace, a veth pair and an htb qdisc."""
    if os.geteuid() != 0:
        return False, "not root (network namespaces and tc need CAP_NET_ADMIN)"
    name = f"fcod{os.getpid()}-probe"
    try:
        _run(["ip", "netns", "add", name])
        try:
            _run(["ip", "-n", name, "link", "add", "pa", "type", "veth", "peer", "name", "pb"])
            _run(["ip", "netns", "exec", name, "tc", "qdisc", "add", "dev", "pa", "root", "handle", "1:", "htb"])
        finally:
            _run(["ip", "netns", "del", name], check=False)
        return True, ""
    except (RuntimeError, FileNotFoundError) as e:
        return False, f"network namespaces unavailable: {e}"


def cleanup_stale() -> list[str]:
    """Deletes ``fcod<pid>-*`` namespaces whose creating process no longer exists."""
    p = _run(["ip", "netns", "list"], check=False)
    removed = []
    for line in p.stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        m = _PREFIX_RE.match(name)
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            _run(["ip", "netns", "del", name], check=False)
            removed.append(name)
    return removed


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wan_links(n_clients: int, server_mbit: float = 20.0, c2c_mbit=(50.0, 100.0), server_delay_ms: float = 20.0,
              c2c_delay_ms=(5.0, 15.0), seed: int = 0) -> dict:
    """Heterogeneous links: server<->client at ``server_mbit`` each, client<->client drawn uniformly
    from ``c2c_mbit`` (symmetric per pair), delays likewise. Keys ``"i,j"`` (directed)."""
    rng = np.random.default_rng(seed)
    s = n_clients
    links = {}
    for c in range(n_clients):
        links[f"{s},{c}"] = links[f"{c},{s}"] = {"rate_mbit": float(server_mbit), "delay_ms": float(server_delay_ms)}
    for a in range(n_clients):
        for b in range(a + 1, n_clients):
            rate = float(rng.uniform(*c2c_mbit))
            d = float(rng.uniform(*c2c_delay_ms))
            links[f"{a},{b}"] = links[f"{b},{a}"] = {"rate_mbit": round(rate, 2), "delay_ms": round(d, 2)}
    return links


def homogeneous_links(n_clients: int, mbit: float = 50.0, delay_ms: float = 10.0) -> dict:
    """Every directed link has the same rate and delay (server links included)."""
    return {f"{a},{b}": {"rate_mbit": float(mbit), "delay_ms": float(delay_ms)}
            for a in range(n_clients + 1) for b in range(n_clients + 1) if a != b}


def load_trace(path: str) -> list[dict]:
    """A bandwidth trace: CSV ``t_s,src,dst,rate_mbit`` (header optional) or a JSON list of such rows.

    Each row sets the rate of directed link ``src -> dst`` at ``t_s`` seconds after the federation
    starts; use it for heterogeneous, time-varying links (a drop is a rate near 0).
    """
    with open(path) as f:
        text = f.read()
    if path.endswith(".json"):
        rows = json.loads(text)
    else:
        rows = []
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#") or line[0].isalpha():
                continue
            t, s, d, r = line.split(",")
            rows.append({"t": float(t), "src": int(s), "dst": int(d), "rate_mbit": float(r)})
    for r in rows:
        if set(r) < {"t", "src", "dst", "rate_mbit"} or float(r["rate_mbit"]) <= 0:
            raise ValueError(f"trace row {r} in {path}: need t, src, dst and rate_mbit > 0")
    return sorted(rows, key=lambda r: r["t"])


def federation_config(n_clients: int, mode: str, links: dict, task: dict, *, rounds: int, k: int | None = None,
                      download: str = "recode", key: str | None = None, addresses: dict | None = None,
                      shaper: str = "tokenbucket", clip: float = 1.0, r0: int = 9, r_thres: int = 45,
                      r_delta: int = 9, upload_timeout_s: float = 30.0, round_timeout_s: float = 300.0,
                      repair_s: float = 5.0,
                      trace: list | None = None, seed: int = 0, log_dir: str | None = None,
                      out: str | None = None) -> dict:
    """The JSON dict every node process reads (see :mod:`node`). Loopback addresses by default."""
    if mode not in ("fedcod", "star"):
        raise ValueError(f"mode={mode!r}: use 'fedcod' or 'star'")
    if download not in ("recode", "forward"):
        raise ValueError(f"download={download!r}: use 'recode' (RLNC at relays) or 'forward' (one-hop)")
    if addresses is None:
        ports = free_ports(n_clients + 1)
        addresses = {str(i): ["127.0.0.1", ports[i]] for i in range(n_clients + 1)}
    return {"n_clients": int(n_clients), "k": int(k or n_clients), "mode": mode, "download": download,
            "key": key or os.urandom(32).hex(), "addresses": addresses, "links": links, "shaper": shaper,
            "rounds": int(rounds), "task": dict(task), "clip": float(clip), "r0": int(r0),
            "r_thres": int(r_thres), "r_delta": int(r_delta), "seed": int(seed), "trace": list(trace or []),
            "timeouts": {"upload_s": float(upload_timeout_s), "round_s": float(round_timeout_s),
                         "repair_s": float(repair_s)},
            "log_dir": log_dir, "out": out}


class NetnsNetwork:
    """Creates the namespaces, veths, bridge and htb shaping; tears everything down on close."""

    def __init__(self, n_nodes: int, links: dict):
        self.n_nodes = int(n_nodes)
        self.prefix = f"fcod{os.getpid()}"
        self.hub = f"{self.prefix}-hub"
        self.ns = [f"{self.prefix}-n{i}" for i in range(self.n_nodes)]
        self.links = links
        self.created: list[str] = []
        self._closed = False
        self._old_handlers = {}

    def ip(self, i: int) -> str:
        return f"{SUBNET}{i + 1}"

    def addresses(self) -> dict:
        return {str(i): [self.ip(i), PORT] for i in range(self.n_nodes)}

    def __enter__(self) -> "NetnsNetwork":
        cleanup_stale()
        atexit.register(self.close)
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old_handlers[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread
                pass
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _on_signal(self, signum, frame):
        self.close()
        raise KeyboardInterrupt(f"signal {signum}: namespaces removed")

    def _build(self) -> None:
        _run(["ip", "netns", "add", self.hub])
        self.created.append(self.hub)
        _run(["ip", "-n", self.hub, "link", "add", "br0", "type", "bridge"])
        _run(["ip", "-n", self.hub, "link", "set", "br0", "up"])
        for i, ns in enumerate(self.ns):
            _run(["ip", "netns", "add", ns])
            self.created.append(ns)
            a, b = f"fc{os.getpid() % 100000}a{i}", f"fc{os.getpid() % 100000}b{i}"
            _run(["ip", "link", "add", a, "type", "veth", "peer", "name", b])
            _run(["ip", "link", "set", a, "netns", ns])
            _run(["ip", "link", "set", b, "netns", self.hub])
            _run(["ip", "-n", ns, "link", "set", a, "name", "eth0"])
            _run(["ip", "-n", ns, "addr", "add", f"{self.ip(i)}/24", "dev", "eth0"])
            _run(["ip", "-n", ns, "link", "set", "eth0", "up"])
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
            _run(["ip", "-n", self.hub, "link", "set", b, "master", "br0"])
            _run(["ip", "-n", self.hub, "link", "set", b, "up"])
            self._shape(i)

    def _tc(self, i: int, *args: str, check: bool = True):
        return _run(["ip", "netns", "exec", self.ns[i], "tc", *args], check=check)

    def _shape(self, i: int) -> None:
        self._tc(i, "qdisc", "add", "dev", "eth0", "root", "handle", "1:", "htb", "default", "999")
        self._tc(i, "class", "add", "dev", "eth0", "parent", "1:", "classid", "1:999", "htb", "rate", "10gbit")
        for j in range(self.n_nodes):
            spec = self.links.get(f"{i},{j}")
            if j == i or spec is None or spec.get("rate_mbit") is None:
                continue
            rate = f"{float(spec['rate_mbit']):.6g}mbit"
            self._tc(i, "class", "add", "dev", "eth0", "parent", "1:", "classid", f"1:{j + 1}", "htb",
                     "rate", rate, "ceil", rate)
            self._tc(i, "qdisc", "add", "dev", "eth0", "parent", f"1:{j + 1}", "handle", f"{j + 10}:",
                     "pfifo", "limit", "100")
            self._tc(i, "filter", "add", "dev", "eth0", "protocol", "ip", "parent", "1:", "prio", "1", "u32",
                     "match", "ip", "dst", f"{self.ip(j)}/32", "flowid", f"1:{j + 1}")

    def set_rate(self, src: int, dst: int, rate_mbit: float) -> None:
        rate = f"{max(float(rate_mbit), 0.008):.6g}mbit"
        self._tc(src, "class", "change", "dev", "eth0", "parent", "1:", "classid", f"1:{dst + 1}", "htb",
                 "rate", rate, "ceil", rate)

    def class_bytes(self) -> dict:
        """Bytes sent per directed link so far, from ``tc -s class show`` (kernel counters)."""
        out = {}
        for i in range(self.n_nodes):
            txt = self._tc(i, "-s", "class", "show", "dev", "eth0", check=False).stdout
            for m in re.finditer(r"class htb 1:(\d+) .*?\n\s*Sent (\d+) bytes", txt):
                j = int(m.group(1)) - 1
                if j != 998:
                    out[f"{i},{j}"] = int(m.group(2))
        return out

    def popen(self, i: int, argv: list[str], **kw) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.ns[i], *argv], start_new_session=True, **kw)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for ns in reversed(self.created):
            _run(["ip", "netns", "del", ns], check=False)
        for sig, h in self._old_handlers.items():
            try:
                signal.signal(sig, h)
            except (ValueError, TypeError):
                pass


def _kill(procs: Iterable[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    for p in procs:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def _count_lines(path: str) -> int:
    try:
        with open(path) as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


def spawn_federation(cfg: dict, run_dir: str, backend: str = "netns", events: list | None = None,
                     timeout_s: float = 1800.0) -> dict:
    """Runs one federation with every node in its own process; returns ``{"rows", "network", ...}``.

    ``backend``: ``"netns"`` (namespaces + tc, needs root) or ``"loopback"`` (token buckets).
    ``events``: ``[{"kind": "kill" | "link_down", "node": c, "round": R, "after_s": x}]`` applied once
    round ``R`` has started (``link_down`` sets both directions of ``c <-> server`` to ~8 kbit/s).
    """
    os.makedirs(run_dir, exist_ok=True)
    cfg = dict(cfg)
    n_nodes = cfg["n_clients"] + 1
    cfg["out"] = os.path.join(run_dir, "rounds.jsonl")
    cfg["log_dir"] = run_dir
    if os.path.exists(cfg["out"]):
        os.remove(cfg["out"])
    env = dict(os.environ)
    lib = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
    env["PYTHONPATH"] = lib + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    argv = lambda i: [sys.executable, "-m", "jaxlab.fl.comm.node", "--config", cfg_path, "--id", str(i),
                      "--parent", str(os.getpid())]
    procs: list[subprocess.Popen] = []
    net = None
    bytes_kernel = None
    try:
        if backend == "netns":
            net = NetnsNetwork(n_nodes, cfg["links"]).__enter__()
            cfg["addresses"] = net.addresses()
            cfg["shaper"] = "none"
        elif backend == "loopback":
            cfg["shaper"] = "tokenbucket"
        else:
            raise ValueError(f"backend={backend!r}: use 'netns' or 'loopback'")
        from jaxlab.fl.comm import field, gfp_kernels
        gfp_kernels.precompile(int(cfg["k"]), field.P, field.HALF)  # nodes then load, never compile
        cfg["t0"] = time.monotonic() + 3.0  # trace time zero, shared by all processes (same clock)
        cfg_path = os.path.join(run_dir, "federation.json")
        with open(cfg_path, "w") as f:
            json.dump(cfg, f)
        for i in range(n_nodes):
            log = open(os.path.join(run_dir, f"node{i}.stderr"), "w")
            if net is not None:
                procs.append(net.popen(i, argv(i), env=env, stdout=log, stderr=subprocess.STDOUT))
            else:
                procs.append(subprocess.Popen(argv(i), env=env, stdout=log, stderr=subprocess.STDOUT,
                                              start_new_session=True))
        stop = threading.Event()
        if net is not None and cfg.get("trace"):
            def play():
                for r in cfg["trace"]:
                    if stop.wait(max(0.0, cfg["t0"] + float(r["t"]) - time.monotonic())):
                        return
                    net.set_rate(int(r["src"]), int(r["dst"]), float(r["rate_mbit"]))
            threading.Thread(target=play, daemon=True).start()
        pending = sorted(events or [], key=lambda e: (e["round"], e.get("after_s", 0)))
        server = procs[-1]
        t_start = time.monotonic()
        event_log = []
        killed: set[int] = set()
        while server.poll() is None:
            crashed = [i for i, p in enumerate(procs) if i not in killed and p.poll() not in (None, 0)]
            if crashed:
                raise RuntimeError(f"node(s) {crashed} crashed; see {run_dir}/node<i>.log and node<i>.stderr")
            if time.monotonic() - t_start > timeout_s:
                raise TimeoutError(f"federation did not finish within {timeout_s} s (logs in {run_dir})")
            done_rounds = _count_lines(cfg["out"])
            for ev in list(pending):
                if done_rounds >= ev["round"]:
                    key = ("seen", ev["round"])
                    ev.setdefault("_t", time.monotonic())
                    if time.monotonic() - ev["_t"] >= float(ev.get("after_s", 0.0)):
                        c = int(ev["node"])
                        if ev["kind"] == "kill":
                            killed.add(c)
                            os.killpg(procs[c].pid, signal.SIGKILL)
                        elif ev["kind"] == "link_down":
                            s = cfg["n_clients"]
                            if net is not None:
                                net.set_rate(c, s, 0.008)
                                net.set_rate(s, c, 0.008)
                            else:
                                raise ValueError("link_down events need the netns backend (use a trace on loopback)")
                        else:
                            raise ValueError(f"event kind {ev['kind']!r}: use 'kill' or 'link_down'")
                        event_log.append({**{k: v for k, v in ev.items() if not k.startswith("_")},
                                          "at_s": time.monotonic() - t_start})
                        pending.remove(ev)
            time.sleep(0.05)
        stop.set()
        if server.returncode != 0:
            raise RuntimeError(f"server exited with {server.returncode}; see {run_dir}/node{n_nodes - 1}.log")
        if net is not None:
            bytes_kernel = net.class_bytes()
    finally:
        _kill(procs)
        if net is not None:
            net.close()
    rows = []
    with open(cfg["out"]) as f:
        for line in f:
            rows.append(json.loads(line))
    return {"rows": rows, "network": "netns-htb" if backend == "netns" else "loopback-tokenbucket",
            "events": event_log, "tc_bytes": bytes_kernel}
