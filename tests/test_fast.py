"""The native hot path and its pure-Python twin: same names, same results.

Two kinds of test: each implementation (the ``fast_impl`` fixture) against a
model of the encoding, and the two implementations against each other on
generated input, including input they must reject.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sandboxq import _fast, _fast_py, fast

FIXTURE_OK = settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)

JSON_FIELDS = ("data", "result", "progress", "backoff", "children")
INT_FIELDS = (
    "priority",
    "attempts",
    "attempts_made",
    "stalls",
    "retries",
    "pending",
    "seq",
    "kc_count",
    "kf_count",
)
SECONDS_FIELDS = ("created_at", "started_at", "finished_at", "timeout", "kc_age", "kf_age")
KNOWN = {*JSON_FIELDS, *INT_FIELDS, *SECONDS_FIELDS}

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
        value = draw(json_values)
        raw[name.encode()], expected[name] = orjson.dumps(value), value
    for name in draw(st.lists(st.sampled_from(INT_FIELDS), unique=True)):
        value = draw(st.integers(min_value=-(2**63), max_value=2**63))
        raw[name.encode()], expected[name] = str(value).encode(), value
    for name in draw(st.lists(st.sampled_from(SECONDS_FIELDS), unique=True)):
        millis = draw(st.integers(min_value=0, max_value=2**53))
        raw[name.encode()], expected[name] = str(millis).encode(), millis / 1000
    for name, value in draw(st.dictionaries(unknown_names, st.text(), max_size=5)).items():
        raw[name.encode()], expected[name] = value.encode(), value
    return raw, expected


def flat(mapping: dict[bytes, bytes]) -> list[bytes]:
    return [item for pair in mapping.items() for item in pair]


def outcome(func: Any, *args: Any) -> tuple[str, Any]:
    """What a call did: its result, or its exception's type and message."""
    try:
        return ("returned", func(*args))
    except Exception as exc:
        return ("raised", (type(exc), str(exc)))


# -- the selector -------------------------------------------------------------
def test_the_selector_honours_sandboxq_no_extensions() -> None:
    # Given the environment this test run started with
    pure = os.environ.get("SANDBOXQ_NO_EXTENSIONS", "") not in ("", "0")

    # Then the selected implementation is the one it asks for
    expected = "pure" if pure else "native"
    assert expected == fast.IMPLEMENTATION
    chosen = _fast_py if pure else _fast
    for name in ("dump_json", "decode_job_flat", "decode_job_mapping", "decode_fetched"):
        assert getattr(fast, name) is getattr(chosen, name)


def test_both_implementations_know_the_same_fields() -> None:
    # Given the two field tables
    # Then the field tables match each other and these tests' idea of them
    assert _fast.FIELD_KINDS == _fast_py.FIELD_KINDS
    assert {f.decode() for f in _fast_py.FIELD_KINDS} == KNOWN


# -- each implementation against the model ------------------------------------
@FIXTURE_OK
@given(job_hashes())
def test_decode_job_mapping_decodes_every_field(
    fast_impl: ModuleType, case: tuple[dict[bytes, bytes], dict[str, Any]]
) -> None:
    # Given a job hash as HGETALL returns it
    raw, expected = case

    # When it is decoded
    decoded = fast_impl.decode_job_mapping(raw)

    # Then JSON fields are values, counters ints, times seconds, the rest text
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


def test_times_are_seconds_and_counters_are_ints(fast_impl: ModuleType) -> None:
    # Given stored milliseconds and counters
    raw = {b"created_at": b"1500", b"timeout": b"30000", b"attempts": b"3", b"name": b"r\xc3\xa9"}

    # When decoded
    decoded = fast_impl.decode_job_mapping(raw)

    # Then times are float seconds, counters ints, text decoded as UTF-8
    assert decoded == {"created_at": 1.5, "timeout": 30.0, "attempts": 3, "name": "ré"}
    assert type(decoded["created_at"]) is float and type(decoded["attempts"]) is int


@FIXTURE_OK
@given(json_values, st.text(min_size=1, max_size=20))
def test_dump_json_is_orjson_within_the_limit(fast_impl: ModuleType, value: Any, what: str) -> None:
    # Given a JSON value
    expected = orjson.dumps(value)

    # When it is dumped with a limit it fits exactly
    dumped = fast_impl.dump_json(value, what, len(expected))

    # Then the bytes are orjson's, and they load back to the value
    assert dumped == expected
    assert orjson.loads(dumped) == value


@pytest.mark.parametrize(
    ("value", "type_name"),
    [({1, 2}, "set"), (object(), "object"), (b"raw", "bytes"), (1j, "complex"), ([1, {2}], "set")],
)
def test_dump_json_of_a_non_json_value_is_a_type_error_naming_the_type(
    fast_impl: ModuleType, value: Any, type_name: str
) -> None:
    # When a value JSON cannot hold is dumped
    # Then the error says what was being dumped and which type failed
    with pytest.raises(
        TypeError, match=rf"^data of job 'x' is not JSON-serializable: .*{type_name}"
    ):
        fast_impl.dump_json(value, "data of job 'x'", 1_000)


def test_dump_json_over_the_limit_is_a_value_error_naming_size_and_limit(
    fast_impl: ModuleType,
) -> None:
    # Given a value of 12 bytes as JSON
    value = "a" * 10

    # When the limit is one byte short
    # Then the error gives the size and the limit
    with pytest.raises(ValueError) as raised:
        fast_impl.dump_json(value, "data of job 'x'", 11)
    assert str(raised.value) == (
        "data of job 'x' is 12 bytes as JSON, over the limit of 11 bytes (max_payload_bytes)"
    )
    # and at the limit it passes
    assert fast_impl.dump_json(value, "data of job 'x'", 12) == b'"aaaaaaaaaa"'


@pytest.mark.parametrize("func", ["decode_job_flat", "decode_fetched"])
def test_an_odd_number_of_items_is_refused(fast_impl: ModuleType, func: str) -> None:
    # Given a flat list missing its last value
    # When it is decoded
    # Then it is refused rather than silently cut short
    with pytest.raises(ValueError, match="got 3 items"):
        getattr(fast_impl, func)([b"name", b"x", b"data"])


# -- native against pure, directly --------------------------------------------
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
    # Given a hash of arbitrary bytes: bad JSON, non-numeric counters, bad UTF-8 ...
    # When both implementations decode it
    # Then both return the same fields, or raise the same error and message
    assert outcome(_fast.decode_job_mapping, raw) == outcome(_fast_py.decode_job_mapping, raw)
    assert outcome(_fast.decode_job_flat, flat(raw)) == outcome(_fast_py.decode_job_flat, flat(raw))


@given(
    json_values | st.sets(st.integers(), max_size=2) | st.binary(max_size=3),
    st.integers(min_value=0, max_value=64),
)
def test_native_and_pure_dump_json_identically(value: Any, max_bytes: int) -> None:
    # Given a value that may or may not be JSON, and a limit it may exceed
    # When both implementations dump it
    # Then both give the same bytes, or the same TypeError / ValueError message
    assert outcome(_fast.dump_json, value, "data of job 'x'", max_bytes) == outcome(
        _fast_py.dump_json, value, "data of job 'x'", max_bytes
    )
