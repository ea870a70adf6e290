"""FedCod's versioned binary frame, authenticated with HMAC-SHA256 under a per-federation key.

Layout (little endian)::

    magic     4s   b"FCOD"
    version   u8   1
    type      u8   one of FrameType
    flags     u16  reserved, must be 0
    round     u32  FL round the frame belongs to
    index     u32  block index (upload: MDS row; download: sequence number)
    sender    u16  node id of the sender (clients 0..N-1, server N)
    set_len   u16  bytes of the client-set bitmap that follows (client c is bit c % 8 of byte c // 8)
    k         u16  number of coefficients that follow
    meta_len  u32  bytes of UTF-8 JSON metadata that follow (control frames)
    pay_len   u64  payload bytes (int32 field symbols, so a multiple of 4)
    set bitmap [set_len] | coefficients int32 [k] | meta [meta_len] | payload [pay_len]
    tag       32   HMAC-SHA256(key, everything above)

Unlike the official code's 3-digit decimal header (which broke when ``r`` became a float and which
limited the client bitmask to 32 clients) every field is binary and the client set has any size.

:func:`decode_frame` (whole buffer) and :func:`read_frame` (asyncio stream) raise
:class:`FrameError` for every malformed input and nothing else: bad magic/version/type/flags,
lengths over :class:`Limits`, truncation, trailing bytes, authentication failure, coefficients or
symbols outside the field, metadata that is not a JSON object. ``FrameError.fatal`` says whether the
byte stream lost its framing (the connection must be closed) or only this frame is bad (drop it).
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import hmac
import json
import struct
from dataclasses import dataclass, field as dc_field
from typing import Any

import numpy as np

from jaxlab.fl.comm.field import HALF

__all__ = ["FrameType", "Frame", "Limits", "FrameError", "encode_frame", "decode_frame",
           "read_frame", "write_frame", "MAGIC", "VERSION", "HEADER", "TAG_LEN", "frame_size"]

MAGIC = b"FCOD"
VERSION = 1
HEADER = struct.Struct("<4sBBHIIHHHIQ")
TAG_LEN = 32


class FrameType(enum.IntEnum):
    HELLO = 1          # first frame on a connection: who is speaking
    ROUND_START = 2    # server -> client: round parameters (meta)
    DOWN_BLOCK = 3     # server -> client: coded (FedCod) or systematic (star) block of the broadcast
    PEER_BLOCK = 4     # client -> client: recoded / forwarded download block
    UP_BLOCK = 5       # client -> relay (or server in star): one MDS block of a client's update
    AGG_BLOCK = 6      # relay -> server: sum of the same MDS block over a client set
    ACK = 7            # client -> everyone: download decoded, stop sending to me
    RELAY_STATUS = 8   # relay -> server: which clients an index has so far (meta)
    DROP = 9           # server -> clients: the round's client set shrank (meta)
    ROUND_END = 10     # server -> clients: round decoded, stop this round's work
    STATS = 11         # client -> server: timings, CPU seconds, bytes (meta)
    SHUTDOWN = 12      # server -> clients: exit
    TRAIN_DONE = 13    # client -> server: local training finished (meta)
    REPAIR = 14        # server -> clients: encode extra MDS indices for these relays (meta)


_KNOWN_TYPES = frozenset(int(t) for t in FrameType)


class FrameError(ValueError):
    """A frame was rejected. ``fatal``: the stream lost its framing and must be closed."""

    def __init__(self, msg: str, fatal: bool = False):
        super().__init__(msg)
        self.fatal = fatal


@dataclass(frozen=True)
class Limits:
    """Upper bounds checked before any allocation (so a forged length cannot exhaust memory)."""
    max_payload: int = 256 << 20   # bytes
    max_set_bytes: int = 512       # up to 4096 clients
    max_k: int = 1024
    max_meta: int = 1 << 16


@dataclass
class Frame:
    type: FrameType
    round: int = 0
    index: int = 0
    sender: int = 0
    clients: frozenset = frozenset()
    coef: np.ndarray = dc_field(default_factory=lambda: np.zeros(0, np.int64))
    meta: dict = dc_field(default_factory=dict)
    payload: np.ndarray = dc_field(default_factory=lambda: np.zeros(0, np.int32))


def _bitmap(clients) -> bytes:
    clients = sorted(int(c) for c in clients)
    if not clients:
        return b""
    if clients[0] < 0:
        raise ValueError(f"client ids must be >= 0, got {clients[0]}")
    bm = bytearray(clients[-1] // 8 + 1)
    for c in clients:
        bm[c // 8] |= 1 << (c % 8)
    return bytes(bm)


def _from_bitmap(bm: bytes) -> frozenset:
    bits = np.unpackbits(np.frombuffer(bm, np.uint8), bitorder="little")
    return frozenset(np.nonzero(bits)[0].tolist())


def _parts(fr: Frame, limits: Limits) -> tuple[bytes, memoryview]:
    bm = _bitmap(fr.clients)
    coef = np.asarray(fr.coef, dtype=np.int64)
    if coef.size and np.abs(coef).max() > HALF:
        raise ValueError("coefficients must be balanced field elements (|c| <= HALF)")
    coef_b = coef.astype("<i4").tobytes()
    meta_b = json.dumps(fr.meta, separators=(",", ":")).encode() if fr.meta else b""
    payload = np.ascontiguousarray(fr.payload, dtype="<i4")
    pay = memoryview(payload).cast("B")
    if len(bm) > limits.max_set_bytes or coef.size > limits.max_k or len(meta_b) > limits.max_meta \
            or pay.nbytes > limits.max_payload:
        raise ValueError(f"frame exceeds limits {limits}: set {len(bm)} B, k {coef.size}, meta {len(meta_b)} B, "
                         f"payload {pay.nbytes} B; raise Limits or use more/smaller blocks")
    head = HEADER.pack(MAGIC, VERSION, int(fr.type), 0, int(fr.round) & 0xFFFFFFFF, int(fr.index) & 0xFFFFFFFF,
                       int(fr.sender), len(bm), coef.size, len(meta_b), pay.nbytes)
    return head + bm + coef_b + meta_b, pay


def encode_frame(fr: Frame, key: bytes, limits: Limits = Limits()) -> list:
    """Returns the frame as a list of buffers ``[prefix, payload, tag]`` (no payload copy)."""
    prefix, pay = _parts(fr, limits)
    h = hmac.new(key, prefix, hashlib.sha256)
    h.update(pay)
    return [prefix, pay, h.digest()]


def frame_size(bufs) -> int:
    return sum(memoryview(b).nbytes for b in bufs)


def _check_header(head: bytes, limits: Limits) -> tuple:
    magic, ver, typ, flags, rnd, idx, sender, set_len, k, meta_len, pay_len = HEADER.unpack(head)
    if magic != MAGIC:
        raise FrameError(f"bad magic {magic!r}", fatal=True)
    if ver != VERSION:
        raise FrameError(f"unsupported frame version {ver} (this node speaks {VERSION})", fatal=True)
    if typ not in _KNOWN_TYPES:
        raise FrameError(f"unknown frame type {typ}", fatal=True)
    if flags != 0:
        raise FrameError(f"reserved flags {flags:#x} set", fatal=True)
    if set_len > limits.max_set_bytes or k > limits.max_k or meta_len > limits.max_meta \
            or pay_len > limits.max_payload:
        raise FrameError(f"oversized frame: set {set_len} B, k {k}, meta {meta_len} B, payload {pay_len} B "
                         f"(limits {limits})", fatal=True)
    if pay_len % 4:
        raise FrameError(f"payload length {pay_len} is not a multiple of 4", fatal=True)
    return typ, rnd, idx, sender, set_len, k, meta_len, pay_len


def _finish(head: bytes, body: bytes, key: bytes, fields: tuple) -> Frame:
    typ, rnd, idx, sender, set_len, k, meta_len, pay_len = fields
    tag = body[-TAG_LEN:]
    want = hmac.new(key, head, hashlib.sha256)
    want.update(memoryview(body)[:-TAG_LEN])
    if not hmac.compare_digest(want.digest(), tag):
        raise FrameError("authentication failed (wrong federation key or corrupted frame)")
    o = 0
    clients = _from_bitmap(body[o:o + set_len]); o += set_len
    coef = np.frombuffer(body, "<i4", count=k, offset=o).astype(np.int64); o += 4 * k
    if coef.size and np.abs(coef).max() > HALF:
        raise FrameError("coefficient outside the field's balanced range")
    meta: Any = {}
    if meta_len:
        try:
            meta = json.loads(bytes(body[o:o + meta_len]).decode("utf-8"))
        except (ValueError, RecursionError) as e:  # UnicodeDecodeError/JSONDecodeError are ValueErrors
            raise FrameError(f"metadata is not JSON: {e}") from None
        if not isinstance(meta, dict):
            raise FrameError("metadata must be a JSON object")
    o += meta_len
    payload = np.frombuffer(body, "<i4", count=pay_len // 4, offset=o)
    if payload.size and (payload.max() > HALF or payload.min() < -HALF):
        raise FrameError("payload symbol outside the field's balanced range")
    return Frame(FrameType(typ), rnd, idx, sender, clients, coef, meta, payload)


def decode_frame(buf: bytes, key: bytes, limits: Limits = Limits()) -> Frame:
    """Parses one complete frame; raises FrameError for anything malformed (never other errors)."""
    buf = bytes(buf)
    if len(buf) < HEADER.size:
        raise FrameError(f"truncated frame: {len(buf)} bytes < header {HEADER.size}", fatal=True)
    head_fix = buf[:HEADER.size]
    fields = _check_header(head_fix, limits)
    _, _, _, _, set_len, k, meta_len, pay_len = fields
    var = set_len + 4 * k + meta_len
    need = HEADER.size + var + pay_len + TAG_LEN
    if len(buf) < need:
        raise FrameError(f"truncated frame: {len(buf)} of {need} bytes", fatal=True)
    if len(buf) > need:
        raise FrameError(f"{len(buf) - need} trailing bytes after the frame", fatal=True)
    body = buf[HEADER.size:]
    # the MAC covers the fixed header + variable part + payload
    return _finish(head_fix, body, key, fields)


async def read_frame(reader: asyncio.StreamReader, key: bytes, limits: Limits = Limits()) -> Frame | None:
    """Reads one frame; None on a clean EOF between frames; FrameError otherwise."""
    try:
        head = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as e:
        if not e.partial:
            return None
        raise FrameError(f"truncated header ({len(e.partial)} bytes) before EOF", fatal=True) from None
    fields = _check_header(head, limits)
    _, _, _, _, set_len, k, meta_len, pay_len = fields
    try:
        body = await reader.readexactly(set_len + 4 * k + meta_len + pay_len + TAG_LEN)
    except asyncio.IncompleteReadError as e:
        raise FrameError(f"truncated frame body ({len(e.partial)} bytes) before EOF", fatal=True) from None
    return _finish(head, body, key, fields)


async def write_frame(writer: asyncio.StreamWriter, fr: Frame, key: bytes, limits: Limits = Limits()) -> int:
    bufs = encode_frame(fr, key, limits)
    writer.writelines(bufs)
    await writer.drain()
    return frame_size(bufs)
