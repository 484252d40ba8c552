"""How one linked job is packed into a Redis hash field: MessagePack, ids as 16 raw bytes.

Pure: no Redis here (``bridge.store.keys`` owns the key names). The format is what keeps the link
store small (about 370 bytes of Redis per link, docs/performance.md#memory): one value per job
instead of a hash of JSON fields, uuids as bytes, Coredination resource states and pair snapshots
as small numbers, and the Coredination job uuid left out because it is derived from the ServiceM8
job (``mappings.ids``).

A record is a MessagePack array whose position 0 is its format; ``decode`` dispatches on it, so a
later format can read every earlier one (format 2 is format 1 with appended fields in use,
format 3 is format 2 with a held pair snapshot or ``own_ms``, format 4 is format 3 with a job's
status or category, which scope reads: docs/scope.md). The layout is driven by the
state model's dataclasses:
``LAYOUT`` lists, per class, the fields in stored order (append only), ``IMPLIED`` the ones taken
from the record's key instead, and a test fails when a dataclass field is in neither. A record
written before a field was appended reads that field as the dataclass's default. Format 1::

    [1, details, staff, allocations, written, cd, fields_fp, pairs]

    details      None | [active, number, description, address, lat, lng, status, category]
                 (status and category appended with scope: an older row reads them as None)
    staff        [staff uuid, ...]: every staff member named below, once; referred to by position
    allocations  [[uuid, staff, active, date, window, completed, expires, edited, by_bridge,
                   fixed, end, own], ...] (fixed and end appended with fixed bookings, own with
                 the deletion rule: an older row reads them as False and None)
                 window: None | [start minute, end minute]
    written      {allocation uuid: when the bridge wrote it (epoch seconds)}
    cd           None | [id, uuid or None (= derived), {user: state}, {user: event time},
                         modified, start, end, all day] (the last two appended
                         with fixed bookings, left off while they hold their defaults)
    fields_fp    None | the fingerprint of the job body last written, as bytes when it is hex
    pairs        {staff: sm8 presence * 4 + cd presence, + 16 when held}

Times are epoch milliseconds counted from ``EPOCH_MS`` and folded so that whole seconds (every
ServiceM8 stamp) fit in four bytes: ``2 * seconds`` when the time is a whole second, else
``2 * milliseconds + 1``. Every uuid is 16 bytes when it is a canonical (lower-case, hyphenated)
uuid and text otherwise, which MessagePack keeps apart (bin vs str). A known resource state is its
index in ``CD_STATES`` (never reorder it: only append); an unknown one stays text.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any
from uuid import UUID

import msgpack

from mappings.facts import AllocationFacts, JobFacts
from mappings.presence import Presence
from mappings.state import CdView, JobRecord, PairSnapshot

FORMAT = 4  # the newest format this version writes and reads
# Format 2 is format 1's layout with rows longer than a class's first layout (the fields appended
# for fixed bookings in use). A record that needs none of them is still written as format 1, byte
# for byte as before; one that does is written as 2, so a worker of an older version meets
# ``NewerRecord`` (and leaves the record alone) instead of a row it cannot read.
BASE_FORMAT = 1
EXTENDED_FORMAT = 2
# Format 3 is format 2 with a pair snapshot marked held (its code + ``HELD``) or a booking's
# ``own_ms``: written only for a record that holds one, so an older worker meets ``NewerRecord``
# rather than a code or a row it cannot read.
HELD_FORMAT = 3
# Format 4 is format 3 with a job's status or category (scope reads them): written only for a
# record whose job holds one, so a worker of the previous version meets ``NewerRecord`` rather
# than a details row longer than it knows.
SCOPE_FORMAT = 4
EPOCH_MS = 1_577_836_800_000  # 2020-01-01T00:00:00Z

# Append only: stored records refer to these by position.
CD_STATES = (
    "UNASSIGNED", "DECLINED", "CANCELED", "INACTIVE", "ASSIGNED", "SCHEDULED", "ACCEPTED",
    "IN_TRANSIT", "ON_STATION", "STARTED", "PAUSED", "FINISHED",
)  # fmt: skip
PRESENCES = (Presence.ABSENT, Presence.ASSIGNED, Presence.SCHEDULED, Presence.FINISHED)
_STATE_CODE = {s: i for i, s in enumerate(CD_STATES)}
_PRESENCE_CODE = {p: i for i, p in enumerate(PRESENCES)}
HELD = 16  # added to a pair's code when its snapshot is held (an older record has none)

# The stored order of each class's fields. Append only: a record names fields by position.
LAYOUT: dict[type, tuple[str, ...]] = {
    # "staff" is no field: the record's table of staff members, which the rest refer to by position
    JobRecord: ("details", "staff", "allocations", "written", "cd", "fields_fp", "pairs"),
    JobFacts: ("active", "number", "description", "address", "lat", "lng", "status",
               "category_uuid"),
    AllocationFacts: ("uuid", "staff_uuid", "active", "date_ms", "window", "completed_ms",
                      "expires_ms", "edited_ms", "by_bridge", "fixed", "end_ms", "own_ms"),
    CdView: ("id", "uuid", "resources", "changed_ms", "modified_ms", "start_ms", "end_ms",
             "all_day"),
}  # fmt: skip
# How many fields each class had in its first layout: later ones may be left off (``row``).
FIRST_LENGTH: dict[type, int] = {AllocationFacts: 9, CdView: 6, JobFacts: 6}
# How many fields format 2 holds: a longer row (``own_ms`` in use) is written as format 3.
FORMAT2_LENGTH: dict[type, int] = {AllocationFacts: 11, CdView: 8}
# How many fields format 3 holds: a longer row (a job's status or category) is format 4.
FORMAT3_LENGTH: dict[type, int] = {AllocationFacts: 12, CdView: 8, JobFacts: 6}
# Fields not stored because the record's key gives them (the job uuid).
IMPLIED: dict[type, frozenset[str]] = {
    JobRecord: frozenset({"uuid"}),
    JobFacts: frozenset({"uuid"}),
    AllocationFacts: frozenset({"job_uuid"}),
    CdView: frozenset(),
}


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


def fold(ms: int | None) -> int | None:
    if ms is None:
        return None
    since = ms - EPOCH_MS
    return since // 1000 * 2 if since % 1000 == 0 else since * 2 + 1


def unfold(value: int | None) -> int | None:
    if value is None:
        return None
    return EPOCH_MS + (value // 2 * 1000 if value % 2 == 0 else (value - 1) // 2)


def _hex_bytes(text: str) -> bytes | None:
    try:
        packed = bytes.fromhex(text)
    except ValueError:
        return None
    return packed if packed.hex() == text else None


Packers = dict[str, Callable[[Any], Any]]  # field name → how its value is (un)packed


# --- encoding -------------------------------------------------------------------------------------
class _Encoder:
    """One record's packing: staff members are numbered as they are met."""

    def __init__(self, derived_cd_uuid: str) -> None:
        self.derived_cd_uuid = derived_cd_uuid
        self.staff: dict[str, int] = {}
        self.extended = False  # a row holds a field appended after its class's first layout
        self.newer = False  # a row holds a field appended after format 2
        self.newest = False  # a row holds a field appended after format 3

    def who(self, staff_uuid: str | None) -> int | None:
        if staff_uuid is None:
            return None
        return self.staff.setdefault(staff_uuid, len(self.staff))

    def row(self, value: Any, packers: Packers) -> list[Any]:
        """The stored row; fields appended after a class's first layout are left off while they
        hold their defaults, so such a record is stored exactly as before they were added."""
        cls = type(value)
        names = list(LAYOUT[cls])
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        while len(names) > FIRST_LENGTH.get(cls, len(names)) and (
            getattr(value, names[-1]) == defaults.get(names[-1], dataclasses.MISSING)
        ):
            names.pop()
        if len(names) > FIRST_LENGTH.get(cls, len(names)):
            self.extended = True
        if len(names) > FORMAT2_LENGTH.get(cls, len(names)):
            self.newer = True
        if len(names) > FORMAT3_LENGTH.get(cls, len(names)):
            self.newest = True
        return [packers.get(name, _same)(getattr(value, name)) for name in names]


def _same(value: Any) -> Any:
    return value


def encode(record: JobRecord, derived_cd_uuid: str) -> bytes:
    enc = _Encoder(derived_cd_uuid)
    for name in [a.staff_uuid for a in record.allocations.values()] + list(record.pairs):
        enc.who(name)
    allocation: Packers = {
        "uuid": pack_id, "staff_uuid": enc.who, "window": lambda w: None if w is None else list(w),
        "date_ms": fold, "completed_ms": fold, "expires_ms": fold, "edited_ms": fold,
        "end_ms": fold, "own_ms": fold,
    }  # fmt: skip
    cd: Packers = {
        "uuid": lambda u: None if u == derived_cd_uuid else pack_id(u),
        "resources": lambda r: {user: _STATE_CODE.get(s, s) for user, s in r.items()},
        "changed_ms": lambda c: {user: fold(t) for user, t in c.items()},
        "modified_ms": fold,
        "start_ms": fold,
        "end_ms": fold,
    }
    parts: dict[str, Any] = {
        "details": None if record.details is None else enc.row(record.details, {}),
        "allocations": [enc.row(a, allocation) for a in record.allocations.values()],
        "written": {pack_id(a): at for a, at in record.written.items()},
        "cd": None if record.cd is None else enc.row(record.cd, cd),
        "fields_fp": None
        if record.fields_fp is None
        else _hex_bytes(record.fields_fp) or record.fields_fp,
        "pairs": {
            enc.staff[name]: _PRESENCE_CODE[p.sm8] * 4 + _PRESENCE_CODE[p.cd] + HELD * p.held
            for name, p in record.pairs.items()
        },
    }
    parts["staff"] = [pack_id(name) for name in enc.staff]
    held = any(p.held for p in record.pairs.values())
    version = (SCOPE_FORMAT if enc.newest else HELD_FORMAT if held or enc.newer
               else EXTENDED_FORMAT if enc.extended else BASE_FORMAT)  # fmt: skip
    packed = [version, *(parts[name] for name in LAYOUT[JobRecord])]
    return bytes(msgpack.packb(packed, use_bin_type=True))


# --- decoding -------------------------------------------------------------------------------------
def _build(cls: type, row: list[Any], implied: dict[str, Any], unpack: Packers) -> Any:
    """An instance of ``cls`` from a stored row; positions a record predates take defaults."""
    names = LAYOUT[cls]
    if len(row) > len(names):
        raise RecordError(f"{cls.__name__} has {len(row)} stored fields, this version knows "
                          f"{len(names)}")  # fmt: skip
    values = {n: unpack.get(n, _same)(v) for n, v in zip(names, row, strict=False)}
    return cls(**implied, **values)


def decode(job_uuid: str, raw: bytes, derived_cd_uuid: str) -> JobRecord:
    try:
        data = msgpack.unpackb(raw, raw=False, strict_map_key=False, use_list=True)
    except Exception as exc:  # msgpack raises several kinds for damaged bytes
        raise RecordError(f"stored record of job {job_uuid} cannot be read: {exc}") from exc
    version = data[0] if isinstance(data, list) and data else None
    if isinstance(version, int) and version > FORMAT:
        raise NewerRecord(
            f"stored record of job {job_uuid} has format {version}, this version reads {FORMAT}:"
            " a newer bridge wrote it (finish the upgrade of every worker)"
        )
    reader = DECODERS.get(version) if isinstance(version, int) else None
    if reader is None:
        raise RecordError(f"stored record of job {job_uuid}: unknown format {version!r}")
    try:
        return reader(job_uuid, data[1:], derived_cd_uuid)
    except RecordError:
        raise
    except Exception as exc:  # any shape this version does not expect
        raise RecordError(f"stored record of job {job_uuid} cannot be read: {exc!r}") from exc


def _decode_v1(job_uuid: str, data: list[Any], derived_cd_uuid: str) -> JobRecord:
    parts = dict(zip(LAYOUT[JobRecord], data, strict=True))
    staff = [unpack_id(name) for name in parts["staff"]]
    record = JobRecord(job_uuid)
    if parts["details"] is not None:
        record.details = _build(JobFacts, parts["details"], {"uuid": job_uuid}, {})
    allocation: Packers = {
        "uuid": unpack_id,
        "staff_uuid": lambda who: None if who is None else staff[who],
        "window": lambda w: None if w is None else (w[0], w[1]),
        "date_ms": unfold, "completed_ms": unfold, "expires_ms": unfold, "edited_ms": unfold,
        "end_ms": unfold, "own_ms": unfold,
    }  # fmt: skip
    for row in parts["allocations"]:
        fact = _build(AllocationFacts, row, {"job_uuid": job_uuid}, allocation)
        record.allocations[fact.uuid] = fact
    record.written = {unpack_id(a): float(at) for a, at in parts["written"].items()}
    if parts["cd"] is not None:
        cd: Packers = {
            "uuid": lambda u: derived_cd_uuid if u is None else unpack_id(u),
            "resources": lambda r: {
                int(u): CD_STATES[s] if isinstance(s, int) else s for u, s in r.items()
            },
            "changed_ms": lambda c: {int(u): unfold(t) for u, t in c.items()},
            "modified_ms": unfold,
            "start_ms": unfold,
            "end_ms": unfold,
        }
        record.cd = _build(CdView, parts["cd"], {}, cd)
    fp = parts["fields_fp"]
    record.fields_fp = fp.hex() if isinstance(fp, bytes) else fp
    record.pairs = {
        staff[who]: PairSnapshot(
            PRESENCES[code % HELD // 4], PRESENCES[code % 4], held=code >= HELD
        )
        for who, code in parts["pairs"].items()
    }
    return record


DECODERS: dict[int, Callable[[str, list[Any], str], JobRecord]] = {
    1: _decode_v1,
    2: _decode_v1,
    3: _decode_v1,
    4: _decode_v1,
}


def unencoded_fields() -> dict[str, set[str]]:
    """Dataclass fields the layout neither stores nor implies (must be empty: see the test)."""
    missing = {}
    for cls, names in LAYOUT.items():
        known = set(names) | IMPLIED[cls]
        gap = {f.name for f in dataclasses.fields(cls)} - known
        if gap:
            missing[cls.__name__] = gap
    return missing
