"""ASGI entry point: HTTP through Django, WebSockets through Dorm's consumer.

Runs under daphne (the default) and uvicorn alike.
"""

import os

if os.environ.get("DORM_TRACEMALLOC"):
    # Memory debugging (bench/idle_memory.py): trace allocations from here on,
    # SIGUSR1 writes a snapshot to $DORM_TRACEMALLOC/<n>.snap.
    import signal
    import tracemalloc

    tracemalloc.start(int(os.environ.get("DORM_TRACEMALLOC_FRAMES", "8")))
    _snaps = iter(range(1_000_000))

    def _dump(signum: int, frame: object) -> None:
        tracemalloc.take_snapshot().dump(os.path.join(os.environ["DORM_TRACEMALLOC"], f"{next(_snaps)}.snap"))

    signal.signal(signal.SIGUSR1, _dump)

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
# Django must be set up before the consumers (and their models) are imported.
django_asgi_app = get_asgi_application()

from rooms.asgi import (  # noqa: E402
    BrowserOriginValidator,
    HandOverProtocolTypeRouter,
    HandOverURLRouter,
    Lifespan,
    NeverCloseWith1011,
    start_with_daphne,
    tune_gc,
)
from rooms.checks import warn_at_start  # noqa: E402
from rooms.routing import websocket_urlpatterns  # noqa: E402

# The server runs no system checks: say it at start if production runs with
# anonymous access on or without a token secret (docs/security.md).
warn_at_start()

# Lifespan outermost: the runtime (and in the embedded mode the alarm
# scheduler) starts with the server, not with its first client.
# Every layer but NeverCloseWith1011 hands the socket's coroutine over
# instead of awaiting it (rooms/asgi.py: no frame per layer per socket).
application = Lifespan(
    HandOverProtocolTypeRouter(
        {
            "http": django_asgi_app,
            "websocket": NeverCloseWith1011(BrowserOriginValidator(HandOverURLRouter(websocket_urlpatterns))),
        }
    )
)
start_with_daphne(os.environ.get("DORM_EVENT_LOOP", ""))
tune_gc(os.environ.get("DORM_GC_THRESHOLDS", ""))

