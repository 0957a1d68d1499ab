"""The edges around the runtime: the 1011 guard, logs, admin, health."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.test import Client

from rooms.asgi import NeverCloseWith1011
from rooms.models import Event, Room

pytestmark = pytest.mark.django_db(transaction=True)


async def test_an_application_error_closes_with_1013_never_1011() -> None:
    async def broken(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        raise RuntimeError("bug")

    communicator = WebsocketCommunicator(NeverCloseWith1011(broken), "/ws/x")
    connected, _ = await communicator.connect()
    assert connected
    frame = await communicator.receive_json_from()
    assert frame == {"type": "close", "code": 1013, "reason": "internal error"}
    assert (await communicator.receive_output(1))["code"] == 1013


async def test_logs_carry_metadata_never_payloads(connect: Any, caplog: pytest.LogCaptureFixture) -> None:
    secret = "TOP-SECRET-PAYLOAD-7f3a"
    caplog.set_level(logging.DEBUG, logger="dorm")
    a = await connect("logs", userId="a")
    b = await connect("logs", userId="b")
    await a.send("draw", {"note": secret}, id="s1")
    await a.recv_type("ack")
    await a.send_raw('{"type":"draw","payload":{"note":"' + secret + '","x":1e300}}')
    await a.recv_type("error")
    await a.send_raw("not json " + secret)
    await a.recv_type("error")
    await b.recv_type("draw")
    await b.close()
    await a.close()
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "join room=logs user=a" in text  # metadata is there
    assert secret not in text


def test_admin_lists_rooms_and_shows_the_log_read_only() -> None:
    room = Room.objects.create(slug="adm", kind="whiteboard")
    Event.objects.create(room=room, seq=1, type="draw", user_id="u", payload='{"x":1}', ts=1)
    staff = User.objects.create_superuser("staff", "s@example.com", "pw")
    client = Client()
    assert client.get("/admin/rooms/room/").status_code == 302  # not logged in
    client.force_login(staff)
    assert b"adm" in client.get("/admin/rooms/room/").content
    page = client.get("/admin/rooms/event/")
    assert page.status_code == 200 and b"draw" in page.content
    assert client.get("/admin/rooms/event/add/").status_code == 403


def test_healthz() -> None:
    assert Client().get("/healthz").json() == {"status": "ok"}
