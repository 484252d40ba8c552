"""The bridge: one folder per outside system (``servicem8``, ``coredination``: client, classifier,
webhook parsing, wire models, translation), the shared transport and budget (``http``), the only
Redis speakers (``store``), the sync use cases (``sync``), and the edges (``web``, ``cli``, ``ops``,
the ``simulators``).

Depends on ``mappings``; must never import ``tasks``.
"""
