"""The packed job record (``bridge.store.codec``): every value the bridge holds survives the
trip."""

from __future__ import annotations

from dataclasses import replace

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.store.codec import (
    CD_STATES,
    RecordError,
    decode,
    encode,
    id_bytes,
    pack_id,
    unpack_id,
)
from mappings.facts import AllocationFacts, JobFacts
from mappings.presence import Presence
from mappings.state import CdView, JobRecord, PairSnapshot

JOB = "f06d3fef-7019-46a0-8381-e88f38c0c8fd"
DERIVED = "f99e880a-4453-5b45-98e7-00fe2e1b879a"

uuids = st.uuids().map(str)
ids = st.one_of(uuids, st.text(min_size=1, max_size=40))  # bad data stays text
stamps = st.none() | st.integers(min_value=0, max_value=2**62)
texts = st.none() | st.text(max_size=300)
floats = st.none() | st.floats(allow_nan=False, allow_infinity=False)
presences = st.sampled_from(list(Presence))
states = st.sampled_from(CD_STATES) | st.text(max_size=12)


@st.composite
def records(draw: st.DrawFn) -> JobRecord:
    record = JobRecord(JOB)
    if draw(st.booleans()):
        record.details = JobFacts(JOB, draw(st.booleans()), draw(texts), draw(texts), draw(texts),
                                  draw(floats), draw(floats))  # fmt: skip
    for _ in range(draw(st.integers(0, 4))):
        window = draw(st.none() | st.tuples(st.integers(0, 1440), st.integers(0, 1440)))
        fact = AllocationFacts(draw(ids), JOB, draw(st.none() | ids), draw(st.booleans()),
                               draw(stamps), window, draw(stamps), draw(stamps), draw(stamps),
                               draw(st.booleans()), draw(st.booleans()),
                               draw(stamps), draw(stamps))  # fmt: skip
        record.allocations[fact.uuid] = fact
        if draw(st.booleans()):
            record.written[fact.uuid] = draw(st.floats(0, 2e9))
    if draw(st.booleans()):
        users = draw(st.lists(st.integers(1, 2**40), max_size=4, unique=True))
        record.cd = CdView(
            id=draw(st.none() | st.integers(1, 2**40)),
            uuid=draw(st.sampled_from([DERIVED]) | uuids),
            resources={u: draw(states) for u in users},
            changed_ms={u: draw(st.integers(0, 2**50)) for u in users},
            modified_ms=draw(stamps),
            start_ms=draw(stamps),
        )
    record.fields_fp = draw(st.none() | st.binary(min_size=8, max_size=8).map(bytes.hex) | texts)
    record.pairs = {draw(ids): PairSnapshot(draw(presences), draw(presences), draw(st.booleans()))
                    for _ in range(draw(st.integers(0, 3)))}  # fmt: skip
    return record


@given(records())
def test_every_record_reads_back_as_written(record: JobRecord) -> None:
    assert decode(JOB, encode(record, DERIVED), DERIVED) == record


def test_a_typical_record_is_small() -> None:
    staff = "35bf992d-c9e9-4616-a12e-7696a6cecc1b"
    allocation = "c96fa758-02b0-47f8-86fa-adb10a248cff"
    details = (
        "1001",
        "Inspect roof gutters\nCustomer asks to call ahead.",
        "8 Victoria Rd, Chatswood NSW",
    )
    record = JobRecord(
        JOB,
        details=JobFacts(JOB, True, *details, None, None),
        allocations={
            allocation: AllocationFacts(
                allocation, JOB, staff, True, 1796043600000, (420, 540), None, None, 1795423605000
            )
        },
        cd=CdView(
            100045,
            DERIVED,
            {2000001: "SCHEDULED"},
            {2000001: 1795423606162},
            1795423606164,
            1796068800000,
        ),
        fields_fp="abb4a15100823937",
        pairs={staff: PairSnapshot(Presence.SCHEDULED, Presence.SCHEDULED)},
    )
    packed = encode(record, DERIVED)
    # Was a hash of JSON fields: 233 + 288 + 153 + 16 + 19 bytes of values alone.
    assert len(packed) <= 210, len(packed)
    assert DERIVED.encode() not in packed and id_bytes(DERIVED) not in packed


def test_ids_pack_to_sixteen_bytes_only_when_canonical() -> None:
    assert pack_id(JOB) == id_bytes(JOB) and len(id_bytes(JOB) or b"") == 16
    for odd in (JOB.upper(), JOB.replace("-", ""), "{" + JOB + "}", "job-1", ""):
        assert id_bytes(odd) is None and pack_id(odd) == odd and unpack_id(pack_id(odd)) == odd
    assert unpack_id(pack_id(JOB)) == JOB


@pytest.mark.parametrize(
    "raw",
    [b"", b"\xc1", msgpack.packb([99, None]), msgpack.packb({"d": 1}), msgpack.packb([1, None])],
)
def test_an_unreadable_record_says_which_job(raw: bytes) -> None:
    with pytest.raises(RecordError, match=JOB):
        decode(JOB, raw, DERIVED)


# --- the codec follows the state model's dataclasses ---------------------------------------------
def test_every_field_of_the_state_model_is_stored_or_implied():
    from bridge.store.codec import unencoded_fields

    assert unencoded_fields() == {}


def test_a_field_added_to_the_state_model_but_not_to_the_layout_is_caught(monkeypatch):
    import dataclasses

    from bridge.store import codec

    @dataclasses.dataclass
    class Grown(CdView):
        crew: int = 0  # a field someone added without giving it a stored position

    monkeypatch.setitem(codec.LAYOUT, Grown, codec.LAYOUT[CdView])
    monkeypatch.setitem(codec.IMPLIED, Grown, codec.IMPLIED[CdView])
    assert codec.unencoded_fields() == {"Grown": {"crew"}}


def test_a_record_written_before_a_field_was_appended_reads_it_as_the_default(monkeypatch):

    record = JobRecord(JOB, cd=CdView(7, DERIVED, {1: "SCHEDULED"}, {1: 1_800_000_000_000}))
    raw = msgpack.unpackb(encode(record, DERIVED), raw=False, strict_map_key=False)
    raw[5] = raw[5][:-1]  # the view as a format that did not have ``start_ms`` yet wrote it
    older = decode(JOB, msgpack.packb(raw, use_bin_type=True), DERIVED)
    assert older.cd is not None and older.cd.start_ms is None and older.cd.id == 7


def test_records_written_by_format_1_before_the_store_was_split_read_back_unchanged():
    """Bytes the link store wrote before this layout (``tests/fixtures/records-v1.json``, made
    with that version's code) decode to the same records and encode to the same bytes."""
    import json
    import re
    from pathlib import Path

    from mappings.ids import cd_job_uuid, connection_namespace

    fixture = Path(__file__).parents[1] / "fixtures" / "records-v1.json"
    rows = json.loads(fixture.read_text())["records"]
    assert {r["name"] for r in rows} == {"full", "bare", "odd"}
    for row in rows:
        derived = cd_job_uuid(connection_namespace(row["connection"]), row["job"])
        raw = bytes.fromhex(row["hex"])
        record = decode(row["job"], raw, derived)
        # Fields appended since read as their defaults (fixed bookings: ``fixed``, ``end_ms`` of
        # a booking; ``end_ms``, ``all_day`` of the Coredination view).
        expected = re.sub(r"(by_bridge=(?:True|False))\)",
                          r"\1, fixed=False, end_ms=None, own_ms=None)",
                          row["repr"])  # fmt: skip
        expected = re.sub(r"(CdView\(.*?start_ms=[^,)]*)\)", r"\1, end_ms=None, all_day=False)",
                          expected)  # fmt: skip
        # and with scope: a job's ``status`` and ``category_uuid``.
        expected = re.sub(r"(JobFacts\(.*?lng=[^,)]*)\)", r"\1, status=None, category_uuid=None)",
                          expected)  # fmt: skip
        assert repr(record) == expected, row["name"]
        assert encode(record, derived) == raw, row["name"]  # and are stored as before


def test_a_record_using_appended_fields_is_format_2_which_an_older_reader_refuses():
    """Format 1 readers know only the first layouts: a fixed booking's row (or a Coredination view
    with an end) would be a row too long for them. Such a record says format 2, so an older
    worker meets ``NewerRecord`` and leaves it alone rather than reading it as damaged."""
    from bridge.store import codec

    staff = "35bf992d-c9e9-4616-a12e-7696a6cecc1b"
    plain = AllocationFacts("c96fa758-02b0-47f8-86fa-adb10a248cff", JOB, staff, True,
                            1796043600000, None, None, None, 1795423605000)  # fmt: skip
    fixed = AllocationFacts("c96fa758-02b0-47f8-86fa-adb10a248c00", JOB, staff, True,
                            1796043600000, None, None, None, 1795423605000, fixed=True,
                            end_ms=1796050800000)  # fmt: skip
    timed = CdView(100045, DERIVED, {}, {}, None, 1796043600000, end_ms=1796050800000)
    for record, version in [
        (JobRecord(JOB, allocations={plain.uuid: plain}), 1),
        (JobRecord(JOB, allocations={plain.uuid: plain, fixed.uuid: fixed}), 2),
        (JobRecord(JOB, cd=CdView(100045, DERIVED)), 1),
        (JobRecord(JOB, cd=timed), 2),
    ]:
        raw = encode(record, DERIVED)
        assert msgpack.unpackb(raw, strict_map_key=False)[0] == version
        assert decode(JOB, raw, DERIVED) == record
    raw = encode(JobRecord(JOB, cd=timed), DERIVED)
    older = dict(codec.DECODERS)
    older.pop(2)
    with pytest.MonkeyPatch.context() as patch:  # a reader of format 1 only
        patch.setattr(codec, "FORMAT", 1)
        patch.setattr(codec, "DECODERS", older)
        with pytest.raises(codec.NewerRecord):
            decode(JOB, raw, DERIVED)


def test_a_held_pair_or_a_read_back_write_is_format_3_which_a_format_2_reader_refuses():
    """Format 2 readers know neither a held snapshot's code nor a booking's ``own_ms``: such a
    record says format 3, so a worker of the previous version (during a rolling upgrade) meets
    ``NewerRecord`` instead of reading it as damaged and writing an empty record over it."""
    from bridge.store import codec

    staff = "35bf992d-c9e9-4616-a12e-7696a6cecc1b"
    plain = AllocationFacts("c96fa758-02b0-47f8-86fa-adb10a248cff", JOB, staff, True,
                            1796043600000, None, None, None, 1795423605000)  # fmt: skip
    ours = replace(plain, by_bridge=True, own_ms=1795423605000)
    held = PairSnapshot(Presence.SCHEDULED, Presence.FINISHED, held=True)
    for record, version in [
        (JobRecord(JOB, allocations={plain.uuid: plain},
                   pairs={staff: PairSnapshot(Presence.SCHEDULED, Presence.SCHEDULED)}), 1),
        (JobRecord(JOB, allocations={plain.uuid: plain}, pairs={staff: held}), 3),
        (JobRecord(JOB, allocations={ours.uuid: ours}), 3),
    ]:  # fmt: skip
        raw = encode(record, DERIVED)
        assert msgpack.unpackb(raw, strict_map_key=False)[0] == version
        assert decode(JOB, raw, DERIVED) == record
        if version == 3:
            older = {k: v for k, v in codec.DECODERS.items() if k < 3}
            with pytest.MonkeyPatch.context() as patch:  # a reader of formats 1 and 2
                patch.setattr(codec, "FORMAT", 2)
                patch.setattr(codec, "DECODERS", older)
                with pytest.raises(codec.NewerRecord):
                    decode(JOB, raw, DERIVED)


def test_a_job_with_a_status_or_category_is_format_4_which_a_format_3_reader_refuses():
    """Job facts are on the ladder too: a job whose status or category is known (scope reads
    them) is written as format 4, so a worker of the previous release (formats 1 to 3, during a
    rolling upgrade) meets ``NewerRecord`` and steps over it, rather than reading a details row
    longer than it knows as damaged."""
    from bridge.store import codec

    bare = JobFacts(JOB, True, "1001", "Fix tap", "1 George St", None, None)
    category = "4ad1e7b2-0c0e-4d6f-8a9b-2c3d4e5f6a7b"
    for record, version in [
        (JobRecord(JOB, details=bare), 1),
        (JobRecord(JOB, details=replace(bare, status="Work Order")), 4),
        (JobRecord(JOB, details=replace(bare, category_uuid=category)), 4),
    ]:  # fmt: skip
        raw = encode(record, DERIVED)
        assert msgpack.unpackb(raw, strict_map_key=False)[0] == version
        assert decode(JOB, raw, DERIVED) == record
        older = {k: v for k, v in codec.DECODERS.items() if k < 4}
        with pytest.MonkeyPatch.context() as patch:  # the previous release's reader
            patch.setattr(codec, "FORMAT", 3)
            patch.setattr(codec, "DECODERS", older)
            if version == 4:
                with pytest.raises(codec.NewerRecord):
                    decode(JOB, raw, DERIVED)
            else:
                assert decode(JOB, raw, DERIVED) == record
