"""The ServiceM8 half of ``sm8cd probe`` (docs/probe.md#servicem8)."""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from bridge.errors import ApiError, BridgeError, PermanentError, Rejected
from bridge.log import get_logger
from bridge.ops.subscriptions import callback_urls, servicem8_subscriptions
from bridge.probe._common import SCRATCH_TITLE, Report, active, empty, said
from bridge.probe.subscriptions import replaced_objects, subscribe_ours_again
from bridge.process.runtime import Runtime
from bridge.servicem8.classify import refused_for_good
from bridge.servicem8.webhooks import SUBSCRIBED_FIELDS

log = get_logger(__name__)

FAR_FUTURE = "2999-12-31 00:00:00"  # a filter that matches nothing, to test the filter alone


class ServiceM8Probe:
    def __init__(self, rt: Runtime, report: Report) -> None:
        self.rt, self.report = rt, report
        self.transport = rt.sm8.transport

    def add(self, name: str, question: str, saw: str, reading: Any = None, **kw: Any) -> None:
        self.report.add("servicem8", name, question, saw, reading, **kw)

    def run(self, writes: bool) -> None:
        self.allocation_subscriptions_read()
        allocations_available(self)
        self.edit_date_filters()
        self.windows()
        self.add(
            "day_reset",
            "When does the day limit reset?",
            "not probed: it would take spending the day's budget",
            None,
            why="the bridge probes at the earlier of UTC and the account's midnight",
        )
        if not writes:
            for name, question in (
                ("record_uuid_header", "Is a supplied uuid kept on create?"),
                ("refusal_as_success", "Is a refusal a 2xx with success false?"),
                ("null_clears", "Does JSON null clear a date?"),
                ("delete_restores", "Does a DELETE of a deleted record restore it?"),
            ):
                self.add(name, question, "not probed read-only", why="run with --writes")
            return
        self.scratch_job()
        self.subscriptions_written()

    # read-only ----------------------------------------------------------------------------
    def allocation_subscriptions_read(self) -> None:
        question = "Can job allocations be subscribed?"
        try:
            rows = self.rt.sm8.list_subscriptions()
        except PermanentError as exc:
            self.add(
                "allocation_webhooks",
                question,
                f"the list was refused: {said(exc)}",
                why="run with --writes and WEBHOOK_PUBLIC_URL set",
            )
            return
        if any(str(r.get("object")).lower() == "joballocation" for r in rows):
            self.add("allocation_webhooks", question, "a job allocation subscription exists", True)
        else:
            self.add(
                "allocation_webhooks",
                question,
                "no job allocation subscription listed",
                why="run with --writes and WEBHOOK_PUBLIC_URL set",
            )

    def edit_date_filters(self) -> None:
        for obj in ("joballocation", "jobactivity"):
            question = f"Does '$filter=edit_date gt' work on {obj}?"
            try:
                rows = self.transport.request(
                    "GET",
                    f"{obj}.json",
                    operation=f"probe.{obj}.list",
                    params={"$filter": f"edit_date gt '{FAR_FUTURE}'"},
                ).json()
            except PermanentError as exc:
                self.add(
                    f"edit_date_filter_{obj}",
                    question,
                    f"refused: {said(exc)}",
                    False,
                    dialect=False,
                    why="the poll of this object cannot read changes only",
                )
                continue
            # Nothing is edited after 2999: any row at all means the filter was accepted and
            # ignored, which no error would show (docs/probe.md#servicem8).
            count = len(rows) if isinstance(rows, list) else 0
            if count:
                saw = f"accepted and ignored: {count} rows for a stamp in 2999"
                why = "the poll of this object reads every record"
                self.add(f"edit_date_filter_{obj}", question, saw, "ignored", dialect=False,
                         why=why)  # fmt: skip
                continue
            self.add(f"edit_date_filter_{obj}", question, "answered, no rows", True, dialect=False)

    def windows(self) -> None:
        rows = self.rt.sm8.list_allocation_windows()
        urgent = sum(1 for w in rows if w.start_time == w.end_time)
        self.add(
            "urgent_windows",
            "How many allocation windows start where they end (urgent)?",
            f"{urgent} of {len(rows)} windows",
            urgent,
            dialect=False,
            why="read as no window: the booking is all day",
        )

    # writes -------------------------------------------------------------------------------
    def _get_job(self, uuid: str) -> dict[str, Any]:
        row = self.transport.request("GET", f"job/{uuid}.json", operation="probe.job.get").json()
        return dict(row) if isinstance(row, Mapping) else {}

    def _post_job(self, uuid: str, body: dict[str, Any]) -> None:
        self.transport.request(
            "POST",
            f"job/{uuid}.json",
            operation="probe.job.update",
            json_body=body,
            idempotent=True,
        )

    def _delete_job(self, uuid: str) -> bool:
        """One DELETE, never repeated; then the record's ``active`` as read back."""
        try:
            self.transport.request(
                "DELETE", f"job/{uuid}.json", operation="probe.job.delete", idempotent=False
            )
        except BridgeError as exc:
            log.warning("probe.delete_unconfirmed", reason=str(exc)[:120])
        return active(self._get_job(uuid))

    def scratch_job(self) -> None:
        supplied = str(uuidlib.uuid4())
        today = datetime.now(self.rt.sm8.tz).strftime("%Y-%m-%d 00:00:00")
        body = {
            "uuid": supplied,
            "status": "Quote",
            "job_description": SCRATCH_TITLE,
            "date": today,
        }
        response = self.transport.request(
            "POST", "job.json", operation="probe.job.create", json_body=body, idempotent=True
        )
        made = (response.headers.get("x-record-uuid") or supplied).lower()
        kept = made == supplied
        self.add(
            "record_uuid_header",
            "Is a supplied uuid kept on create?",
            "kept, and echoed in x-record-uuid" if kept else f"ServiceM8 made {made} instead",
            "echo" if kept else "server",
            why="" if kept else "the bridge cannot create bookings idempotently here",
        )
        try:
            self.refusal(made)
            self.clearing(made, today)
            self.delete_twice(made)
        finally:
            if active(self._get_job(made)) and self._delete_job(made):
                self.report.left_behind.append(f"servicem8 job {made} (still active)")

    def refusal(self, uuid: str) -> None:
        question = "Is a refusal a 2xx with success false?"
        try:
            self._post_job(uuid, {"status": "Not a status (sm8cd probe)"})
        except Rejected as exc:
            as_200 = exc.status is not None and 200 <= exc.status < 300
            self.add("refusal_as_success", question, f"HTTP {exc.status}: {said(exc)}", as_200)
            return
        self.add(
            "refusal_as_success",
            question,
            "a bad status was accepted",
            why="nothing refused, so nothing learnt",
        )
        self._post_job(uuid, {"status": "Quote"})

    def clearing(self, uuid: str, today: str) -> None:
        question = "Does JSON null clear a date?"
        try:
            self._post_job(uuid, {"date": None})
        except Rejected as exc:
            self.add("null_clears", question, f"refused: {said(exc)}", False)
        else:
            cleared = empty(self._get_job(uuid).get("date"))
            self.add(
                "null_clears", question, "cleared" if cleared else "accepted, date kept", cleared
            )
        self._post_job(uuid, {"date": today})
        question = 'Does "" clear a date (how the bridge clears one)?'
        try:
            self._post_job(uuid, {"date": ""})
        except Rejected as exc:
            self.add(
                "empty_clears",
                question,
                f"refused: {said(exc)}",
                False,
                dialect=False,
                why="the bridge cannot un-complete a booking here",
            )
            return
        cleared = empty(self._get_job(uuid).get("date"))
        self.add(
            "empty_clears",
            question,
            "cleared" if cleared else "accepted, date kept",
            cleared,
            dialect=False,
        )

    def delete_twice(self, uuid: str) -> None:
        question = "Does a DELETE of a deleted record restore it?"
        if self._delete_job(uuid):
            self.add(
                "delete_restores",
                question,
                "the first DELETE left the job active",
                why="a DELETE did not delete",
            )
            return
        restored = self._delete_job(uuid)
        self.add(
            "delete_restores",
            question,
            "the second DELETE made the job active again" if restored else "the job stayed deleted",
            restored,
        )
        if restored and self._delete_job(uuid):
            self.report.left_behind.append(f"servicem8 job {uuid} (active after a third DELETE)")

    def subscriptions_written(self) -> None:
        settings = self.rt.settings
        if not settings.webhook_public_url or settings.webhook_token is None:
            self.add(
                "allocation_webhooks",
                "Can job allocations be subscribed?",
                "not probed: no WEBHOOK_PUBLIC_URL",
                why="set WEBHOOK_PUBLIC_URL and run the receiver, then probe again",
            )
            return
        # A callback URL of its own: the bridge's own subscriptions are neither replaced nor
        # deleted, whichever key ServiceM8 replaces by. The receiver answers it the same.
        callback = callback_urls(settings)["servicem8"] + "?probe=1"
        connection = settings.bridge_connection_id
        accepted: dict[str, bool | None] = {}
        answers: dict[str, str] = {}
        ours = servicem8_subscriptions(self.rt)  # to see whether the scratch ones replace them
        for obj, fields in SUBSCRIBED_FIELDS.items():
            try:
                self.rt.sm8.subscribe_object(
                    obj, fields, callback, unique_id=f"bridge-probe-{connection}-{obj}"[:100]
                )
                accepted[obj], answers[obj] = True, "subscribed"
            except Rejected as exc:
                refused = "does not support subscription" in str(exc).lower()
                accepted[obj] = False if refused else None
                answers[obj] = f"refused: {said(exc)}"
        replaced = replaced_objects(self.rt, ours)
        self._remove_probe_subscriptions(callback)
        subscribe_ours_again(self.rt, self.report, ours, replaced)
        self.add(
            "allocation_webhooks",
            "Can job allocations be subscribed?",
            answers["joballocation"],
            accepted["joballocation"],
            why=""
            if accepted["joballocation"] is not None
            else "refused for another reason than the object",
        )
        # Objects the overview lists: accepted means this app may subscribe at all.
        listed = ("jobactivity", "job")
        self.add(
            "api_key_subscriptions",
            "May this app subscribe webhooks?",
            ", ".join(f"{obj}: {answers[obj]}" for obj in listed),
            True if any(accepted[obj] for obj in listed) else None,
            dialect=False,
            why="" if any(accepted[obj] for obj in listed) else "the listed objects were refused",
        )

    def _remove_probe_subscriptions(self, callback: str) -> None:
        for row in self.rt.sm8.list_subscriptions():
            if row.get("callback_url") == callback and row.get("uuid"):
                self.rt.sm8.delete_subscription(str(row["uuid"]))
        if any(r.get("callback_url") == callback for r in self.rt.sm8.list_subscriptions()):
            self.report.left_behind.append("servicem8 probe subscription")


def allocations_available(probe: ServiceM8Probe) -> None:
    """Whether the account has job allocations at all: the list of an add-on object the account
    lacks is refused for good (``refused_for_good``, docs/how-it-works.md#refusals). A fact, not
    a dialect switch; one call."""
    question = "Does the account have job allocations (the Job Allocations add-on)?"
    try:
        probe.transport.request(
            "GET",
            "joballocation.json",
            operation="probe.joballocation.list",
            params={"$filter": f"edit_date gt '{FAR_FUTURE}'"},
        )
    except ApiError as exc:
        if not refused_for_good("joballocation", exc):
            probe.add("allocations", question, f"not settled: {said(exc)}", None, dialect=False,
                      why="asked again at the next probe")  # fmt: skip
            return
        probe.add("allocations", question, f"allocations unavailable: {said(exc)}", False,
                  dialect=False, why="bookings from Coredination are fixed ones")  # fmt: skip
        return
    probe.add("allocations", question, "the list answers", True, dialect=False)
