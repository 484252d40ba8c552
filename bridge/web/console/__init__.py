"""The operator console: a few server-rendered pages on the web process (docs/console.md).

``/console`` (the fleet), ``/console/c/{id}`` (one connection: pending staff with a form to link
each, parked pairs and jobs, dead letters with replay and drop, excluded jobs, subscriptions,
budget) and ``/console/c/{id}/job`` (one job's trail, as ``sm8cd explain`` tells it). Pages read
Redis only, at a fixed number of commands (``bridge.ops.console``); each action is the command's
own code (``bridge.ops.actions``). Sign-in, sessions and form tokens: ``auth``.
"""

from bridge.web.console.routes import add_console_routes

__all__ = ["add_console_routes"]
