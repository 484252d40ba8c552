"""Classification is table-tested with hand-built values, no HTTP (classify once, act elsewhere)."""

from __future__ import annotations

import pytest
import requests

from bridge.coredination.classify import classify_coredination
from bridge.errors import (
    AuthError,
    Forbidden,
    NotFound,
    NotInGoodStanding,
    RateLimited,
    Rejected,
    ScopeMissing,
    Unavailable,
    WebhooksRefused,
)
from bridge.http import Outcome, raise_for
from bridge.servicem8.classify import classify_servicem8

MINUTE_TEXT = "Number of allowed API requests per minute exceeded"
DAY_TEXT = "Number of allowed API requests per day exceeded"


@pytest.mark.parametrize(
    ("status", "body", "exc", "kind", "window"),
    [
        (200, '[{"uuid": "x"}]', None, "ok", None),
        (200, '{"errorCode":0,"message":"OK"}', None, "ok", None),
        (200, '{"errorCode":"0","message":"OK"}', None, "ok", None),
        (200, '{"errorCode":1000,"message":"An error occurred"}', None, "rejected", None),
        (429, MINUTE_TEXT, None, "rate_limited", "minute"),
        (429, DAY_TEXT, None, "rate_limited", "day"),
        (429, '{"errorCode":429,"message":"' + MINUTE_TEXT + '"}', None, "rate_limited", "minute"),
        (429, '{"errorCode":429,"message":"' + DAY_TEXT + '"}', None, "rate_limited", "day"),
        (429, "", None, "rate_limited", None),
        (
            500,
            '{"errorCode":500,"message":"An unexpected error occurred."}',
            None,
            "unavailable",
            None,
        ),
        (502, "<html>Bad gateway</html>", None, "unavailable", None),
        (503, "", None, "unavailable", None),
        (400, '{"errorCode":"1000","message":"bad"}', None, "rejected", None),
        (401, '{"errorCode":"401","message":"Authentication failed."}', None, "auth", None),
        (402, "Account not in good standing", None, "unpaid", None),
        (403, '{"errorCode":"403","message":"Access forbidden."}', None, "auth", None),
        (404, '{"errorCode":"404","message":"Resource not found"}', None, "not_found", None),
        (406, "Not acceptable", None, "rejected", None),
        (426, "HTTPS required", None, "rejected", None),
        (None, "", requests.ReadTimeout("read timed out"), "unavailable", None),
        (None, "", requests.ConnectTimeout("connect timed out"), "unavailable", None),
        (None, "", requests.ConnectionError("Connection reset by peer"), "unavailable", None),
        (None, "", requests.exceptions.ChunkedEncodingError("reset"), "unavailable", None),
    ],
)
def test_servicem8_classification(status, body, exc, kind, window):
    outcome = classify_servicem8(status, {}, body, exc)
    assert outcome.kind == kind
    assert outcome.window == window


def test_timeouts_and_resets_say_which():
    assert classify_servicem8(None, None, "", requests.ReadTimeout()).reason == "timeout"
    reset = classify_servicem8(None, None, "", requests.ConnectionError("reset"))
    assert reset.reason.startswith("connection failed")


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (200, "ok"),
        (204, "ok"),
        (400, "rejected"),
        (401, "auth"),
        (403, "auth"),
        (404, "not_found"),
        (406, "rejected"),
        (429, "rate_limited"),
        (500, "unavailable"),
        (503, "unavailable"),
    ],
)
def test_coredination_classification(status, kind):
    assert classify_coredination(status, {}, f'{{"status": {status}, "message": "m"}}').kind == kind


def test_coredination_transport_failures_are_retryable():
    assert classify_coredination(None, None, "", requests.ReadTimeout()).kind == "unavailable"


@pytest.mark.parametrize(
    ("outcome", "error"),
    [
        (Outcome("rate_limited", "per minute", "minute"), RateLimited),
        (Outcome("unavailable", "HTTP 500"), Unavailable),
        (Outcome("auth", "HTTP 401"), AuthError),
        (Outcome("not_found", "HTTP 404"), NotFound),
        (Outcome("rejected", "HTTP 400"), Rejected),
        (Outcome("unpaid", "HTTP 402"), NotInGoodStanding),
        (Outcome("forbidden", "HTTP 403"), Forbidden),
        (Outcome("scope_missing", "HTTP 403", scope="manage_schedule"), ScopeMissing),
        (Outcome("webhooks_refused", "HTTP 403"), WebhooksRefused),
    ],
)
def test_raise_for_maps_outcomes_to_the_tree(outcome, error):
    with pytest.raises(error) as caught:
        raise_for(outcome, api="servicem8", status=429, operation="joballocation.list", body="b")
    assert caught.value.operation == "joballocation.list"
    assert caught.value.body_excerpt == "b"
    if isinstance(caught.value, RateLimited):
        assert caught.value.window == "minute"


def test_raise_for_is_quiet_when_ok():
    raise_for(Outcome("ok", "ok"), api="coredination", status=200, operation="job.get")


# --- refusals belong to what was refused (docs/how-it-works.md#refusals) ------------------------
FORBIDDEN = '{"errorCode":403,"message":"Access forbidden."}'
NO_SCOPE = '{"errorCode":403,"message":"insufficient_scope: manage_schedule scope required"}'


@pytest.mark.parametrize(
    ("status", "body", "operation", "kind"),
    [
        (401, "", "jobactivity.create", "auth"),  # the key: whatever was asked
        (401, "", "joballocation.list", "auth"),
        (403, FORBIDDEN, "vendor.list", "auth"),  # the account's own record
        (403, FORBIDDEN, "jobactivity.list", "auth"),  # a whole list
        (403, FORBIDDEN, "probe.joballocation.list", "auth"),
        (403, FORBIDDEN, "", "auth"),  # unnamed: the credential's, as before
        (403, FORBIDDEN, "job.get", "forbidden"),  # one record
        (403, FORBIDDEN, "jobactivity.update", "forbidden"),
        (403, FORBIDDEN, "joballocation.delete", "forbidden"),
        (403, NO_SCOPE, "jobactivity.create", "scope_missing"),
        (403, NO_SCOPE, "staff.list", "scope_missing"),  # a scope, not the key
        (401, "", "webhook.subscribe", "webhooks_refused"),
        (403, FORBIDDEN, "webhook.subscribe", "webhooks_refused"),
        (403, FORBIDDEN, "webhook.list", "webhooks_refused"),
        (402, "Account not in good standing", "job.get", "unpaid"),
        (402, "Account not in good standing", "webhook.subscribe", "unpaid"),
        (400, '{"errorCode":400,"message":"bad"}', "joballocation.list", "rejected"),
    ],
)
def test_servicem8_refusals_by_operation(status, body, operation, kind):
    assert classify_servicem8(status, {}, body, None, operation).kind == kind


@pytest.mark.parametrize(
    ("headers", "message", "scope"),
    [
        ({}, "insufficient_scope: manage_schedule scope required", "manage_schedule"),
        ({}, "The read_staff scope required for this call", "read_staff"),
        (
            {"WWW-Authenticate": 'Bearer error="insufficient_scope", scope="manage_jobs"'},
            "Forbidden",
            "manage_jobs",
        ),
        ({}, "insufficient_scope", "?"),
        ({}, "Access forbidden.", None),
        ({}, "You may not see this job", None),
    ],
)
def test_a_403_names_its_missing_scope(headers, message, scope):
    body = '{"errorCode":403,"message":"' + message + '"}'
    outcome = classify_servicem8(403, headers, body, None, "jobactivity.create")
    assert outcome.scope == scope
    if scope is not None:
        assert outcome.kind == "scope_missing" and outcome.operation == "jobactivity.create"


@pytest.mark.parametrize(
    ("status", "operation", "kind"),
    [
        (401, "job.put", "auth"),
        (403, "job.list", "auth"),  # a whole list
        (403, "job.get", "forbidden"),  # one job
        (403, "job.put", "forbidden"),
        (403, "job.schedule", "forbidden"),
        (403, "user.list", "forbidden"),  # partner-only: staff are linked by hand
        (404, "user.list", "not_found"),
        (401, "webhook.create", "webhooks_refused"),
        (403, "webhook.list", "webhooks_refused"),
    ],
)
def test_coredination_refusals_by_operation(status, operation, kind):
    body = f'{{"status": {status}, "message": "m"}}'
    assert classify_coredination(status, {}, body, None, operation).kind == kind
