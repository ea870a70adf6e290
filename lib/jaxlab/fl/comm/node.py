"""FedCod and star-baseline nodes over asyncio TCP: server, client and relay roles.

One process (or one asyncio task, for tests) per node. Node ids: clients ``0..N-1``, server ``N``.
Every pair that talks has one outbound TCP connection per direction; the first frame on it is
HELLO. Frames are :mod:`wire` frames (HMAC-authenticated); a frame that fails to parse or
authenticate is logged and dropped (the connection is closed only when the stream lost its
framing), frames of a past round are dropped as stale. Nothing polls: senders sleep on an
``asyncio.Event`` that is set whenever new work may exist.

A round (FedAvg, server holds a flat float32 vector ``g``):

1. **Download.** The payload ``D`` is the previous round's exact integer aggregate (round 0: the
   quantised initial model) plus a float multiplier in the ROUND_START header; every node applies
   ``g += float32(D * mult)`` with identical numpy ops, so all replicas stay bit-identical.
   [our choice: broadcasting the aggregate, not the float model, keeps the download exact in the
   field and the same size, one symbol per parameter.]
   *FedCod*: the server streams random GF(p) combinations of the ``k`` source blocks to each client
   (at most ``k`` per client) until that client ACKs; for every innovative block a client gets
   from the server it sends one block to every peer that has not ACKed, either recoded
   (``download="recode"``: a fresh random combination of all it holds, drawn when the link is
   free) or as-is (``download="forward"``: one-hop forwarding). ``recode_credit="innovative"``
   restores the official rule (one recoded block per innovative block from anyone). With ``k`` independent
   blocks a client ACKs to everyone (ACK-stop) and decodes.
   *Star*: the server sends the ``k`` systematic blocks to each client.
2. **Training** runs in a worker thread (``client_train`` callback), so a client keeps relaying
   while it trains.
3. **Upload.** A client quantises ``a_c * update`` (``a_c = n_c / sum n``), splits it into ``k``
   blocks and MDS-encodes ``k + r`` of them; block ``i`` goes to relay ``E[i mod |E|]``.
   A relay adds the same-index blocks of all clients in the round's set ``E`` (exact coded
   aggregation) and forwards the sum; the server decodes from any ``k`` complete indices.
   *Star*: ``r = 0`` and the server is the relay for every index.
4. **Failures.** A relay reports which clients each index holds (RELAY_STATUS, tiny). When a client
   disconnects, or ``upload_timeout_s`` passes after the first TRAIN_DONE, the server shrinks the
   set to the largest ``E'`` that ``k`` indices can cover (greedy: drop the client missing from most
   indices), announces it (DROP) and relays re-aggregate from the per-client blocks they kept;
   the mean is renormalised over ``E'``. If the blocks exist but are stuck behind dead server
   links (small ``r``), the server also asks for fresh parity indices (REPAIR, gossiped among
   clients) aggregated by relays whose server link delivered this round: at once when a dead
   client's relay indices were needed, else ``repair_s`` after the last TRAIN_DONE it heard.
   Server control frames are flooded among clients once, so a client whose server link died keeps
   following the rounds (download via peers, upload via relays) and stays in the federation. If even that fails by the next deadline the round is
   skipped (zero update) and logged. Clients that did not ACK a round's download leave the
   federation (their replica would be stale).

Timing (monotonic clock, shared by all processes on a host): ``download_s`` = last client decode
- round start; ``upload_s`` = server decode - last TRAIN_DONE; ``comm_s`` = their sum;
``round_s`` = server decode - round start (what the redundancy rule sees).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import sys
import time
from collections import defaultdict
from typing import Any, Callable

import numpy as np

from jaxlab.fl.comm import coding, field
from jaxlab.fl.comm.redundancy import init_redundancy, update_redundancy
from jaxlab.fl.comm.wire import Frame, FrameError, FrameType as T, Limits, encode_frame, frame_size, read_frame

__all__ = ["Node", "ServerNode", "ClientNode", "TokenBucket", "run_node", "run_inprocess", "kill_hook", "main",
           "shrink_client_set"]

CHUNK_BYTES = 64 << 10


class TokenBucket:
    """Egress shaper for loopback runs: ``rate_bps`` bits/s, burst of one chunk. None = unshaped."""

    def __init__(self, rate_mbit: float | None):
        self.set_rate(rate_mbit)
        self.tokens = float(CHUNK_BYTES)
        self.t = time.monotonic()

    def set_rate(self, rate_mbit: float | None) -> None:
        self.rate = None if rate_mbit is None else max(float(rate_mbit), 1e-6) * 1e6 / 8.0  # bytes/s

    async def take(self, n: int) -> None:
        if self.rate is None:
            return
        while True:
            now = time.monotonic()
            self.tokens = min(float(CHUNK_BYTES), self.tokens + (now - self.t) * self.rate)
            self.t = now
            if self.tokens >= n or self.tokens >= CHUNK_BYTES:
                self.tokens -= n
                return
            await asyncio.sleep(min(1.0, (min(n, CHUNK_BYTES) - self.tokens) / self.rate))


class Peer:
    """Outbound link to one node: an urgent queue plus producers polled when the link is free."""

    def __init__(self, node: "Node", pid: int):
        self.node, self.pid = node, pid
        self.writer: asyncio.StreamWriter | None = None
        self.urgent: list[Frame] = []
        self.producers: list[Callable[[], Frame | None]] = []
        self.wake = asyncio.Event()
        self.alive = True
        link = node.link(node.id, pid)
        self.bucket = TokenBucket(link.get("rate_mbit") if node.cfg.get("shaper") == "tokenbucket" else None)
        self.bytes_sent = 0
        self.task: asyncio.Task | None = None

    def send(self, fr: Frame) -> None:
        if self.alive:
            self.urgent.append(fr)
            self.wake.set()

    async def run(self) -> None:
        try:
            while True:
                fr = self._next()
                if fr is None:
                    self.wake.clear()
                    fr = self._next()  # re-check after clear: no lost wake-ups
                    if fr is None:
                        await self.wake.wait()
                        continue
                await self._write(fr)
        except (ConnectionError, OSError) as e:
            self.alive = False
            self.node.log.warning("link to %d failed: %s", self.pid, e)
            self.node.on_peer_dead(self.pid)
        except asyncio.CancelledError:
            pass

    def _next(self) -> Frame | None:
        if self.urgent:
            return self.urgent.pop(0)
        for prod in self.producers:
            fr = prod()
            if fr is not None:
                return fr
        return None

    async def _write(self, fr: Frame) -> None:
        fr.sender = self.node.id
        bufs = encode_frame(fr, self.node.key, self.node.limits)
        n = frame_size(bufs)
        w = self.writer
        if self.bucket.rate is None:
            w.writelines(bufs)
            await w.drain()
        else:
            data = memoryview(b"".join(bytes(b) for b in bufs))
            for s in range(0, len(data), CHUNK_BYTES):
                chunk = data[s:s + CHUNK_BYTES]
                await self.bucket.take(len(chunk))
                w.write(chunk)
                await w.drain()
        self.bytes_sent += n
        self.node.round_bytes[self.pid] += n


class Node:
    """Shared machinery: listening, connecting, HELLO, frame dispatch with delay, logging."""

    def __init__(self, cfg: dict, node_id: int, task=None):
        self.cfg, self.id = cfg, int(node_id)
        self.n = int(cfg["n_clients"])
        self.server_id = self.n
        self.k = int(cfg["k"])
        self.key = bytes.fromhex(cfg["key"])
        self.limits = Limits(max_payload=int(cfg.get("max_payload", 256 << 20)))
        self.log = logging.getLogger(f"fedcod.node{self.id}")
        self.peers: dict[int, Peer] = {}
        self.inbound_ok: set[int] = set()
        self.hello_event = asyncio.Event()
        self.dead: set[int] = set()
        self.dropped_frames: dict[str, int] = defaultdict(int)
        self.round_bytes: dict[int, int] = defaultdict(int)
        self.task = task
        self.t0 = float(cfg.get("t0", time.monotonic()))
        self._server: asyncio.AbstractServer | None = None
        self.stop_event = asyncio.Event()
        self.rng = np.random.default_rng([int(cfg.get("seed", 0)), self.id, 7])

    # -- topology -------------------------------------------------------------------------------
    def link(self, a: int, b: int) -> dict:
        return self.cfg.get("links", {}).get(f"{a},{b}", {})

    def talks_to(self) -> list[int]:
        if self.id == self.server_id:
            return list(range(self.n))
        others = [self.server_id]
        if self.cfg["mode"] == "fedcod":
            others += [c for c in range(self.n) if c != self.id]
        return others

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        host, port = self.cfg["addresses"][str(self.id)]
        self._server = await asyncio.start_server(self._serve, host, int(port))
        deadline = time.monotonic() + float(self.cfg.get("connect_timeout_s", 30))
        for pid in self.talks_to():
            self.peers[pid] = Peer(self, pid)
        await asyncio.gather(*(self._connect(p, deadline) for p in self.peers.values()))
        for p in self.peers.values():
            p.task = asyncio.create_task(p.run())
        self._trace_task = asyncio.create_task(self._play_trace())

    async def _connect(self, peer: Peer, deadline: float) -> None:
        host, port = self.cfg["addresses"][str(peer.pid)]
        while True:
            try:
                reader, writer = await asyncio.open_connection(host, int(port))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise ConnectionError(f"node {self.id}: cannot reach node {peer.pid} at {host}:{port}")
                await asyncio.sleep(0.05)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            # a small send buffer keeps ACK-stop effective: little is in flight when an ACK lands
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, int(self.cfg.get("sndbuf", 256 << 10)))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        writer.transport.set_write_buffer_limits(high=CHUNK_BYTES)
        peer.writer = writer
        bufs = encode_frame(Frame(T.HELLO, sender=self.id, meta=self.hello_meta()), self.key, self.limits)
        writer.writelines(bufs)
        await writer.drain()

    def hello_meta(self) -> dict:
        return {}

    async def close(self) -> None:
        for p in self.peers.values():
            if p.task:
                p.task.cancel()
            if p.writer:
                p.writer.close()
        if getattr(self, "_trace_task", None):
            self._trace_task.cancel()
        if self._server:
            self._server.close()

    async def _play_trace(self) -> None:
        """Loopback only: apply this node's egress rate changes from the bandwidth trace."""
        if self.cfg.get("shaper") != "tokenbucket":
            return
        rows = sorted((r for r in self.cfg.get("trace", []) if int(r["src"]) == self.id), key=lambda r: r["t"])
        for r in rows:
            await asyncio.sleep(max(0.0, self.t0 + float(r["t"]) - time.monotonic()))
            p = self.peers.get(int(r["dst"]))
            if p is not None:
                p.bucket.set_rate(float(r["rate_mbit"]))
                self.log.info("trace: link %d->%d now %.3g Mbit/s", self.id, p.pid, r["rate_mbit"])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        who = None
        try:
            while True:
                try:
                    fr = await read_frame(reader, self.key, self.limits)
                except FrameError as e:
                    self.dropped_frames["invalid"] += 1
                    self.log.warning("dropped frame from %s: %s%s", who, e, " (closing connection)" if e.fatal else "")
                    if e.fatal:
                        break
                    continue
                if fr is None:
                    break
                if who is None:
                    if fr.type != T.HELLO or not (0 <= fr.sender <= self.n):
                        self.dropped_frames["no_hello"] += 1
                        self.log.warning("connection did not start with HELLO; closing")
                        break
                    if fr.sender in self.inbound_ok or fr.sender == self.id:
                        self.dropped_frames["duplicate_hello"] += 1
                        self.log.warning("second HELLO claiming node %d; closing that connection", fr.sender)
                        break
                    who = fr.sender
                    self.inbound_ok.add(who)
                    self.on_hello(fr)
                    continue
                if fr.sender != who:
                    self.dropped_frames["spoofed"] += 1
                    self.log.warning("frame claims sender %d on %d's connection; dropped", fr.sender, who)
                    continue
                delay = float(self.link(who, self.id).get("delay_ms", 0.0)) / 1e3
                if delay > 0:
                    asyncio.get_running_loop().call_later(delay, self._dispatch, fr)
                else:
                    self._dispatch(fr)
        except (ConnectionError, OSError) as e:
            self.log.warning("connection from %s broke: %s", who, e)
        finally:
            writer.close()
            if who is not None:
                self.inbound_ok.discard(who)
            if who is not None and not self.stop_event.is_set():
                self.log.warning("node %d disconnected", who)
                self.on_peer_dead(who)

    def _dispatch(self, fr: Frame) -> None:
        try:
            self.on_frame(fr)
        except Exception as e:  # a bad frame must never take the node down
            self.dropped_frames["handler_error"] += 1
            self.log.exception("frame %s from %d round %d rejected by handler: %s", fr.type.name, fr.sender, fr.round, e)

    def on_hello(self, fr: Frame) -> None:
        self.hello_event.set()

    def on_peer_dead(self, pid: int) -> None:
        if pid in self.dead:
            return
        self.dead.add(pid)
        p = self.peers.get(pid)
        if p is not None:
            p.alive = False

    def on_frame(self, fr: Frame) -> None:
        """Handles one authenticated frame; the server and client roles override it."""
        raise NotImplementedError(f"{type(self).__name__} must override on_frame (the base node has no role)")

    def stale(self, fr: Frame, current: int) -> bool:
        if fr.round < current:
            self.dropped_frames["stale"] += 1
            self.log.info("stale %s frame of round %d from %d (now %d); dropped", fr.type.name, fr.round,
                          fr.sender, current)
            return True
        return False

    def take_bytes(self) -> dict:
        out = {str(k): int(v) for k, v in self.round_bytes.items()}
        self.round_bytes.clear()
        return out


class Relay:
    """Coded aggregation for one round: per index, the per-client blocks and the set ``E``."""

    def __init__(self, expected: set[int]):
        self.expected = set(expected)
        self.blocks: dict[int, dict[int, np.ndarray]] = defaultdict(dict)
        self.sent: dict[int, frozenset] = {}

    def add(self, index: int, client: int, data: np.ndarray) -> None:
        self.blocks[index][client] = data

    def ready(self) -> list[tuple[int, frozenset, np.ndarray]]:
        """Indices whose blocks cover ``E`` and were not yet forwarded for this ``E``."""
        out = []
        e = frozenset(self.expected)
        if not e:
            return out
        for i, per in self.blocks.items():
            if self.sent.get(i) == e or not e.issubset(per.keys()):
                continue
            acc = np.zeros_like(per[next(iter(e))], dtype=np.int64)
            for c in e:
                acc += per[c]
            self.sent[i] = e
            out.append((i, e, field.canonical(acc)))
        return out


class ClientRound:
    def __init__(self, node: "ClientNode", rnd: int):
        self.rnd = rnd
        self.meta: dict | None = None
        self.decoder = coding.Decoder(node.k, node.L)
        self.server_blocks: list[tuple[np.ndarray, np.ndarray]] = []
        self.fwd_sent: dict[int, int] = defaultdict(int)
        self.acked: set[int] = set()
        self.up_queue: dict[int, list[Frame]] = defaultdict(list)
        self.relay: Relay | None = None
        self.pending_up: list[Frame] = []
        self.done = False
        self.end_event = asyncio.Event()
        self.queued = False
        self.t_dl_done: float | None = None
        self.t_train = (0.0, 0.0)
        self.n_clipped = 0
        self.src: np.ndarray | None = None
        self.repairs: list[dict] = []

    def finish(self) -> None:
        self.done = True
        self.up_queue.clear()
        self.end_event.set()


class ClientNode(Node):
    def __init__(self, cfg: dict, node_id: int, task):
        super().__init__(cfg, node_id, task)
        self.n_symbols = int(task.n_params)
        self.L = coding.block_len(self.n_symbols, self.k)
        self.global_vec = np.zeros(self.n_symbols, np.float32)
        self.rounds: dict[int, ClientRound] = {}
        self.current = -1
        self.ready: asyncio.Queue = asyncio.Queue()
        self.cpu_mark = time.process_time()

    def hello_meta(self) -> dict:
        return {"n_samples": int(self.task.num_samples(self.id))}

    async def start(self) -> None:
        await super().start()
        for pid, p in self.peers.items():
            p.producers.append(self._download_producer(pid))
            p.producers.append(self._upload_producer(pid))

    def on_peer_dead(self, pid: int) -> None:
        super().on_peer_dead(pid)
        if pid == self.server_id:
            self.log.warning("lost the server; leaving the federation")
            self.stop_event.set()

    def state(self, rnd: int) -> ClientRound:
        st = self.rounds.get(rnd)
        if st is None:
            st = self.rounds[rnd] = ClientRound(self, rnd)
            if rnd > self.current:
                self.current = rnd
                for old in [r for r in self.rounds if r < rnd]:
                    self.rounds.pop(old).finish()
        return st

    def wake_all(self) -> None:
        for p in self.peers.values():
            p.wake.set()

    def _maybe_ready(self, st: ClientRound) -> None:
        if st.decoder.full and st.meta is not None and not st.queued:
            st.queued = True
            self.ready.put_nowait(st)

    # -- download side ---------------------------------------------------------------------------
    def _download_producer(self, pid: int):
        def produce() -> Frame | None:
            if pid == self.server_id or self.cfg["mode"] != "fedcod":
                return None
            st = self.rounds.get(self.current)
            if st is None or st.done or pid in st.acked or pid in self.dead:
                return None
            if st.meta is not None and pid not in st.meta["E"]:
                return None
            if self.cfg.get("download", "recode") == "forward":
                i = st.fwd_sent[pid]
                if i >= len(st.server_blocks):
                    return None
                st.fwd_sent[pid] += 1
                coef, data = st.server_blocks[i]
            else:
                # [our choice] one recoded block per peer for each innovative block *from the server*.
                # The official code sends one per innovative block from anyone ("recode_credit":
                # "innovative"); on 9 silos we measured that this floods the c2c links (~8x the
                # bytes of one-hop forwarding) because all clients fill up at about the same time.
                credit = len(st.server_blocks) if self.cfg.get("recode_credit", "server") == "server" \
                    else st.decoder.rank
                if st.fwd_sent[pid] >= credit:
                    return None
                st.fwd_sent[pid] += 1
                c, d = st.decoder.held()
                coef, data = coding.recode(self.rng, c, d, 1)
                coef, data = coef[0], data[0]
            return Frame(T.PEER_BLOCK, st.rnd, st.fwd_sent[pid], coef=coef, payload=data)
        return produce

    def _upload_producer(self, pid: int):
        def produce() -> Frame | None:
            st = self.rounds.get(self.current)
            if st is None or st.done:
                return None
            q = st.up_queue.get(pid)
            return q.pop(0) if q else None
        return produce

    def on_frame(self, fr: Frame) -> None:
        if fr.type == T.SHUTDOWN:
            if not self.stop_event.is_set():
                self._gossip(fr)
                self.stop_event.set()
            return
        if self.stale(fr, self.current):
            return
        if fr.round > self.current + 1 and self.current >= 0:
            self.dropped_frames["future"] += 1
            self.log.warning("frame of future round %d (now %d) dropped", fr.round, self.current)
            return
        st = self.state(fr.round)
        if fr.type == T.ROUND_START:
            if st.meta is not None:
                return  # a gossiped copy of a header we already have
            self._gossip(fr)
            st.meta = dict(fr.meta)
            st.relay = Relay(set(st.meta["E"]))
            for up in st.pending_up:
                self._relay_add(st, up)
            st.pending_up.clear()
            self._maybe_ready(st)
            self.wake_all()
        elif fr.type in (T.DOWN_BLOCK, T.PEER_BLOCK):
            if st.decoder.full:
                return
            if fr.payload.size != self.L or fr.coef.size != self.k:
                raise ValueError(f"block shape k={fr.coef.size}, L={fr.payload.size}; expected {self.k}, {self.L}")
            if st.decoder.add(fr.coef, fr.payload):
                if fr.type == T.DOWN_BLOCK:
                    st.server_blocks.append((fr.coef, fr.payload))
                if st.decoder.full:
                    st.t_dl_done = time.monotonic()
                    for p in self.peers.values():
                        p.send(Frame(T.ACK, st.rnd))
                    self._maybe_ready(st)
                self.wake_all()
        elif fr.type == T.ACK:
            st.acked.add(fr.sender)
        elif fr.type == T.UP_BLOCK:
            if st.relay is None:
                st.pending_up.append(fr)
            else:
                self._relay_add(st, fr)
        elif fr.type == T.DROP:
            if st.relay is not None and st.relay.expected == set(fr.meta["E"]):
                return
            self._gossip(fr)
            if st.meta is not None:
                st.meta["E"] = list(fr.meta["E"])
            if st.relay is not None:
                st.relay.expected = set(fr.meta["E"])
                self._relay_flush(st)
        elif fr.type == T.ROUND_END:
            if not st.done:
                self._gossip(fr)
                st.finish()
        elif fr.type == T.REPAIR:
            # gossiped to the peers once: a client whose server link died still hears of it
            if any(r["indices"] == fr.meta["indices"] for r in st.repairs):
                return
            st.repairs.append(dict(fr.meta))
            self._gossip(fr)
            if st.src is not None:
                self._send_repair(st, fr.meta)
        else:
            self.dropped_frames["unexpected"] += 1
            self.log.warning("unexpected %s frame from %d; dropped", fr.type.name, fr.sender)

    def _gossip(self, fr: Frame) -> None:
        """Floods a server control frame (ROUND_START, DROP, REPAIR, ROUND_END, SHUTDOWN) to the
        peers once, so a client whose server link died still follows the rounds through its
        peers. [our choice] Any federation member holds the key, so a forwarded control frame is
        as trusted as the server's own; duplicates are recognised by content and dropped."""
        if self.cfg["mode"] != "fedcod":
            return
        for pid, p in self.peers.items():
            if pid not in (self.server_id, fr.sender) and pid not in self.dead:
                p.send(Frame(fr.type, fr.round, fr.index, clients=fr.clients, meta=dict(fr.meta)))

    # -- relay side ------------------------------------------------------------------------------
    def _relay_add(self, st: ClientRound, fr: Frame) -> None:
        if len(fr.clients) != 1 or next(iter(fr.clients)) != fr.sender:
            raise ValueError("UP_BLOCK must carry exactly its sender as client set")
        if fr.payload.size != self.L:
            raise ValueError(f"UP_BLOCK payload {fr.payload.size} symbols, expected {self.L}")
        st.relay.add(fr.index, fr.sender, fr.payload)
        self.peers[self.server_id].send(Frame(T.RELAY_STATUS, st.rnd, fr.index,
                                              clients=frozenset(st.relay.blocks[fr.index].keys())))
        self._relay_flush(st)

    def _relay_flush(self, st: ClientRound) -> None:
        for i, e, agg in st.relay.ready():
            st.up_queue[self.server_id].append(Frame(T.AGG_BLOCK, st.rnd, i, clients=e, payload=agg))
        self.peers[self.server_id].wake.set()

    # -- the round loop --------------------------------------------------------------------------
    async def run(self) -> None:
        await self.start()
        loop = asyncio.get_running_loop()
        stopper = asyncio.create_task(self.stop_event.wait())
        try:
            while True:
                getter = asyncio.create_task(self.ready.get())
                done, _ = await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    break
                st = getter.result()
                d = coding.join(st.decoder.decode(), self.n_symbols)
                self.global_vec = self.global_vec + (d.astype(np.float64) * float(st.meta["mult"])).astype(np.float32)
                sha = _sha(self.global_vec)
                if self.id not in st.meta["E"] or st.done:
                    continue
                t_a = time.monotonic()
                update = await loop.run_in_executor(None, self.task.client_train, self.global_vec, self.id, st.rnd)
                t_b = time.monotonic()
                st.t_train = (t_a, t_b)
                self.peers[self.server_id].send(Frame(T.TRAIN_DONE, st.rnd, meta={"t": t_b, "train_s": t_b - t_a}))
                if not st.done:
                    self._upload(st, update)
                    await asyncio.wait({asyncio.create_task(st.end_event.wait()), stopper},
                                       return_when=asyncio.FIRST_COMPLETED)
                self._send_stats(st, sha)
        finally:
            stopper.cancel()
            await asyncio.sleep(0.05)  # let the last STATS frame leave
            await self.close()

    def _upload(self, st: ClientRound, update: np.ndarray) -> None:
        m = st.meta
        q, st.n_clipped = field.quantize(update, float(m["scale"]), float(m["clip"]), float(m["weights"][str(self.id)]))
        src = st.src = coding.split(q, self.k)
        n_blocks = self.k + int(m["r"])
        E = sorted(m["E"])
        blocks = coding.mds_encode(src, np.arange(n_blocks))
        for i in range(n_blocks):
            relay = self.server_id if m["relay"] == "server" else E[i % len(E)]
            fr = Frame(T.UP_BLOCK, st.rnd, i, sender=self.id, clients=frozenset({self.id}), payload=blocks[i])
            if relay == self.id:
                self._relay_add(st, fr)
            elif relay not in self.dead:
                st.up_queue[relay].append(fr)
        for rep in st.repairs:
            self._send_repair(st, rep)
        self.wake_all()

    def _send_repair(self, st: ClientRound, meta: dict) -> None:
        """Extra MDS indices requested by the server, each to a relay whose server link works."""
        idx = [int(i) for i in meta["indices"]]
        relays = [int(r) for r in meta["relays"]]
        blocks = coding.mds_encode(st.src, idx)
        for t, i in enumerate(idx):
            relay = relays[t % len(relays)]
            fr = Frame(T.UP_BLOCK, st.rnd, i, sender=self.id, clients=frozenset({self.id}), payload=blocks[t])
            if relay == self.id:
                self._relay_add(st, fr)
            elif relay not in self.dead:
                st.up_queue[relay].append(fr)
        self.wake_all()

    def _send_stats(self, st: ClientRound, sha: str) -> None:
        cpu = time.process_time()
        meta = {"t_dl_done": st.t_dl_done, "train_s": st.t_train[1] - st.t_train[0],
                "cpu_s": cpu - self.cpu_mark, "bytes": self.take_bytes(),
                "dropped": dict(self.dropped_frames), "n_clipped": st.n_clipped, "global_sha": sha}
        self.cpu_mark = cpu
        self.peers[self.server_id].send(Frame(T.STATS, st.rnd, meta=meta))


class ServerRound:
    def __init__(self, rnd: int, E: list[int], source: np.ndarray, relay_local: bool):
        self.rnd = rnd
        self.E = set(E)
        self.E0 = list(E)
        self.source = source
        self.sent: dict[int, int] = defaultdict(int)
        self.acked: set[int] = set()
        self.status: dict[int, frozenset] = {}
        self.agg: dict[int, np.ndarray] = {}
        self.relay = Relay(set(E)) if relay_local else None
        self.train_done: dict[int, float] = {}
        self.stats: dict[int, dict] = {}
        self.event = asyncio.Event()
        self.shrink_now = False
        self.result: np.ndarray | None = None
        self.t_start = time.monotonic()
        self.t_end: float | None = None
        self.drops: list[dict] = []
        self.deadline: float | None = None
        self.agg_from: set[int] = set()
        self.n_repair = 0
        self.r_used = 0


def shrink_client_set(E: set[int], status: dict[int, frozenset], k: int) -> set[int]:
    """Greedy: drop clients while that raises the number of indices whose blocks cover the set.

    ``status[i]`` is the set of clients whose block ``i`` a relay holds. Returns the first set that
    ``k`` indices cover; if none does, ``E`` unchanged (missing *indices*, e.g. behind a dead relay
    link, are not fixed by dropping clients: the caller asks for repair instead).
    """
    E0 = set(E)
    E = set(E)
    cover = lambda S: sum(1 for s in status.values() if S <= s)
    while E:
        cov = cover(E)
        if cov >= k:
            return E
        appear = {c: sum(1 for s in status.values() if c in s) for c in E}
        best = max(E, key=lambda c: (cover(E - {c}), -appear[c], c))
        if cover(E - {best}) <= cov:
            break
        E.remove(best)
    return E0  # no set reaches k covered indices: keep everyone and let the server repair


class ServerNode(Node):
    def __init__(self, cfg: dict, node_id: int, task):
        super().__init__(cfg, node_id, task)
        self.n_symbols = int(task.n_params)
        self.L = coding.block_len(self.n_symbols, self.k)
        self.n_samples: dict[int, int] = {}
        self.rs: ServerRound | None = None
        self.global_vec = np.zeros(self.n_symbols, np.float32)
        self.red = init_redundancy(int(cfg.get("r0", 9)))
        self.metrics: list[dict] = []

    def on_hello(self, fr: Frame) -> None:
        if 0 <= fr.sender < self.n:
            self.n_samples[fr.sender] = int(fr.meta.get("n_samples", 1))
        if len(self.n_samples) == self.n:
            self.hello_event.set()

    def on_peer_dead(self, pid: int) -> None:
        super().on_peer_dead(pid)
        rs = self.rs
        if rs is not None and pid in rs.E and rs.result is None:
            self.log.warning("client %d lost during round %d: shrinking the client set", pid, rs.rnd)
            rs.shrink_now = True
            rs.event.set()

    def _download_producer(self, c: int):
        def produce() -> Frame | None:
            rs = self.rs
            if rs is None or rs.result is not None or c in rs.acked or c not in rs.E0:
                return None
            j = rs.sent[c]
            if j >= int(self.cfg.get("server_blocks_per_client", self.k)):
                return None
            rs.sent[c] += 1
            if self.cfg["mode"] == "fedcod":
                coef = field.random_elements(self.rng, (1, self.k))
                data = coding.encode(coef, rs.source)[0]
                coef = coef[0]
            else:
                coef = np.zeros(self.k, np.int64)
                coef[j] = 1
                data = rs.source[j]
            return Frame(T.DOWN_BLOCK, rs.rnd, j, coef=coef, payload=data)
        return produce

    def on_frame(self, fr: Frame) -> None:
        rs = self.rs
        if rs is None or self.stale(fr, rs.rnd):
            return
        if fr.round != rs.rnd:
            self.dropped_frames["future"] += 1
            self.log.warning("%s frame of future round %d from %d dropped", fr.type.name, fr.round, fr.sender)
            return
        if fr.type == T.ACK:
            rs.acked.add(fr.sender)
        elif fr.type == T.TRAIN_DONE:
            rs.train_done[fr.sender] = float(fr.meta["t"])
            rs.event.set()
        elif fr.type == T.STATS:
            rs.stats[fr.sender] = fr.meta
            rs.event.set()
        elif fr.type == T.RELAY_STATUS:
            rs.status[fr.index] = fr.clients
        elif fr.type == T.UP_BLOCK and rs.relay is not None:
            if len(fr.clients) != 1 or next(iter(fr.clients)) != fr.sender or fr.payload.size != self.L:
                raise ValueError("malformed UP_BLOCK")
            rs.relay.add(fr.index, fr.sender, fr.payload)
            rs.status[fr.index] = frozenset(rs.relay.blocks[fr.index].keys())
            for i, e, agg in rs.relay.ready():
                self._accept_agg(rs, i, e, agg)
        elif fr.type == T.AGG_BLOCK:
            if fr.payload.size != self.L:
                raise ValueError(f"AGG_BLOCK payload {fr.payload.size} symbols, expected {self.L}")
            rs.agg_from.add(fr.sender)
            self._accept_agg(rs, fr.index, fr.clients, fr.payload)
        else:
            self.dropped_frames["unexpected"] += 1
            self.log.warning("unexpected %s frame from %d; dropped", fr.type.name, fr.sender)

    def _accept_agg(self, rs: ServerRound, i: int, clients: frozenset, data: np.ndarray) -> None:
        if rs.result is not None or frozenset(clients) != frozenset(rs.E):
            return  # aggregate over an outdated client set
        rs.agg[i] = data
        if len(rs.agg) >= self.k:
            idx = sorted(rs.agg)[: self.k]
            src = coding.mds_decode(idx, np.stack([rs.agg[i] for i in idx]), self.k)
            rs.result = coding.join(src, self.n_symbols).copy()
            rs.t_end = time.monotonic()
            rs.event.set()

    def _shrink(self, rs: ServerRound, reason: str, greedy: bool = True) -> bool:
        new = rs.E - self.dead
        if greedy:
            new = shrink_client_set(new, dict(rs.status), self.k)
        if not new or new == rs.E:
            return False
        self.log.warning("round %d: %s; client set %s -> %s", rs.rnd, reason, sorted(rs.E), sorted(new))
        rs.drops.append({"t": time.monotonic() - rs.t_start, "reason": reason, "E": sorted(new)})
        rs.E = new
        rs.agg.clear()
        if rs.relay is not None:
            rs.relay.expected = set(new)
        for c in rs.E0:
            if c not in self.dead:
                self.peers[c].send(Frame(T.DROP, rs.rnd, meta={"E": sorted(new)}))
        if rs.relay is not None:
            for i, e, agg in rs.relay.ready():
                self._accept_agg(rs, i, e, agg)
        return True

    def _repair(self, rs: ServerRound) -> None:
        """Asks every client for fresh parity indices, aggregated by relays whose server link has
        delivered this round (when r was too small for the relays that went silent)."""
        relays = sorted(c for c in rs.agg_from if c in rs.E and c not in self.dead)
        if not relays:  # nothing delivered yet this round: any live relay in the set
            relays = sorted(c for c in rs.E if c not in self.dead)
        if self.cfg["mode"] != "fedcod" or not relays:
            return
        need = self.k - len(rs.agg) + 1
        first = self.k + rs.r_used + 1000 * (rs.n_repair + 1)  # indices never used before this round
        idx = list(range(first, first + need))
        rs.n_repair += 1
        self.log.warning("round %d: repair: %d extra parity indices via relays %s", rs.rnd, need, relays)
        rs.drops.append({"t": time.monotonic() - rs.t_start, "reason": "repair", "indices": idx, "relays": relays})
        for c in rs.E0:
            if c not in self.dead:
                self.peers[c].send(Frame(T.REPAIR, rs.rnd, meta={"indices": idx, "relays": relays}))

    async def run_round(self, rnd: int, payload: np.ndarray, mult: float, members: list[int]) -> dict:
        to = self.cfg.get("timeouts", {})
        up_to = float(to.get("upload_s", 30.0))
        repair_s = float(to.get("repair_s", 5.0))
        round_to = float(to.get("round_s", 300.0))
        E = sorted(members)
        tot = sum(self.n_samples[c] for c in E)
        weights = {str(c): self.n_samples[c] / tot for c in E}
        clip = float(self.cfg.get("clip", 1.0))
        scale = field.update_scale(len(E), clip)
        fedcod = self.cfg["mode"] == "fedcod"
        r_up = self.red.r if fedcod else 0
        rs = ServerRound(rnd, E, coding.split(payload, self.k), relay_local=not fedcod)
        rs.r_used = int(r_up)
        cpu0 = time.process_time()
        self.rs = rs
        meta = {"E": E, "weights": weights, "scale": scale, "clip": clip, "r": int(r_up),
                "relay": "clients" if fedcod else "server", "mult": float(mult)}
        for c in E:
            self.peers[c].send(Frame(T.ROUND_START, rnd, meta=meta))
        for p in self.peers.values():
            p.wake.set()
        extended = False
        deadline_abs = rs.t_start + round_to
        while rs.result is None:
            now = time.monotonic()
            if rs.deadline is None and rs.train_done:
                rs.deadline = min(rs.train_done.values()) + up_to
            dl = deadline_abs if rs.deadline is None else min(deadline_abs, rs.deadline)
            if fedcod and rs.train_done and rs.n_repair == 0:
                # stall rule: no decode ``repair_s`` after the last TRAIN_DONE heard -> blocks are
                # probably stuck behind a dead relay link; ask for fresh parity at once
                repair_at = max(rs.train_done.values()) + repair_s
                if now >= repair_at:
                    self._repair(rs)
                    continue
                dl = min(dl, repair_at)
            rs.event.clear()
            if rs.shrink_now:
                rs.shrink_now = False
                self._shrink(rs, "client disconnected", greedy=False)
                # the dead client was also a relay: repair now if its indices were needed
                nb = self.k + rs.r_used
                live = sum(1 for i in range(nb) if rs.E0[i % len(rs.E0)] not in self.dead)
                if fedcod and live < self.k and rs.n_repair == 0:
                    self._repair(rs)
                rs.deadline = time.monotonic() + up_to
                continue
            if now >= dl:
                if now >= deadline_abs or extended:
                    self.log.error("round %d FAILED: no %d complete aggregated blocks for any client set "
                                   "by the deadline; skipping its update", rnd, self.k)
                    break
                changed = self._shrink(rs, f"upload timeout ({up_to:.3g} s)")
                self._repair(rs)
                extended = True
                rs.deadline = time.monotonic() + up_to
                if not changed:
                    self.log.warning("round %d: upload timeout, client set unchanged; waiting once more", rnd)
                continue
            try:
                await asyncio.wait_for(rs.event.wait(), timeout=dl - now)
            except asyncio.TimeoutError:
                pass
        ok = rs.result is not None
        t_end = rs.t_end if ok else time.monotonic()
        for c in rs.E0:
            self.peers[c].send(Frame(T.ROUND_END, rnd))
        if ok:
            a_sum = sum(weights[str(c)] for c in rs.E)
            mult_next = 1.0 / (scale * a_sum)
            agg = rs.result
        else:
            mult_next, agg = 0.0, np.zeros(self.n_symbols, np.int32)
        self.global_vec = self.global_vec + (agg.astype(np.float64) * mult_next).astype(np.float32)
        cpu_server = time.process_time() - cpu0
        # statistics arrive right after ROUND_END; wait briefly (outside the timed round)
        stats_deadline = time.monotonic() + float(to.get("stats_s", 5.0))
        want = set(rs.E0) - self.dead
        while not want.issubset(rs.stats) and time.monotonic() < stats_deadline:
            rs.event.clear()
            try:
                await asyncio.wait_for(rs.event.wait(), timeout=max(0.0, stats_deadline - time.monotonic()))
            except asyncio.TimeoutError:
                pass
        round_s = t_end - rs.t_start
        dl_done = [s["t_dl_done"] for s in rs.stats.values() if s.get("t_dl_done")]
        train_end = [rs.train_done[c] for c in rs.E if c in rs.train_done]
        download_s = (max(dl_done) - rs.t_start) if dl_done else float("nan")
        upload_s = (t_end - max(train_end)) if (ok and train_end) else float("nan")
        row = {"round": rnd, "mode": self.cfg["mode"], "download": self.cfg.get("download", "recode"),
               "ok": ok, "E_start": E, "E_final": sorted(rs.E), "r": int(r_up), "round_s": round_s,
               "download_s": download_s, "upload_s": upload_s, "comm_s": download_s + upload_s,
               "train_s_max": max((s["train_s"] for s in rs.stats.values()), default=float("nan")),
               "cpu_s": {str(c): s["cpu_s"] for c, s in rs.stats.items()}, "cpu_s_server": cpu_server,
               "bytes": {str(c): s["bytes"] for c, s in rs.stats.items()},
               "n_clipped": int(sum(s.get("n_clipped", 0) for s in rs.stats.values())),
               "client_sha": {str(c): s["global_sha"] for c, s in rs.stats.items()},
               "drops": rs.drops, "acked": sorted(rs.acked)}
        row["bytes"][str(self.id)] = self.take_bytes()
        row["dropped_frames"] = {str(c): s.get("dropped", {}) for c, s in rs.stats.items()}
        row["dropped_frames"][str(self.id)] = dict(self.dropped_frames)
        if self.cfg["mode"] == "fedcod":
            self.red = update_redundancy(self.red, int(round(round_s * 1000)), self.n,
                                         int(self.cfg.get("r_thres", 45)), int(self.cfg.get("r_delta", 9)))
        self.rs = None
        return row, agg, mult_next, sorted(rs.acked)

    async def run(self) -> list[dict]:
        await self.start()
        for c, p in self.peers.items():
            p.producers.append(self._download_producer(c))
        try:
            await asyncio.wait_for(self.hello_event.wait(), float(self.cfg.get("connect_timeout_s", 30)))
        except asyncio.TimeoutError:
            raise ConnectionError(f"server: only clients {sorted(self.n_samples)} said HELLO within the timeout")
        init = np.asarray(self.task.init_vector(), np.float32)
        amax = float(np.max(np.abs(init))) or 1.0
        scale0 = float(np.floor(field.HALF / amax))
        payload, _ = field.quantize(init, scale0, amax)
        mult = 1.0 / scale0
        self.global_vec = (payload.astype(np.float64) * mult).astype(np.float32)
        members = list(range(self.n))
        out_path = self.cfg.get("out")
        for rnd in range(int(self.cfg["rounds"])):
            sha_start = _sha(self.global_vec)
            row, payload, mult, acked = await self.run_round(rnd, payload, mult, members)
            row["replicas_in_sync"] = all(v == sha_start for v in row["client_sha"].values())
            row.update(self.task.evaluate(self.global_vec))
            row["global_sha"] = _sha(self.global_vec)
            self.metrics.append(row)
            self.log.info("round %d: ok=%s round %.2fs dl %.2fs up %.2fs acc %.4f r=%d", rnd, row["ok"],
                          row["round_s"], row["download_s"], row["upload_s"], row["accuracy"], row["r"])
            if out_path:
                with open(out_path, "a") as f:
                    f.write(json.dumps(row) + "\n")
            # a client stays if it ACKed the download or its update was aggregated (it then held
            # this round's model even if its own ACK was lost on a dead server link)
            members = sorted(c for c in set(acked) | (set(row["E_final"]) if row["ok"] else set())
                             if c in row["E_start"] and c not in self.dead)
            if not members:
                self.log.error("no client left in the federation after round %d; stopping", rnd)
                break
        for c, p in self.peers.items():
            p.send(Frame(T.SHUTDOWN, 0))
        self.stop_event.set()
        await asyncio.sleep(0.2)
        await self.close()
        return self.metrics


def _sha(v: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest()[:16]


def setup_logging(path: str | None, node_id: int) -> None:
    h = logging.FileHandler(path, mode="w") if path else logging.StreamHandler(sys.stderr)
    h.setFormatter(logging.Formatter(f"%(asctime)s node{node_id} %(levelname)s %(message)s"))
    lg = logging.getLogger(f"fedcod.node{node_id}")
    lg.handlers[:] = [h]
    lg.setLevel(logging.INFO if path else logging.WARNING)  # no log file: only problems, on stderr
    lg.propagate = False


def _load_kernels(cfg: dict) -> None:
    """Imports numba and loads every coding kernel this federation uses (compiled by the parent
    into the disk cache) before the node joins, so no round pays for it (under load the first
    round's download was 2x the star baseline's before this)."""
    from jaxlab.fl.comm import field, gfp_kernels
    gfp_kernels.precompile(int(cfg["k"]), field.P, field.HALF)


def make_node(cfg: dict, node_id: int, task=None):
    from jaxlab.fl.comm.fedavg_wire import make_task

    task = make_task(cfg["task"]) if task is None else task
    return (ServerNode if int(node_id) == int(cfg["n_clients"]) else ClientNode)(cfg, node_id, task)


def run_node(cfg: dict, node_id: int):
    """Runs one node to completion in this process (server returns its per-round metrics)."""
    _load_kernels(cfg)
    node = make_node(cfg, node_id)
    return asyncio.run(node.run())


async def _run_all(cfg: dict, hooks) -> list[dict]:
    from jaxlab.fl.comm.fedavg_wire import make_task

    task = make_task(cfg["task"])  # tasks are read-only after construction: one for all nodes
    nodes = [make_node(cfg, i, task) for i in range(int(cfg["n_clients"]) + 1)]
    tasks = [asyncio.create_task(nd.run()) for nd in nodes]
    extra = [asyncio.create_task(h(nodes, tasks)) for h in hooks]
    res = await asyncio.gather(*tasks, return_exceptions=True)
    for t in extra:
        t.cancel()
    return res[-1]


def kill_hook(node: int, round: int, after_s: float = 0.0):
    """Test hook for :func:`run_inprocess`: crash client ``node`` once round ``round`` has started
    (its sockets close, as when a process dies)."""
    async def hook(nodes, tasks):
        server = nodes[-1]
        while len(server.metrics) < round:
            await asyncio.sleep(0.01)
        await asyncio.sleep(after_s)
        tasks[node].cancel()
        nodes[node].stop_event.set()
        await nodes[node].close()
    return hook


def run_inprocess(cfg: dict, hooks=()) -> list[dict]:
    """All nodes as asyncio tasks of one process over loopback (tests, notebook).

    ``hooks``: coroutine functions ``hook(nodes, tasks)`` run beside the federation (fault
    injection in tests). Returns the server's per-round metrics.
    """
    for i in range(int(cfg["n_clients"]) + 1):
        setup_logging(cfg.get("log_dir") and os.path.join(cfg["log_dir"], f"node{i}.log"), i)
    _load_kernels(cfg)
    try:
        asyncio.get_running_loop()
        in_loop = True  # e.g. a Jupyter kernel: run the federation's loop in a worker thread
    except RuntimeError:
        in_loop = False
    if in_loop:
        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(1) as ex:
            out = ex.submit(asyncio.run, _run_all(cfg, list(hooks))).result()
    else:
        out = asyncio.run(_run_all(cfg, list(hooks)))
    if isinstance(out, BaseException):
        raise out
    return out


def _die_with_parent(parent: int) -> None:
    """PR_SET_PDEATHSIG(SIGKILL), set here rather than in a fork hook (the harness may be threaded)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except OSError:
        pass
    if os.getppid() != parent:  # the harness died before prctl took effect
        os._exit(1)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Run one FedCod/star node (spawned by experiments.fedcod).")
    ap.add_argument("--config", required=True, help="federation JSON written by experiments.fedcod")
    ap.add_argument("--id", type=int, required=True, help="node id: clients 0..N-1, server N")
    ap.add_argument("--parent", type=int, default=0, help="harness pid: exit when it dies")
    a = ap.parse_args(argv)
    if a.parent:
        _die_with_parent(a.parent)
    with open(a.config) as f:
        cfg = json.load(f)
    setup_logging(cfg.get("log_dir") and os.path.join(cfg["log_dir"], f"node{a.id}.log"), a.id)
    try:
        run_node(cfg, a.id)
    except Exception:
        logging.getLogger(f"fedcod.node{a.id}").exception("node %d crashed", a.id)
        raise


if __name__ == "__main__":
    main()
