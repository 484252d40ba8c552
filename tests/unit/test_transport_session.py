"""The bridge's HTTP session reads the environment's proxy and CA settings once per origin, and
what it answers is what requests itself would answer."""

from __future__ import annotations

import pytest
import requests
import requests.sessions

from bridge.http.transport import Session

URLS = (
    "https://api.servicem8.com/api_1.0/job.json",
    "https://api.servicem8.com/api_1.0/staff.json?%24filter=x",
    "https://app.coredination.net/api/1/jobs",
    "http://127.0.0.1:8080/api_1.0/job.json",
)


@pytest.fixture
def environment(monkeypatch):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "REQUESTS_CA_BUNDLE",
                 "CURL_CA_BUNDLE"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "app.coredination.net,127.0.0.1")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/bundle.pem")
    return monkeypatch


def test_the_settings_are_those_requests_gives(environment):
    ours, theirs = Session(), requests.Session()
    for url in URLS:
        for proxies, verify in (({}, None), ({"https": "http://other:1"}, True), ({}, False)):
            assert ours.merge_environment_settings(
                url, dict(proxies), None, verify, None
            ) == theirs.merge_environment_settings(url, dict(proxies), None, verify, None)
    proxied = ours.merge_environment_settings(URLS[0], {}, None, None, None)
    assert proxied["proxies"]["https"] == "http://proxy.internal:3128"
    assert proxied["verify"] == "/etc/ssl/bundle.pem"
    assert ours.merge_environment_settings(URLS[2], {}, None, None, None)["proxies"] == {}


def test_the_environment_is_read_once_per_origin(environment):
    reads = []
    real = requests.sessions.get_environ_proxies

    def counted(url, no_proxy=None):
        reads.append(url)
        return real(url, no_proxy=no_proxy)

    environment.setattr(requests.sessions, "get_environ_proxies", counted)
    session = Session()
    for _ in range(50):
        for url in URLS[:3]:
            session.merge_environment_settings(url, {}, None, None, None)
    assert len(reads) == 2  # two origins among the three URLs


def test_a_caller_changing_the_answer_changes_nothing_held(environment):
    session = Session()
    first = session.merge_environment_settings(URLS[0], {}, None, None, None)
    first["proxies"]["https"] = "http://elsewhere:1"
    again = session.merge_environment_settings(URLS[0], {}, None, None, None)
    assert again["proxies"]["https"] == "http://proxy.internal:3128"
