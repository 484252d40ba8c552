"""Everything the bridge knows about ServiceM8 (docs/servicem8-api.md): the wire models, the
client (one method per endpoint), how its answers are classified, how its webhooks are parsed and
which fields are subscribed, and the translation of its records into facts."""

from bridge.servicem8.client import Filter, OnInvalid, ServiceM8Client, where

__all__ = ["Filter", "OnInvalid", "ServiceM8Client", "where"]
