"""A ServiceM8 delivery's ``time`` as an ISO UTC stamp (``…Z``) is read as UTC, never as the
account's local time (docs/servicem8-api.md#webhooks): the receiver keeps it as the account's
stamp, which the hint reader's ``edit_date`` filter takes."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import pytest

from bridge.servicem8.webhooks import delivery_time
from tests.sync.conftest import documented, post

SYD = ZoneInfo("Australia/Sydney")
LONDON = ZoneInfo("Europe/London")


@pytest.mark.parametrize(
    ("text", "tz", "stamp"),
    [
        ("2026-12-01 10:00:00", SYD, "2026-12-01 10:00:00"),  # the account's time, as it is
        ("2026-12-01 10:00:00", None, "2026-12-01 10:00:00"),
        ("2026-12-01T10:00:00", None, "2026-12-01 10:00:00"),
        ("2026-12-01T00:00:00Z", SYD, "2026-12-01 11:00:00"),  # AEDT, UTC+11
        ("2026-12-01T00:00:00.250Z", SYD, "2026-12-01 11:00:00"),
        ("2026-12-01t00:00:00z", SYD, "2026-12-01 11:00:00"),
        ("2026-07-01T00:00:00Z", SYD, "2026-07-01 10:00:00"),  # AEST, UTC+10
        ("2026-07-01T00:00:00Z", LONDON, "2026-07-01 01:00:00"),  # BST
        ("2026-07-01T10:00:00+10:00", LONDON, "2026-07-01 01:00:00"),
        ("2026-12-01T00:00:00Z", None, ""),  # zone not known yet: the record is read by id
        ("not a time", SYD, ""),
        ("2026-13-01T00:00:00Z", SYD, ""),
        ("", SYD, ""),
    ],
)
def test_a_delivery_time_becomes_the_accounts_stamp(text, tz, stamp):
    assert delivery_time(text, tz) == stamp


def test_the_receiver_keeps_a_z_time_as_the_accounts_stamp(gathering_web):
    gathering_web.runtime.stores.activity.keep_timezone("Australia/Sydney")
    body = documented("jobactivity")
    body["entry"] = [
        {"uuid": f"5b1c2d3e-4f5a-4b6c-8d7e-9f0a1b2c3d{i:02d}", "changed_fields": ["start_date"],
         "time": "2026-12-01T00:00:00Z"}
        for i in range(3)
    ]  # fmt: skip
    assert post(gathering_web, body).status_code == 200
    batch = gathering_web.runtime.stores.hints.take("servicem8.jobactivity", "t", 1000)
    assert batch is not None and set(batch.times) == {"2026-12-01 11:00:00"}
