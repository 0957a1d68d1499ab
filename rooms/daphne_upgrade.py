"""WebSocket upgrades on daphne without twisted's HTTP request.

daphne takes every connection through twisted's HTTP server first: twisted
parses the request line and headers a line at a time into a ``Request``
(a ``Headers`` object, a content buffer, an ``inlineCallbacks`` generator
for daphne's ``process``), daphne validates the headers, then writes the
request back out as bytes and hands them to autobahn, which parses them
again. For a socket that only ever upgrades, that first round is pure cost:
about a tenth of the server's CPU per new connection with token auth
(docs/performance.md, "Connections: the upgrade without twisted's request").

``UpgradeSniffingChannel`` looks at the first bytes a connection sends. When
they hold a whole, plain WebSocket upgrade request (the common case: one
TCP segment), it hands the socket to daphne's WebSocket protocol exactly as
daphne's ``WebRequest.process`` does, with the bytes as received. Anything
else (a plain HTTP request, a head split over several reads, any header or
byte this check is not sure twisted and daphne would take the same way)
goes to twisted's HTTP channel unchanged, which answers it as before,
errors included. So the fast path only ever takes requests that the slow
path would also have upgraded, with the same query string, and autobahn
reads the same request line and headers from its bytes as from daphne's
re-injection: ``tests/unit/test_daphne_upgrade.py`` checks that against
twisted's own parser, daphne's own checks and autobahn's own header parser.

Also let go on a fast upgrade: the HTTP channel (its idle timeout is
cancelled, and it is no longer the transport's producer; on daphne's path it
stays registered, but with its request never finished it ignores every
pause and resume), so an open socket no longer keeps it.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from daphne.http_protocol import HTTPFactory
from daphne.utils import HEADER_NAME_RE
from twisted.protocols.policies import ProtocolWrapper
from twisted.web.http import HTTPChannel, _GenericHTTPChannelProtocol

logger = logging.getLogger("daphne.http_protocol")  # daphne's own messages, under daphne's logger

# Below twisted's line limit (LineReceiver.MAX_LENGTH, 16 KiB) and far below
# its 500 headers: anything bigger goes through twisted, which enforces them.
MAX_HEAD_BYTES = 8192
MAX_HEADER_LINES = 64

# An origin-form target of visible ASCII (daphne answers 400 to a path or
# query that is not ASCII; twisted takes absolute forms too: left to it).
_TARGET = re.compile(rb"/[\x21-\x7e]*")
# Header lines, each with its CRLF: a token name (daphne's HEADER_NAME_RE,
# no space before the colon) and a value of visible ASCII, space and tab: no
# byte twisted (NUL, CR, LF) or daphne (INVALID_HEADER_VALUE_BYTES) would
# refuse, and none it would read otherwise. One match for the whole block.
_HEADER_LINES = re.compile(rb"(?:" + HEADER_NAME_RE.pattern + rb":[\t\x20-\x7e]*\r\n)*")
# A body, or a request for a 100 Continue: twisted's business.
_BODY_HEADERS = frozenset((b"content-length", b"transfer-encoding", b"expect"))


def upgrade_query_string(data: bytes) -> bytes | None:
    """The query string of the WebSocket upgrade request ``data`` begins with,
    or None when it is not one this module takes (twisted then parses it).

    Taken: ``GET <origin-form target> HTTP/1.1``, each header line ``name:
    value`` with a token name (no space before the colon) and a value of
    visible ASCII, space or tab, no name twice (twisted joins repeats with a
    comma, autobahn with ", " and counts them), no body, and an ``Upgrade``
    header whose value is ``websocket`` in any case (daphne's test).
    """
    end = data.find(b"\r\n\r\n")
    if end < 0 or end > MAX_HEAD_BYTES:
        return None
    first = data.find(b"\r\n")
    request_line = data[:first].split(b" ")
    if len(request_line) != 3 or request_line[0] != b"GET" or request_line[2] != b"HTTP/1.1":
        return None
    target = request_line[1]
    if not _TARGET.fullmatch(target):
        return None
    block = data[first + 2 : end + 2]  # the header lines, each with its CRLF
    if block.count(b"\r\n") > MAX_HEADER_LINES or not _HEADER_LINES.fullmatch(block):
        return None
    seen: set[bytes] = set()
    upgrade = None
    for line in block[:-2].split(b"\r\n") if block else ():
        name, _, value = line.partition(b":")
        name = name.lower()
        if name in seen or name in _BODY_HEADERS:
            return None
        seen.add(name)
        if name == b"upgrade":
            upgrade = value.strip(b" \t").lower()
    if upgrade != b"websocket":
        return None
    return target.partition(b"?")[2]


class UpgradeSniffingChannel(HTTPChannel):
    """twisted's HTTP channel that hands a whole WebSocket upgrade in its
    first read straight to daphne's WebSocket protocol."""

    _sniffed = False

    def dataReceived(self, data: bytes) -> None:
        if not self._sniffed:
            self._sniffed = True
            query_string = upgrade_query_string(data)
            if query_string is not None and self._upgrade(data, query_string):
                return
        super().dataReceived(data)

    def _upgrade(self, data: bytes, query_string: bytes) -> bool:
        """daphne's ``WebRequest.process`` for a WebSocket, from the raw bytes."""
        server = self.factory.server
        transport = self.transport
        peer = transport.getPeer()
        protocol = server.ws_factory.buildProtocol(peer)
        if not protocol:
            return False  # twisted's path answers it (daphne: 500)
        protocol._raw_query_string = query_string
        # Let go of this channel: its idle timeout, and its place as the
        # transport's producer (nothing else refers to it once the
        # transport's protocol is the WebSocket one).
        self.setTimeout(None)
        transport.unregisterProducer()
        if isinstance(transport, ProtocolWrapper):
            transport.wrappedProtocol = protocol  # TLS wraps the protocol
        else:
            transport.protocol = protocol
        self.transport = None
        protocol.makeConnection(transport)
        protocol.dataReceived(data)
        logger.debug("Upgraded connection %s to WebSocket", peer)
        return True


def _sniffing_channel_protocol(factory: HTTPFactory) -> _GenericHTTPChannelProtocol:
    # As twisted's _genericHTTPChannelProtocolFactory (the ALPN switch to
    # HTTP/2 stays possible), with the sniffing HTTP/1.1 channel.
    return _GenericHTTPChannelProtocol(UpgradeSniffingChannel())


class UpgradeSniffingHTTPFactory(HTTPFactory):
    """daphne's ``HTTPFactory`` whose HTTP/1.1 channels take WebSocket
    upgrades directly (``UpgradeSniffingChannel``)."""

    protocol = _sniffing_channel_protocol
