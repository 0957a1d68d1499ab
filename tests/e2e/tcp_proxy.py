"""A TCP proxy that can freeze or cut the path to a real server (faults).

Used to put a real PostgreSQL (or Redis) "down" for one test without touching
the machine's server, which other tests and processes share:

- ``pause()``: bytes stop flowing both ways, sockets stay open, new
  connections are accepted and then hang: what a frozen database host, a
  failover in progress or a black-holed network looks like to a client (its
  queries block; nothing fails until its own timeout).
- ``resume()``: everything held is delivered, in order, and flow continues.
- ``cut()``: every open connection is closed at once (a server restart or a
  failover that drops sessions); new connections work.

It runs its own event loop on a thread, so a test process can drive it while
the servers under test run in other processes.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, *, listen_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.listen_host = listen_host
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._flowing: asyncio.Event | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections_accepted = 0

    # -- control (any thread) ---------------------------------------------------

    def start(self) -> TcpProxy:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="tcp-proxy", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("tcp proxy did not start")
        return self

    def pause(self) -> None:
        self._call(lambda: self._flowing.clear())  # type: ignore[union-attr]

    def resume(self) -> None:
        self._call(lambda: self._flowing.set())  # type: ignore[union-attr]

    def cut(self) -> None:
        def close_all() -> None:
            for writer in list(self._writers):
                _abort(writer)
            self._writers.clear()

        self._call(close_all)

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return
        self.cut()

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), loop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = None

    @property
    def url_host_port(self) -> str:
        return f"{self.listen_host}:{self.port}"

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- the loop thread ----------------------------------------------------------

    def _call(self, fn: Any) -> None:
        loop = self._loop
        if loop is None:
            raise RuntimeError("tcp proxy not started")
        done = threading.Event()

        def run() -> None:
            try:
                fn()
            finally:
                done.set()

        loop.call_soon_threadsafe(run)
        if not done.wait(10):
            raise RuntimeError("tcp proxy did not answer")

    def _run(self, ready: threading.Event) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._flowing = asyncio.Event()
        self._flowing.set()

        async def listen() -> None:
            self._server = await asyncio.start_server(self._accept, self.listen_host, 0)
            self.port = self._server.sockets[0].getsockname()[1]

        loop.run_until_complete(listen())
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections_accepted += 1
        self._writers.add(client_writer)
        assert self._flowing is not None
        try:
            await self._flowing.wait()  # a paused proxy accepts, then hangs the handshake
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            self._writers.discard(client_writer)
            _abort(client_writer)
            return
        if client_writer.is_closing():  # cut while it waited
            _abort(server_writer)
            return
        self._writers.add(server_writer)
        await asyncio.gather(
            self._pipe(client_reader, server_writer, client_writer),
            self._pipe(server_reader, client_writer, server_writer),
        )

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, other: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                await self._flowing.wait()
                if writer.is_closing():
                    break
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in (writer, other):
                self._writers.discard(w)
                _abort(w)


def _abort(writer: asyncio.StreamWriter) -> None:
    transport = writer.transport
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            # RST, not FIN: the peer sees the connection reset, as after a crash.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        except OSError:
            pass
    transport.abort()
