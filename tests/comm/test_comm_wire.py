"""FedCod frame format: round trips, and a hypothesis fuzz of the parser (no input crashes it)."""

import asyncio

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from jaxlab.fl.comm.field import HALF
from jaxlab.fl.comm.wire import (HEADER, Frame, FrameError, FrameType, Limits, decode_frame, encode_frame,
                                 read_frame)

KEY = bytes(range(32))


def _bytes(fr, key=KEY, limits=Limits()):
    return b"".join(bytes(b) for b in encode_frame(fr, key, limits))


frames = st.builds(
    Frame,
    type=st.sampled_from(list(FrameType)),
    round=st.integers(0, 2**32 - 1),
    index=st.integers(0, 2**32 - 1),
    sender=st.integers(0, 2**16 - 1),
    clients=st.frozensets(st.integers(0, 3000), max_size=20),
    coef=st.lists(st.integers(-HALF, HALF), max_size=12).map(lambda v: np.array(v, np.int64)),
    meta=st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=3),
    payload=st.lists(st.integers(-HALF, HALF), max_size=64).map(lambda v: np.array(v, np.int32)),
)


@settings(max_examples=150, deadline=None)
@given(fr=frames)
def test_round_trip(fr):
    got = decode_frame(_bytes(fr), KEY)
    assert got.type == fr.type and got.round == fr.round and got.index == fr.index and got.sender == fr.sender
    assert got.clients == fr.clients and got.meta == fr.meta
    np.testing.assert_array_equal(got.coef, fr.coef)
    np.testing.assert_array_equal(got.payload, fr.payload)


@settings(max_examples=150, deadline=None)
@given(fr=frames, key=st.binary(min_size=1, max_size=40))
def test_wrong_key_always_rejected(fr, key):
    if key == KEY:
        key = key + b"x"
    with pytest.raises(FrameError, match="authentication"):
        decode_frame(_bytes(fr), key)


@settings(max_examples=300, deadline=None)
@given(fr=frames, data=st.data())
def test_any_corruption_or_truncation_is_rejected(fr, data):
    buf = bytearray(_bytes(fr))
    how = data.draw(st.sampled_from(["flip", "truncate", "extend"]))
    if how == "flip":
        i = data.draw(st.integers(0, len(buf) - 1))
        buf[i] ^= data.draw(st.integers(1, 255))
    elif how == "truncate":
        buf = buf[: data.draw(st.integers(0, len(buf) - 1))]
    else:
        buf += data.draw(st.binary(min_size=1, max_size=8))
    with pytest.raises(FrameError):
        decode_frame(bytes(buf), KEY)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(buf=st.binary(max_size=300) | st.binary(min_size=HEADER.size, max_size=HEADER.size).map(
    lambda b: b"FCOD\x01" + b[5:]))
def test_arbitrary_bytes_never_crash_the_parser(buf):
    try:
        decode_frame(buf, KEY)
    except FrameError:
        pass  # the only allowed failure


def test_oversized_lengths_rejected_before_reading():
    fr = Frame(FrameType.AGG_BLOCK, payload=np.zeros(1000, np.int32))
    buf = _bytes(fr)
    with pytest.raises(FrameError, match="oversized") as e:
        decode_frame(buf, KEY, Limits(max_payload=100))
    assert e.value.fatal
    with pytest.raises(ValueError, match="exceeds limits"):
        encode_frame(fr, KEY, Limits(max_payload=100))


def test_stream_reader_drops_bad_frames_and_keeps_framing():
    good = Frame(FrameType.ACK, round=4, sender=2)
    bad_key = _bytes(Frame(FrameType.ACK, round=5), key=b"other")

    async def go():
        r = asyncio.StreamReader()
        r.feed_data(_bytes(good) + bad_key + _bytes(good) + b"FCOD\x01")
        r.feed_eof()
        out = [await read_frame(r, KEY)]
        with pytest.raises(FrameError) as e:
            await read_frame(r, KEY)
        assert not e.value.fatal  # only that frame is bad; the stream is still aligned
        out.append(await read_frame(r, KEY))
        with pytest.raises(FrameError, match="truncated") as e2:
            await read_frame(r, KEY)
        assert e2.value.fatal
        return out

    a, b = asyncio.run(go())
    assert a.round == b.round == 4 and a.type == FrameType.ACK
