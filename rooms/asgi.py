"""ASGI wrappers around the WebSocket application."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlparse

from asgiref.sync import markcoroutinefunction
from channels.routing import ProtocolTypeRouter, URLRouter
from channels.security.websocket import OriginValidator, WebsocketDenier
from django.conf import settings
from django.urls import Resolver404

from rooms.protocol import CloseCode, close_frame
from rooms.runtime.direct_write import close_socket

log = logging.getLogger("dorm.rooms")

Scope = dict[str, Any]

# The layers below hand the socket's coroutine over instead of awaiting it:
# their ``__call__`` is a plain function that returns the next layer's
# coroutine. Channels' layers are ``async def ... return await inner(...)``,
# so each keeps a coroutine frame (200-700 bytes) for a socket's whole life:
# ~1.6 KB of an idle connection's ~22 KiB (docs/performance.md, "Fifth
# round"). Same checks, same errors, raised at the call instead of at the
# first await (every caller awaits the result at once). Each ``__call__`` is
# marked a coroutine function: asgiref and uvicorn take an application whose
# ``__call__`` is not one for an ASGI 2 (double-callable) application.


class HandOverProtocolTypeRouter(ProtocolTypeRouter):
    """Channels' ``ProtocolTypeRouter``, handing over."""

    @markcoroutinefunction
    def __call__(self, scope: Scope, receive: Any, send: Any) -> Any:  # type: ignore[override]
        application = self.application_mapping.get(scope["type"])
        if application is None:
            raise ValueError("No application configured for scope type %r" % scope["type"])
        return application(scope, receive, send)


class HandOverURLRouter(URLRouter):
    """Channels' ``URLRouter`` (4.x) for the outermost router, handing over."""

    @markcoroutinefunction
    def __call__(self, scope: Scope, receive: Any, send: Any) -> Any:  # type: ignore[override]
        path = scope.get("path_remaining", scope.get("path", None))
        if path is None:
            raise ValueError("No 'path' key in connection scope, cannot route URLs")
        if "path_remaining" not in scope:
            root_path = scope.get("root_path", "")
            if root_path and not path.startswith(root_path):
                raise ValueError("No route found for path %r." % path)
            path = path[len(root_path) :]
        path = path.lstrip("/")
        for route in self.routes:
            try:
                match = route.pattern.match(path)
            except Resolver404:
                continue
            if match:
                new_path, args, kwargs = match
                kwargs.update(route.default_args)
                outer = scope.get("url_route", {})
                inner = dict(
                    scope,
                    path_remaining=new_path,
                    url_route={"args": outer.get("args", ()) + args, "kwargs": {**outer.get("kwargs", {}), **kwargs}},
                )
                return route.callback(inner, receive, send)
        if "path_remaining" in scope:
            raise Resolver404("No route found for path %r." % path)
        raise ValueError("No route found for path %r." % path)


class BrowserOriginValidator(OriginValidator):
    """Check the Origin of browsers against ALLOWED_HOSTS; admit clients without one.

    Channels' ``AllowedHostsOriginValidator`` refuses a handshake with no
    Origin header, but mobile apps, bots and servers do not send one (and a
    browser always does, so the check still protects browser sessions).
    """

    def __init__(self, application: Any) -> None:
        # ALLOWED_ORIGINS: browser apps served from other hosts than Dorm's
        # ("https://app.example.com"); Channels matches scheme and port too.
        allowed = list(settings.ALLOWED_HOSTS) + list(getattr(settings, "ALLOWED_ORIGINS", []))
        if settings.DEBUG and not allowed:
            allowed = ["localhost", "127.0.0.1", "[::1]"]
        super().__init__(application, allowed)

    @markcoroutinefunction
    def __call__(self, scope: Scope, receive: Any, send: Any) -> Any:  # type: ignore[override]
        """Channels' ``OriginValidator.__call__``, handing over (see above)."""
        if scope["type"] != "websocket":
            raise ValueError("You cannot use OriginValidator on a non-WebSocket connection")
        parsed_origin = None
        for header_name, header_value in scope.get("headers", []):
            if header_name == b"origin":
                try:
                    parsed_origin = urlparse(header_value.decode("latin1"))
                except UnicodeDecodeError:
                    pass
        if self.valid_origin(parsed_origin):
            return self.application(scope, receive, send)
        return WebsocketDenier()(scope, receive, send)

    def valid_origin(self, parsed_origin: Any) -> bool:
        if parsed_origin is None:
            return True
        return super().valid_origin(parsed_origin)


class NeverCloseWith1011:
    """Outermost guard: an exception never reaches the server.

    daphne answers an application exception with close code 1011, which
    PROTOCOL.md forbids; this closes with 1013 (try again later) instead,
    after the protocol's final ``close`` frame.
    """

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        # `send` is passed through unwrapped: it is the fan-out hot path.
        try:
            await self.application(scope, receive, send)
        except Exception:
            log.exception("websocket application error path=%s", urlparse(scope.get("path", "")).path[:100])
            code = int(CloseCode.TRY_AGAIN_LATER)
            try:
                # Fails harmlessly if the handshake was not accepted yet; the
                # close below then refuses the handshake (HTTP 403).
                await send({"type": "websocket.send", "text": close_frame(code, "internal error")})
            except Exception:
                pass
            try:
                await close_socket(send, code, "internal error")
            except Exception:
                log.debug("could not close after an application error")


def start_runtime() -> None:
    """Create the process's runtime now, on the server's loop: in the embedded
    mode it runs the alarm scheduler, which must not wait for a first client
    (alarms set before a restart fire with nobody connected)."""
    from rooms.runtime.registry import get_runtime

    get_runtime()


def start_server_process(server: str) -> None:
    """What a server process starts with, on its loop (``server`` "daphne":
    its reactor; "lifespan": uvicorn's, or another server's, lifespan): the
    runtime, and the garbage collector's watch (``rooms/runtime/gc_freeze.py``:
    full collections walk only what is new, ``DORM_GC_THAW_SECONDS``). Not on
    a first request: a test process that drives the application directly
    keeps Python's own collector."""
    from rooms.conf import dorm_settings
    from rooms.runtime import gc_freeze

    start_runtime()
    thaw_seconds = dorm_settings.GC_THAW_SECONDS
    if thaw_seconds is None:
        thaw_seconds = gc_freeze.default_thaw_seconds(server)
    gc_freeze.install(float(thaw_seconds))


class Lifespan:
    """ASGI lifespan (uvicorn): start the runtime at server start-up.

    Servers without lifespan (daphne) start it from ``config/asgi.py``; any
    server also starts it on its first request, whatever the scope.
    """

    def __init__(self, application: Any) -> None:
        self.application = application
        self.started = False

    @markcoroutinefunction  # hands over (see the top of this module)
    def __call__(self, scope: Scope, receive: Any, send: Any) -> Any:
        if not self.started:
            self.started = True
            start_runtime()
        if scope["type"] != "lifespan":
            # Handed over, not awaited here: no frame of this layer is held
            # for a socket's whole life (~250 bytes per idle connection).
            return self.application(scope, receive, send)
        return self._lifespan(receive, send)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                from rooms import uvicorn_server

                uvicorn_server.install()  # before the first socket: uvicorn has loaded its protocol by now
                start_server_process("lifespan")  # uvicorn, or another server with lifespan
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


class _Lazy:
    """``func(*args)`` as text, computed only if a log line is actually formatted."""

    __slots__ = ("func", "args")

    def __init__(self, func: Any, *args: Any) -> None:
        self.func = func
        self.args = args

    def __str__(self) -> str:
        return str(self.func(*self.args))

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


def _lazy(func: Any) -> Any:
    def lazy(*args: Any) -> _Lazy:
        return _Lazy(func, *args)

    lazy.lazy_of = func  # type: ignore[attr-defined]
    return lazy


def lazy_autobahn_debug_formatting() -> None:
    """autobahn formats the arguments of its debug log lines whether or not
    debug logging is on: ``pformat`` of its configuration on every connection
    (~3 % of a connection's CPU), and ``hltype``/``hlval`` (an ``inspect``
    check and terminal colours, ~4 us) on every write (``sendData``) and
    handshake step. In its modules those names become lazy: the same text
    when a line is logged, no work when it is not."""
    try:
        from autobahn.twisted import websocket as twisted_websocket
        from autobahn.websocket import protocol
    except ImportError:  # pragma: no cover - daphne requires autobahn
        return
    for module in (protocol, twisted_websocket):
        for name in ("pformat", "hltype", "hlval"):
            func = getattr(module, name, None)
            if func is not None and not hasattr(func, "lazy_of"):
                setattr(module, name, _lazy(func))
    if not getattr(protocol.Timings.__str__, "eager", False):
        from pprint import pformat

        # Its one caller that needs a real string back.
        def timings_text(self: Any) -> str:
            return pformat(self._timings)

        timings_text.eager = True  # type: ignore[attr-defined]
        protocol.Timings.__str__ = timings_text  # type: ignore[method-assign]


def start_with_daphne(event_loop: str = "uvloop") -> None:
    """daphne has no lifespan: start the runtime once its reactor loop runs.

    ``event_loop`` (``DORM_EVENT_LOOP``): "uvloop" (or empty) moves daphne's reactor onto
    uvloop's event loop (asyncio's if uvloop is missing), "asyncio" keeps
    asyncio's own (``daphne_server.install``)."""
    import sys

    if "daphne.server" not in sys.modules:
        return
    lazy_autobahn_debug_formatting()
    from rooms import daphne_server

    # daphne's command line imports the application before it builds its
    # server, so the server it builds is this one.
    daphne_server.install(event_loop)
    from twisted.internet import reactor

    # callLater, not callWhenRunning: the latter runs before the asyncio
    # loop itself is running.
    reactor.callLater(0, start_server_process, "daphne")  # type: ignore[attr-defined]


def tune_gc(setting: str = "") -> None:
    """Freeze what startup allocated (modules, settings, routes: never garbage)
    out of the garbage collector's way; set its thresholds if asked.

    Every collection of the oldest generation walked those ~100,000 objects
    again; frozen, they are skipped. Measured: 700 -> 792 new connections/s
    (docs/performance.md, "Garbage collector"). Raising the thresholds as well
    (50,000/20/100) bought a little more throughput but let each process hold
    more garbage between collections: the 10,000-session leak test saw RSS
    climb 85 MB instead of settling. That garbage was every closed socket's
    protocol, in a cycle through its own ``is_closed`` (now broken:
    ``rooms.daphne_server.ClosedWithoutCycles``); since then the thresholds
    leave RSS flat, and buy nothing measurable either. So Python's defaults
    stay unless ``setting`` (``DORM_GC_THRESHOLDS``, e.g. ``"5000,10,10"``)
    says otherwise.
    """
    import gc

    thresholds: tuple[int, ...] | None = None
    if setting.strip():
        try:
            thresholds = tuple(int(part) for part in setting.split(","))
        except ValueError:
            thresholds = ()
        if len(thresholds) != 3 or thresholds[0] < 1 or min(thresholds) < 0:
            raise ValueError(f"DORM_GC_THRESHOLDS must be three integers such as 700,10,10 (the first positive), not {setting!r}")
    gc.collect()
    gc.freeze()
    if thresholds is not None:
        gc.set_threshold(*thresholds)
