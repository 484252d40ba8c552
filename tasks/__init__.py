"""The Celery app: ``celery -A tasks worker`` and ``celery -A tasks beat``.

Tasks take ids, call one use case, and let ``tasks.base.BridgeTask`` turn the error tree into
retry, dead letter or skip. Imports point one way: tasks → bridge → mappings.
"""

from tasks import jobs as jobs  # registers the tasks
from tasks.app import app

__all__ = ["app", "jobs"]
