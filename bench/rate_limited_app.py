"""``celery -A bench.rate_limited_app worker``: the bridge's worker as a Celery user would first
write it, for the benchmark that shows why the shared budget exists (``budget-celery`` in
``bench.scenarios``). Never for production.

ServiceM8 calls skip the shared Redis budget (an open gate); instead the tasks that write to
ServiceM8 carry Celery's ``rate_limit`` at ServiceM8's nominal rate. That limit is per worker
process, so N workers send N times the rate, and ServiceM8 answers 429.

Like ``tasks.app``, importing this reads nothing: the rate comes from the settings when the app
binds its tasks (an annotation object, which Celery asks per task).
"""

from __future__ import annotations

from typing import Any

from bridge.queues import SYNC_JOB, WEBHOOK_SERVICEM8_ALLOCATION
from tasks.app import BridgeApp, create_app

# The tasks that write to ServiceM8.
RATE_LIMITED = (SYNC_JOB, WEBHOOK_SERVICEM8_ALLOCATION)


class PerWorkerRateLimit:
    """A Celery task annotation: ``annotate(task)`` returns the attributes to set on that task."""

    def annotate(self, task: Any) -> dict[str, str] | None:
        if task.name not in RATE_LIMITED or not isinstance(task.app, BridgeApp):
            return None
        settings = task.app.bridge_settings()
        per_second = settings.servicem8_rate_per_minute / settings.servicem8_rate_window_seconds
        return {"rate_limit": f"{per_second:.4f}/s"}


app = create_app(servicem8_gate="open")
app.conf.task_annotations = [PerWorkerRateLimit()]
