"""The native hot path and its pure-Python twin: same names, same results.

Two kinds of test: each implementation (the ``fast_impl`` fixture) against a
model of the encoding, and the two implementations against each other on
generated input, including input they must reject.
"""

from __future__ import annotations

import itertools
import math
import os
import select
import socket
import struct
import threading
from types import ModuleType
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sandboxq import _fast, _fast_py, fast
from sandboxq.worker import protocol

FIXTURE_OK = settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)

JSON_FIELDS = ("data", "result", "progress", "backoff", "children")
INT_FIELDS = (
    "priority",
    "attempts",
    "attempts_made",
    "stalls",
    "retries",
    "leases",
    "pending",
    "seq",
    "kc_count",
    "kf_count",
)
SECONDS_FIELDS = ("created_at", "started_at", "finished_at", "timeout", "kc_age", "kf_age")
TEXT_FIELDS = (
    "name",
    "state",
    "token",
    "group",
    "error",
    "traceback",
    "parent_id",
    "parent_prefix",
    "manual_retry_only",
    "waiting_since",
    "settled",
)
KNOWN = {*JSON_FIELDS, *INT_FIELDS, *SECONDS_FIELDS, *TEXT_FIELDS}

# -- strategies ---------------------------------------------------------------
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
unknown_names = st.text(min_size=1).filter(lambda n: n not in KNOWN)


@st.composite
def job_hashes(draw: st.DrawFn) -> tuple[dict[bytes, bytes], dict[str, Any]]:
    """A job hash as Redis stores it, and the fields it should decode to."""
    raw: dict[bytes, bytes] = {}
    expected: dict[str, Any] = {}
    for name in draw(st.lists(st.sampled_from(JSON_FIELDS), unique=True)):
        value = orjson.dumps(draw(json_values))
        raw[name.encode()], expected[name] = value, value  # JSON stays JSON
    for name in draw(st.lists(st.sampled_from(INT_FIELDS), unique=True)):
        value = draw(st.integers(min_value=-(2**63), max_value=2**63 - 1))
        raw[name.encode()], expected[name] = str(value).encode(), value
    for name in draw(st.lists(st.sampled_from(SECONDS_FIELDS), unique=True)):
        millis = draw(st.integers(min_value=0, max_value=2**53))
        raw[name.encode()], expected[name] = str(millis).encode(), millis / 1000
    for name in draw(st.lists(st.sampled_from(TEXT_FIELDS), unique=True)):
        text = draw(st.text())
        raw[name.encode()], expected[name] = text.encode(), text
    for name, value in draw(st.dictionaries(unknown_names, st.text(), max_size=5)).items():
        raw[name.encode()], expected[name] = value.encode(), value
    return raw, expected


def flat(mapping: dict[bytes, bytes]) -> list[bytes]:
    return [item for pair in mapping.items() for item in pair]


def outcome(func: Any, *args: Any) -> tuple[str, Any]:
    """What a call did: its result, or its exception's type and message (a
    fetch's corrupt records, returned as exceptions, likewise)."""
    try:
        result = func(*args)
    except Exception as exc:
        return ("raised", (type(exc), str(exc)))
    if func in (_fast.decode_fetched, _fast_py.decode_fetched):
        result = [(i, (type(f), str(f)) if isinstance(f, Exception) else f) for i, f in result]
    return ("returned", result)


# -- the selector -------------------------------------------------------------
def test_the_selector_honours_sandboxq_no_extensions() -> None:
    # Given the environment this test run started with
    pure = os.environ.get("SANDBOXQ_NO_EXTENSIONS", "") not in ("", "0")

    # Then the selected implementation is the one it asks for
    expected = "pure" if pure else "native"
    assert expected == fast.IMPLEMENTATION
    chosen = _fast_py if pure else _fast
    for name in (
        "decode_job_flat",
        "decode_job_mapping",
        "decode_fetched",
        "encode_frame",
        "FrameDecoder",
        "SlidingWindow",
        "MAX_FRAME_SIZE",
        "MAX_FRAME_LIMIT",
    ):
        assert getattr(fast, name) is getattr(chosen, name)


def test_both_implementations_share_their_limits() -> None:
    # Given the limits each module states
    # Then they are the same numbers
    for name in ("MAX_FRAME_SIZE", "MAX_FRAME_LIMIT", "INT64_LIMIT"):
        assert getattr(_fast, name) == getattr(_fast_py, name)
    assert _fast.MAX_FRAME_SIZE == 64 * 1024 * 1024


def test_both_implementations_know_the_same_fields() -> None:
    # Given the two field tables
    # Then the field tables match each other and these tests' idea of them
    assert _fast.FIELD_KINDS == _fast_py.FIELD_KINDS
    assert {f.decode() for f in _fast_py.FIELD_KINDS} == KNOWN


# -- the job-hash codec: each implementation against the model ----------------
@FIXTURE_OK
@given(job_hashes())
def test_decode_job_mapping_decodes_every_field(
    fast_impl: ModuleType, case: tuple[dict[bytes, bytes], dict[str, Any]]
) -> None:
    # Given a job hash as HGETALL returns it
    raw, expected = case

    # When it is decoded
    decoded = fast_impl.decode_job_mapping(raw)

    # Then JSON fields stay JSON bytes, counters are ints, times seconds, the rest text
    assert decoded == expected


@FIXTURE_OK
@given(job_hashes())
def test_decode_job_flat_decodes_like_mapping(
    fast_impl: ModuleType, case: tuple[dict[bytes, bytes], dict[str, Any]]
) -> None:
    # Given the same hash as a Lua script returns it (a flat list)
    raw, expected = case

    # When it is decoded
    decoded = fast_impl.decode_job_flat(flat(raw))

    # Then it gives the same fields
    assert decoded == expected


@FIXTURE_OK
@given(st.lists(st.tuples(st.integers(1, 10**12), job_hashes()), max_size=3))
def test_decode_fetched_pairs_ids_with_their_fields(
    fast_impl: ModuleType, jobs: list[tuple[int, tuple[dict[bytes, bytes], dict[str, Any]]]]
) -> None:
    # Given fetch.lua's rows: id, flat hash, id, flat hash, ...
    rows: list[Any] = []
    for job_id, (raw, _expected) in jobs:
        rows += [str(job_id).encode(), flat(raw)]

    # When they are decoded
    decoded = fast_impl.decode_fetched(rows)

    # Then each id comes with its fields, in order
    assert decoded == [(str(job_id), expected) for job_id, (_raw, expected) in jobs]


def test_times_are_seconds_counters_ints_and_json_untouched(fast_impl: ModuleType) -> None:
    # Given stored milliseconds, counters, text and a JSON payload
    payload = b'{"w": 256, "path": "/x.png"}'
    raw = {
        b"created_at": b"1500",
        b"timeout": b"30000",
        b"attempts": b"3",
        b"name": b"r\xc3\xa9",
        b"data": payload,
    }

    # When decoded
    decoded = fast_impl.decode_job_mapping(raw)

    # Then times are float seconds, counters ints, text decoded as UTF-8, and
    # the payload is the very bytes object Redis gave (no copy, no parse)
    assert decoded == {
        "created_at": 1.5,
        "timeout": 30.0,
        "attempts": 3,
        "name": "ré",
        "data": payload,
    }
    assert type(decoded["created_at"]) is float and type(decoded["attempts"]) is int
    assert decoded["data"] is payload


@pytest.mark.parametrize("name", sorted(KNOWN))
def test_every_known_field_is_found_and_a_near_miss_is_text(
    fast_impl: ModuleType, name: str
) -> None:
    # Given a known field, and names one byte off it (last byte changed, one
    # byte longer, one shorter)
    field = name.encode()
    near = [field[:-1] + b"~", field + b"s", field[:-1]]

    # When each is decoded with the value "1"
    decoded = fast_impl.decode_job_mapping({f: b"1" for f in [field, *near]})

    # Then the known field decodes by its kind, and the others as text
    expected = {
        **dict.fromkeys(JSON_FIELDS, b"1"),
        **dict.fromkeys(INT_FIELDS, 1),
        **dict.fromkeys(SECONDS_FIELDS, 0.001),
        **dict.fromkeys(TEXT_FIELDS, "1"),
    }[name]
    assert decoded[name] == expected and type(decoded[name]) is type(expected)
    for other in near:
        if other.decode() not in KNOWN:
            assert decoded[other.decode()] == "1"


@pytest.mark.parametrize("func", ["decode_job_flat", "decode_fetched"])
def test_an_odd_number_of_items_is_refused(fast_impl: ModuleType, func: str) -> None:
    # Given a flat list missing its last value
    # When it is decoded
    # Then it is refused rather than silently cut short
    with pytest.raises(ValueError, match="got 3 items"):
        getattr(fast_impl, func)([b"name", b"x", b"data"])


# -- corrupt records: each job on its own, a reason naming the field ----------
@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        (b"timeout", b"1.5", "field 'timeout' = '1.5' is not an integer"),
        (b"attempts_made", b"", "field 'attempts_made' = '' is not an integer"),
        (b"leases", b"nan", "field 'leases' = 'nan' is not an integer"),
        (
            b"attempts",
            b"9" * 30,
            f"field 'attempts' = '{'9' * 30}' is out of range (a signed 64-bit integer)",
        ),
        (b"name", b"r\xff", "field 'name' = 'r\\xff' is not UTF-8 text"),
        (b"stalls", b" 7 ", "field 'stalls' = ' 7 ' is not an integer"),
        (b"priority", b"+3", "field 'priority' = '+3' is not an integer"),
        (b"retries", b"1_000", "field 'retries' = '1_000' is not an integer"),
        (b"seq", b"0x10", "field 'seq' = '0x10' is not an integer"),
        (b"created_at", b"x" * 60, f"field 'created_at' = '{'x' * 40}…' is not an integer"),
    ],
)
def test_a_corrupt_record_fails_alone_with_a_reason_naming_the_field(
    fast_impl: ModuleType, field: bytes, value: bytes, reason: str
) -> None:
    # Given a fetch of three jobs, the middle one with a field that cannot be read
    rows = [
        b"1",
        [b"name", b"a", b"timeout", b"1000"],
        b"2",
        [b"name", b"b", field, value],
        b"3",
        [b"name", b"c"],
    ]

    # When the fetch is decoded
    decoded = fast_impl.decode_fetched(rows)

    # Then the sound jobs decode, and the corrupt one comes back as its error
    assert decoded[0] == ("1", {"name": "a", "timeout": 1.0})
    assert decoded[2] == ("3", {"name": "c"})
    job_id, corrupt = decoded[1]
    assert job_id == "2" and isinstance(corrupt, fast.CorruptRecord)
    assert str(corrupt) == f"corrupt record: {reason}"
    # And decoding the hash alone raises that error
    with pytest.raises(fast.CorruptRecord, match="corrupt record: field"):
        fast_impl.decode_job_mapping({field: value})


def test_unknown_fields_that_are_not_utf8_are_left_out(fast_impl: ModuleType) -> None:
    # Given a job hash with fields another tool wrote, not UTF-8
    raw = {b"name": b"a", b"note": b"\xff", b"\xfe": b"x", b"ok": b"fine"}

    # When it is decoded
    decoded = fast_impl.decode_job_mapping(raw)

    # Then those fields are ignored, not fatal
    assert decoded == {"name": "a", "ok": "fine"}


def test_an_id_that_is_not_utf8_is_a_corrupt_record_that_keeps_its_bytes(
    fast_impl: ModuleType,
) -> None:
    # Given a fetched job whose id is not UTF-8
    rows = [b"j\xff", [b"name", b"a"]]

    # When decoded
    [(job_id, corrupt)] = fast_impl.decode_fetched(rows)

    # Then it is corrupt, and its id gives the stored bytes back
    assert isinstance(corrupt, fast.CorruptRecord)
    assert str(corrupt) == "corrupt record: its id is not UTF-8 text"
    assert job_id.encode("utf-8", "surrogateescape") == b"j\xff"


# -- the job-hash codec: native against pure, directly ------------------------
@given(job_hashes())
def test_native_and_pure_decode_job_hashes_identically(
    case: tuple[dict[bytes, bytes], dict[str, Any]],
) -> None:
    # Given a well-formed job hash
    raw, _expected = case

    # When both implementations decode it, as a mapping and as a flat list
    # Then they give equal fields
    assert _fast.decode_job_mapping(raw) == _fast_py.decode_job_mapping(raw)
    assert _fast.decode_job_flat(flat(raw)) == _fast_py.decode_job_flat(flat(raw))


@given(st.lists(st.tuples(st.binary(max_size=12), job_hashes()), max_size=3))
def test_native_and_pure_decode_fetched_rows_identically(
    jobs: list[tuple[bytes, tuple[dict[bytes, bytes], dict[str, Any]]]],
) -> None:
    # Given fetch rows whose ids are arbitrary bytes (maybe not UTF-8)
    rows: list[Any] = []
    for job_id, (raw, _expected) in jobs:
        rows += [job_id, flat(raw)]

    # When both decode them
    # Then both return the same jobs, or raise the same error
    assert outcome(_fast.decode_fetched, rows) == outcome(_fast_py.decode_fetched, rows)


@given(
    st.dictionaries(
        st.sampled_from(sorted(KNOWN)).map(str.encode) | st.binary(max_size=8),
        st.binary(max_size=12),
        max_size=6,
    )
)
def test_native_and_pure_agree_on_malformed_hashes(raw: dict[bytes, bytes]) -> None:
    # Given a hash of arbitrary bytes: non-numeric counters, bad UTF-8 ...
    # When both implementations decode it
    # Then both return the same fields, or raise the same error and message
    assert outcome(_fast.decode_job_mapping, raw) == outcome(_fast_py.decode_job_mapping, raw)
    assert outcome(_fast.decode_job_flat, flat(raw)) == outcome(_fast_py.decode_job_flat, flat(raw))


# -- the frame codec -------------------------------------------------------------
IMPLS = (_fast, _fast_py)
INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
items = st.none() | INT64 | st.floats() | st.text() | st.binary()
messages = st.lists(items, max_size=8)


def frame(body: bytes) -> bytes:
    """A frame around ``body``: a 4-byte big-endian length, then the body."""
    return len(body).to_bytes(4, "big") + body


def model_item(item: Any) -> bytes:
    """The format's definition, item by item, written independently."""
    if item is None:
        return b"N"
    if type(item) is int:
        return b"I" + item.to_bytes(8, "big", signed=True)
    if type(item) is float:
        return b"F" + struct.pack(">d", item)
    raw = item.encode() if type(item) is str else item
    return (b"S" if type(item) is str else b"B") + len(raw).to_bytes(4, "big") + raw


def same(a: Any, b: Any) -> bool:
    """Equality that counts NaN as equal to NaN (repr keeps types apart)."""
    return repr(a) == repr(b)


def cut(stream: bytes, cuts: list[int]) -> list[bytes]:
    """``stream`` in chunks, split at the given offsets (any, repeats allowed)."""
    points = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    return [stream[a:b] for a, b in itertools.pairwise(points)]


def feed_all(decoder: Any, chunks: list[bytes]) -> list[tuple[str, str, int | None]]:
    """Each feed's outcome (as repr, so NaN compares), and what the decoder
    held afterwards."""
    results: list[tuple[str, str, int | None]] = []
    for chunk in chunks:
        kind, value = outcome(decoder.feed, chunk)
        results.append((kind, repr(value), decoder.buffered if kind == "returned" else None))
    return results


@FIXTURE_OK
@given(messages)
def test_encode_frame_follows_the_format(fast_impl: ModuleType, message: list[Any]) -> None:
    # When a message is encoded
    encoded = fast_impl.encode_frame(message)

    # Then it is the body's length, then each item as the format defines it
    assert encoded == frame(b"".join(model_item(item) for item in message))


@FIXTURE_OK
@given(messages)
def test_a_frame_decodes_to_its_message_with_the_same_types(
    fast_impl: ModuleType, message: list[Any]
) -> None:
    # When a message makes the round trip
    (decoded,) = fast_impl.FrameDecoder().feed(fast_impl.encode_frame(message))

    # Then every item comes back equal and of the same type (NaN stays NaN)
    assert [type(i) for i in decoded] == [type(i) for i in message]
    assert same(decoded, message)
    assert all(
        math.copysign(1, a) == math.copysign(1, b)  # -0.0 stays -0.0
        for a, b in zip(decoded, message, strict=True)
        if type(a) is float
    )


BAD_MESSAGES = [
    ([True], TypeError, "a frame item must be None, int, float, str or bytes, not bool"),
    ([{"a": 1}], TypeError, "not dict"),
    (["ok", [1]], TypeError, "not list"),
    ([bytearray(b"x")], TypeError, "not bytearray"),
    ([2**63], ValueError, "a frame int must fit in 64 bits"),
    ([-(2**63) - 1], ValueError, "a frame int must fit in 64 bits"),
    (["\ud800"], UnicodeEncodeError, "surrogates not allowed"),
    (("run", "1"), TypeError, "a frame message must be a list, not tuple"),
]


@pytest.mark.parametrize(("message", "error", "text"), BAD_MESSAGES)
def test_encode_frame_refuses_what_the_format_cannot_carry(
    fast_impl: ModuleType, message: Any, error: type[Exception], text: str
) -> None:
    # When a message holds an item the format has no tag for
    # Then encoding fails, naming the problem
    with pytest.raises(error, match=text):
        fast_impl.encode_frame(message)


bad_items = (
    st.booleans()
    | st.integers().filter(lambda n: not -(2**63) <= n < 2**63)
    | st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1)
    | st.dictionaries(st.text(), st.integers(), max_size=1)
    | st.tuples(st.integers())
)


@given(st.lists(items | bad_items, max_size=6) | st.tuples(items))
def test_native_and_pure_encode_frames_byte_for_byte(message: Any) -> None:
    # Given a message, maybe with items the format cannot carry
    # When both implementations encode it
    # Then they give the same bytes, or the same error
    assert outcome(_fast.encode_frame, message) == outcome(_fast_py.encode_frame, message)


def test_protocol_encodes_and_reads_through_the_selected_implementation() -> None:
    # Given the protocol module's names
    # Then they are the hot path's, so pool.py and child.py use it unchanged
    assert protocol.encode is fast.encode_frame
    assert protocol.FrameReader is fast.FrameDecoder
    assert protocol.MAX_FRAME_SIZE == fast.MAX_FRAME_SIZE


@FIXTURE_OK
@given(
    st.lists(st.tuples(st.sampled_from(IMPLS), messages), max_size=8),
    st.lists(st.integers(min_value=0), max_size=12),
)
def test_a_stream_decodes_to_its_messages_however_it_is_chunked(
    fast_impl: ModuleType, sent: list[tuple[ModuleType, list[Any]]], cuts: list[int]
) -> None:
    # Given frames, each written by either implementation, cut into chunks anywhere
    stream = b"".join(writer.encode_frame(message) for writer, message in sent)
    decoder = fast_impl.FrameDecoder()

    # When the chunks are fed one by one
    received = [m for chunk in cut(stream, cuts) for m in decoder.feed(chunk)]

    # Then every message comes out once, in order, and nothing is left over
    assert same(received, [message for _writer, message in sent])
    assert decoder.buffered == 0


@given(
    st.lists(messages, min_size=1, max_size=5),
    st.lists(st.integers(min_value=0), max_size=12),
    st.data(),
)
def test_native_and_pure_decoders_agree_chunk_by_chunk(
    sent: list[list[Any]], cuts: list[int], data: st.DataObject
) -> None:
    # Given a stream that may end in the middle of a frame
    stream = b"".join(_fast.encode_frame(m) for m in sent)
    stream = stream[: data.draw(st.integers(min_value=0, max_value=len(stream)))]
    chunks = cut(stream, cuts)

    # When each implementation is fed the same chunks
    native, pure = feed_all(_fast.FrameDecoder(), chunks), feed_all(_fast_py.FrameDecoder(), chunks)

    # Then they return the same frames after each chunk, and hold the same tail
    assert native == pure
    # the complete frames, in order, and the bytes of the one cut short
    complete = _complete(sent, stream)
    decoder = _fast.FrameDecoder()
    assert same([m for chunk in chunks for m in decoder.feed(chunk)], complete)
    held = native[-1][2] if native else 0
    assert held == len(stream) - sum(len(_fast.encode_frame(m)) for m in complete)


def _complete(sent: list[list[Any]], stream: bytes) -> list[list[Any]]:
    """The messages whose whole frame is within ``stream``."""
    done, size = [], 0
    for message in sent:
        size += len(_fast.encode_frame(message))
        if size > len(stream):
            break
        done.append(message)
    return done


tags = st.sampled_from(b"NIFSB").map(lambda t: bytes([t]))
segments = st.one_of(
    messages.map(lambda m: _fast_py.encode_frame(m)),  # a good frame
    st.lists(tags | st.binary(max_size=5), max_size=8).map(lambda p: frame(b"".join(p))),
    st.binary(max_size=40).map(frame),  # a body of anything
    st.tuples(st.integers(0, 2**32 - 1), st.binary(max_size=12)).map(  # any declared length
        lambda t: t[0].to_bytes(4, "big") + t[1]
    ),
    st.binary(max_size=10),  # noise
)


@given(
    st.lists(segments, max_size=6),
    st.lists(st.integers(min_value=0), max_size=12),
    st.integers(min_value=1, max_value=80),
)
def test_native_and_pure_decoders_agree_on_corrupt_streams(
    parts: list[bytes], cuts: list[int], max_frame_size: int
) -> None:
    # Given a stream of good frames, bad tags, short items, bad UTF-8, wild
    # lengths and noise, in chunks
    chunks = cut(b"".join(parts), cuts)

    # When each implementation is fed the same chunks
    native = feed_all(_fast.FrameDecoder(max_frame_size), chunks)
    pure = feed_all(_fast_py.FrameDecoder(max_frame_size), chunks)

    # Then each feed returns the same frames or raises the same error; once one
    # raised, every later feed raises it again
    assert native == pure
    raised = [kind == "raised" for kind, _v, _b in native]
    if True in raised:
        assert all(raised[raised.index(True) :])


@FIXTURE_OK
@given(
    st.integers(min_value=1, max_value=2**20),
    st.integers(min_value=1, max_value=2**32 - 1),
    st.integers(min_value=0, max_value=3),
)
def test_an_oversize_declared_length_is_refused_as_soon_as_the_header_arrives(
    fast_impl: ModuleType, max_frame_size: int, over: int, split: int
) -> None:
    # Given a decoder with a limit, and a header declaring more than it
    declared = min(max_frame_size + over, 2**32 - 1)
    header = declared.to_bytes(4, "big")
    decoder = fast_impl.FrameDecoder(max_frame_size)

    # When the header arrives, maybe in two pieces, with no body yet
    # Then the decoder refuses it, naming the length and the limit
    assert decoder.feed(header[:split]) == []
    message = rf"^a frame declares {declared} bytes, over the limit of {max_frame_size} bytes"
    with pytest.raises(ValueError, match=message):
        decoder.feed(header[split:])
    # and the stream stays refused
    with pytest.raises(ValueError, match=message):
        decoder.feed(b"N")


def test_a_frame_at_the_limit_is_read_and_one_byte_over_is_not(fast_impl: ModuleType) -> None:
    # Given a frame whose body is exactly 16 bytes
    encoded = fast_impl.encode_frame(["x", "12345"])
    assert len(encoded) - 4 == 16

    # Then a decoder with a limit of 16 reads it, one with 15 refuses it
    assert fast_impl.FrameDecoder(16).feed(encoded) == [["x", "12345"]]
    with pytest.raises(ValueError, match="declares 16 bytes, over the limit of 15 bytes"):
        fast_impl.FrameDecoder(15).feed(encoded)


def test_the_default_frame_limit_is_64_mib(fast_impl: ModuleType) -> None:
    decoder = fast_impl.FrameDecoder()
    assert decoder.max_frame_size == 64 * 1024 * 1024
    with pytest.raises(ValueError, match="over the limit of 67108864 bytes"):
        decoder.feed((64 * 1024 * 1024 + 1).to_bytes(4, "big"))


@pytest.mark.parametrize("value", [0, -1, 2**32, 2**64, 1.5, "64"])
def test_native_and_pure_check_max_frame_size_alike(value: Any) -> None:
    # When a decoder is built with a limit a 4-byte length cannot use
    # Then both refuse it with the same error
    native, pure = outcome(_fast.FrameDecoder, value), outcome(_fast_py.FrameDecoder, value)
    assert native[0] == pure[0] == "raised"
    assert native == pure


CORRUPT_BODIES = [
    (b"NX", ValueError, r"^a corrupt frame: unknown item tag 0x58 at byte 1 of its body$"),
    (b"S\x00\x00\x00\x09abc", ValueError, r"^a corrupt frame: an item runs past the end at byte 0"),
    (b"NNB\x00\x00", ValueError, r"^a corrupt frame: an item runs past the end at byte 2"),
    (b"I\x00\x00\x00", ValueError, r"^a corrupt frame: an item runs past the end at byte 0"),
    (b"S\x00\x00\x00\x01\xff", UnicodeDecodeError, "can't decode byte 0xff in position 0"),
]


@pytest.mark.parametrize(("body", "error", "text"), CORRUPT_BODIES)
def test_a_corrupt_body_is_an_error_that_names_it_and_repeats(
    fast_impl: ModuleType, body: bytes, error: type[Exception], text: str
) -> None:
    # Given a good frame, then a corrupt one, then a good one, in one chunk
    decoder = fast_impl.FrameDecoder()
    stream = fast_impl.encode_frame(["ok"]) + frame(body) + fast_impl.encode_frame(["later"])

    # When it is fed
    # Then the error names what is wrong and where, and surfaces again on the
    # next feed: the stream cannot be trusted past it (the parent kills the child)
    with pytest.raises(error, match=text):
        decoder.feed(stream)
    with pytest.raises(error, match=text):
        decoder.feed(b"")
    assert issubclass(error, ValueError)  # what the parent catches


def test_frames_cross_a_real_socket(fast_impl: ModuleType) -> None:
    # Given a socketpair, the child's blocking side and the parent's non-blocking one
    child, parent = socket.socketpair()
    parent.setblocking(False)
    decoder = fast_impl.FrameDecoder()
    big = "x" * 300_000  # more than one recv() of 64 KiB
    try:
        # When the child sends frames and the parent reads what is there
        def send() -> None:
            protocol.send(child, [protocol.PROGRESS, "1", "50"])
            protocol.send(child, [protocol.DONE, "1", "completed", big, "", 0.0])
            child.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        received: list[list[Any]] = []
        while True:
            select.select([parent], [], [], 5)
            try:
                chunk = parent.recv(65536)
            except BlockingIOError:
                continue
            if not chunk:
                break
            received += decoder.feed(chunk)
        sender.join()

        # Then the parent gets both frames whole
        assert received == [["progress", "1", "50"], ["done", "1", "completed", big, "", 0.0]]

        # And the parent's RUN frames reach the child's blocking reader, one
        # message at a time, however many arrived together
        run = [protocol.RUN, "2", "resize", b'{"w":1}', "q", 0, 0, None]
        parent.sendall(fast_impl.encode_frame(run) + fast_impl.encode_frame(["run", "3"]))
        inbox = protocol.Inbox(child)
        assert inbox.recv() == run
        assert inbox.recv() == ["run", "3"]
        parent.close()
        assert inbox.recv() is None
    finally:
        child.close()
        parent.close()


def test_a_child_refuses_to_send_a_frame_the_parent_would_refuse(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a limit of 10 bytes
    monkeypatch.setattr(protocol, "MAX_FRAME_SIZE", 10)
    child, parent = socket.socketpair()
    try:
        # When the child sends a bigger frame
        # Then it fails there, and nothing is sent
        with pytest.raises(ValueError, match=r"a 'done' frame of 17 bytes is over the limit of 10"):
            protocol.send(child, ["done", "123"])
        parent.setblocking(False)
        with pytest.raises(BlockingIOError):
            parent.recv(1)
    finally:
        child.close()
        parent.close()


# -- the sliding window ------------------------------------------------------------
class WindowModel:
    """Brute force: every start ever recorded; a start at t counts at time T
    while t > T - window_ms. Time is the latest now any call has seen."""

    def __init__(self, max_jobs: int, window_ms: int) -> None:
        self.max_jobs, self.window_ms = max_jobs, window_ms
        self.starts: list[int] = []
        self.latest: int | None = None

    def _at(self, now_ms: int) -> int:
        self.latest = now_ms if self.latest is None else max(self.latest, now_ms)
        return self.latest

    def _counted(self, at: int | None) -> int:
        if at is None:
            return len(self.starts)
        return sum(1 for t in self.starts if t > at - self.window_ms)

    def allowed(self, now_ms: int) -> int:
        return max(0, self.max_jobs - self._counted(self._at(now_ms)))

    def record(self, now_ms: int, count: int) -> None:
        self._at(now_ms)
        self.starts += [now_ms] * count

    def opens_at(self, now_ms: int) -> int:
        at = self._at(now_ms)
        # The count only drops when a start leaves, at t + window_ms.
        times = [at] + [t + self.window_ms for t in self.starts if t + self.window_ms > at]
        return min(time for time in times if self._counted(time) < self.max_jobs)

    def sync(self, starts_ms: list[int]) -> None:
        self.starts = list(starts_ms)

    def __len__(self) -> int:
        return min(self.max_jobs, self._counted(self.latest))


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def run_ops(window: Any, ops: list[tuple[Any, ...]]) -> list[tuple[str, Any]]:
    """Apply the operations; what each call returned or raised, then len()."""
    results = []
    for name, *args in ops:
        results.append((name, outcome(getattr(window, name), *args)))
        results.append(("len", len(window)))
    return results


def clamp64(value: int) -> int:
    return min(max(value, INT64_MIN), INT64_MAX)


@st.composite
def window_ops(draw: st.DrawFn, *, monotonic: bool) -> tuple[int, int, list[tuple[Any, ...]]]:
    """A window's size, and calls to it. With ``monotonic`` now never goes
    back; otherwise it also steps back (to around earlier times, often just
    before the oldest start) and syncs logs whose starts sit on the edges."""
    max_jobs = draw(st.integers(min_value=1, max_value=8))
    window_ms = draw(st.sampled_from([1, 10, 1000]) | st.integers(1, INT64_MAX))
    now = draw(st.integers(0, 2**45) | st.integers(INT64_MIN, INT64_MAX))
    latest, seen = now, [now]
    ops: list[tuple[Any, ...]] = []
    for _ in range(draw(st.integers(0, 40))):
        if not monotonic and draw(st.booleans()):
            back = st.integers(0, 2 * window_ms).map(lambda b, now=now: now - b)
            near = st.tuples(st.sampled_from(seen), st.sampled_from([-1, 0, 1]))
            now = clamp64(draw(back | near.map(sum)))
        else:
            step = st.sampled_from([0, 1, window_ms // 2, window_ms]) | st.integers(
                0, 2 * window_ms
            )
            now = clamp64(now + draw(step))
        latest = max(latest, now)
        seen.append(now)
        kind = draw(st.sampled_from(["record", "record", "allowed", "opens_at", "sync"]))
        if kind == "record":
            ops.append(("record", now, draw(st.integers(0, max_jobs + 2))))
        elif kind == "sync" and not monotonic:
            edge = latest - window_ms  # a start here has just left the window
            spread = st.integers(clamp64(latest - 2 * window_ms), clamp64(latest + 2))
            edges = st.sampled_from([clamp64(edge), clamp64(edge + 1), latest, *seen])
            ops.append(("sync", draw(st.lists(spread | edges, max_size=max_jobs + 3))))
        elif kind in ("allowed", "opens_at"):
            ops.append((kind, now))
    return max_jobs, window_ms, ops


@given(window_ops(monotonic=True))
def test_native_pure_and_the_model_agree_on_a_clock_that_only_goes_forward(
    case: tuple[int, int, list[tuple[Any, ...]]],
) -> None:
    # Given a window and calls at non-decreasing times, recording 0 or more starts
    max_jobs, window_ms, ops = case

    # When each implementation and the brute-force model make the same calls
    native = run_ops(_fast.SlidingWindow(max_jobs, window_ms), ops)
    pure = run_ops(_fast_py.SlidingWindow(max_jobs, window_ms), ops)
    model = run_ops(WindowModel(max_jobs, window_ms), ops)

    # Then every allowed / opens_at / len answer is the same
    assert native == pure == model


@given(window_ops(monotonic=False))
def test_native_pure_and_the_model_agree_when_the_clock_steps_back_and_redis_syncs(
    case: tuple[int, int, list[tuple[Any, ...]]],
) -> None:
    # Given calls whose time jumps back and forth, and logs read from Redis
    max_jobs, window_ms, ops = case

    # When each implementation and the model make the same calls
    native = run_ops(_fast.SlidingWindow(max_jobs, window_ms), ops)
    pure = run_ops(_fast_py.SlidingWindow(max_jobs, window_ms), ops)
    model = run_ops(WindowModel(max_jobs, window_ms), ops)

    # Then they still agree (opens_at may pass 2**63 - 1: it is a Python int)
    assert native == pure == model


def test_a_window_counts_starts_and_opens_when_the_oldest_leaves(fast_impl: ModuleType) -> None:
    # Given 3 starts per second
    window = fast_impl.SlidingWindow(3, 1000)
    assert (window.allowed(0), window.opens_at(0), len(window)) == (3, 0, 0)

    # When 2 start at 100 ms and 1 at 400 ms
    window.record(100, 2)
    window.record(400, 1)

    # Then it is full until the first two leave, at 1100 ms
    assert (window.allowed(500), window.opens_at(500), len(window)) == (0, 1100, 3)
    assert window.allowed(1099) == 0
    assert (window.allowed(1100), window.opens_at(1100), len(window)) == (2, 1100, 1)
    assert window.opens_at(1400) == 1400 and len(window) == 0


def test_sync_replaces_the_log_with_redis_starts(fast_impl: ModuleType) -> None:
    # Given a window that saw time 5000 and recorded nothing
    window = fast_impl.SlidingWindow(2, 1000)
    assert window.allowed(5000) == 2

    # When Redis says other workers started jobs at these times (any order)
    window.sync([4800, 3000, 4500, 4900])

    # Then the expired one is dropped and only the newest 2 are kept
    assert (len(window), window.allowed(5000), window.opens_at(5000)) == (2, 0, 5800)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((0, 1000), "max_jobs must be at least 1, got 0"),
        ((-5, 1000), "max_jobs must be at least 1, got -5"),
        ((1, 0), "window_ms must be at least 1, got 0"),
        ((2**63, 1000), "max_jobs must be at most 9223372036854775807, got 9223372036854775808"),
        ((1, 2**64), "window_ms must be at most 9223372036854775807, got 18446744073709551616"),
    ],
)
def test_a_window_refuses_bad_sizes(
    fast_impl: ModuleType, args: tuple[int, int], error: str
) -> None:
    with pytest.raises(ValueError, match=f"^{error}$"):
        fast_impl.SlidingWindow(*args)


def test_record_refuses_a_negative_count_and_changes_nothing(fast_impl: ModuleType) -> None:
    window = fast_impl.SlidingWindow(2, 1000)
    with pytest.raises(ValueError, match=r"^count must be at least 0, got -1$"):
        window.record(10, -1)
    assert len(window) == 0 and window.allowed(0) == 2


@pytest.mark.parametrize(
    "args", [(0, 1), (1, 0), (1.5, 10), (10, "1"), (None, 10), (True, 1), (2**63, 1)]
)
def test_native_and_pure_validate_window_sizes_alike(args: tuple[Any, Any]) -> None:
    # When a window is built with odd sizes
    native, pure = outcome(_fast.SlidingWindow, *args), outcome(_fast_py.SlidingWindow, *args)

    # Then both refuse it with the same error, or both take it as the same sizes
    if native[0] == "raised" or pure[0] == "raised":
        assert native == pure
    else:
        assert (native[1].max_jobs, native[1].window_ms) == (pure[1].max_jobs, pure[1].window_ms)
