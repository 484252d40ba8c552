"""The Coredination half of ``sm8cd probe`` (docs/probe.md#coredination)."""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Mapping
from typing import Any

from bridge.coredination.models import ALL_JOB_STATES_CSV
from bridge.errors import ApiError, PermanentError
from bridge.probe._common import SCRATCH_TITLE, Report, said
from bridge.process.runtime import Runtime


class CoredinationProbe:
    def __init__(self, rt: Runtime, report: Report) -> None:
        self.rt, self.report = rt, report
        self.transport = rt.cd.transport
        self.missing: int | None = None  # how a missing operation answered, once one did

    def add(self, name: str, question: str, saw: str, reading: Any = None, **kw: Any) -> None:
        self.report.add("coredination", name, question, saw, reading, **kw)

    def run(self, writes: bool) -> None:
        user = self.users()
        rows = self.transport.request(
            "GET",
            f"job?limit=50&states={ALL_JOB_STATES_CSV}&untimed&current",
            operation="probe.job.list",
        ).json()
        rows = [r for r in rows if isinstance(r, Mapping)] if isinstance(rows, list) else []
        self.stamps(rows, "jobs listed")
        self.resource_shape(rows, "jobs listed")
        if writes:
            self.scratch_job(user)
        else:
            self.add(
                "unassign",
                "Does PUT /job/{id}/unassign exist?",
                "not probed read-only",
                why="run with --writes",
            )
        self.add(
            "schedule_finished",
            "What does schedule do to a FINISHED resource?",
            "not probed: no API operation finishes a resource",
            why="the bridge reads the job back after a schedule",
        )
        self.add(
            "missing_status",
            "How does a missing operation answer?",
            f"HTTP {self.missing}" if self.missing else "no missing operation met",
            self.missing,
            why="" if self.missing else "every operation tried exists",
        )

    def users(self) -> int | None:
        question = "Is there a users list (GET /user)?"
        try:
            rows = self.transport.request("GET", "user?limit=1", operation="probe.user.list").json()
        except PermanentError as exc:
            if exc.status in (404, 405):
                self.missing = exc.status
                self.add(
                    "users_endpoint",
                    question,
                    f"HTTP {exc.status}",
                    False,
                    why="staff are linked by hand ('sm8cd staff link')",
                )
            else:
                self.add("users_endpoint", question, f"refused: {said(exc)}")
            return self._linked_user()
        self.add("users_endpoint", question, "listed", True)
        first = rows[0] if isinstance(rows, list) and rows else None
        user_id = first.get("id") if isinstance(first, Mapping) else None
        return int(user_id) if isinstance(user_id, int) else self._linked_user()

    def _linked_user(self) -> int | None:
        users = self.rt.stores.staff.staff_map().u2s
        return min(users) if users else None

    def stamps(self, rows: list[Mapping[str, Any]], where: str) -> None:
        question = "What are a job's change stamps called?"
        if not rows:
            self.add(
                "stamps",
                question,
                f"no {where}",
                why="run with --writes, or probe once a job exists",
            )
            return
        keys = set().union(*(row.keys() for row in rows))
        reading = next((n for n in ("lastModified", "modified") if n in keys), "none")
        self.add("stamps", question, f"{reading} on {where}", reading)

    def resource_shape(self, rows: list[Mapping[str, Any]], where: str) -> None:
        question = "How does a resource name its user?"
        resources = [
            r for row in rows for r in (row.get("resources") or []) if isinstance(r, Mapping)
        ]
        if not resources:
            self.add(
                "resource_shape",
                question,
                f"no resources on {where}",
                why="run with --writes and a user to schedule",
            )
            return
        flat = any("userId" in r for r in resources)
        reading = (
            "userId"
            if flat
            else "user"
            if any(isinstance(r.get("user"), Mapping) for r in resources)
            else None
        )
        self.add("resource_shape", question, f"{reading or 'neither shape'} on {where}", reading)

    def _job(self, uuid: str) -> list[Mapping[str, Any]]:
        row = self.transport.request("GET", f"job/{uuid}", operation="probe.job.get").json()
        return [row] if isinstance(row, Mapping) else []

    def scratch_job(self, user: int | None) -> None:
        uuid = str(uuidlib.uuid4())
        self.transport.request(
            "PUT",
            f"job/{uuid}",
            operation="probe.job.put",
            json_body={"title": SCRATCH_TITLE, "description": SCRATCH_TITLE},
        )
        try:
            self.stamps(self._job(uuid), "the scratch job")
            if user is None:
                self.add(
                    "unassign",
                    "Does PUT /job/{id}/unassign exist?",
                    "no user to try it with",
                    why="match or link one staff member first",
                )
                return
            self._resource_op(uuid, "schedule", user)
            self.resource_shape(self._job(uuid), "the scratch job")
            self.unassign(uuid, user)
        finally:
            self._remove(uuid)

    def _resource_op(self, uuid: str, op: str, user: int) -> None:
        self.transport.request("PUT", f"job/{uuid}/{op}?userId={user}", operation=f"probe.job.{op}")

    def unassign(self, uuid: str, user: int) -> None:
        question = "Does PUT /job/{id}/unassign exist?"
        try:
            self._resource_op(uuid, "unassign", user)
        except PermanentError as exc:
            if exc.status not in (404, 405):
                self.add("unassign", question, f"refused: {said(exc)}")
                return
            self.missing = self.missing or exc.status
            self.add(
                "unassign",
                question,
                f"HTTP {exc.status}",
                False,
                why="the bridge sends unschedule instead",
            )
            self._resource_op(uuid, "unschedule", user)
            return
        self.add("unassign", question, "answered", True)

    def _remove(self, uuid: str) -> None:
        try:
            self.transport.request("DELETE", f"job/{uuid}", operation="probe.job.delete")
            self._job(uuid)
        except PermanentError as exc:
            if exc.status == 404:
                return
            self.report.left_behind.append(f"coredination job {uuid} ({said(exc)})")
        except ApiError as exc:
            self.report.left_behind.append(f"coredination job {uuid} ({said(exc)})")
        else:
            self.report.left_behind.append(f"coredination job {uuid} (still there)")
