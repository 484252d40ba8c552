"""The bridge engine: adapters (HTTP clients, Redis store, web receiver) and sync use cases.

Depends on ``mappings``; must never import ``tasks``.
"""
