"""Coredination wire models, after the Job API page (docs/coredination-api.md#jobs).

Times are epoch milliseconds UTC (docs/coredination-api.md#conventions), read here as aware
datetimes. Unknown fields are kept. States are kept as plain strings so a state Coredination adds
later does not fail parsing; the known sets below are what the mapping rules reason about.

ASSUMPTIONS (not in the documents; the simulator plays each reading, see its dialects):
- A resource in ``job.resources[]`` names its user either flat, ``{"userId", "userUuid", ...}``,
  or nested, ``{"user": {"id", "uuid", ...}, ...}``; both are read
  (docs/coredination-api.md#resources).
- Users are listed at ``GET /user`` as ``{"id", "uuid", "email", "firstName", "lastName",
  "active"}``.
- The "common attributes" of a job carry its change and creation stamps (epoch ms) as
  ``modified``/``created`` or as ``lastModified``/``creationTimeStamp``, or not at all; either
  name is read (docs/coredination-api.md#change-stamps).
- A webhook subscription is ``{"id", "url", "channels": [...], "filter": "<regex>"}`` at
  ``/webhook``, and a delivery is ``{"channel", "type", "jobId", "jobUuid", "eventTimeStamp",
  "event": {...}}``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    model_validator,
)

from mappings.stamps import parse_cd_time, to_epoch_ms

JOB_STATES = frozenset(
    {
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
    }
)
RESOURCE_STATES = frozenset(
    {
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
    }
)
# The default job list leaves these out; a poll for every change must ask for them explicitly
# (docs/coredination-api.md#lists).
ALL_JOB_STATES_CSV = ",".join(sorted(JOB_STATES))

Millis = Annotated[
    datetime | None,
    BeforeValidator(parse_cd_time),
    PlainSerializer(to_epoch_ms, return_type=int | None),
]


class CdModel(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)


class CdUser(CdModel):
    id: int
    uuid: str | None = None
    email: str | None = None
    first_name: str | None = Field(default=None, alias="firstName")
    last_name: str | None = Field(default=None, alias="lastName")
    active: bool = True

    @property
    def display_name(self) -> str:
        return " ".join(p for p in (self.first_name, self.last_name) if p) or str(self.id)


class CdResource(CdModel):
    """A user on a job. Read from either shape (docs/coredination-api.md#resources): the user's
    id flat as ``userId``, or inside a nested ``user`` object."""

    user_id: int = Field(alias="userId")
    user_uuid: str | None = Field(default=None, alias="userUuid")
    state: str = "UNASSIGNED"
    reported: bool = False
    id: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _flat_user(cls, data: Any) -> Any:
        """Lift ``user.id`` / ``user.uuid`` to ``userId`` / ``userUuid`` when only the nested
        shape is present; a flat ``userId`` wins when both are."""
        if not isinstance(data, dict) or "userId" in data or "user_id" in data:
            return data
        user = data.get("user")
        if isinstance(user, dict):
            lifted = {"userId": user.get("id"), "userUuid": user.get("uuid")}
        elif isinstance(user, int | str) and not isinstance(user, bool):
            lifted = {"userId": user}
        else:
            return data
        return {**{k: v for k, v in lifted.items() if v is not None}, **data}


class CdEvent(CdModel):
    id: int | None = None
    uuid: str | None = None
    type: str
    event_time: Millis = Field(default=None, alias="eventTimeStamp")
    user_id: int | None = Field(default=None, alias="userId")
    to_user_id: int | None = Field(default=None, alias="toUserId")
    new_state: str | None = Field(default=None, alias="newState")
    new_resource_state: str | None = Field(default=None, alias="newResourceState")
    comment: str | None = None


class CdLocation(CdModel):
    place_name: str | None = Field(default=None, alias="placeName")
    latitude: float | None = None
    longitude: float | None = None


class CdDestination(CdModel):
    location: CdLocation | None = None


class CdJob(CdModel):
    """A Coredination job. List items carry no ``events`` (docs/coredination-api.md#jobs)."""

    id: int | None = None
    uuid: str | None = None
    title: str | None = None
    description: str | None = None
    all_day: bool = Field(default=False, alias="allDay")
    start_time: Millis = Field(default=None, alias="startTime")
    end_time: Millis = Field(default=None, alias="endTime")
    duration: int | None = None
    state: str | None = None
    resources: list[CdResource] = Field(default_factory=list)
    destinations: list[CdDestination] = Field(default_factory=list)
    events: list[CdEvent] | None = None
    # Either name of each stamp is read; with neither, the stamp is None and the poll's cursor
    # follows the listing time instead (docs/coredination-api.md#change-stamps).
    created: Millis = Field(
        default=None, validation_alias=AliasChoices("created", "creationTimeStamp")
    )
    modified: Millis = Field(
        default=None, validation_alias=AliasChoices("modified", "lastModified")
    )

    def resource_for(self, user_id: int) -> CdResource | None:
        return next((r for r in self.resources if r.user_id == user_id), None)
