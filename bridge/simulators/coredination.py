"""A stateful Coredination job API on loopback (docs/coredination-api.md#guesses).

Jobs with ids and uuids, ``PUT /job/{uuid}`` upsert, every documented list path and query
parameter with offset paging, events recorded for every change, resource operations (schedule,
unschedule, assign, and unassign, which the documents do not confirm), job state derived from
resources, users, and webhook subscriptions with event delivery.

Where Coredination's behaviour is unsettled, a ``CoredinationDialect`` picks the reading the
simulator plays (docs/coredination-api.md#guesses): the names of a job's stamps, the shape of a
resource, whether ``unassign`` and the users list exist, and what ``schedule`` does to a finished
resource. The simulator keeps its own records in one canonical form (``modified``/``created``,
resources with ``userId``) and renders them in the dialect only on the API's wire, so the admin
surface (``snapshot``, ``jobs``) reads the same under every dialect.

Further ASSUMPTIONS, one reading each: the ``/webhook`` subscription and its delivery body, and the
error body ``{"status", "message"}``.
"""

from __future__ import annotations

import json
import re
import uuid as uuidlib
from collections import deque
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from bridge.simulators.base import SimError, SimReply, SimRequest, SimServer

JOB_STATES = [
    "INITIAL",
    "DRAFT",
    "PUBLISHED",
    "ASSIGNED",
    "SCHEDULED",
    "IN_TRANSIT",
    "ON_STATION",
    "STARTED",
    "PAUSED",
    "FINISHED",
    "CANCELED",
    "CLOSED",
]
RESOURCE_STATES = [
    "UNASSIGNED",
    "DECLINED",
    "ASSIGNED",
    "SCHEDULED",
    "ACCEPTED",
    "INACTIVE",
    "IN_TRANSIT",
    "ON_STATION",
    "STARTED",
    "PAUSED",
    "FINISHED",
    "CANCELED",
]
DEFAULT_EXCLUDED = {"DRAFT", "FINISHED", "CANCELED", "CLOSED"}
JOB_FIELDS = {
    "title",
    "description",
    "allDay",
    "startTime",
    "endTime",
    "duration",
    "state",
    "destinations",
    "customFields",
    "customerId",
    "projectId",
    "orderId",
    "assetId",
    "priority",
}
LIST_OMITS = {"events", "signature", "documents", "items", "customFields"}
UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
RESOURCE_EVENT = {"ACCEPTED": "ACCEPT", "DECLINED": "DECLINE"}
# States a schedule / an assign replaces; any other state is a person already at work.
AT_WORK = frozenset({"ACCEPTED", "IN_TRANSIT", "ON_STATION", "STARTED", "PAUSED", "FINISHED"})
SCHEDULE_REPLACES = ("UNASSIGNED", "DECLINED", "ASSIGNED", "CANCELED", "INACTIVE")
ASSIGN_REPLACES = ("UNASSIGNED", "DECLINED", "SCHEDULED", "CANCELED", "INACTIVE")
# The wire names of a job's (change, creation) stamps under each ``stamps`` reading.
STAMP_NAMES: dict[str, tuple[str, str] | None] = {
    "modified": ("modified", "created"),
    "lastModified": ("lastModified", "creationTimeStamp"),
    "none": None,
}

Stamps = Literal["modified", "lastModified", "none"]
ResourceShape = Literal["userId", "user"]
ScheduleFinished = Literal["applied", "ignored"]


@dataclass(frozen=True)
class CoredinationDialect:
    """One reading of each Coredination behaviour the documents leave open
    (docs/coredination-api.md#guesses). The defaults follow the evidence where it leans one way
    and take the harder reading for the bridge where nothing is known, so that every test run
    against the default simulator also proves the bridge copes with the unfriendly answer.

    - ``stamps``: the names of a job's change / creation stamps: ``modified``/``created``,
      ``lastModified``/``creationTimeStamp`` (the names the one timestamped object in the
      documents uses: the default), or ``none``. The list's ``modified`` query parameter filters
      by the change time under every reading.
    - ``resource_shape``: a resource names its user flat (``{"userId": 5, ...}``) or nested
      (``{"user": {"id": 5, ...}, ...}``). Nothing is documented; nested is the default, as the
      shape a reader of the flat one would miss.
    - ``unassign``: whether ``PUT /job/{id}/unassign`` exists. Not documented; by default it does
      not, and answers ``missing_status``.
    - ``schedule_finished``: what ``schedule`` does to a ``FINISHED`` resource: ``ignored`` (the
      default: a silent no-op, the harder case) or ``applied`` (scheduled again).
    - ``users_endpoint``: whether ``GET /user`` exists; when not it answers ``missing_status``.
      It exists by default: without it no staff member can be matched by e-mail, and the demo
      and the end-to-end flows stand on that matching; the missing case has its own tests.
    - ``missing_status``: how an operation that does not exist answers: 404, as a server answers
      a path it has no route for (the default), or 405.
    """

    stamps: Stamps = "lastModified"
    resource_shape: ResourceShape = "user"
    unassign: bool = False
    schedule_finished: ScheduleFinished = "ignored"
    users_endpoint: bool = True
    missing_status: Literal[404, 405] = 404

    def __post_init__(self) -> None:
        choices: dict[str, tuple[object, ...]] = {
            "stamps": tuple(STAMP_NAMES),
            "resource_shape": ("userId", "user"),
            "unassign": (True, False),
            "schedule_finished": ("applied", "ignored"),
            "users_endpoint": (True, False),
            "missing_status": (404, 405),
        }
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value not in allowed or type(value) is not type(allowed[0]):
                raise ValueError(f"dialect {name} must be one of {list(allowed)}, not {value!r}")


# The reading the simulator played before it had dialects: flat resources, ``modified``/``created``
# stamps, an ``unassign`` that removes the resource like ``unschedule``.
LEGACY_DIALECT = CoredinationDialect(
    stamps="modified", resource_shape="userId", unassign=True, users_endpoint=True
)
# Every switch at the reading harder for the bridge: no stamps at all (the cursor must advance by
# the list time), nested resources, no unassign and a 405 for it, schedule on finished ignored.
# The users list stays: without it staff are linked by hand, which the sync runs do not do.
HOSTILE_DIALECT = CoredinationDialect(
    stamps="none", resource_shape="user", unassign=False, schedule_finished="ignored",
    missing_status=405,
)  # fmt: skip


def _ms_param(value: str | None, name: str) -> int | None:
    """A list parameter given as epoch ms or as a date / datetime string."""
    if value is None or value == "":
        return None
    if re.fullmatch(r"-?\d+", value):
        return int(value)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise SimError(400, f"Invalid timestamp for {name}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


def derive_state(resources: list[dict[str, Any]], current: str) -> str:
    """Job state from resource states (docs/coredination-api.md#states)."""
    states = [
        r["state"]
        for r in resources
        if r["state"] not in ("UNASSIGNED", "DECLINED", "CANCELED", "INACTIVE")
    ]
    if not states:
        return "PUBLISHED" if current not in ("DRAFT", "CANCELED", "CLOSED", "INITIAL") else current
    for active in ("STARTED", "ON_STATION", "IN_TRANSIT"):
        if active in states:
            return active
    if all(s == "FINISHED" for s in states):
        return "FINISHED"
    if "FINISHED" in states or "PAUSED" in states:
        return "PAUSED"
    if any(s in ("SCHEDULED", "ACCEPTED") for s in states):
        return "SCHEDULED"
    return "ASSIGNED"


class CoredinationSimulator(SimServer):
    name = "coredination"

    def __init__(
        self,
        *,
        api_keys: tuple[str, ...] = ("sim-coredination-key",),
        seed: int | None = None,
        clock: Any = None,
        dialect: CoredinationDialect | None = None,
    ) -> None:
        super().__init__(seed=seed, clock=clock)
        self.api_keys = set(api_keys)
        self.dialect = dialect or CoredinationDialect()
        # How many jobs each job-list call answered, oldest first: a quiet poll shows as a 0.
        self.listed: deque[int] = deque(maxlen=100_000)
        self.users: dict[int, dict[str, Any]] = {}
        self.jobs: dict[int, dict[str, Any]] = {}
        self.by_uuid: dict[str, int] = {}
        self.kept_at_work: dict[tuple[str, int], str] = {}  # (job uuid, user id) → op kept out
        self.deleted_jobs: dict[str, int] = {}  # job uuid → when it was deleted (until created)
        self.recreated: dict[str, tuple[int, int]] = {}  # job uuid → (deleted, created again)
        self.last_resource_event: dict[str, int] = {}  # job uuid → before its last deletion
        # When a client (the bridge) was last answered with each job, and that time as it was at
        # the job's last deletion: what the bridge could know of the job before it was deleted.
        self.served_job: dict[str, int] = {}
        self.served_before_deletion: dict[str, int] = {}
        self.webhooks: dict[int, dict[str, Any]] = {}
        self._next = {
            "user": 2_000_000,
            "job": 100_000,
            "event": 3_000_000,
            "resource": 500_000,
            "hook": 1,
        }
        self._routes_api()
        self._routes_admin()

    # --- wire conventions --------------------------------------------------------------------
    def now_ms(self) -> int:
        return int(self.now() * 1000)

    def authenticate(self, request: SimRequest) -> bool:
        key = request.header("api-key") or request.arg("api_key")
        return key in self.api_keys

    def error_reply(self, status: int, message: str) -> SimReply:
        return SimReply(status, {"status": status, "message": message})

    def unauthorized_reply(self) -> SimReply:
        return self.error_reply(401, "Missing or invalid API key")

    def rate_limited_reply(self, window: str) -> SimReply:
        return self.error_reply(429, f"Too many requests per {window}")

    def _id(self, kind: str) -> int:
        self._next[kind] += 1
        return self._next[kind]

    def _missing(self) -> SimError:
        """The answer to an operation this dialect does not have."""
        status = self.dialect.missing_status
        return SimError(status, "Resource not found" if status == 404 else "Method not allowed")

    # --- the dialect's wire form ----------------------------------------------------------------
    def wire_job(self, job: dict[str, Any], omit: frozenset[str] | set[str] = frozenset()) -> Any:
        """A job as the API sends it under the dialect: a copy, with the stamps renamed (or left
        out) and the resources in the dialect's shape."""
        out: dict[str, Any] = json.loads(
            json.dumps({k: v for k, v in job.items() if k not in omit})
        )
        changed, created = out.pop("modified", None), out.pop("created", None)
        names = STAMP_NAMES[self.dialect.stamps]
        if names is not None:
            out[names[0]], out[names[1]] = changed, created
        if self.dialect.resource_shape == "user" and isinstance(out.get("resources"), list):
            out["resources"] = [self._nested(r) for r in out["resources"]]
        return out

    def _nested(self, resource: Any) -> Any:
        """A resource with its user as a nested object (``resource_shape="user"``)."""
        if not isinstance(resource, dict) or "userId" not in resource:
            return resource
        rest = {k: v for k, v in resource.items() if k not in ("userId", "userUuid")}
        known = self.users.get(resource["userId"], {})
        user = {
            "id": resource["userId"],
            "uuid": resource.get("userUuid"),
            "firstName": known.get("firstName"),
            "lastName": known.get("lastName"),
        }
        return {**rest, "user": user}

    # --- users -------------------------------------------------------------------------------
    def add_user(self, email: str, first: str = "", last: str = "", **extra: Any) -> dict[str, Any]:
        with self.lock:
            user = {
                "id": self._id("user"),
                "uuid": str(uuidlib.UUID(int=self.rng.getrandbits(128), version=4)),
                "email": email,
                "firstName": first,
                "lastName": last,
                "active": True,
                **extra,
            }
            self.users[user["id"]] = user
            return dict(user)

    def _user(self, ref: str | None) -> dict[str, Any]:
        if not ref:
            raise SimError(400, "userId is required")
        if ref == "me":
            raise SimError(400, "'me' needs a user token; this request carries only an API key")
        if ref.isdigit() and int(ref) in self.users:
            return self.users[int(ref)]
        for user in self.users.values():
            if user["uuid"] == ref.lower():
                return user
        raise SimError(404, f"User {ref} not found")

    # --- jobs --------------------------------------------------------------------------------
    def _job(self, ref: str) -> dict[str, Any]:
        if ref.isdigit() and int(ref) in self.jobs:
            return self.jobs[int(ref)]
        job_id = self.by_uuid.get(ref.lower())
        if job_id is None:
            raise SimError(404, f"Job {ref} not found")
        return self.jobs[job_id]

    def _event(self, job: dict[str, Any], type_: str, **fields: Any) -> dict[str, Any]:
        event = {
            "accuracy": None,
            "comment": None,
            "destinationId": None,
            "discrepancy": False,
            "eventTimeStamp": self.now_ms(),
            "id": self._id("event"),
            "internal": False,
            "latitude": None,
            "longitude": None,
            "newResourceState": None,
            "newState": None,
            "toUserId": None,
            "type": type_,
            "userId": None,
            "uuid": str(uuidlib.UUID(int=self.rng.getrandbits(128), version=4)),
            "vehicleId": None,
        }
        event.update(fields)
        job["events"].append(event)
        job["modified"] = event["eventTimeStamp"]
        self._deliver(job, event)
        return event

    def _clean(self, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise SimError(400, "Job body must be a JSON object")
        clean: dict[str, Any] = {}
        for key, value in data.items():
            if key not in JOB_FIELDS:
                continue  # ASSUMPTION: id, uuid, resources, events and unknown keys are ignored.
            if key in ("startTime", "endTime") and value is not None:
                if isinstance(value, bool) or not isinstance(value, int | str):
                    raise SimError(406, f"{key} must be epoch milliseconds or a date")
                value = _ms_param(str(value), key)
            if key == "state" and value is not None and value not in JOB_STATES:
                raise SimError(406, f"Unknown job state {value!r}")
            if (
                key == "duration"
                and value is not None
                and (isinstance(value, bool) or not isinstance(value, int))
            ):
                raise SimError(406, "duration must be whole minutes")
            if key == "destinations" and not isinstance(value, list):
                raise SimError(406, "destinations must be a list")
            clean[key] = value
        return clean

    def create_job(self, data: dict[str, Any], uuid: str | None = None) -> dict[str, Any]:
        clean = self._clean(data)
        now = self.now_ms()
        job: dict[str, Any] = {
            "id": self._id("job"),
            "uuid": (uuid or str(uuidlib.UUID(int=self.rng.getrandbits(128), version=4))).lower(),
            "title": None,
            "description": None,
            "allDay": False,
            "startTime": None,
            "endTime": None,
            "duration": None,
            "state": "INITIAL",
            "resources": [],
            "destinations": [],
            "customFields": {},
            "created": now,
            "modified": now,
            "events": [],
            "reported": False,
        }
        job.update(clean)
        self.jobs[job["id"]] = job
        self.by_uuid[job["uuid"]] = job["id"]
        self._event(job, "CREATE", newState=job["state"])
        return job

    def update_job(self, job: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        clean = self._clean(data)
        job.update(clean)
        if "state" in clean:
            self._event(job, "STATE_OVERRIDE", newState=clean["state"])
        self._event(job, "UPDATE")
        return job

    def delete_job(self, job: dict[str, Any], *, by_client: bool = False) -> None:
        """Delete a job: a dispatcher's deletion (this method), or an API client's
        (``by_client``, the DELETE route)."""
        # A job created again and deleted at once by the client (the bridge taking back its own
        # update's creation) keeps the first deletion's record: for the checker, nothing
        # happened. A dispatcher deleting the job made again is a deletion of its own.
        prior = self.recreated.pop(job["uuid"], None)
        again = by_client and prior is not None and self.now_ms() - prior[1] < 10_000
        if not again:
            self.served_before_deletion[job["uuid"]] = self.served_job.get(job["uuid"], 0)
            # The last resource event before the deletion: the latest the bridge can know of,
            # had it read the job after it (``served_before_deletion`` says whether it did).
            self.last_resource_event[job["uuid"]] = max(
                (e["eventTimeStamp"] for e in job["events"] if e.get("toUserId") is not None),
                default=0,
            )
        self._event(job, "DELETE")
        del self.jobs[job["id"]]
        del self.by_uuid[job["uuid"]]
        for key in [k for k in self.kept_at_work if k[0] == job["uuid"]]:
            del self.kept_at_work[key]
        self.deleted_jobs[job["uuid"]] = prior[0] if again and prior else self.now_ms()

    def _kept(self, job: dict[str, Any], user: dict[str, Any], op: str, state: str) -> None:
        """An op that left a resource at work as it was: remembered (for the checker, which
        accepts such a pair as held) until the resource next changes."""
        if state in AT_WORK:
            self.kept_at_work[(job["uuid"], user["id"])] = op

    def set_resource(
        self, job: dict[str, Any], user: dict[str, Any], state: str | None, event_type: str
    ) -> bool:
        """Put ``user`` in ``state`` on ``job`` (None removes it). False if nothing changed."""
        current = next((r for r in job["resources"] if r["userId"] == user["id"]), None)
        if (current["state"] if current else None) != state:
            self.kept_at_work.pop((job["uuid"], user["id"]), None)
        if state is None:
            if current is None:
                return False
            job["resources"].remove(current)
            new_resource_state = "UNASSIGNED"
        else:
            if current is not None and current["state"] == state:
                return False
            if current is None:
                current = {
                    "id": self._id("resource"),
                    "userId": user["id"],
                    "userUuid": user["uuid"],
                    "state": state,
                    "reported": False,
                }
                job["resources"].append(current)
            current["state"] = state
            new_resource_state = state
        old_state = job["state"]
        job["state"] = derive_state(job["resources"], job["state"])
        self._event(
            job,
            event_type,
            toUserId=user["id"],
            newResourceState=new_resource_state,
            newState=job["state"] if job["state"] != old_state else None,
        )
        return True

    def resource_op(self, ref: str, op: str, user_ref: str | None) -> None:
        job = self._job(ref)
        user = self._user(user_ref)
        current = next((r for r in job["resources"] if r["userId"] == user["id"]), None)
        state = None if current is None else current["state"]
        if op == "schedule":
            # Scheduling keeps a resource that is already at work (accepted, started...) as it is;
            # a finished one as the dialect says.
            again = state == "FINISHED" and self.dialect.schedule_finished == "applied"
            if state is not None and state not in SCHEDULE_REPLACES and not again:
                self._kept(job, user, op, state)
                return
            self.set_resource(job, user, "SCHEDULED", "SCHEDULE")
        elif op == "assign":
            if state is not None and state not in ASSIGN_REPLACES:
                self._kept(job, user, op, state)
                return
            self.set_resource(job, user, "ASSIGNED", "ASSIGN")
        elif op == "unschedule":
            self.set_resource(job, user, None, "UNSCHEDULE")
        elif op == "unassign":
            # ASSUMPTION: /unassign exists and removes the resource like /unschedule.
            self.set_resource(job, user, None, "UNASSIGN")

    def user_action(self, job_ref: str, user_ref: str, state: str) -> None:
        """What a worker does in the Coredination app: accept, decline, start, finish..."""
        with self.lock:
            if state not in RESOURCE_STATES:
                raise SimError(400, f"Unknown resource state {state!r}")
            job = self._job(job_ref)
            user = self._user(user_ref)
            if not any(r["userId"] == user["id"] for r in job["resources"]):
                raise SimError(400, "User is not a resource on this job")
            self.set_resource(job, user, state, RESOURCE_EVENT.get(state, "RESOURCE_ACTION"))

    # --- lists -------------------------------------------------------------------------------
    def list_jobs(self, req: SimRequest, kind: str, ref: str | None) -> list[dict[str, Any]]:
        states_arg = req.arg("states")
        states = (
            {s.strip().upper() for s in states_arg.split(",") if s.strip()} if states_arg else None
        )
        by_resource_state = kind in ("mine", "user")
        if states is None:
            states = (
                set(JOB_STATES) - DEFAULT_EXCLUDED
                if not by_resource_state
                else set(RESOURCE_STATES) - {"FINISHED", "CANCELED"}
            )
        now = self.now_ms()
        start_of_today = now - now % 86_400_000
        from_ms = _ms_param(req.arg("from"), "from")
        from_ms = start_of_today if from_ms is None else from_ms
        to_ms = _ms_param(req.arg("to"), "to")
        modified = _ms_param(req.arg("modified"), "modified")
        untimed = req.flag("untimed")
        current = req.flag("current")
        if kind == "mine":
            raise SimError(
                400, "/job/list/mine needs a user token; this request carries only an API key"
            )
        user = self._user(ref) if kind == "user" else None
        rows = []
        for job in self.jobs.values():
            if kind == "unassigned" and job["resources"]:
                continue
            if (
                kind in ("customer", "project", "order", "asset")
                and str(job.get(f"{kind}Id")) != ref
            ):
                continue
            if user is not None:
                resource = next((r for r in job["resources"] if r["userId"] == user["id"]), None)
                if resource is None or resource["state"] not in states:
                    continue
            elif job["state"] not in states:
                continue
            start = job["startTime"]
            if start is None:
                if not untimed:
                    continue
            else:
                if to_ms is not None and start >= to_ms:
                    continue
                if start < from_ms and not (
                    current and job["state"] not in ("FINISHED", "CANCELED", "CLOSED")
                ):
                    continue
            if modified is not None and job["modified"] < modified:
                continue
            rows.append(job)
        rows.sort(key=lambda j: (j["startTime"] is None, j["startTime"] or 0, j["id"]))
        offset = int(req.arg("offset", "0") or 0)
        limit_arg = req.arg("limit")
        rows = rows[offset:] if limit_arg is None else rows[offset : offset + int(limit_arg)]
        return [self.wire_job(j, LIST_OMITS) for j in rows]

    # --- webhooks ----------------------------------------------------------------------------
    def _deliver(self, job: dict[str, Any], event: dict[str, Any]) -> None:
        for hook in self.webhooks.values():
            if "job" not in hook["channels"]:
                continue
            if hook.get("filter") and not re.search(hook["filter"], event["type"]):
                continue
            body = {
                "channel": "job",
                "type": event["type"],
                "jobId": job["id"],
                "jobUuid": job["uuid"],
                "eventTimeStamp": event["eventTimeStamp"],
                "event": event,
            }
            self.deliverer.post(hook["url"], json.dumps(body).encode())

    # --- routes ------------------------------------------------------------------------------
    def _routes_api(self) -> None:
        def version(req: SimRequest, p: dict[str, str]) -> SimReply:
            return SimReply(200, {"version": "1", "simulator": True})

        def users(req: SimRequest, p: dict[str, str]) -> SimReply:
            if not self.dialect.users_endpoint:
                raise self._missing()
            rows = list(self.users.values())
            offset = int(req.arg("offset", "0") or 0)
            limit = req.arg("limit")
            rows = rows[offset:] if limit is None else rows[offset : offset + int(limit)]
            return SimReply(200, [dict(u) for u in rows])

        def user(req: SimRequest, p: dict[str, str]) -> SimReply:
            return SimReply(200, dict(self._user(p["id"])))

        def served(job: dict[str, Any]) -> dict[str, Any]:
            """A job a client is answered with: it knows the job as it is now."""
            self.served_job[str(job["uuid"])] = self.now_ms()
            return job

        def job_list(req: SimRequest, p: dict[str, str]) -> SimReply:
            rows = self.list_jobs(req, p.get("kind") or "all", p.get("ref"))
            self.listed.append(len(rows))
            for row in rows:
                if isinstance(row, dict) and row.get("uuid") in self.by_uuid:
                    served(row)
            return SimReply(200, rows)

        def job_get(req: SimRequest, p: dict[str, str]) -> SimReply:
            return SimReply(200, self.wire_job(served(self._job(p["id"]))))

        def job_create(req: SimRequest, p: dict[str, str]) -> SimReply:
            return SimReply(200, self.wire_job(served(self.create_job(req.json() or {}))))

        def job_put(req: SimRequest, p: dict[str, str]) -> SimReply:
            ref = p["id"]
            try:
                job = self._job(ref)
            except SimError:
                if not UUID.match(ref):
                    raise
                job = self.create_job(req.json() or {}, uuid=ref)
                deleted = self.deleted_jobs.pop(job["uuid"], None)
                if deleted is not None:
                    self.recreated[job["uuid"]] = (deleted, self.now_ms())
                return SimReply(200, self.wire_job(served(job)))
            return SimReply(200, self.wire_job(served(self.update_job(job, req.json() or {}))))

        def job_delete(req: SimRequest, p: dict[str, str]) -> SimReply:
            self.delete_job(self._job(p["id"]), by_client=True)
            return SimReply(200, None)

        def events(req: SimRequest, p: dict[str, str]) -> SimReply:
            return SimReply(200, [dict(e) for e in served(self._job(p["id"]))["events"]])

        def resource(req: SimRequest, p: dict[str, str]) -> SimReply:
            if p["op"] == "unassign" and not self.dialect.unassign:
                raise self._missing()
            self.resource_op(p["id"], p["op"], req.arg("userId"))
            served(self._job(p["id"]))
            return SimReply(200, None)

        def note(req: SimRequest, p: dict[str, str]) -> SimReply:
            form = req.form()
            self._event(
                self._job(p["id"]),
                "NOTE",
                comment=form.get("text"),
                discrepancy="discrepancy" in form,
            )
            return SimReply(200, None)

        def hook_create(req: SimRequest, p: dict[str, str]) -> SimReply:
            data = req.json() or {}
            url = data.get("url")
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                raise SimError(400, "url is required")
            channels = data.get("channels") or ["job"]
            if isinstance(channels, str):
                channels = [c.strip() for c in channels.split(",") if c.strip()]
            pattern = data.get("filter")
            if pattern:
                try:
                    re.compile(pattern)
                except re.error:
                    raise SimError(400, "filter is not a valid regular expression") from None
            hook: dict[str, Any] = {
                "id": self._id("hook"),
                "url": url,
                "channels": channels,
                "filter": pattern,
            }
            self.webhooks[hook["id"]] = hook
            return SimReply(200, dict(hook))

        def hook_list(req: SimRequest, p: dict[str, str]) -> SimReply:
            return SimReply(200, [dict(h) for h in self.webhooks.values()])

        def hook_delete(req: SimRequest, p: dict[str, str]) -> SimReply:
            if self.webhooks.pop(int(p["id"]), None) is None:
                raise SimError(404, "Webhook not found")
            return SimReply(200, None)

        base = "/api/1"
        self.route("GET", f"{base}/version", "version", version)
        self.route("GET", f"{base}/user", "user.list", users)
        self.route("GET", rf"{base}/user/(?P<id>[^/]+)", "user.get", user)
        self.route(
            "GET", rf"{base}/job(?:/list/(?P<kind>all|unassigned|mine))?", "job.list", job_list
        )
        self.route(
            "GET",
            rf"{base}/job/list/(?P<kind>user|customer|project|order|asset)/(?P<ref>[^/]+)",
            "job.list",
            job_list,
        )
        self.route("POST", f"{base}/job", "job.create", job_create)
        self.route("GET", rf"{base}/job/(?P<id>[^/]+)", "job.get", job_get)
        self.route("PUT", rf"{base}/job/(?P<id>[^/]+)", "job.put", job_put)
        self.route("DELETE", rf"{base}/job/(?P<id>[^/]+)", "job.delete", job_delete)
        self.route("GET", rf"{base}/job/(?P<id>[^/]+)/events", "job.events", events)
        self.route(
            "PUT",
            rf"{base}/job/(?P<id>[^/]+)/(?P<op>schedule|unschedule|assign|unassign)",
            "job.{op}",
            resource,
        )
        self.route("POST", rf"{base}/job/(?P<id>[^/]+)/note", "job.note", note)
        self.route("POST", f"{base}/webhook", "webhook.create", hook_create)
        self.route("GET", f"{base}/webhook", "webhook.list", hook_list)
        self.route("DELETE", rf"{base}/webhook/(?P<id>\d+)", "webhook.delete", hook_delete)

    def _api_call(
        self, name: str, handler: Any, request: SimRequest, params: dict[str, str], conn: Any
    ) -> SimReply | None:
        if name == "version":  # GET /version needs no key (docs/coredination-api.md#authentication)
            return self._call(handler, request, params)
        return super()._api_call(name, handler, request, params, conn)

    # --- admin -------------------------------------------------------------------------------
    def _routes_admin(self) -> None:
        def seed(req: SimRequest, p: dict[str, str]) -> SimReply:
            return SimReply(200, self.seed(req.json() or {}))

        def state(req: SimRequest, p: dict[str, str]) -> SimReply:
            return SimReply(200, self.snapshot())

        def act(req: SimRequest, p: dict[str, str]) -> SimReply:
            data = req.json() or {}
            self.user_action(p["id"], str(data.get("userId")), str(data.get("state")))
            return SimReply(200, {"ok": True})

        def op(req: SimRequest, p: dict[str, str]) -> SimReply:
            data = req.json() or {}
            self.resource_op(p["id"], str(data.get("op")), str(data.get("userId")))
            return SimReply(200, {"ok": True})

        def reset(req: SimRequest, p: dict[str, str]) -> SimReply:
            self.reset()
            return SimReply(200, {"ok": True})

        def dialect(req: SimRequest, p: dict[str, str]) -> SimReply:
            if req.method == "POST":
                self.set_dialect(**(req.json() or {}))
            return SimReply(200, asdict(self.dialect))

        self.route("POST", "/_admin/seed", "admin", seed, api=False)
        self.route("GET", "/_admin/state", "admin", state, api=False)
        self.route("POST", r"/_admin/job/(?P<id>[^/]+)/action", "admin", act, api=False)
        self.route("POST", r"/_admin/job/(?P<id>[^/]+)/op", "admin", op, api=False)
        self.route("POST", "/_admin/reset", "admin", reset, api=False)
        for method in ("GET", "POST"):
            self.route(method, "/_admin/dialect", "admin", dialect, api=False)

    def reset_counts(self) -> None:
        super().reset_counts()
        with self.lock:
            self.listed.clear()

    def seed(self, data: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {"users": [], "jobs": []}
        with self.lock:
            for row in data.get("users", []):
                out["users"].append(
                    self.add_user(row["email"], row.get("firstName", ""), row.get("lastName", ""))
                )
            for row in data.get("jobs", []):
                job = self.create_job(row, uuid=row.get("uuid"))
                out["jobs"].append({"id": job["id"], "uuid": job["uuid"]})
        return out

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return json.loads(  # type: ignore[no-any-return]
                json.dumps(
                    {
                        "users": list(self.users.values()),
                        "jobs": list(self.jobs.values()),
                        "webhooks": list(self.webhooks.values()),
                    }
                )
            )

    def reset(self) -> None:
        with self.lock:
            self.users.clear()
            self.jobs.clear()
            self.by_uuid.clear()
            self.kept_at_work.clear()
            self.deleted_jobs.clear()
            self.recreated.clear()
            self.last_resource_event.clear()
            self.served_job.clear()
            self.served_before_deletion.clear()
            self.webhooks.clear()
            self.reset_counts()
            self.limiter.clear()

    def api_url(self) -> str:
        """The value for COREDINATION_BASE_URL."""
        return f"{self.root_url}/api/1"
