"""ASGI wrappers around the WebSocket application."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlparse

from channels.security.websocket import OriginValidator
from django.conf import settings

from rooms.protocol import CloseCode, close_frame
from rooms.runtime.direct_write import close_socket

log = logging.getLogger("dorm.rooms")

Scope = dict[str, Any]


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


class Lifespan:
    """ASGI lifespan (uvicorn): start the runtime at server start-up.

    Servers without lifespan (daphne) start it from ``config/asgi.py``; any
    server also starts it on its first request, whatever the scope.
    """

    # __call__ is a plain function returning the application's coroutine
    # (asgiref would take a non-async __call__ for an ASGI 2 application).
    _asgi_single_callable = True

    def __init__(self, application: Any) -> None:
        self.application = application
        self.started = False

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


def start_with_daphne() -> None:
    """daphne has no lifespan: start the runtime once its reactor loop runs."""
    import sys

    if "daphne.server" not in sys.modules:
        return
    lazy_autobahn_debug_formatting()
    from rooms import daphne_server

    # daphne's command line imports the application before it builds its
    # server, so the server it builds is this one.
    daphne_server.install()
    from twisted.internet import reactor

    # callLater, not callWhenRunning: the latter runs before the asyncio
    # loop itself is running.
    reactor.callLater(0, start_runtime)  # type: ignore[attr-defined]


def tune_gc(setting: str = "") -> None:
    """Freeze what startup allocated (modules, settings, routes: never garbage)
    out of the garbage collector's way; set its thresholds if asked.

    Every collection of the oldest generation walked those ~100,000 objects
    again; frozen, they are skipped. Measured: 700 -> 792 new connections/s
    (docs/performance.md, "Garbage collector"). Raising the thresholds as well
    (50,000/20/100) bought a little more throughput but let each process hold
    more garbage between collections: the 10,000-session leak test saw RSS
    climb 85 MB instead of settling, so Python's defaults stay unless
    ``setting`` (``DORM_GC_THRESHOLDS``, e.g. ``"5000,10,10"``) says otherwise.
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
