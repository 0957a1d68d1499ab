"""rooms.conf.dorm_settings: a value read once is kept as a plain attribute
(the hot paths read settings on every frame), and a change of
``settings.DORM`` is seen at once."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.test import override_settings

from rooms.conf import DEFAULTS, dorm_settings


def test_a_value_read_once_is_an_attribute_and_a_change_of_settings_drops_it() -> None:
    before = dorm_settings.SOFT_FRAME_LIMIT_BYTES
    assert dorm_settings.__dict__["SOFT_FRAME_LIMIT_BYTES"] == before  # no __getattr__ on the next read
    with override_settings(DORM={**settings.DORM, "SOFT_FRAME_LIMIT_BYTES": before + 1}):
        assert "SOFT_FRAME_LIMIT_BYTES" not in dorm_settings.__dict__
        assert dorm_settings.SOFT_FRAME_LIMIT_BYTES == before + 1
    assert dorm_settings.SOFT_FRAME_LIMIT_BYTES == before


def test_a_setting_left_out_of_dorm_takes_its_default() -> None:
    name = "PRESENCE_SWEEP_SECONDS"
    with override_settings(DORM={k: v for k, v in settings.DORM.items() if k != name}):
        assert getattr(dorm_settings, name) == DEFAULTS[name]


def test_an_unknown_or_private_name_is_an_error() -> None:
    with pytest.raises(AttributeError, match="Invalid Dorm setting"):
        dorm_settings.NO_SUCH_SETTING  # noqa: B018
    with pytest.raises(AttributeError):
        dorm_settings._private  # noqa: B018


def test_billing_settings_work_the_same_way() -> None:
    from billing.conf import billing_settings

    before = billing_settings.LATENCY_ALERT_MS
    assert "LATENCY_ALERT_MS" in billing_settings.__dict__
    with override_settings(BILLING={"LATENCY_ALERT_MS": before + 1}):
        assert billing_settings.LATENCY_ALERT_MS == before + 1
    assert billing_settings.LATENCY_ALERT_MS == before
    with pytest.raises(AttributeError, match="Invalid billing setting"):
        billing_settings.NOPE  # noqa: B018
