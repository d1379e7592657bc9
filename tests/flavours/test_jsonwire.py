"""`jsonwire.string`, `jsonwire.text` and `jsonwire.loads` go through orjson, and must answer as
`json` does (the module's docstring says where they may not): held to `json` on
random values, the edges orjson refuses among them."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import jsonwire


def reference(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


# Every string, lone surrogates and control characters among them; integers up to
# and past 64 bits; keys that are not strings (json writes them as strings).
TEXTS = st.text() | st.sampled_from(["\ud800", "a\udfffb", "\x00", "\u2028", '"\\', "\x7f"])
LEAVES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1])
    | TEXTS
)
KEYS = TEXTS | st.integers(-5, 5) | st.booleans() | st.none()
VALUES = st.recursive(
    LEAVES,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(KEYS, inner, max_size=5),
    max_leaves=25,
)


@settings(max_examples=5000, deadline=None)
@given(TEXTS)
def test_a_string_is_written_as_dumps_writes_it(value: str) -> None:
    assert jsonwire.string(value) == reference(value)
    try:
        expected = reference(value).encode()
    except UnicodeEncodeError:
        # A lone surrogate has no UTF-8: json's text cannot be sent either.
        with pytest.raises(UnicodeEncodeError):
            jsonwire.text(value)
        return
    assert jsonwire.text(value) == expected


@settings(max_examples=3000, deadline=None)
@given(VALUES.filter(lambda value: reference(value) is not None))
def test_read_as_json_reads_it(value: Any) -> None:
    for text in (
        json.dumps(value),  # ASCII escapes, lone surrogates and all
        json.dumps(value, ensure_ascii=False),  # raw non-ASCII (lone surrogates raw too)
    ):
        assert _same(jsonwire.loads(text), json.loads(text))


def _same(read: Any, expected: Any) -> bool:
    """Equal, but for integers past 64 bits, which orjson reads as floats."""
    if isinstance(expected, int) and not isinstance(expected, bool) and abs(expected) >= 2**63:
        return read == expected or (isinstance(read, float) and read == float(expected))
    if isinstance(expected, list):
        return (
            isinstance(read, list)
            and len(read) == len(expected)
            and all(_same(a, b) for a, b in zip(read, expected, strict=True))
        )
    if isinstance(expected, dict):
        return (
            isinstance(read, dict)
            and read.keys() == expected.keys()
            and all(_same(read[key], expected[key]) for key in expected)
        )
    return type(read) is type(expected) and read == expected


@settings(max_examples=5000, deadline=None)
@given(
    st.text(alphabet=st.sampled_from('{}[]":,0123456789.eE+-tfrunlaNIy \\/u\t\nabc'), max_size=30)
)
def test_text_json_cannot_read_is_refused_as_json_refuses_it(text: str) -> None:
    try:
        expected = json.loads(text)
    except ValueError:
        with pytest.raises(ValueError):
            jsonwire.loads(text)
        return
    except RecursionError:
        return
    assert _same(jsonwire.loads(text), expected) or (
        isinstance(expected, float) and math.isnan(expected)
    )


def test_the_edges_orjson_refuses_are_read_by_json() -> None:
    assert jsonwire.loads('{"a":"\\ud800"}') == {"a": "\ud800"}
    assert math.isnan(jsonwire.loads("NaN"))
    assert jsonwire.loads("[Infinity, -Infinity, 1e400]") == [math.inf, -math.inf, math.inf]
    assert jsonwire.loads('"\\ud83d\\ude00"') == "😀"  # a pair joined, as json joins it


def test_nesting_too_deep_is_a_value_error_never_a_recursion_error() -> None:
    shallow = "[" * 500 + "]" * 500
    assert jsonwire.loads(shallow) == json.loads(shallow)
    for depth in (1_025, 100_000):  # past orjson's bound (1,024) and json's
        with pytest.raises(ValueError, match="nested too deeply"):
            jsonwire.loads("[" * depth + "]" * depth)


def _orjson_refuses(value: Any) -> bool:
    """A lone surrogate, an integer past 64 bits or a key that is not a string, anywhere."""
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, bool | float) or value is None:
        return False
    if isinstance(value, int):
        return not -(2**63) <= value <= 2**64 - 1
    if isinstance(value, list):
        return any(map(_orjson_refuses, value))
    assert isinstance(value, dict)
    return any(
        not isinstance(key, str) or _orjson_refuses(key) or _orjson_refuses(item)
        for key, item in value.items()
    )


@settings(max_examples=5000, deadline=None)
@given(VALUES)
def test_plain_writes_what_dumps_writes_or_says_it_cannot(value: Any) -> None:
    text = jsonwire.plain(value)
    if _orjson_refuses(value):
        assert text is None
    else:
        assert text == reference(value)


BODIES = st.recursive(
    LEAVES | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(KEYS, inner, max_size=5),
    max_leaves=25,
)


@settings(max_examples=3000, deadline=None)
@given(BODIES)
def test_a_request_body_reads_back_as_what_json_writes(value: Any) -> None:
    # Not byte for byte (a float's exponent, non-ASCII unescaped), but the same JSON
    # to any reader; what orjson refuses is written by json itself.
    written = jsonwire.body(value)
    assert isinstance(written, bytes)
    assert json.loads(written) == json.loads(json.dumps(value))
    if _orjson_refuses(value):
        assert written == json.dumps(value).encode()


def test_a_request_body_nested_past_writing_raises_as_json_does() -> None:
    nested: Any = []
    for _ in range(300):  # past orjson's bound (254), within json's: json writes it
        nested = [nested]
    assert jsonwire.body(nested) == json.dumps(nested).encode()
    for _ in range(100_000):
        nested = [nested]
    with pytest.raises(RecursionError):
        jsonwire.body(nested)


def typed(value: Any) -> Any:
    """`value` with each leaf's type beside it: 1 and 1.0 and True differ."""
    if isinstance(value, dict):
        return {(type(k).__name__, k): typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [typed(v) for v in value]
    if isinstance(value, float) and value == 0:
        return ("float", math.copysign(1, value))
    return (type(value).__name__, value)


@settings(max_examples=3000, deadline=None)
@given(BODIES)
def test_a_copy_is_the_value_again_leaf_for_leaf(value: Any) -> None:
    copied = jsonwire.copy(value)
    assert typed(copied) == typed(value)
    if isinstance(value, dict | list) and value:
        assert copied is not value


def test_a_copy_of_what_orjson_would_change_is_deepcopys() -> None:
    from dataclasses import dataclass

    @dataclass
    class Point:
        x: int

    class Name(str):
        pass

    for value in ({"p": Point(1)}, [Name("n")], {1: "int key"}, [2**70], ["\ud800"]):
        copied = jsonwire.copy(value)
        assert typed(copied) == typed(value) and copied is not value
    nested: Any = []
    for _ in range(300):  # past orjson's 254 levels
        nested = [nested]
    assert jsonwire.copy(nested) == nested
