"""Payload validators: bounds on numbers, depth, width and strings."""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rooms.schema import Int, Invalid, Json, Nothing, Num, Obj, Optional, Str

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=30,
)


def _numbers(value: Any) -> list[float]:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return []
    if isinstance(value, (int, float)):
        return [value]
    items = value.values() if isinstance(value, dict) else value
    return [n for item in items for n in _numbers(item)]


@settings(max_examples=300)
@given(json_values)
def test_json_accepts_exactly_the_values_with_finite_bounded_numbers(value: Any) -> None:
    ok = all(math.isfinite(n) and abs(n) <= 1e6 for n in _numbers(value))
    try:
        Json(number_bound=1e6).validate(value)
        accepted = True
    except Invalid:
        accepted = False
    assert accepted == ok


@pytest.mark.parametrize(
    ("schema", "value"),
    [
        (Json(max_depth=2), {"a": {"b": {"c": 1}}}),
        (Json(max_keys=2), {"a": 1, "b": 2, "c": 3}),
        (Json(max_items=2), [1, 2, 3]),
        (Json(max_string_chars=3), "abcd"),
        (Json(object_only=True), [1]),
        (Str(1, 3), ""),
        (Str(1, 3), 5),
        (Int(0, 10), 11),
        (Int(0, 10), True),
        (Int(0, 10), 1.0),
        (Num(), float("nan")),
        (Num(), 1e300),
        (Obj({"a": Int()}), {}),
        (Obj({"a": Int()}), {"a": 1, "b": 2}),
        (Obj({"a": Int()}), None),
        (Nothing(), {"a": 1}),
        (Optional(Int()), "x"),
    ],
)
def test_invalid_values_are_refused_with_a_detail(schema: Any, value: Any) -> None:
    with pytest.raises(Invalid) as excinfo:
        schema.validate(value)
    assert str(excinfo.value).startswith("payload")


@pytest.mark.parametrize(
    ("schema", "value"),
    [
        (Json(), {"a": [1, 2.5, "x", None, True]}),
        (Str(1, 3), "abc"),
        (Int(0, 10), 10),
        (Num(), -1e6),
        (Obj({"a": Int()}, required=()), {}),
        (Obj({}, extra=Str()), {"k": "v"}),
        (Nothing(), None),
        (Nothing(), {}),
        (Optional(Int()), None),
    ],
)
def test_valid_values_pass(schema: Any, value: Any) -> None:
    schema.validate(value)


def test_the_detail_never_echoes_the_value() -> None:
    secret = "s3cr3t-" + "x" * 100
    with pytest.raises(Invalid) as excinfo:
        Obj({"a": Int()}).validate({"a": secret})
    assert secret not in str(excinfo.value)
    assert orjson.dumps(str(excinfo.value))
