"""The Celery app: ``celery -A tasks worker`` and ``celery -A tasks beat``.

``app`` is built by ``tasks.app.create_app`` and reads nothing at import: the settings are read
when a worker or beat first needs them. Tasks take ids, call one use case, and let
``tasks.base.BridgeTask`` turn the error tree into retry, dead letter or skip. Imports point one
way: tasks → bridge → mappings.
"""

from tasks import jobs as jobs  # registers the tasks (shared: every app create_app builds)
from tasks.app import app, create_app

__all__ = ["app", "create_app", "jobs"]
