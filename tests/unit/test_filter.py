from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from bridge.servicem8 import Filter, where


def test_renders_conditions_joined_by_and():
    flt = where("edit_date", "gt", "2026-03-01 12:00:00").where("active", "eq", 1)
    assert flt.render() == "edit_date gt '2026-03-01 12:00:00' and active eq 1"


def test_quote_in_a_value_is_doubled_so_it_cannot_close_the_string():
    flt = where("job_description", "eq", "x' or active eq '0")
    assert flt.render() == "job_description eq 'x'' or active eq ''0'"


def test_datetimes_render_as_naive_stamps_in_the_account_timezone():
    sydney = ZoneInfo("Australia/Sydney")
    stamp = datetime(2026, 3, 1, 1, 0, tzinfo=ZoneInfo("UTC"))
    assert where("edit_date", "gt", stamp).render(sydney) == "edit_date gt '2026-03-01 12:00:00'"


def test_booleans_are_zero_or_one():
    assert where("active", "eq", True).render() == "active eq 1"


@pytest.mark.parametrize("op", ["ge", "le", "or", "EQ ", ""])
def test_unsupported_operators_are_refused(op):
    with pytest.raises(ValueError, match="operator"):
        where("active", op, 1)


def test_field_names_cannot_carry_syntax():
    with pytest.raises(ValueError, match="field"):
        where("active eq 1 and uuid", "eq", "x")


def test_at_most_ten_conditions():
    flt = Filter()
    for i in range(10):
        flt = flt.where(f"f{i}", "eq", i)
    with pytest.raises(ValueError, match="at most 10"):
        flt.where("f10", "eq", 10)
