"""The ServiceM8 simulator against ServiceM8's official OpenAPI description
(docs/servicem8-api.md#types).

Under the spec-typed dialect (``wire_types="spec"``) every answer to an operation the bridge uses
validates against the response schema the spec gives its path, method and status: lists with
``$filter`` and cursor paging, one record, creates with and without a uuid, updates, deletes, and
the 400, 401, 403, 404 and 429 answers. Under the default (``strings``, as real account data show)
numbers are strings, which the spec refuses; the bridge reads both.

Formats (``uuid``, ``email``) are not asserted: ServiceM8 serves ``""`` for an empty uuid, which
the SDK generated from the spec accepts (docs/servicem8-api.md#types).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid as uuidlib
from pathlib import Path
from typing import Any

import pytest
import requests
from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from bridge.servicem8.models import AllocationWindow, Job, SM8Record
from bridge.servicem8.translate import job_facts, window_minutes
from bridge.simulators.scenario import seed_business
from bridge.simulators.servicem8 import OBJECTS, READ_ONLY_OBJECTS, ServiceM8Simulator
from bridge.simulators.servicem8_types import Kind, kind_of
from tests.conftest import SM8_KEY

ROOT = Path(__file__).resolve().parents[2]
# A copy of the spec travels with the tests (CI runs on a bare clone); where the shared reference
# copy is present it must be the same file.
SPEC = ROOT / "tests" / "fixtures" / "servicem8-openapi.json"
SHARED = ROOT.parent / "shared" / "reference" / "servicem8-openapi.json"
SPEC_URI = "urn:servicem8-openapi"
SCHEMAS = {
    "job": "Job",
    "jobactivity": "JobActivity",
    "joballocation": "JobAllocation",
    "staff": "Staff",
    "allocationwindow": "AllocationWindow",
    "vendor": "Vendor",
}
WRITABLE = [obj for obj in SCHEMAS if obj not in READ_ONLY_OBJECTS]
KEY = {"X-Api-Key": SM8_KEY}


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return json.loads(SPEC.read_text())


@pytest.fixture(scope="module")
def registry(spec) -> Registry:
    return Registry().with_resource(SPEC_URI, DRAFT202012.create_resource(spec))


def _pointer(*parts: str) -> str:
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)


class Conformance:
    """Checks answers against the spec's responses and keeps every disagreement."""

    def __init__(self, spec: dict[str, Any], registry: Registry) -> None:
        self.spec = spec
        self.registry = registry
        self.problems: list[str] = []
        self.checked: set[tuple[str, str, int]] = set()

    def check(self, answer: requests.Response, path: str, method: str) -> Any:
        """Validate one answer against the spec's response for ``path``, ``method`` and its
        status, and return its JSON body. A status the spec does not list, or a body that is no
        JSON, fails at once; the body's disagreements are kept, to be told all together."""
        status = str(answer.status_code)
        where = f"{method.upper()} {path} {status}"
        assert status in self.spec["paths"][path][method]["responses"], f"{where}: not in spec"
        ctype = answer.headers.get("Content-Type", "")
        assert ctype.startswith("application/json"), f"{where}: {ctype}, not JSON"
        body = answer.json()
        response = _pointer("paths", path, method, "responses", status)
        ref = f"{SPEC_URI}#{response}/content/application~1json/schema"
        validator = Draft202012Validator({"$ref": ref}, registry=self.registry)
        for error in validator.iter_errors(body):
            at = "/".join(str(p) for p in error.absolute_path)
            self.problems.append(f"{where} at {at or 'body'}: {error.message}")
        self.checked.add((path, method, answer.status_code))
        return body

    def check_record_uuid(self, answer: requests.Response, path: str) -> str:
        """The ``x-record-uuid`` of a create, against the header's schema (a uuid)."""
        header = self.spec["paths"][path]["post"]["responses"]["200"]["headers"]["x-record-uuid"]
        made = answer.headers.get("x-record-uuid", "")
        checker = FormatChecker()
        for error in Draft202012Validator(header["schema"], format_checker=checker).iter_errors(
            made
        ):
            self.problems.append(f"POST {path} x-record-uuid: {error.message}")
        return made


@pytest.fixture
def conformance(spec, registry) -> Conformance:
    return Conformance(spec, registry)


@pytest.fixture
def spec_sim(sm8_sim: ServiceM8Simulator) -> ServiceM8Simulator:
    """The shared simulator in the spec-typed dialect, with pages of two records and a business
    whose values are written in both spellings."""
    sm8_sim.set_dialect(wire_types="spec")
    sm8_sim.page_size = 2
    seed_business(sm8_sim, None, staff=3, jobs=3, allocations=5, fixed=3)
    job = str(uuidlib.uuid4())
    sm8_sim.seed(
        {
            "allocationwindow": [
                {"name": "Urgent", "start_time": "0", "end_time": "0", "sort_priority": "3"}
            ],
            "staff": [
                {
                    "first": "Zoe",
                    "last": "Ng",
                    "email": "zoe@example.com",
                    "hide_from_schedule": "1",
                }
            ],
            "job": [{"uuid": job, "status": "Quote", "lat": "-33.8688", "lng": 151.2093}],
            "jobactivity": [
                {
                    "job_uuid": job,
                    "activity_was_recorded": 1,
                    "travel_time_in_seconds": "0",
                    "travel_distance_in_meters": 1200,
                }
            ],
            "joballocation": [{"job_uuid": job, "sort_priority": 4}],
        }
    )
    return sm8_sim


def _new_record(obj: str, sim: ServiceM8Simulator) -> dict[str, Any]:
    """Fields a create of ``obj`` needs, some numbers written as numbers and some as strings."""
    job = next(iter(sim.records["job"]))
    return {
        "job": {"status": "Work Order", "job_address": "9 Crown St", "lat": -33.88, "lng": ""},
        "jobactivity": {
            "job_uuid": job,
            "activity_was_scheduled": "1",
            "start_date": "2026-12-02 09:00:00",
            "end_date": "2026-12-02 11:00:00",
            "travel_time_in_seconds": 300,
        },
        "joballocation": {"job_uuid": job, "allocation_date": "2026-12-03"},
        "staff": {
            "first": "Ida",
            "last": "Ray",
            "email": "ida@example.com",
            "hide_from_schedule": 0,
        },
        "allocationwindow": {"name": "Evening", "start_time": 1020, "end_time": "1200"},
    }[obj]


def _update(obj: str) -> dict[str, Any]:
    return {
        "job": {"lat": "", "lng": "151.2"},
        "jobactivity": {"travel_distance_in_meters": "42"},
        "joballocation": {"sort_priority": "2"},
        "staff": {"hide_from_schedule": "1"},
        "allocationwindow": {"sort_priority": 7, "start_time": ""},
    }[obj]


def _list_all(conf: Conformance, sim: ServiceM8Simulator, obj: str, flt: str | None) -> list:
    """Every page of a list, from ``cursor=-1`` along ``x-next-cursor``, each one checked."""
    path, rows, cursor = f"/{obj}.json", [], "-1"
    while True:
        params = {"cursor": cursor} | ({"$filter": flt} if flt else {})
        answer = requests.get(sim.api_url() + path, params=params, headers=KEY, timeout=5)
        assert answer.status_code == 200, answer.text
        rows += conf.check(answer, path, "get") or []
        cursor = answer.headers.get("x-next-cursor", "")
        if not cursor:
            return rows


# --- the spec and the simulator's table of types -------------------------------------------------


def test_the_spec_copy_is_the_shared_reference_and_a_valid_schema(spec):
    if SHARED.exists():
        assert json.loads(SHARED.read_text()) == spec
    assert spec["openapi"].startswith("3.1")  # its schemas are JSON Schema 2020-12
    for name in {*SCHEMAS.values(), "Result", "Error", "AuthenticationError", "NotFoundError"}:
        Draft202012Validator.check_schema(spec["components"]["schemas"][name])


def _spec_kind(prop: dict[str, Any]) -> Kind:
    if "type" not in prop:
        return "any"
    if prop["type"] == "integer" and prop.get("enum") == [0, 1]:
        return "flag"
    kind: Kind = prop["type"]
    return kind


@pytest.mark.parametrize("obj", list(SCHEMAS))
def test_every_field_the_simulator_serves_is_in_the_spec_with_the_type_of_its_table(spec, obj):
    """The simulator's table (``servicem8_types``) agrees with the spec for every field served,
    and every field served is one the spec names, so validation sees its type."""
    props = spec["components"]["schemas"][SCHEMAS[obj]]["properties"]
    served = OBJECTS[obj]["fields"] | {"uuid", "active", "edit_date"}
    served |= {"generated_job_id"} if obj == "job" else set()
    assert sorted(served - set(props)) == []
    assert {f: kind_of(obj, f) for f in served} == {f: _spec_kind(props[f]) for f in served}


# --- the spec-typed dialect answers as the spec says ---------------------------------------------


def test_lists_and_records_validate_against_the_spec(spec_sim, conformance):
    for obj in SCHEMAS:
        rows = _list_all(conformance, spec_sim, obj, None)
        assert len(rows) == len(spec_sim.records[obj]) and rows
        if obj != "vendor":
            assert len(rows) > spec_sim.page_size  # paged
        flt = "active eq 1 and edit_date gt '2000-01-01 00:00:00'"
        assert len(_list_all(conformance, spec_sim, obj, flt)) == len(rows)
        for row in rows:
            answer = requests.get(
                f"{spec_sim.api_url()}/{obj}/{row['uuid']}.json", headers=KEY, timeout=5
            )
            assert conformance.check(answer, f"/{obj}/{{uuid}}.json", "get") == row
    assert conformance.problems == []


def test_the_values_written_as_strings_are_served_as_numbers(spec_sim):
    spec_sim.page_size = 1000

    def one(obj: str, **wanted: Any) -> dict[str, Any]:
        rows = requests.get(f"{spec_sim.api_url()}/{obj}.json", headers=KEY, timeout=5).json()
        return next(r for r in rows if wanted.items() <= r.items())

    urgent = one("allocationwindow", name="Urgent")
    assert (urgent["start_time"], urgent["sort_priority"]) == (0, 3)
    assert one("allocationwindow", name="Morning")["sort_priority"] == 0  # empty
    assert one("staff", first="Zoe")["hide_from_schedule"] == 1
    assert one("staff", first="Ava")["hide_from_schedule"] == 0  # empty
    quote = one("job", status="Quote")
    assert (quote["lat"], quote["lng"]) == (-33.8688, 151.2093)
    assert one("jobactivity", travel_distance_in_meters=1200)["travel_time_in_seconds"] == 0
    assert one("joballocation", sort_priority="4")  # a string, as the spec types it there


@pytest.mark.parametrize("obj", WRITABLE)
def test_creates_updates_and_deletes_validate_against_the_spec(spec_sim, conformance, obj):
    base, list_path, one_path = spec_sim.api_url(), f"/{obj}.json", f"/{obj}/{{uuid}}.json"
    made = requests.post(base + list_path, json=_new_record(obj, spec_sim), headers=KEY, timeout=5)
    assert conformance.check(made, list_path, "post") == {"errorCode": 0, "message": "OK"}
    made_uuid = conformance.check_record_uuid(made, list_path)
    mine = str(uuidlib.uuid4())
    own = requests.post(
        base + list_path, json={**_new_record(obj, spec_sim), "uuid": mine}, headers=KEY, timeout=5
    )
    conformance.check(own, list_path, "post")
    assert conformance.check_record_uuid(own, list_path) == mine
    for uuid in (made_uuid, mine):
        url = f"{base}/{obj}/{uuid}.json"
        changed = requests.post(url, json=_update(obj), headers=KEY, timeout=5)
        assert conformance.check(changed, one_path, "post") == {"errorCode": 0, "message": "OK"}
        conformance.check(requests.get(url, headers=KEY, timeout=5), one_path, "get")
        gone = requests.delete(url, headers=KEY, timeout=5)
        assert conformance.check(gone, one_path, "delete") == {"errorCode": 0, "message": "OK"}
        after = conformance.check(requests.get(url, headers=KEY, timeout=5), one_path, "get")
        assert after["active"] == 0
    assert conformance.problems == []


@pytest.mark.parametrize("obj", list(SCHEMAS))
def test_error_answers_validate_against_the_spec(spec_sim, conformance, obj):
    """400, 401, 403, 404 and 429 (both windows, JSON even though this simulator's 429s are
    plain text by default) on every operation of ``obj``."""
    base, list_path, one_path = spec_sim.api_url(), f"/{obj}.json", f"/{obj}/{{uuid}}.json"
    some = next(iter(spec_sim.records[obj]))
    nobody = str(uuidlib.uuid4())
    operations = [("get", list_path), ("get", one_path)]
    if obj in WRITABLE:
        operations += [("post", list_path), ("post", one_path), ("delete", one_path)]

    def send(method: str, path: str, uuid: str = some, **kw: Any) -> requests.Response:
        url = base + path.replace("{uuid}", uuid)
        body = {"json": _update(obj)} if method == "post" and obj in WRITABLE else {}
        return requests.request(method, url, timeout=5, **(body | kw))

    for method, path in operations:
        conformance.check(send(method, path), path, method)  # no key: 401
        spec_sim.set_faults(error_rate=1.0, error_status=403)
        conformance.check(send(method, path, headers=KEY), path, method)
        spec_sim.set_faults(error_rate=0.0, burst_429=1)
        conformance.check(send(method, path, headers=KEY), path, method)
    spec_sim.set_faults(error_rate=0.0, error_status=500, burst_429=0)
    spec_sim.set_limits(per_day=0)
    conformance.check(send("get", list_path, headers=KEY), list_path, "get")  # 429 for the day
    spec_sim.set_limits(per_day=None)
    bad_filter = send("get", list_path, headers=KEY, params={"$filter": "active is 1"})
    conformance.check(bad_filter, list_path, "get")
    conformance.check(send("get", one_path, nobody, headers=KEY), one_path, "get")
    if obj in WRITABLE:
        conformance.check(send("post", one_path, nobody, headers=KEY), one_path, "post")
        conformance.check(send("delete", one_path, nobody, headers=KEY), one_path, "delete")
        spec_sim.set_dialect(refusal_as_success=False)
        bad = {**_new_record(obj, spec_sim), "active": "maybe"}
        refused = requests.post(base + list_path, json=bad, headers=KEY, timeout=5)
        assert conformance.check(refused, list_path, "post")["errorCode"] == 400
    statuses = {status for _path, _method, status in conformance.checked}
    assert statuses == {400, 401, 403, 404, 429}
    assert conformance.problems == []


def test_the_live_spelling_fails_the_check(spec_sim, conformance):
    """The check has teeth: the strings dialect's spelling of a window (``"480"`` and ``""``)
    is refused."""
    window = next(
        w for w in spec_sim.records["allocationwindow"].values() if w["name"] == "Morning"
    )
    path = "/allocationwindow/{uuid}.json"
    url = f"{spec_sim.api_url()}/allocationwindow/{window['uuid']}.json"
    spec_sim.set_dialect(wire_types="strings")
    conformance.check(requests.get(url, headers=KEY, timeout=5), path, "get")
    assert sorted(conformance.problems) == [
        f"GET {path} 200 at end_time: '720' is not of type 'integer'",
        f"GET {path} 200 at sort_priority: '' is not of type 'integer'",
        f"GET {path} 200 at start_time: '480' is not of type 'integer'",
    ]


# --- the default dialect keeps the live spelling, and the bridge reads both ----------------------


def test_the_default_dialect_serves_numbers_as_strings_as_live_data_do(sm8_sim):
    assert sm8_sim.dialect.wire_types == "strings"
    job = str(uuidlib.uuid4())
    sm8_sim.seed(
        {
            "allocationwindow": [{"name": "Urgent", "start_time": 0, "end_time": 0}],
            "job": [{"uuid": job, "status": "Quote"}],
            "jobactivity": [{"job_uuid": job, "travel_time_in_seconds": 0}],
            "staff": [{"first": "Zoe", "last": "Ng", "email": "zoe@example.com"}],
        }
    )

    def first(obj: str) -> dict[str, Any]:
        return requests.get(f"{sm8_sim.api_url()}/{obj}.json", headers=KEY, timeout=5).json()[0]

    window = {"start_time": "0", "end_time": "0", "sort_priority": ""}
    assert window.items() <= first("allocationwindow").items()
    assert first("jobactivity")["travel_time_in_seconds"] == "0"
    assert (first("job")["lat"], first("staff")["hide_from_schedule"]) == ("", "")
    assert first("job")["active"] == 1  # flags stay numbers
    unauthorized = requests.get(f"{sm8_sim.api_url()}/job.json", timeout=5)
    assert unauthorized.json()["errorCode"] == 401  # a number in both dialects, as the spec says


def test_the_bridge_reads_the_same_records_in_both_spellings(sm8, sm8_sim):
    seed_business(sm8_sim, None, staff=3, jobs=3, allocations=5, fixed=3)
    sm8_sim.seed(
        {
            "job": [{"status": "Quote", "lat": "-33.8688", "lng": "151.2093"}],
            "staff": [
                {"first": "Zoe", "last": "Ng", "email": "zoe@example.com", "hide_from_schedule": 1}
            ],
        }
    )

    def declared(model: SM8Record) -> str:
        """The fields a model declares (one it does not is kept as it came). A job and a window
        as the rules read them, for the spec has no empty number: its 0 for an empty location or
        window is no location or window, as ``""`` is."""
        if isinstance(model, Job):
            return repr(job_facts(model))
        if isinstance(model, AllocationWindow):
            return repr((model.uuid, model.name, model.active, window_minutes(model)))
        return repr({f: getattr(model, f) for f in type(model).model_fields})

    def read() -> list[list[str]]:
        return [
            sorted(map(declared, models))
            for models in (
                sm8.iter_allocations(),
                sm8.iter_activities(),
                sm8.iter_jobs(),
                sm8.list_staff(),
                sm8.list_allocation_windows(),
                [sm8.vendor()],
            )
        ]

    as_strings = read()
    sm8_sim.set_dialect(wire_types="spec")
    as_spec = read()
    assert as_spec == as_strings
    assert {(w.name, w.start_time) for w in sm8.list_allocation_windows()} >= {("Morning", 480)}
    job = next(j for j in sm8.iter_jobs() if j.status == "Quote")
    assert (job.lat, job.lng) == (-33.8688, 151.2093)


def test_the_switch_is_set_like_the_others_and_refuses_an_unknown_spelling(sm8_sim):
    url = f"{sm8_sim.root_url}/_admin/dialect"
    assert requests.post(url, json={"wire_types": "spec"}, timeout=5).json()["wire_types"] == "spec"
    assert sm8_sim.dialect.wire_types == "spec"
    refused = requests.post(url, json={"wire_types": "numbers"}, timeout=5)
    assert refused.status_code == 400 and "wire_types" in refused.json()["message"]


# --- ServiceM8's own TypeScript SDK, where it is installed ---------------------------------------

# Drives the SDK (npm ``servicem8``, generated from the spec; it validates every answer) through
# each operation of the objects the bridge uses, and prints what each step threw, as JSON.
SDK_DRIVER = r"""
const { ServiceM8 } = require("servicem8");
const [base, key, mode, given] = process.argv.slice(2);
const { job, mine, nobody } = JSON.parse(given);
const sdk = new ServiceM8({
  serverURL: base, security: { apiKey: key }, retryConfig: { strategy: "none" },
});
const seen = [];
async function step(name, call) {
  try {
    const value = await call();
    seen.push({ name, threw: null });
    return value;
  } catch (e) {
    seen.push({ name, threw: e.constructor.name, message: String(e.message).slice(0, 300) });
    return undefined;
  }
}
const groups = {
  job: [sdk.jobs, "Jobs", "jobCreate", { status: "Work Order", jobAddress: "9 Crown St" }],
  jobactivity: [sdk.jobActivities, "JobActivities", "jobActivityCreate", {
    jobUuid: job, activityWasScheduled: "1", startDate: "2026-12-02 09:00:00",
    endDate: "2026-12-02 11:00:00", travelTimeInSeconds: 300,
  }],
  joballocation: [sdk.jobAllocations, "JobAllocations", "jobAllocationCreate",
    { jobUuid: job, allocationDate: "2026-12-03 00:00:00" }],
  staff: [sdk.staffMembers, "StaffMembers", "staffCreate",
    { first: "Ida", last: "Ray", email: "ida@example.com", hideFromSchedule: 0 }],
  allocationwindow: [sdk.allocationWindows, "AllocationWindows", "allocationWindowCreate",
    { name: "Evening", startTime: 1020, endTime: 1200 }],
};
async function walk() {
  const vendors = await step("vendor.list", () => sdk.vendors.listVendors());
  if (vendors) await step("vendor.get", () => sdk.vendors.getVendors({ uuid: vendors[0].uuid }));
  for (const [obj, [group, noun, body, fields]] of Object.entries(groups)) {
    const rows = await step(`${obj}.list`, () => group[`list${noun}`]());
    if (rows) await step(`${obj}.get`, () => group[`get${noun}`]({ uuid: rows[0].uuid }));
    const made = await step(`${obj}.create`, () => group[`create${noun}`](fields));
    const uuid = made && made.headers["x-record-uuid"][0];
    const own = { ...fields, uuid: mine[obj] };
    await step(`${obj}.create with uuid`, () => group[`create${noun}`](own));
    for (const one of [uuid, mine[obj]]) {
      await step(`${obj}.update`, () => group[`update${noun}`]({ uuid: one, [body]: fields }));
      await step(`${obj}.get`, () => group[`get${noun}`]({ uuid: one }));
      await step(`${obj}.delete`, () => group[`delete${noun}`]({ uuid: one }));
    }
    await step(`${obj}.get unknown`, () => group[`get${noun}`]({ uuid: nobody }));
  }
}
(async () => {
  if (mode === "vendors") await step("vendor.list", () => sdk.vendors.listVendors());
  else await walk();
  process.stdout.write(JSON.stringify(seen));
})();
"""


@pytest.fixture
def sdk(tmp_path) -> Any:
    """Runs ``SDK_DRIVER`` against a simulator; skips where node or the SDK is missing. The test
    never installs the SDK: ``make tools`` puts the pinned one in ``.tools/node``, or name
    another ``node_modules`` in ``NODE_PATH``."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed, so ServiceM8's TypeScript SDK cannot run")
    # `make tools` installs the pinned SDK into .tools/node (the Makefile's SDK_DIR).
    paths = [str(ROOT / ".tools" / "node" / "node_modules"), os.environ.get("NODE_PATH", "")]
    env = {**os.environ, "NODE_PATH": os.pathsep.join(p for p in paths if p)}
    found = subprocess.run(
        [node, "-e", "require.resolve('servicem8')"], cwd=ROOT, capture_output=True, timeout=60,
        env=env,
    )  # fmt: skip
    if found.returncode != 0:
        pytest.skip(
            "ServiceM8's TypeScript SDK (npm package servicem8) is not installed where node "
            "finds it; install it beside the repository or name its node_modules in NODE_PATH"
        )
    driver = tmp_path / "drive.cjs"
    driver.write_text(SDK_DRIVER)

    def run(sim: ServiceM8Simulator, mode: str = "walk", key: str = SM8_KEY) -> dict[str, set]:
        given = {
            "job": next(iter(sim.records["job"])),
            "nobody": str(uuidlib.uuid4()),
            "mine": {obj: str(uuidlib.uuid4()) for obj in WRITABLE},
        }
        done = subprocess.run(
            [node, str(driver), sim.api_url(), key, mode, json.dumps(given)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        threw: dict[str, set] = {}
        for step in json.loads(done.stdout):
            threw.setdefault(step["name"], set()).add(step["threw"])
        return threw

    return run


def test_servicem8s_own_sdk_accepts_every_answer_of_the_spec_typed_simulator(spec_sim, sdk):
    walked = sdk(spec_sim)
    unknown = {f"{obj}.get unknown" for obj in WRITABLE}
    assert {name for name, threw in walked.items() if threw != {None}} == unknown
    assert {name: walked[name] for name in unknown} == {name: {"NotFoundError"} for name in unknown}
    assert len(walked) == 2 + 7 * len(WRITABLE)  # every kind of step ran
    assert sdk(spec_sim, "vendors", key="wrong") == {"vendor.list": {"AuthenticationError"}}
    spec_sim.set_faults(burst_429=1)
    assert sdk(spec_sim, "vendors") == {"vendor.list": {"RateLimitError"}}
    spec_sim.set_faults(error_rate=1.0, error_status=403)
    assert sdk(spec_sim, "vendors") == {"vendor.list": {"ForbiddenError"}}
    spec_sim.set_faults(error_rate=0.0)
    # The live spelling is what the SDK refuses: it cannot read a job list as real data spell it.
    spec_sim.set_dialect(wire_types="strings")
    assert sdk(spec_sim)["job.list"] == {"ResponseValidationError"}
