"""The receiver never answers 410: ServiceM8 deletes a subscription at once on one
(docs/servicem8-api.md#webhooks). Every route and error path, and a route that would say 410."""

from __future__ import annotations

import json

import pytest
from fastapi import HTTPException
from fastapi.responses import Response

from tests.sync.conftest import TOKEN, documented, post

PATHS = [
    ("POST", f"/webhooks/servicem8/{TOKEN}", documented()),
    ("POST", f"/webhooks/coredination/{TOKEN}", {"event": "job.updated", "jobId": 1}),
    ("POST", f"/webhooks/servicem8/{TOKEN}", {"mode": "subscribe", "challenge": "abc"}),
    ("POST", f"/webhooks/servicem8/{TOKEN}", {"mode": "subscribe", "challenge": " "}),
    ("POST", f"/webhooks/servicem8/{TOKEN}", b"{not json"),
    ("POST", f"/webhooks/servicem8/{TOKEN}", {"object": "invoice", "entry": []}),
    ("POST", f"/webhooks/servicem8/{TOKEN}", {"entry": "nope"}),
    ("POST", f"/webhooks/servicem8/{TOKEN}", b"x" * 10_000),  # over the body limit
    ("POST", "/webhooks/servicem8/wrong-token", documented()),
    ("POST", "/webhooks/servicem8/whk-of-a-connection-removed-0000", documented()),
    ("POST", "/webhooks/servicem8", documented()),
    ("POST", f"/webhooks/nowhere/{TOKEN}", documented()),
    ("POST", "/nowhere", documented()),
    ("GET", "/nowhere", None),
    ("GET", f"/webhooks/servicem8/{TOKEN}", None),
    ("GET", f"/webhooks/servicem8/{TOKEN}?mode=subscribe&challenge=abc", None),
    ("GET", f"/webhooks/servicem8/{TOKEN}?mode=subscribe", None),
    ("GET", "/webhooks/servicem8/wrong-token?mode=subscribe&challenge=abc", None),
    ("DELETE", f"/webhooks/servicem8/{TOKEN}", None),
    ("PUT", f"/webhooks/coredination/{TOKEN}", documented()),
    ("GET", "/oauth/servicem8/activate", None),
    ("GET", "/healthz", None),
    ("GET", "/metrics", None),
]


@pytest.mark.parametrize(
    ("method", "path", "body"), PATHS, ids=[f"{m} {p[:40]}" for m, p, _ in PATHS]
)
def test_no_route_or_error_path_answers_410(web, method, path, body):
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    answer = web.request(method, path, content=data, headers={"content-type": "application/json"})
    assert answer.status_code != 410


@pytest.mark.parametrize("content_type", ["application/xml", "multipart/form-data", "text/html"])
def test_an_unsupported_media_type_is_not_410_either(web, content_type):
    assert post(web, documented(), content_type=content_type).status_code != 410


def test_whatever_would_answer_410_goes_out_as_404(web):
    def gone() -> Response:
        return Response(status_code=410)

    def raises() -> Response:
        raise HTTPException(status_code=410, detail="gone")

    web.app.add_api_route("/gone", gone)
    web.app.add_api_route("/gone-raised", raises)
    assert web.get("/gone").status_code == 404
    assert web.get("/gone-raised").status_code == 404
