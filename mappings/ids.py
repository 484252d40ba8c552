"""Deterministic identities: the upsert (docs/coredination-api.md#jobs) and the client-supplied
uuid on create (docs/servicem8-api.md#writes) make every write the bridge repeats land on the same
record.

The Coredination job for ServiceM8 job J is ``uuid5(ns, "job:" + J)``, so ``PUT /job/{uuid}`` is an
idempotent upsert. An allocation the bridge creates in ServiceM8 for user U on Coredination job C is
``uuid5(ns, "allocation:" + C + ":" + U)``, and a fixed booking (a job activity) it creates is
``uuid5(ns, "activity:" + C + ":" + U)``, so a retried create lands on the same record, and the
bridge knows its own bookings of either kind when it reads them back. ``ns`` is per connection, so
two connections never derive the same ids.
"""

from __future__ import annotations

from uuid import NAMESPACE_URL, UUID, uuid5

_ROOT = uuid5(NAMESPACE_URL, "urn:sm8-cd-bridge")


def connection_namespace(connection_id: str) -> UUID:
    if not connection_id:
        raise ValueError("connection id must not be empty")
    return uuid5(_ROOT, f"connection:{connection_id}")


def cd_job_uuid(ns: UUID, sm8_job_uuid: str) -> str:
    return str(uuid5(ns, f"job:{sm8_job_uuid.lower()}"))


def sm8_allocation_uuid(ns: UUID, cd_job_uuid: str, cd_user_id: int | str) -> str:
    return str(uuid5(ns, f"allocation:{cd_job_uuid.lower()}:{cd_user_id}"))


def sm8_activity_uuid(ns: UUID, cd_job_uuid: str, cd_user_id: int | str) -> str:
    return str(uuid5(ns, f"activity:{cd_job_uuid.lower()}:{cd_user_id}"))
