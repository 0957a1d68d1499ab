"""SIGTERM: hand the rooms over before the server stops.

daphne (Twisted) and uvicorn stop on SIGTERM by cancelling every
application, which would drop queued frames and leave leases to expire.
This handler runs first: :meth:`Runtime.shutdown` finishes queued work,
releases leases and closes sockets with 1001; then the server's own handler
runs as before. Installed when the process's runtime is created, on the
running loop in the main thread (a server process); a no-op elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rooms.runtime.registry import Runtime

log = logging.getLogger("dorm.rooms")

GRACE_SECONDS = 10.0


def install_graceful_shutdown(runtime: Runtime) -> bool:
    if threading.current_thread() is not threading.main_thread():
        return False
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return False
    previous = signal.getsignal(signal.SIGTERM)
    if not callable(previous):
        # Default action (terminate): keep it after our own work.
        previous = None

    def on_sigterm() -> None:
        loop.remove_signal_handler(signal.SIGTERM)
        log.info("SIGTERM: handing rooms over")
        task = loop.create_task(runtime.shutdown(GRACE_SECONDS))
        task.add_done_callback(lambda _t: _then(previous))

    try:
        loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    except (NotImplementedError, RuntimeError, ValueError):
        return False
    return True


def _then(previous: Any) -> None:
    if previous is not None:
        previous(signal.SIGTERM, None)
    else:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.raise_signal(signal.SIGTERM)
