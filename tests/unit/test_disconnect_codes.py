"""A close frame without a status code (daphne reports code None) is 1005, not a crash."""

from __future__ import annotations

from typing import Any

import pytest
from channels.db import database_sync_to_async

from presence.models import PresenceSession

pytestmark = pytest.mark.django_db(transaction=True)


async def test_a_close_without_a_status_code_is_recorded_as_1005(runtime: Any, connect: Any, caplog: Any) -> None:
    # What Node's `ws` and browsers send on ws.close() (the y-websocket provider's destroy()).
    client = await connect("nocode", userId="a")
    caplog.set_level("INFO", logger="dorm.rooms")
    await client.ws.send_input({"type": "websocket.disconnect", "code": None})
    await client.ws.wait(1)
    await runtime.presence_service.flush_ledger()
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    rows = await database_sync_to_async(lambda: list(PresenceSession.objects.filter(room="nocode")))()
    assert [r.close_code for r in rows] == [1005]
