"""Everything the bridge knows about Coredination (docs/coredination-api.md): the wire models, the
client (one method per endpoint), how its answers are classified, how its webhooks are parsed, and
the translation of its jobs into the bridge's view."""

from bridge.coredination.client import CoredinationClient

__all__ = ["CoredinationClient"]
