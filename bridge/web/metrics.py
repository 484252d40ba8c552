"""Who may read ``/metrics`` (docs/operations.md#metrics).

``/metrics`` is served on the web receiver's port, which is public (ServiceM8 posts webhooks to
it), and its figures name connections, accounts' budgets and webhook health. So:

- with ``METRICS_TOKEN`` set, a scrape must send ``Authorization: Bearer <token>``; anything else
  is 401. The token is compared in constant time and never logged (``Settings.secret_values``).
- unset, only loopback clients (127.0.0.0/8, ::1) are answered; anyone else gets 403 with one line
  naming ``METRICS_TOKEN``. The address is the one the server reports: uvicorn takes a proxy's
  ``X-Forwarded-For`` only from the addresses in ``FORWARDED_ALLOW_IPS`` (default: loopback), so a
  reverse proxy on the same host must set it, or every request it forwards looks local.

Imports nothing of the bridge's: the caller passes the token.
"""

from __future__ import annotations

import hmac
import ipaddress

from fastapi import Request
from fastapi.responses import PlainTextResponse, Response
from pydantic import SecretStr

UNAUTHORISED = "wrong or missing bearer token: /metrics requires METRICS_TOKEN\n"
NOT_LOOPBACK = (
    "/metrics answers only loopback clients while METRICS_TOKEN is unset; set METRICS_TOKEN and "
    "scrape with 'Authorization: Bearer <token>'\n"
)


def metrics_refusal(token: SecretStr | None, request: Request) -> Response | None:
    """None when ``request`` may read /metrics, else the answer refusing it (401 or 403). An
    empty ``METRICS_TOKEN`` counts as unset: it would otherwise let an empty bearer token in."""
    expected = token.get_secret_value().encode() if token is not None else b""
    if expected:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected):
            return None
        return PlainTextResponse(
            UNAUTHORISED, status_code=401, headers={"WWW-Authenticate": 'Bearer realm="metrics"'}
        )
    if request.client is not None and is_loopback(request.client.host):
        return None
    return PlainTextResponse(NOT_LOOPBACK, status_code=403)


def is_loopback(host: str) -> bool:
    """``host`` is a loopback address (an IPv4 one mapped into IPv6 too, as a dual-stack socket
    reports it); a name that is no address (a test client's, a socket path) is not."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback
