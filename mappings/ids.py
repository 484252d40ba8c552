"""Deterministic identities: the upsert (docs/coredination-api.md#jobs) and the client-supplied
uuid on create (docs/servicem8-api.md#writes) make every write the bridge repeats land on the same
record.

The Coredination job for ServiceM8 job J is ``uuid5(ns, "job:" + J)``, so ``PUT /job/{uuid}`` is an
idempotent upsert. An allocation the bridge creates in ServiceM8 for user U on Coredination job C is
``uuid5(ns, "allocation:" + C + ":" + U)``, and a fixed booking (a job activity) it creates is
``uuid5(ns, "activity:" + C + ":" + U)``, so a retried create lands on the same record, and the
bridge knows its own bookings of either kind when it reads them back. When the office has given
such a booking to someone else, the person's next one takes ``… + ":2"`` (then 3, …): the first
uuid no other person's booking on the job holds (``free_derived``). ``ns`` is per connection, so
two connections never derive the same ids.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from uuid import NAMESPACE_URL, UUID, uuid5

_ROOT = uuid5(NAMESPACE_URL, "urn:sm8-cd-bridge")


def connection_namespace(connection_id: str) -> UUID:
    if not connection_id:
        raise ValueError("connection id must not be empty")
    return uuid5(_ROOT, f"connection:{connection_id}")


def cd_job_uuid(ns: UUID, sm8_job_uuid: str) -> str:
    return str(uuid5(ns, f"job:{sm8_job_uuid.lower()}"))


# How many uuids the bridge may derive for one person's booking of one kind on one job: the
# first, and others while the office has moved the bridge's earlier bookings to other people.
DERIVED_UUIDS = 4


def sm8_allocation_uuid(ns: UUID, cd_job_uuid: str, cd_user_id: int | str, n: int = 1) -> str:
    return str(uuid5(ns, f"allocation:{cd_job_uuid.lower()}:{cd_user_id}{_nth(n)}"))


def sm8_activity_uuid(ns: UUID, cd_job_uuid: str, cd_user_id: int | str, n: int = 1) -> str:
    return str(uuid5(ns, f"activity:{cd_job_uuid.lower()}:{cd_user_id}{_nth(n)}"))


def _nth(n: int) -> str:
    return "" if n == 1 else f":{n}"


def free_derived(
    derive: Callable[[UUID, str, int | str, int], str],
    ns: UUID,
    cd_job_uuid: str,
    cd_user_id: int | str,
    taken: Collection[str],
) -> str:
    """The first uuid ``derive`` gives for the person's booking that no other person's booking
    holds (``taken``): a booking the bridge made for them that the office has since given to
    someone else keeps its uuid, and the person's new booking takes the next. The same state
    gives the same uuid, so a create repeated after a lost answer still lands on one record."""
    for n in range(1, DERIVED_UUIDS + 1):
        uuid = derive(ns, cd_job_uuid, cd_user_id, n)
        if uuid not in taken:
            return uuid
    return derive(ns, cd_job_uuid, cd_user_id, DERIVED_UUIDS + 1)


def is_derived(
    derive: Callable[[UUID, str, int | str, int], str],
    ns: UUID,
    cd_job_uuid: str,
    cd_user_id: int | str,
    uuid: str,
) -> bool:
    """Whether ``uuid`` is one ``derive`` gives for the person's booking on the job (the bridge
    made it). Stops at the first match: most bookings the bridge made hold the first."""
    return any(derive(ns, cd_job_uuid, cd_user_id, n) == uuid for n in range(1, DERIVED_UUIDS + 2))


def derived_uuids(ns: UUID, cd_job_uuid: str, cd_user_id: int | str) -> frozenset[str]:
    """Every uuid the bridge may derive for the person's bookings of both kinds on the job."""
    return frozenset(
        derive(ns, cd_job_uuid, cd_user_id, n)
        for derive in (sm8_allocation_uuid, sm8_activity_uuid)
        for n in range(1, DERIVED_UUIDS + 2)
    )
