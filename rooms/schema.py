"""Payload schemas for room kinds: small, strict, fast validators.

A room kind declares a schema per message type; the actor runs it before the
message gets a seq, so invalid data never reaches the log. Every validator
raises :class:`Invalid` with a short human detail (sent to the client as
``invalid_message``'s ``detail``) and never echoes the payload back.

Numbers are the usual trap: JSON allows ``1e300`` and huge integers, Python
allows ``NaN``; bounds are explicit here. ``bool`` is excluded from numbers
(Python's ``True`` is an ``int``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

# Defaults for free-form JSON values: deep or wide payloads cost every client.
DEFAULT_MAX_DEPTH = 16
DEFAULT_MAX_KEYS = 256
DEFAULT_MAX_ITEMS = 4096
DEFAULT_MAX_STRING_CHARS = 16 * 1024
DEFAULT_NUMBER_BOUND = 1e6


class Invalid(ValueError):
    """The payload does not match the schema; ``str(exc)`` is the detail."""


class Schema:
    def validate(self, value: Any, path: str = "payload") -> None:
        raise NotImplementedError


def _check_number(value: int | float, lo: float, hi: float, path: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise Invalid(f"{path}: numbers must be finite")
    if not lo <= value <= hi:
        raise Invalid(f"{path}: number out of range [{lo:g}, {hi:g}]")


class Json(Schema):
    """Any JSON value within bounds on depth, width, string length and numbers."""

    def __init__(
        self,
        *,
        number_bound: float = DEFAULT_NUMBER_BOUND,
        max_depth: int = DEFAULT_MAX_DEPTH,
        max_keys: int = DEFAULT_MAX_KEYS,
        max_items: int = DEFAULT_MAX_ITEMS,
        max_string_chars: int = DEFAULT_MAX_STRING_CHARS,
        object_only: bool = False,
    ) -> None:
        self.number_bound = number_bound
        self.max_depth = max_depth
        self.max_keys = max_keys
        self.max_items = max_items
        self.max_string_chars = max_string_chars
        self.object_only = object_only

    def validate(self, value: Any, path: str = "payload") -> None:
        if self.object_only and not isinstance(value, dict):
            raise Invalid(f"{path}: must be an object")
        self._walk(value, path, 0)

    def _walk(self, value: Any, path: str, depth: int) -> None:
        if depth > self.max_depth:
            raise Invalid(f"{path}: nested deeper than {self.max_depth}")
        kind = type(value)
        if kind is dict:
            if len(value) > self.max_keys:
                raise Invalid(f"{path}: more than {self.max_keys} keys")
            for key, item in value.items():
                if len(key) > self.max_string_chars:
                    raise Invalid(f"{path}: key longer than {self.max_string_chars} characters")
                self._walk(item, path, depth + 1)
        elif kind is list:
            if len(value) > self.max_items:
                raise Invalid(f"{path}: more than {self.max_items} items")
            for item in value:
                self._walk(item, path, depth + 1)
        elif kind is str:
            if len(value) > self.max_string_chars:
                raise Invalid(f"{path}: string longer than {self.max_string_chars} characters")
        elif kind is int or kind is float:
            bound = self.number_bound
            _check_number(value, -bound, bound, path)
        elif value is None or kind is bool:
            pass
        else:  # pragma: no cover - orjson only produces the types above
            raise Invalid(f"{path}: not a JSON value")


class Str(Schema):
    def __init__(self, min_chars: int = 0, max_chars: int = 1024) -> None:
        self.min_chars = min_chars
        self.max_chars = max_chars

    def validate(self, value: Any, path: str = "payload") -> None:
        if type(value) is not str:
            raise Invalid(f"{path}: must be a string")
        if not self.min_chars <= len(value) <= self.max_chars:
            raise Invalid(f"{path}: length must be {self.min_chars}..{self.max_chars} characters")


class Int(Schema):
    def __init__(self, minimum: int = -(2**53), maximum: int = 2**53) -> None:
        self.minimum = minimum
        self.maximum = maximum

    def validate(self, value: Any, path: str = "payload") -> None:
        if type(value) is not int:
            raise Invalid(f"{path}: must be an integer")
        _check_number(value, self.minimum, self.maximum, path)


class Num(Schema):
    def __init__(self, minimum: float = -DEFAULT_NUMBER_BOUND, maximum: float = DEFAULT_NUMBER_BOUND) -> None:
        self.minimum = minimum
        self.maximum = maximum

    def validate(self, value: Any, path: str = "payload") -> None:
        if type(value) not in (int, float):
            raise Invalid(f"{path}: must be a number")
        _check_number(value, self.minimum, self.maximum, path)


class Bool(Schema):
    def validate(self, value: Any, path: str = "payload") -> None:
        if type(value) is not bool:
            raise Invalid(f"{path}: must be true or false")


class Obj(Schema):
    """An object with known fields; unknown keys are refused unless ``extra``."""

    def __init__(
        self,
        fields: Mapping[str, Schema] | None = None,
        *,
        required: tuple[str, ...] | None = None,
        extra: Schema | None = None,
    ) -> None:
        self.fields = dict(fields or {})
        self.required = tuple(self.fields) if required is None else required
        self.extra = extra

    def validate(self, value: Any, path: str = "payload") -> None:
        if type(value) is not dict:
            raise Invalid(f"{path}: must be an object")
        for name in self.required:
            if name not in value:
                raise Invalid(f"{path}.{name}: required")
        for key, item in value.items():
            schema = self.fields.get(key)
            if schema is None:
                if self.extra is None:
                    raise Invalid(f"{path}: unknown field {key[:32]!r}")
                schema = self.extra
            schema.validate(item, f"{path}.{key[:32]}")


class Nothing(Schema):
    """No payload: absent, ``null`` or ``{}``."""

    def validate(self, value: Any, path: str = "payload") -> None:
        if value is not None and value != {}:
            raise Invalid(f"{path}: this message takes no payload")


class Optional(Schema):
    """``None`` (payload absent) or the inner schema."""

    def __init__(self, inner: Schema) -> None:
        self.inner = inner

    def validate(self, value: Any, path: str = "payload") -> None:
        if value is not None:
            self.inner.validate(value, path)
