"""What presence found out, for other apps to react to.

All are sent with ``sender=None`` and keyword arguments only, from whatever
thread runs the sweep (a database thread or a Celery worker): receivers may
use the database.
"""

from __future__ import annotations

from django.dispatch import Signal

# process, last_beat: a process stopped beating; its sockets are gone since
# its last beat (its ledger sessions were just closed at that time).
process_gone = Signal()
