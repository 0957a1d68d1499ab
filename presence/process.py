"""This process's identity for presence and the ledger.

Every live-presence entry and every ledger session records the process that
holds its socket. A process says it is alive by beating (a ``PresenceProcess``
row, and in the distributed mode a Redis key with a TTL); entries and sessions
of a process that stopped beating are cleaned up by the sweep of any other.
"""

from __future__ import annotations

import os
import secrets
import socket

# host:pid:random -- the random part tells a restarted process (same pid in a
# fresh container) from the one that died.
PROCESS_ID = f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(4)}"
