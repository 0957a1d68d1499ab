"""The ops dashboard in a real headless Chromium against a real daphne server:
a staff user logs in, /ops/ renders charts with data drawn in them, and a
screenshot is taken. Fails in CI when Chromium is missing, skips elsewhere."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clients.conftest import CHROMIUM, CHROMIUM_FLAGS
from tests.e2e.client import WsClient, ack_for, of_type, room_name
from tests.e2e.conftest import STARTED
from tests.e2e.server import REPO, DormServer, server_env, start_server

pytestmark = pytest.mark.e2e

PASSWORD = "dashboard-test-password"


def need_chromium() -> None:
    if not Path(CHROMIUM).exists():
        message = f"Chromium not found at {CHROMIUM} (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI must run the dashboard test", pytrace=False)
        pytest.skip(message)


@pytest.fixture(scope="module")
def ops_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DormServer]:
    need_chromium()
    env = {"DORM_BILLING_FLUSH_SECONDS": "0.5", "DORM_HIBERNATE_AFTER_SECONDS": "60"}
    server = start_server("daphne", tmp_path_factory.mktemp("ops"), extra_env=env, name="ops")
    STARTED.append(server)
    try:
        subprocess.run(
            [sys.executable, "manage.py", "shell", "-c",
             "from django.contrib.auth.models import User; "
             f"User.objects.create_user('ops', password='{PASSWORD}', is_staff=True, is_superuser=True)"],
            cwd=REPO, env=server_env(server.db_path, env), check=True, capture_output=True, timeout=120,
        )
        yield server
    finally:
        server.stop()


async def test_ops_dashboard_screenshot_shows_charts(ops_server: DormServer, tmp_path: Path) -> None:
    from playwright.async_api import async_playwright

    s = ops_server
    room = room_name("ops")
    a = await WsClient.open(s.url(room, userId="a"))
    b = await WsClient.open(s.url(room, userId="b"))
    for i in range(30):
        await a.send("draw", {"x": i, "y": i}, id=f"d{i}")
        await a.recv_until(ack_for(f"d{i}"))
        await b.send("ping", {"t": i, "rtt": 5 + i})
    await b.wait_for(of_type("draw"), count=30)
    # Frames in that reach nobody, so the "in" line is not under the
    # deliveries' (the pings are keepalives: not the room's messages).
    for _ in range(10):
        await b.send_raw("not json")
    await b.wait_for(lambda f: f.get("type") == "error", count=10)
    # Wait for the flush: the dashboard reads the database.
    for _ in range(40):
        rows = s.query("SELECT SUM(messages_in) FROM billing_usageminute")
        if rows[0][0] and rows[0][0] >= 40:
            break
        await asyncio.sleep(0.25)

    shot = tmp_path / "ops.png"
    async with async_playwright() as p:
        context = await p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 1100},
        )
        try:
            page = await context.new_page()
            await page.goto(f"http://127.0.0.1:{s.port}/admin/login/?next=/ops/")
            await page.fill("#id_username", "ops")
            await page.fill("#id_password", PASSWORD)
            await page.click("input[type=submit]")
            await page.wait_for_url("**/ops/")
            await page.wait_for_selector("body[data-rendered]")
            assert await page.locator(".uplot").count() == 3
            # Pixels of each series' stroke colour: the lines were drawn.
            drawn = await page.evaluate(
                """() => {
                  const count = (id, rgb) => {
                    const c = document.querySelector('#' + id + ' canvas');
                    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                    let n = 0;
                    for (let i = 0; i < d.length; i += 4)
                      if (Math.abs(d[i]-rgb[0]) < 8 && Math.abs(d[i+1]-rgb[1]) < 8 && Math.abs(d[i+2]-rgb[2]) < 8 && d[i+3] > 200) n++;
                    return n;
                  };
                  return {messages: count('chart-messages', [31,119,180]),
                          connections: count('chart-connections', [44,160,44]),
                          latency: count('chart-latency', [214,39,40])};
                }"""
            )
            await page.screenshot(path=str(shot), full_page=True)
            # The admin's room page: live connections, charts, and a staff
            # disconnect that reaches the real socket.
            await page.goto(f"http://127.0.0.1:{s.port}/admin/rooms/room/{s.room_id(room)}/change/")
            assert "Connected here (2)" in await page.content()
            assert await page.locator(".uplot").count() == 2
            async with page.expect_navigation():
                await page.locator("button[form=disconnect-1]").click()
            # (the page after the redirect may still list the socket: it
            # leaves the hub when the client's close handshake ends)
        finally:
            await context.close()
    assert all(n > 0 for n in drawn.values()), drawn
    assert shot.stat().st_size > 10_000
    done, _ = await asyncio.wait(
        [asyncio.ensure_future(c.closed.wait()) for c in (a, b)], timeout=10, return_when=asyncio.FIRST_COMPLETED
    )
    assert done, "no connection was closed by the staff disconnect"
    closed = [c for c in (a, b) if c.closed.is_set()]
    assert len(closed) == 1 and closed[0].close_code == 1008
    assert closed[0].frames[-1] == {"type": "close", "code": 1008, "reason": "disconnected by staff"}
    await a.close()
    await b.close()
