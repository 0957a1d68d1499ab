"""The demo pages in headless Chromium (Debian's /usr/bin/chromium, driven by
Playwright; no downloaded browser build).

Screenshots of every test land in the artifacts directory, printed at the end
of each test (``pytest -s`` shows them; DORM_ARTIFACTS_DIR chooses the place).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import connect as ws_connect

from tests.clients.conftest import CHROMIUM, CHROMIUM_FLAGS, require_tool
from tests.e2e.client import room_name
from tests.e2e.server import REPO, DormServer, server_env, start_server

pytestmark = pytest.mark.timeout(90)

WAIT_MS = 10_000


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    require_tool("chromium", CHROMIUM)
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")  # a new, empty user-data-dir
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1000, "height": 720},
        )
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def open_page(browser_context: Any, artifacts_dir: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., Any]]:
    pages: list[Any] = []
    errors: list[str] = []

    def _open(server: DormServer, path: str) -> Any:
        page = browser_context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"http://127.0.0.1:{server.port}{path}")
        pages.append(page)
        return page

    yield _open
    shots = []
    for i, page in enumerate(pages):
        if not page.is_closed():
            shot = artifacts_dir / f"{request.node.name}-final-{i}.png"
            page.screenshot(path=str(shot))
            shots.append(shot)
            page.close()
    print(f"\nscreenshots: {', '.join(str(s) for s in shots)}")
    assert not errors, f"JavaScript errors in the pages: {errors}"


def wait_open(page: Any) -> None:
    page.wait_for_selector('#status[data-state="open"]', timeout=WAIT_MS)


def strokes(page: Any) -> list[dict[str, Any]]:
    return page.evaluate("window.board.strokes()")


def draw(page: Any, points: list[tuple[int, int]]) -> None:
    """A real stroke: pointer down, moves, up, on the canvas."""
    box = page.locator("#canvas").bounding_box()
    x0, y0 = box["x"], box["y"]
    page.mouse.move(x0 + points[0][0], y0 + points[0][1])
    page.mouse.down()
    for x, y in points[1:]:
        page.mouse.move(x0 + x, y0 + y, steps=4)
    page.mouse.up()


def wait_strokes(page: Any, n: int) -> None:
    page.wait_for_function(f"window.board.strokes().length === {n} && window.board.pending() === 0", timeout=WAIT_MS)


def test_whiteboard_strokes_cursors_erase_undo_redo_across_pages(
    dorm_server: DormServer, open_page: Callable[..., Any], artifacts_dir: Path
) -> None:
    room = room_name("wb")
    alice = open_page(dorm_server, f"/rooms/{room}/?user=alice")
    bob = open_page(dorm_server, f"/rooms/{room}/?user=bob")
    wait_open(alice)
    wait_open(bob)

    draw(alice, [(100, 100), (160, 130), (220, 180)])
    wait_strokes(bob, 1)
    wait_strokes(alice, 1)
    [stroke] = strokes(bob)
    assert stroke["userId"] == "alice" and stroke["payload"]["points"][:2] == [100, 100]
    assert strokes(alice) == strokes(bob)

    # Live cursors: alice's pointer shows on bob's board.
    box = alice.locator("#canvas").bounding_box()
    alice.mouse.move(box["x"] + 400, box["y"] + 300, steps=5)
    bob.wait_for_selector('.cursor[data-user="alice"]', timeout=WAIT_MS)

    # Connection state and round-trip latency are shown.
    assert alice.locator("#status").text_content() == "open"
    alice.wait_for_function("document.getElementById('latency').dataset.ms !== undefined", timeout=WAIT_MS)
    bob.screenshot(path=str(artifacts_dir / "whiteboard-stroke-and-cursor.png"))

    # Bob erases alice's stroke.
    bob.click("#mode-erase")
    bob_box = bob.locator("#canvas").bounding_box()
    bob.mouse.click(bob_box["x"] + 160, bob_box["y"] + 130)
    wait_strokes(alice, 0)
    wait_strokes(bob, 0)

    # Undo and redo of alice's own strokes, seen by both.
    draw(alice, [(300, 300), (350, 320)])
    draw(alice, [(400, 400), (450, 420)])
    wait_strokes(bob, 2)
    alice.click("#undo")
    wait_strokes(bob, 1)
    wait_strokes(alice, 1)
    assert strokes(bob)[0]["payload"]["points"][:2] == [300, 300]
    alice.click("#redo")
    wait_strokes(bob, 2)
    wait_strokes(alice, 2)
    assert strokes(alice) == strokes(bob)

    # Undo with nothing of bob's to undo is refused by the server and shown.
    bob.click("#undo")
    bob.wait_for_function("document.getElementById('notice').textContent.includes('undo refused')", timeout=WAIT_MS)

    # The room's host (a real token with scope "host") clears the board for everyone.
    from rooms import tokens

    host_token, _ = tokens.issue("host", room, "host")
    with ws_connect(f"ws://127.0.0.1:{dorm_server.port}/ws/{room}?token={host_token}", proxy=None) as host:
        assert json.loads(host.recv(timeout=5))["type"] == "welcome"
        host.send(json.dumps({"type": "clear", "id": "clear-1"}))
        while (frame := json.loads(host.recv(timeout=5)))["type"] != "ack":
            pass
        assert frame["id"] == "clear-1"
    wait_strokes(alice, 0)
    wait_strokes(bob, 0)


def test_whiteboard_drawing_offline_across_a_server_restart(
    fresh_server: DormServer, open_page: Callable[..., Any], artifacts_dir: Path
) -> None:
    server = fresh_server
    room = room_name("wb")
    alice = open_page(server, f"/rooms/{room}/?user=alice&backoff=200&backoffMax=1500")
    bob = open_page(server, f"/rooms/{room}/?user=bob&backoff=200&backoffMax=1500")
    wait_open(alice)
    wait_open(bob)
    draw(alice, [(50, 50), (120, 60)])
    draw(bob, [(50, 400), (120, 420)])
    wait_strokes(alice, 2)
    wait_strokes(bob, 2)

    server.stop()
    for page in (alice, bob):
        page.wait_for_function("document.getElementById('status').dataset.state !== 'open'", timeout=WAIT_MS)
    # Alice keeps drawing while the server is down: optimistic, queued.
    for i in range(3):
        draw(alice, [(200 + 60 * i, 200), (230 + 60 * i, 260)])
    alice.wait_for_function("window.board.pending() === 3", timeout=WAIT_MS)
    alice.screenshot(path=str(artifacts_dir / "whiteboard-offline-pending.png"))
    assert len(strokes(bob)) == 2

    server.migrate = False
    started = time.monotonic()
    server.start()  # same port, same database
    wait_open(alice)
    wait_open(bob)
    wait_strokes(alice, 5)
    wait_strokes(bob, 5)
    reconnect_s = time.monotonic() - started
    a, b = strokes(alice), strokes(bob)
    assert a == b, "both pages hold the same board"
    seqs = [s["seq"] for s in a]
    assert seqs == sorted(set(seqs)), "no duplicate strokes"
    stored = server.events(room)
    assert [e[0] for e in stored] == seqs == [1, 2, 3, 4, 5]
    assert len({e[3] for e in stored}) == 5, "each queued stroke was stored once"
    print(f"\nreconnected and flushed {reconnect_s:.1f} s after the restart")

    # The socket cut right after three strokes left, before their acks: the
    # resume replays them as events, the retries are acked with the same seqs,
    # and the page's board must not hold any of them twice.
    alice.evaluate(
        """() => {
            for (let i = 0; i < 3; i++) {
                const x = 600 + 40 * i;
                dormClient.send("draw", { color: "#333", width: 3, points: [x, 80, x + 20, 140] }, { optimistic: true });
            }
            dormClient.dropConnection();
        }"""
    )
    wait_strokes(alice, 8)
    wait_strokes(bob, 8)
    a, b = strokes(alice), strokes(bob)
    assert a == b
    assert [s["seq"] for s in a] == list(range(1, 9))
    stored = server.events(room)
    assert [e[0] for e in stored] == list(range(1, 9))
    assert len({e[3] for e in stored}) == 8


def test_chat_typing_indicator_and_presence_list(dorm_server: DormServer, open_page: Callable[..., Any], artifacts_dir: Path) -> None:
    room = room_name("chat")
    alice = open_page(dorm_server, f"/rooms/{room}/?kind=chat&user=alice")
    wait_open(alice)
    bob = open_page(dorm_server, f"/rooms/{room}/?user=bob")
    wait_open(bob)
    for page in (alice, bob):
        page.wait_for_selector('#presence li[data-user="alice"]', timeout=WAIT_MS)
        page.wait_for_selector('#presence li[data-user="bob"]', timeout=WAIT_MS)

    bob.click("#text")
    bob.keyboard.type("hello alice", delay=20)
    alice.wait_for_function("document.getElementById('typing').dataset.users === 'bob'", timeout=WAIT_MS)
    assert "bob is typing" in alice.locator("#typing").text_content()
    alice.screenshot(path=str(artifacts_dir / "chat-typing.png"))

    bob.keyboard.press("Enter")
    alice.wait_for_selector("#messages li[data-seq]", timeout=WAIT_MS)
    assert alice.locator("#messages li[data-seq]").first.text_content() == "bobhello alice"
    alice.wait_for_function("document.getElementById('typing').textContent === ''", timeout=WAIT_MS)
    bob.wait_for_selector("#messages li[data-seq]:not([data-pending])", timeout=WAIT_MS)

    # A page that joins later sees the history in the welcome snapshot.
    carol = open_page(dorm_server, f"/rooms/{room}/?user=carol")
    wait_open(carol)
    carol.wait_for_selector("#messages li[data-seq]", timeout=WAIT_MS)
    alice.wait_for_selector('#presence li[data-user="carol"]', timeout=WAIT_MS)

    # Logs carry metadata only, never what people wrote.
    assert "hello alice" not in dorm_server.log_text()

    bob.close()
    alice.wait_for_selector('#presence li[data-user="bob"]', state="detached", timeout=WAIT_MS)
    assert sorted(alice.locator("#presence li").evaluate_all("els => els.map(e => e.dataset.user)")) == ["alice", "carol"]


def test_logged_in_pages_join_with_room_tokens_and_refresh_them(
    tmp_path: Path, open_page: Callable[..., Any], artifacts_dir: Path
) -> None:
    """Anonymous access off (production): a page asks to log in; once logged
    in it joins with a token from /api/rooms/<slug>/token, and when the token
    expires (close 4401) it fetches a new one and resumes."""
    server = start_server(
        "daphne",
        tmp_path,
        extra_env={"DORM_ALLOW_ANONYMOUS": "0", "DORM_TOKEN_TTL_SECONDS": "3", "DORM_TOKEN_LEEWAY_SECONDS": "0"},
        name="tokens",
    )
    try:
        subprocess.run(
            [sys.executable, "manage.py", "shell", "-c",
             "from django.contrib.auth.models import User; User.objects.create_superuser('dana', password='pw-dana-1')"],
            cwd=REPO, env=server_env(server.db_path, server.extra_env), check=True, capture_output=True, timeout=60,
        )
        room = room_name("wb")
        page = open_page(server, f"/rooms/{room}/")
        page.wait_for_selector("#login-needed:not([hidden])", timeout=WAIT_MS)
        assert page.locator("#status").get_attribute("data-state") == "idle"

        page.click("#login-needed a")
        page.fill("#id_username", "dana")
        page.fill("#id_password", "pw-dana-1")
        page.click("input[type=submit]")
        page.wait_for_url(f"**/rooms/{room}/", timeout=WAIT_MS)
        wait_open(page)
        page.evaluate("() => { window.__welcomes = []; dormClient.on('welcome', (w) => window.__welcomes.push(w.resumed)); }")
        draw(page, [(100, 100), (200, 150)])
        wait_strokes(page, 1)
        user_id = page.locator("#me").text_content()
        assert user_id and server.events(room)[0][2] == user_id

        # The 3 s token expires: 4401, a new token from the session, resumed.
        page.wait_for_function("window.__welcomes.length >= 1", timeout=WAIT_MS)
        assert page.evaluate("window.__welcomes") == [True]
        wait_open(page)
        draw(page, [(300, 300), (350, 320)])
        wait_strokes(page, 2)
        assert [e[2] for e in server.events(room)] == [user_id, user_id]
        page.screenshot(path=str(artifacts_dir / "whiteboard-logged-in.png"))
    finally:
        server.stop()


def tally(page: Any) -> list[int]:
    return page.evaluate("window.poll.counts()")


def wait_tally(page: Any, counts: list[int], timeout_ms: int = WAIT_MS) -> None:
    page.wait_for_function(f"document.getElementById('chart').dataset.counts === {json.dumps(','.join(map(str, counts)))}", timeout=timeout_ms)


def test_poll_votes_change_of_vote_and_close_across_pages(
    dorm_server: DormServer, open_page: Callable[..., Any], artifacts_dir: Path
) -> None:
    room = room_name("poll")
    # The landing page creates the poll with its question and options.
    alice = open_page(dorm_server, "/?user=alice")
    alice.fill('input[name="slug"]', room)
    alice.select_option('select[name="kind"]', "poll")
    alice.fill('input[name="question"]', "Lunch?")
    alice.fill('input[name="options"]', "pizza, ramen, salad")
    alice.click("#open-room button[type=submit]")
    alice.wait_for_url(f"**/rooms/{room}/", timeout=WAIT_MS)
    alice.goto(f"http://127.0.0.1:{dorm_server.port}/rooms/{room}/?user=alice")
    bob = open_page(dorm_server, f"/rooms/{room}/?user=bob")
    wait_open(alice)
    wait_open(bob)
    for page in (alice, bob):
        page.wait_for_selector('#chart .option[data-index="2"]', timeout=WAIT_MS)
        assert page.locator("#question").text_content() == "Lunch?"
        assert page.evaluate("window.poll.options()") == ["pizza", "ramen", "salad"]
        wait_tally(page, [0, 0, 0])
        page.wait_for_function("document.getElementById('latency').dataset.ms !== undefined", timeout=WAIT_MS)
        assert page.locator("#poll-state").text_content() == "Open"

    # Timestamps in the pages (one browser, one clock): acks of the votes, tallies shown.
    for page in (alice, bob):
        page.evaluate(
            """() => {
                window.__acks = []; window.__shown = [];
                dormClient.on('ack', (a) => a.type === 'vote' && window.__acks.push(Date.now()));
                dormClient.on('tally', (t) => window.__shown.push([Date.now(), t.payload.counts.join(',')]));
            }"""
        )

    def tally_delay(counts: list[int]) -> float:
        """Seconds from the last vote's ack (on either page) to the tally with
        ``counts`` on the slower page."""
        acked = max(max(p.evaluate("window.__acks"), default=0) for p in (alice, bob))
        want = ",".join(map(str, counts))
        shown = [min(t for t, c in p.evaluate("window.__shown") if c == want) for p in (alice, bob)]
        return (max(shown) - acked) / 1000

    # Votes from both pages: both show the same tally within a second of the votes.
    started = time.monotonic()
    alice.click('button[data-option="0"]')
    bob.click('button[data-option="1"]')
    wait_tally(alice, [1, 1, 0])
    wait_tally(bob, [1, 1, 0])
    delay = tally_delay([1, 1, 0])
    print(f"\nvotes: tally on both pages {delay * 1000:.0f} ms after the last ack "
          f"({(time.monotonic() - started) * 1000:.0f} ms after the first click, Playwright included)")
    assert delay < 1.0, f"tally took {delay:.2f} s"
    assert alice.evaluate("window.poll.myVote()") == 0 and bob.evaluate("window.poll.myVote()") == 1
    assert bob.locator('button[data-option="1"]').get_attribute("aria-pressed") == "true"
    bob.screenshot(path=str(artifacts_dir / "poll-tally.png"))

    # Bob changes his vote: the count moves from ramen to pizza on both pages.
    bob.click('button[data-option="0"]')
    wait_tally(alice, [2, 0, 0])
    wait_tally(bob, [2, 0, 0])
    delay = tally_delay([2, 0, 0])
    print(f"changed vote: tally on both pages {delay * 1000:.0f} ms after the ack")
    assert delay < 1.0, f"tally took {delay:.2f} s"
    assert bob.evaluate("window.poll.myVote()") == 0
    assert [e[1] for e in dorm_server.events(room)] == ["vote", "vote", "vote"]

    # A page joining later gets the tally in its welcome.
    carol = open_page(dorm_server, f"/rooms/{room}/?user=carol")
    wait_open(carol)
    wait_tally(carol, [2, 0, 0])

    # Closing needs the host scope: the page's button is refused for bob...
    bob.click("#close")
    bob.wait_for_function("document.getElementById('notice').textContent.includes('close refused')", timeout=WAIT_MS)
    assert not bob.evaluate("window.poll.closed()")
    # ...and the host (a real token with scope "host") closes it for everyone.
    from rooms import tokens

    host_token, _ = tokens.issue("host", room, "host")
    with ws_connect(f"ws://127.0.0.1:{dorm_server.port}/ws/{room}?token={host_token}", proxy=None) as host:
        assert json.loads(host.recv(timeout=5))["type"] == "welcome"
        host.send(json.dumps({"type": "close_poll", "id": "close-1"}))
        while (frame := json.loads(host.recv(timeout=5)))["type"] != "ack":
            pass
        assert frame["id"] == "close-1"
    for page in (alice, bob, carol):
        page.wait_for_selector("#poll[data-closed]", timeout=WAIT_MS)
        assert page.locator("#poll-state").text_content() == "Closed (host)"
        assert page.locator('button[data-option="2"]').is_disabled()
    # A vote sent anyway (not through the disabled buttons) is refused; the tally stays.
    refused = alice.evaluate("dormClient.send('vote', { option: 2 }).then(() => 'ok', (e) => e.reason)")
    assert refused != "ok"
    assert tally(alice) == tally(bob) == tally(carol) == [2, 0, 0]
    alice.screenshot(path=str(artifacts_dir / "poll-closed.png"))


def test_poll_deadline_counts_down_and_closes_the_poll(dorm_server: DormServer, open_page: Callable[..., Any]) -> None:
    room = room_name("poll")
    page = open_page(dorm_server, f"/rooms/{room}/?kind=poll&user=dana")
    wait_open(page)
    assert page.evaluate("window.poll.options()") == ["yes", "no"]  # the kind's default
    page.click('button[data-option="0"]')
    wait_tally(page, [1, 0])

    # The host sets a deadline 2 s ahead: the page counts down, then the
    # room's durable alarm closes the poll.
    from rooms import tokens

    host_token, _ = tokens.issue("host", room, "host")
    with ws_connect(f"ws://127.0.0.1:{dorm_server.port}/ws/{room}?token={host_token}", proxy=None) as host:
        assert json.loads(host.recv(timeout=5))["type"] == "welcome"
        host.send(json.dumps({"type": "deadline", "id": "d-1", "payload": {"at": int(time.time() * 1000) + 2000}}))
        while (frame := json.loads(host.recv(timeout=5)))["type"] != "ack":
            pass
    page.wait_for_function("document.getElementById('poll-state').textContent.includes('closes in')", timeout=WAIT_MS)
    page.wait_for_selector("#poll[data-closed]", timeout=WAIT_MS)
    assert page.locator("#poll-state").text_content() == "Closed at the deadline"
    assert page.locator('button[data-option="1"]').is_disabled()
    assert tally(page) == [1, 0]
