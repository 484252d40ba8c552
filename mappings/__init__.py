"""Pure domain of the bridge: wire models, translation rules, canonical states, deterministic ids.

Nothing in this package performs I/O. It must not import ``requests``, ``redis``, ``celery`` or
anything under ``bridge`` or ``tasks``; those depend on it, never the other way round.
"""
