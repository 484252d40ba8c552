"""How the ServiceM8 simulator spells the values of the records it serves
(docs/servicem8-api.md#types).

Records are stored as they were written: numbers as numbers or as strings, ``""`` for an empty
value. ``served`` spells a record on its way out, in one of two readings (the dialect's
``wire_types``):

- ``strings``: as real account data show them. A number goes out as a string (``"start_time":
  "0"``), an empty value as ``""``; 0/1 flags and untyped fields as they were written.
- ``spec``: as the official OpenAPI description types them. Integers and numbers are JSON numbers,
  an empty one ``0``; a 0/1 enum is the number 0 or 1; a string field holds a string.

``SPEC_TYPES`` is copied by hand from the component schemas of that description, for the fields the
simulator serves: the simulator must not need the spec file, which is not installed with
``bridge/``. tests/adapters/test_servicem8_spec_conformance.py checks the table against the file.
Imports nothing of the bridge.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

WireTypes = Literal["strings", "spec"]
WIRE_TYPES: tuple[WireTypes, ...] = ("strings", "spec")
# ``flag``: an integer enum of 0 and 1; ``any``: a field the spec gives no type.
Kind = Literal["string", "integer", "number", "flag", "any"]

# Every field of a record the spec does not type as a string, by object (the schemas Job,
# JobActivity, JobAllocation, Staff, AllocationWindow and Vendor); a field not named is a string.
# The spec types JobActivity's ``activity_was_*`` and ``has_been_opened`` as strings and
# JobAllocation's ``sort_priority`` as a string: they are strings here too.
COMMON_TYPES: dict[str, Kind] = {"active": "flag", "edit_date": "any"}
SPEC_TYPES: dict[str, dict[str, Kind]] = {
    "job": {"lat": "number", "lng": "number"},
    "jobactivity": {
        "travel_time_in_seconds": "integer",
        "travel_distance_in_meters": "integer",
        "allocated_by_staff_uuid": "any",
        "allocated_timestamp": "any",
    },
    "joballocation": {
        "queue_uuid": "any",
        "estimated_duration": "any",
        "revised_duration": "any",
        "requires_acceptance": "any",
        "acceptance_status": "any",
        "acceptance_timestamp": "any",
    },
    "staff": {"hide_from_schedule": "flag"},
    "allocationwindow": {
        "start_time": "integer",
        "end_time": "integer",
        "sort_priority": "integer",
    },
    "vendor": {},
}


def kind_of(obj: str, field: str) -> Kind:
    """The type the spec gives ``field`` of ``obj``."""
    return SPEC_TYPES[obj].get(field) or COMMON_TYPES.get(field) or "string"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(value: Any) -> Any:
    """A JSON number for a number written either way; ``0`` for an empty one. A value that is
    no number is left as it is (and the conformance test then says so)."""
    if value is None or value == "":
        return 0
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _integer(value: Any) -> Any:
    number = _number(value)
    return number if not isinstance(number, float) else value


def _flag(value: Any) -> Any:
    if value is None or value == "":
        return 0
    text = str(value).strip().lower()
    if text in {"1", "true", "1.0"}:
        return 1
    if text in {"0", "false", "0.0"}:
        return 0
    return value


def _string(value: Any) -> Any:
    return str(value) if _is_number(value) else value


def _kept(value: Any) -> Any:
    return value


SPELLING: dict[WireTypes, dict[Kind, Callable[[Any], Any]]] = {
    "strings": {"string": _string, "integer": _string, "number": _string, "flag": _kept,
                "any": _kept},
    "spec": {"string": _string, "integer": _integer, "number": _number, "flag": _flag,
             "any": _kept},
}  # fmt: skip


def served(obj: str, record: dict[str, Any], wire_types: WireTypes) -> dict[str, Any]:
    """A copy of ``record`` with each value spelt as ``wire_types`` says."""
    spell = SPELLING[wire_types]
    return {key: spell[kind_of(obj, key)](value) for key, value in record.items()}
