"""JSON values on their way to and from Redis (``sandboxq.payload``), and
running a job from what Redis holds (``execution.run_stored``)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sandboxq import execution
from sandboxq.payload import JSON_FIELDS, dump_json, load_json, with_json_decoded

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(json_values, st.text(min_size=1, max_size=20))
def test_dump_json_is_orjson_within_the_limit(value: Any, what: str) -> None:
    # Given a JSON value
    expected = orjson.dumps(value)

    # When it is dumped with a limit it fits exactly
    dumped = dump_json(value, what, len(expected))

    # Then the bytes are orjson's, and they load back to the value
    assert dumped == expected
    assert load_json(dumped) == value


@pytest.mark.parametrize(
    ("value", "type_name"),
    [({1, 2}, "set"), (object(), "object"), (b"raw", "bytes"), (1j, "complex"), ([1, {2}], "set")],
)
def test_dump_json_of_a_non_json_value_is_a_type_error_naming_the_type(
    value: Any, type_name: str
) -> None:
    # When a value JSON cannot hold is dumped
    # Then the error says what was being dumped and which type failed
    with pytest.raises(
        TypeError, match=rf"^data of job 'x' is not JSON-serializable: .*{type_name}"
    ):
        dump_json(value, "data of job 'x'", 1_000)


def test_dump_json_over_the_limit_is_a_value_error_naming_size_and_limit() -> None:
    # Given a value of 12 bytes as JSON
    value = "a" * 10

    # When the limit is one byte short
    # Then the error gives the size and the limit
    with pytest.raises(ValueError) as raised:
        dump_json(value, "data of job 'x'", 11)
    assert str(raised.value) == (
        "data of job 'x' is 12 bytes as JSON, over the limit of 11 bytes (max_payload_bytes)"
    )
    # and at the limit it passes
    assert dump_json(value, "data of job 'x'", 12) == b'"aaaaaaaaaa"'


def test_a_missing_json_field_loads_as_none() -> None:
    assert load_json(None) is None
    assert load_json(b"null") is None
    assert load_json(b'{"a": [1]}') == {"a": [1]}


def test_with_json_decoded_parses_only_the_json_fields_and_copies() -> None:
    # Given decoded job-hash fields, JSON ones still bytes
    fields = {name: orjson.dumps({"field": name}) for name in JSON_FIELDS}
    fields.update(name="resize", attempts=3, error='{"not": "json field"}')

    # When the JSON fields are decoded
    decoded = with_json_decoded(fields)

    # Then those are values, the rest is untouched, and the input is unchanged
    assert decoded == {
        **{name: {"field": name} for name in JSON_FIELDS},
        "name": "resize",
        "attempts": 3,
        "error": '{"not": "json field"}',
    }
    assert fields["data"] == b'{"field":"data"}'


def test_a_json_field_that_is_not_json_is_kept_as_its_text() -> None:
    # Given fields whose data another writer broke (bad JSON, bad UTF-8)
    fields = {"data": b"{not json", "result": b"\xff\xfe", "progress": b"50"}

    # When decoded for a Job
    decoded = with_json_decoded(fields)

    # Then the readable ones are values, the others their text
    assert decoded == {"data": "{not json", "result": "\ufffd\ufffd", "progress": 50}


def test_run_stored_parses_data_and_children_where_the_handler_runs() -> None:
    # Given a job's data and children's results as Redis holds them
    seen: dict[str, Any] = {}

    def handler(ctx: Any) -> Any:
        seen.update(data=ctx.data, children=ctx.children_results(), retries=ctx.retries)
        return {"ok": True}

    # When it runs
    job = execution.StoredJob("7", "resize", b'{"w": 256}', "q", 0, 2, b'{"q:1": 5}', None)
    result = execution.run_stored(handler, job, lambda *a: None)

    # Then the handler got values, and the result is JSON text
    assert seen == {"data": {"w": 256}, "children": {"q:1": 5}, "retries": 2}
    assert result == execution.Outcome(execution.COMPLETED, '{"ok":true}')


def test_run_stored_fails_a_job_whose_stored_data_is_not_json_without_retries() -> None:
    # Given data that is not JSON (written by something other than sandboxq)
    # When the job runs
    job = execution.StoredJob("7", "resize", b"{oops", "q", 0, 0, None, None)
    result = execution.run_stored(lambda ctx: None, job, lambda *a: None)

    # Then it fails for good, saying why, and the handler never ran
    assert result.kind == execution.UNRECOVERABLE
    assert result.value.startswith("the job's stored data is not valid JSON: ")
