"""The shared transport (sessions, timeouts, auth, classification into the error tree) and the
budget gate every request passes first."""

from bridge.http.transport import (
    ApiKeyAuth,
    CallGate,
    Classifier,
    Credentials,
    OpenGate,
    Outcome,
    Transport,
    raise_for,
)

__all__ = [
    "ApiKeyAuth",
    "CallGate",
    "Classifier",
    "Credentials",
    "OpenGate",
    "Outcome",
    "Transport",
    "raise_for",
]
