"""How one linked job is packed into a Redis hash field: MessagePack, ids as 16 raw bytes.

Pure: no Redis here (``bridge.store`` owns the keys). The format is what makes the link store small
(issue 6 asks for at most 400 bytes of Redis per link): one value per job instead of a hash of JSON
fields, uuids as bytes, Coredination resource states and pair snapshots as small numbers, and the
Coredination job uuid left out because it is derived from the ServiceM8 job (``mappings.ids``).

A record is a MessagePack array; position 0 is the format version, so a later layout can read an
older one. Version 1::

    [1, details, staff, allocations, written, cd, fields_fp, pairs]

    details      None | [active, number, description, address, lat, lng]
    staff        [staff uuid, ...]: every staff member named below, once; referred to by position
    allocations  [[uuid, staff, active, date, window, completed, expires, edited, by_bridge], ...]
                 window: None | [start minute, end minute]
    written      {allocation uuid: when the bridge wrote it (epoch seconds)}
    cd           None | [id, uuid or None (= derived), {user: state}, {user: event time},
                         modified, start]
    fields_fp    None | the fingerprint of the job body last written, as bytes when it is hex
    pairs        {staff: sm8 presence * 4 + cd presence}

Times are epoch milliseconds counted from ``EPOCH_MS`` and folded so that whole seconds (every
ServiceM8 stamp) fit in four bytes: ``2 * seconds`` when the time is a whole second, else
``2 * milliseconds + 1``.

Every uuid is 16 bytes when it is a canonical (lower-case, hyphenated) uuid and text otherwise,
which MessagePack keeps apart (bin vs str). A known resource state is its index in
``CD_STATES`` (never reorder it: only append); an unknown one stays text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import msgpack

from mappings.rules import AllocationFacts, JobFacts, PairSnapshot, Presence

FORMAT = 1
EPOCH_MS = 1_577_836_800_000  # 2020-01-01T00:00:00Z

# Append only: stored records refer to these by position.
CD_STATES = (
    "UNASSIGNED", "DECLINED", "CANCELED", "INACTIVE", "ASSIGNED", "SCHEDULED", "ACCEPTED",
    "IN_TRANSIT", "ON_STATION", "STARTED", "PAUSED", "FINISHED",
)  # fmt: skip
PRESENCES = (Presence.ABSENT, Presence.ASSIGNED, Presence.SCHEDULED, Presence.FINISHED)
_STATE_CODE = {s: i for i, s in enumerate(CD_STATES)}
_PRESENCE_CODE = {p: i for i, p in enumerate(PRESENCES)}


@dataclass
class CdView:
    """The Coredination side of a linked job as last seen or written by the bridge."""

    id: int | None
    uuid: str
    resources: dict[int, str] = field(default_factory=dict)  # user id → resource state
    changed_ms: dict[int, int] = field(default_factory=dict)  # user id → last event time
    modified_ms: int | None = None
    start_ms: int | None = None


@dataclass
class JobRecord:
    """Everything the bridge holds of one linked job."""

    uuid: str
    details: JobFacts | None = None
    allocations: dict[str, AllocationFacts] = field(default_factory=dict)
    written: dict[str, float] = field(default_factory=dict)  # allocation → when we wrote it
    cd: CdView | None = None
    fields_fp: str | None = None
    pairs: dict[str, PairSnapshot] = field(default_factory=dict)


class RecordError(ValueError):
    """A stored record this version cannot read."""


class NewerRecord(RecordError):
    """A record written by a newer version of the bridge: never overwrite it with less."""


def id_bytes(text: str) -> bytes | None:
    """The 16 bytes of a canonical uuid; ``None`` for anything else."""
    if len(text) != 36:
        return None
    try:
        parsed = UUID(text)
    except ValueError:
        return None
    return parsed.bytes if str(parsed) == text else None


def pack_id(text: str) -> bytes | str:
    return id_bytes(text) or text


def unpack_id(value: bytes | str) -> str:
    return str(UUID(bytes=value)) if isinstance(value, bytes) else value


def encode(record: JobRecord, derived_cd_uuid: str) -> bytes:
    details = None
    if record.details is not None:
        d = record.details
        details = [d.active, d.number, d.description, d.address, d.lat, d.lng]
    staff: dict[str, int] = {}
    for name in [a.staff_uuid for a in record.allocations.values()] + list(record.pairs):
        if name is not None:
            staff.setdefault(name, len(staff))
    allocations = [
        [
            pack_id(a.uuid),
            staff[a.staff_uuid] if a.staff_uuid is not None else None,
            a.active,
            _fold(a.date_ms),
            list(a.window) if a.window is not None else None,
            _fold(a.completed_ms),
            _fold(a.expires_ms),
            _fold(a.edited_ms),
            a.by_bridge,
        ]
        for a in record.allocations.values()
    ]
    cd = None
    if record.cd is not None:
        v = record.cd
        cd = [
            v.id,
            None if v.uuid == derived_cd_uuid else pack_id(v.uuid),
            {user: _STATE_CODE.get(state, state) for user, state in v.resources.items()},
            {user: _fold(t) for user, t in v.changed_ms.items()},
            _fold(v.modified_ms),
            _fold(v.start_ms),
        ]
    fp: bytes | str | None = record.fields_fp
    if record.fields_fp is not None:
        fp = _hex_bytes(record.fields_fp) or record.fields_fp
    pairs = {
        staff[name]: _PRESENCE_CODE[p.sm8] * 4 + _PRESENCE_CODE[p.cd]
        for name, p in record.pairs.items()
    }
    written = {pack_id(a): at for a, at in record.written.items()}
    names = [pack_id(name) for name in staff]
    packed = [FORMAT, details, names, allocations, written, cd, fp, pairs]
    return bytes(msgpack.packb(packed, use_bin_type=True))


def _fold(ms: int | None) -> int | None:
    if ms is None:
        return None
    since = ms - EPOCH_MS
    return since // 1000 * 2 if since % 1000 == 0 else since * 2 + 1


def _unfold(value: int | None) -> int | None:
    return None if value is None else _unfold_ms(value)


def _unfold_ms(value: int) -> int:
    return EPOCH_MS + (value // 2 * 1000 if value % 2 == 0 else (value - 1) // 2)


def _hex_bytes(text: str) -> bytes | None:
    try:
        packed = bytes.fromhex(text)
    except ValueError:
        return None
    return packed if packed.hex() == text else None


def decode(job_uuid: str, raw: bytes, derived_cd_uuid: str) -> JobRecord:
    try:
        data = msgpack.unpackb(raw, raw=False, strict_map_key=False, use_list=True)
    except Exception as exc:  # msgpack raises several kinds for damaged bytes
        raise RecordError(f"stored record of job {job_uuid} cannot be read: {exc}") from exc
    if isinstance(data, list) and data and isinstance(data[0], int) and data[0] > FORMAT:
        raise NewerRecord(
            f"stored record of job {job_uuid} has format {data[0]}, this version reads {FORMAT}:"
            " a newer bridge wrote it (finish the upgrade of every worker)"
        )
    try:
        return _decode(job_uuid, data, derived_cd_uuid)
    except RecordError:
        raise
    except Exception as exc:  # any shape this version does not expect
        raise RecordError(f"stored record of job {job_uuid} cannot be read: {exc!r}") from exc


def _decode(job_uuid: str, data: Any, derived_cd_uuid: str) -> JobRecord:
    if not isinstance(data, list) or not data or data[0] != FORMAT:
        raise RecordError(f"unknown record format {data[0] if data else None!r}")
    _, details, names, allocations, written, cd, fp, pairs = data
    staff = [unpack_id(name) for name in names]
    record = JobRecord(job_uuid)
    if details is not None:
        active, number, description, address, lat, lng = details
        record.details = JobFacts(
            uuid=job_uuid,
            active=active,
            number=number,
            description=description,
            address=address,
            lat=lat,
            lng=lng,
        )
    for uuid, who, active, date, window, completed, expires, edited, by_bridge in allocations:
        fact = AllocationFacts(
            uuid=unpack_id(uuid),
            job_uuid=job_uuid,
            staff_uuid=staff[who] if who is not None else None,
            active=active,
            date_ms=_unfold(date),
            window=(window[0], window[1]) if window is not None else None,
            completed_ms=_unfold(completed),
            expires_ms=_unfold(expires),
            edited_ms=_unfold(edited),
            by_bridge=by_bridge,
        )
        record.allocations[fact.uuid] = fact
    record.written = {unpack_id(a): float(at) for a, at in written.items()}
    if cd is not None:
        cd_id, uuid, resources, changed, modified, start = cd
        record.cd = CdView(
            id=cd_id,
            uuid=derived_cd_uuid if uuid is None else unpack_id(uuid),
            resources={
                int(u): CD_STATES[s] if isinstance(s, int) else s for u, s in resources.items()
            },
            changed_ms={int(u): _unfold_ms(t) for u, t in changed.items()},
            modified_ms=_unfold(modified),
            start_ms=_unfold(start),
        )
    record.fields_fp = fp.hex() if isinstance(fp, bytes) else fp
    record.pairs = {
        staff[who]: PairSnapshot(PRESENCES[code // 4], PRESENCES[code % 4])
        for who, code in pairs.items()
    }
    return record
