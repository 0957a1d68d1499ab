"""Room kinds by name (``DORM["KINDS"]`` maps names to classes)."""

from __future__ import annotations

from functools import cache

from django.utils.module_loading import import_string

from rooms.conf import dorm_settings
from rooms.kinds.base import RoomKind


class UnknownKind(LookupError):
    pass


@cache
def _load(path: str) -> type[RoomKind]:
    cls = import_string(path)
    if not (isinstance(cls, type) and issubclass(cls, RoomKind)):
        raise TypeError(f"{path} is not a RoomKind")
    return cls


def kind_class(name: str) -> type[RoomKind]:
    try:
        path = dorm_settings.KINDS[name]
    except KeyError:
        raise UnknownKind(name) from None
    return _load(path)


def kind_names() -> list[str]:
    return sorted(dorm_settings.KINDS)
