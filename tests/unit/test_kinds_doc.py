"""The kind in docs/kinds.md's guide is real code: it runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rooms.kinds.base import DurableEvent, Incoming, Reject

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "kinds.md"


def test_the_guides_counter_kind_works() -> None:
    code = re.search(r"```python\n(.*?)```", GUIDE.read_text(), re.S)
    assert code is not None
    namespace: dict = {}
    exec(compile(code.group(1), str(GUIDE), "exec"), namespace)
    counter = namespace["Counter"]
    with pytest.raises(ValueError):
        counter.check_settings({"floor": 5})
    kind = counter({"floor": -3})
    state = kind.initial_state()
    kind.check(state, Incoming("add", "u", {"n": -3}))
    state = kind.apply(state, DurableEvent(1, "add", "u", {"n": -3}, 0))
    with pytest.raises(Reject) as refused:
        kind.check(state, Incoming("add", "u", {"n": -1}))
    assert refused.value.code == "below_floor"
    counter.messages["reset"].schema.validate(None)
    assert kind.apply(state, DurableEvent(2, "reset", "h", None, 0)) == {"total": 0}
    assert counter.messages["aim"].relay is False and counter.messages["reset"].scope == "host"
