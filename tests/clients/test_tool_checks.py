"""Browser and Node tests skip locally without their tools, and fail under CI."""

from __future__ import annotations

import pytest

from tests.clients.conftest import require_tool


def test_a_missing_tool_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="chromium-driver"):
        require_tool("chromium", "/nonexistent/chromium")


def test_a_missing_tool_skips_with_the_install_hint_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install -y chromium"):
        require_tool("chromium", "/nonexistent/chromium")
    with pytest.raises(pytest.skip.Exception, match="Node.js"):
        require_tool("node", "no-such-node-binary")


def test_a_present_tool_is_returned_by_path() -> None:
    assert require_tool("node", "sh").endswith("/sh")
