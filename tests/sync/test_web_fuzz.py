"""Hostile input on the webhook endpoints, property-based with a fixed seed: wrong types, huge and
deeply nested bodies, bad encodings, missing or wrong tokens, replays. No 5xx, nothing queued for
an invalid request, only well-formed ids ever queued, and the server still answers afterwards."""

from __future__ import annotations

import json
import re
from typing import Any

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from tests.sync.conftest import TOKEN, post

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
CD_REF = re.compile(r"^([0-9]{1,18}|[0-9a-f-]{36})$")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=5),
    max_leaves=30,
)  # fmt: skip
uuids = st.uuids().map(str) | st.text(max_size=40) | st.integers() | st.none()
shaped = st.fixed_dictionaries(
    {
        "object": st.sampled_from(["joballocation", "job", "JobAllocation", "invoice", ""])
        | json_values,
        "entry": st.lists(
            st.fixed_dictionaries({"uuid": uuids, "time": json_values,
                                   "changed_fields": json_values}),
            max_size=4,
        ) | json_values,
    }
)  # fmt: skip
coredination = st.fixed_dictionaries(
    {"channel": st.sampled_from(["job", "customer"]) | json_values,
     "type": json_values, "jobId": json_values, "jobUuid": uuids,
     "event": st.fixed_dictionaries({"id": json_values, "toUserId": json_values,
                                     "newResourceState": json_values}) | json_values}
)  # fmt: skip


def _encode(value: Any) -> bytes:
    return json.dumps(value).encode()


bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(_encode),
    shaped.map(_encode),
    coredination.map(_encode),
    st.integers(1, 400).map(lambda n: b"[" * n + b"]" * n),  # deep nesting
    st.integers(1, 400).map(lambda n: (b'{"a":' * n) + b"1" + b"}" * n),
    st.integers(4097, 20_000).map(lambda n: b" " * n),  # over the 4 KiB test limit
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.sampled_from([b"mode=subscribe", b"mode=subscribe&challenge=", b"%%%===&&&",
                     b"a.b.c", b"x" * 50 + b"." + b"y" * 50 + b".z", b"\xff\xfe\x00"]),
)  # fmt: skip
tokens = st.sampled_from([TOKEN, None, "", "x", TOKEN + " ", TOKEN.upper(), "../" + TOKEN])
content_types = st.sampled_from(
    ["application/json", "application/x-www-form-urlencoded", "text/plain", "application/jwt", "",
     "application/xml", "multipart/form-data; boundary=x", "application/json; charset=latin-1"]
)  # fmt: skip


@seed(20261123)
@settings(
    max_examples=2000,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=bodies, token=tokens, content_type=content_types,
       source=st.sampled_from(["servicem8", "coredination", "other"]))  # fmt: skip
def test_no_hostile_request_errors_or_queues_anything_it_should_not(
    web, body, token, content_type, source
):
    before = len(web.sent)
    try:
        r = post(web, body, token=token or None, source=source, content_type=content_type)
    except UnicodeEncodeError:
        return  # not a request an HTTP client can send
    assert r.status_code < 500, (r.status_code, r.text[:200])
    queued = web.sent[before:]
    if token != TOKEN or source == "other" or r.status_code != 200:
        assert queued == []
    for task, args in queued:
        if task == "bridge.webhook.coredination_job":
            assert CD_REF.match(args[0]) and len(args) == 4 and all(len(a) <= 40 for a in args)
        else:
            assert UUID.match(args[0]) and len(args) == 1
