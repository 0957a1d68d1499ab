"""The JavaScript client's unit tests (Node's test runner) against a real server.

``node --test clients/js/test/`` runs with DORM_WS_URL pointing at the
session's daphne server; a failing Node test fails this test, with Node's
report in the failure message.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time

from tests.clients.conftest import require_tool
from tests.e2e.server import REPO, DormServer

NODE_TIMEOUT_SECONDS = 90


def room_tokens() -> dict[str, str]:
    """Real room tokens for the Node tests (signed with the development secret
    the server uses too): one expired an hour ago, one fresh."""
    from rooms import tokens

    room = f"js-token-{int(time.time() * 1000)}"
    expired, _ = tokens.issue("alice", room, "write", now=time.time() - 3600)
    fresh, _ = tokens.issue("alice", room, "write")
    other_room, _ = tokens.issue("alice", f"{room}-other", "write")
    return {"room": room, "expired": expired, "fresh": fresh, "otherRoom": other_room}


def test_js_client_node_suite(dorm_server: DormServer) -> None:
    node = require_tool("node", "node")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    major = int(version.lstrip("v").split(".")[0])
    assert major >= 20, f"the JS client tests need Node.js 20 or newer, found {version}"
    # Node 20 has WebSocket behind a flag; 22 and newer have it built in.
    flags = ["--experimental-websocket"] if major < 22 else []
    result = subprocess.run(
        [node, *flags, "--test", "--test-concurrency=1", "--test-reporter=tap", "clients/js/test/"],
        cwd=REPO,
        env={**os.environ, "DORM_WS_URL": f"ws://127.0.0.1:{dorm_server.port}", "DORM_TEST_TOKENS": json.dumps(room_tokens())},
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT_SECONDS,
    )
    report = result.stdout + result.stderr
    passed = re.search(r"^# pass (\d+)", report, re.M)
    failed = re.search(r"^# fail (\d+)", report, re.M)
    assert result.returncode == 0 and failed and failed.group(1) == "0", f"node --test failed:\n{report[-6000:]}"
    # A suite that silently ran nothing must not pass.
    assert passed and int(passed.group(1)) >= 10, f"too few Node tests ran:\n{report[-3000:]}"
