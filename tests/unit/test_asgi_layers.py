"""The ASGI layers in front of the consumer hand the socket's coroutine over.

Each returns the next layer's coroutine instead of awaiting it, so no frame of
its own is held for a socket's life (rooms/asgi.py); the checks and errors are
Channels' (``ProtocolTypeRouter``, ``OriginValidator``, ``URLRouter``,
``as_asgi``). These tests pin both: the coroutine handed back is the inner
application's own, and the routing, the origin check and the errors are the same.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from asgiref.compatibility import is_double_callable
from channels.routing import URLRouter
from django.urls import re_path

from rooms.asgi import BrowserOriginValidator, HandOverProtocolTypeRouter, HandOverURLRouter, Lifespan
from rooms.consumer import RoomConsumer


class Inner:
    """An ASGI application that records the scope it got."""

    def __init__(self) -> None:
        self.scopes: list[dict[str, Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> str:
        self.scopes.append(scope)
        return "inner ran"


def _handed(result: Any, inner: Any) -> bool:
    """``result`` is ``inner``'s own coroutine, not a wrapper's."""
    return inspect.iscoroutine(result) and result.cr_code is type(inner).__call__.__code__


async def _receive() -> dict[str, Any]:
    return {"type": "websocket.connect"}


def _ws(path: str, headers: list[tuple[bytes, bytes]] | None = None) -> dict[str, Any]:
    return {"type": "websocket", "path": path, "headers": headers or []}


def test_asgiref_takes_every_layer_for_a_single_callable_application() -> None:
    inner = Inner()
    for layer in (
        Lifespan(inner),
        HandOverProtocolTypeRouter({"websocket": inner}),
        BrowserOriginValidator(inner),
        HandOverURLRouter([]),
        RoomConsumer.as_asgi(),
    ):
        assert not is_double_callable(layer), layer


async def test_the_url_router_hands_over_the_scope_channels_would_give() -> None:
    ours, theirs = Inner(), Inner()
    handed = HandOverURLRouter([re_path(r"^ws/(?P<room>[^/?]*)/?$", ours)])(_ws("/ws/lobby/"), _receive, None)
    assert _handed(handed, ours)
    assert await handed == "inner ran"
    await URLRouter([re_path(r"^ws/(?P<room>[^/?]*)/?$", theirs)])(_ws("/ws/lobby/"), _receive, None)
    assert ours.scopes == theirs.scopes
    assert ours.scopes[0]["url_route"] == {"args": (), "kwargs": {"room": "lobby"}}


async def test_the_url_router_refuses_an_unknown_path_as_channels_does() -> None:
    routes = [re_path(r"^ws/(?P<room>[^/?]*)/?$", Inner())]
    with pytest.raises(ValueError, match="No route found for path 'other/x'"):
        HandOverURLRouter(routes)(_ws("/other/x"), _receive, None)
    with pytest.raises(ValueError, match="No route found"):
        await URLRouter(routes)(_ws("/other/x"), _receive, None)


async def test_the_origin_check_hands_over_or_denies(settings: Any) -> None:
    settings.ALLOWED_HOSTS = ["dorm.example.com"]
    inner = Inner()
    validator = BrowserOriginValidator(inner)
    for headers in ([(b"origin", b"https://dorm.example.com")], []):  # no Origin: apps, bots, servers
        handed = validator(_ws("/ws/x", headers), _receive, None)
        assert _handed(handed, inner)
        handed.close()
    sent: list[dict[str, Any]] = []
    messages = iter([{"type": "websocket.connect"}, {"type": "websocket.disconnect", "code": 1006}])

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    denied = validator(_ws("/ws/x", [(b"origin", b"https://evil.example.net")]), receive, send)
    assert not _handed(denied, inner)
    await denied
    assert sent == [{"type": "websocket.close"}] and inner.scopes == []
    with pytest.raises(ValueError, match="non-WebSocket"):
        validator({"type": "http", "path": "/"}, _receive, None)


def test_the_type_router_hands_over_and_refuses_unknown_types() -> None:
    inner = Inner()
    router = HandOverProtocolTypeRouter({"websocket": inner})
    handed = router(_ws("/ws/x"), _receive, None)
    assert _handed(handed, inner)
    handed.close()
    with pytest.raises(ValueError, match="No application configured for scope type 'http'"):
        router({"type": "http"}, _receive, None)


def test_lifespan_and_as_asgi_hand_over() -> None:
    inner = Inner()
    handed = Lifespan(inner)(_ws("/ws/x"), _receive, None)
    assert _handed(handed, inner)
    handed.close()
    app = RoomConsumer.as_asgi()
    assert app.consumer_class is RoomConsumer
    consumer_call = app(_ws("/ws/x"), _receive, None)
    assert inspect.iscoroutine(consumer_call) and consumer_call.cr_code is RoomConsumer.__call__.__code__
    consumer_call.close()


def test_uvicorn_takes_every_layer_for_an_asgi3_application() -> None:
    """uvicorn's own check (``interface="auto"``): a plain ``__call__`` would be
    run as an ASGI 2 application and fail every request."""
    from uvicorn.config import Config

    inner = Inner()
    for layer in (Lifespan(inner), HandOverProtocolTypeRouter({"websocket": inner}), BrowserOriginValidator(inner)):
        config = Config(layer)
        config.load()
        assert config.interface == "asgi3", layer
