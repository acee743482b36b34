"""`byoc plan` writes the same bytes for the same spec and byoc version (CI reviews plans with `git diff`).

Only the evidence pack's time differs between two runs: summary.json `generated_at`, OSCAL `last-modified`, the
assessment result's `start`/`end` and each observation's `collected`, each OCSF record's `time`, and the
manifest.sha256 lines of those files. With SOURCE_DATE_EPOCH set, not even those.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from byoc.engines import program_for
from byoc.engines.offline import run_offline
from byoc.plan import Plan
from tests.conftest import ROOT, deploy

SPECS = {
    "aws": ["-f", "examples/byoc.yaml"],
    # the GCP plan of the done-when list
    "gcp": ["--cloud", "gcp", "--region", "EUROPE", "--model", "llama-3.1-8b-instruct", "--shape", "h100x8-fp8"],
}
ISO_TIME = r'"\d{4}-\d{2}-\d{2}T[^"]+"'
# the files that carry the pack's time, and the fields it is in (documented in compliance/reports/timestamps.py)
TIME_FIELDS = {
    "compliance/summary.json": re.compile(rf'("generated_at": ){ISO_TIME}'),
    "compliance/oscal/component-definition.json": re.compile(rf'("last-modified": ){ISO_TIME}'),
    "compliance/oscal/assessment-results.json": re.compile(rf'("(?:last-modified|start|end|collected)": ){ISO_TIME}'),
    "compliance/findings.ocsf.jsonl": re.compile(r'("time": )\d+'),
}
MANIFEST = "compliance/manifest.sha256"
EPOCH = "1767225600"  # 2026-01-01T00:00:00Z


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _normalised(folder: Path, name: str) -> str:
    """The file with its time fields (and, in the manifest, the digests of the files that carry them) blanked."""
    text = (folder / name).read_text()
    if name in TIME_FIELDS:
        text, count = TIME_FIELDS[name].subn(r"\1<time>", text)
        assert count, f"{name} has none of its time fields: update TIME_FIELDS and the docs"
    if name == MANIFEST:
        timed = {n.removeprefix("compliance/") for n in TIME_FIELDS}
        lines = [line.split("  ", 1) for line in text.splitlines()]
        text = "".join(f"{'<sha256>' if path in timed else digest}  {path}\n" for digest, path in lines)
    return text


def _plan(cloud: str, out: Path, hash_seed: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    env["PYTHONHASHSEED"] = hash_seed  # two runs iterate sets and dicts of strings in different orders
    return subprocess.Popen(
        [sys.executable, "-m", "byoc", "plan", *SPECS[cloud], "--out", str(out)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module", params=sorted(SPECS))
def two_plans(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same spec planned twice, by two processes at once (as two CI jobs would)."""
    folder = tmp_path_factory.mktemp(f"plan-{request.param}")
    runs = [_plan(request.param, folder / name, seed) for name, seed in (("A", "1"), ("B", "2"))]
    for run in runs:
        _, stderr = run.communicate(timeout=600)
        assert run.returncode == 0, stderr
    return folder / "A", folder / "B"


def test_two_plans_differ_only_in_the_named_time_fields(two_plans: tuple[Path, Path]) -> None:
    a, b = two_plans
    files = _files(a)
    assert files == _files(b)
    assert {"plan.json", "helm-releases.yaml", MANIFEST, *TIME_FIELDS} <= set(files)
    assert sum(f.startswith("manifests/") for f in files) >= 10
    assert [f for f in files if _normalised(a, f) != _normalised(b, f)] == []
    # every other file, byte for byte
    changed = {f for f in files if (a / f).read_bytes() != (b / f).read_bytes()}
    assert changed <= {*TIME_FIELDS, MANIFEST}


def _times(pack: Path) -> set[str]:
    summary = json.loads((pack / "summary.json").read_text())
    times = {summary["generated_at"]}
    for name in ("component-definition.json", "assessment-results.json"):
        text = (pack / "oscal" / name).read_text()
        times |= {
            m.group(0).split(": ", 1)[1].strip('"') for m in TIME_FIELDS[f"compliance/oscal/{name}"].finditer(text)
        }
    records = [json.loads(line) for line in (pack / "findings.ocsf.jsonl").read_text().splitlines()]
    times |= {datetime.fromtimestamp(r["time"] / 1000, UTC).isoformat() for r in records}
    return times


def test_every_time_field_is_the_packs_one_instant(two_plans: tuple[Path, Path]) -> None:
    for plan in two_plans:
        instants = {datetime.fromisoformat(t) for t in _times(plan / "compliance")}
        assert len(instants) == 1, sorted(instants)


def test_source_date_epoch_fixes_the_packs_time(
    two_plans: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pack `byoc plan` wrote is the one its plan.json gives; with SOURCE_DATE_EPOCH, byte for byte."""
    from compliance.evaluate import evaluate, graph_from_plan
    from compliance.reports import write_pack

    planned = two_plans[0]
    document = json.loads((planned / "plan.json").read_text())
    frameworks = document["compliance"]["frameworks"]
    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)
    for name in ("C", "D"):
        declared = graph_from_plan(document)
        write_pack(declared, evaluate(declared, frameworks), frameworks, tmp_path / name / "compliance")
    c, d = tmp_path / "C", tmp_path / "D"
    files = _files(c)
    assert files == _files(d)
    assert [f for f in files if (c / f).read_bytes() != (d / f).read_bytes()] == []
    assert _times(c / "compliance") == {"2026-01-01T00:00:00+00:00"}
    assert files == [f for f in _files(planned) if f.startswith("compliance/")]
    assert [f for f in files if _normalised(c, f) != _normalised(planned, f)] == []


def _registered_with_delays(seed: int) -> tuple[Plan, list[str]]:
    """The AWS program planned with each registration held a random few milliseconds (as a busy machine would),
    and the order in which registrations came back."""
    from pulumi.runtime import mocks

    original: Callable[..., Any] = mocks.MockMonitor.RegisterResource
    chance = random.Random(seed)
    lock = threading.Lock()
    arrived: list[str] = []

    def held(self: Any, request: Any) -> Any:
        with lock:
            delay = chance.uniform(0, 0.02)
        threading.Event().wait(delay)
        response = original(self, request)
        with lock:
            arrived.append(f"{request.type}::{request.name}")
        return response

    mocks.MockMonitor.RegisterResource = held  # type: ignore[method-assign]
    try:
        deployment = deploy(name="order")
        program = program_for(deployment)
        assert program is not None
        return run_offline(deployment, program), arrived
    finally:
        mocks.MockMonitor.RegisterResource = original  # type: ignore[method-assign]


def test_plan_order_does_not_depend_on_registration_timing() -> None:
    first, first_arrivals = _registered_with_delays(1)
    second, second_arrivals = _registered_with_delays(2)
    assert first_arrivals != second_arrivals  # the registrations did come back in another order
    assert [r.as_dict() for r in first.resources] == [r.as_dict() for r in second.resources]
    assert [json.dumps(r.as_dict()) for r in first.resources] == [json.dumps(r.as_dict()) for r in second.resources]
    # parents come before their children
    seen: set[str] = set()
    for resource in first.resources:
        assert resource.parent is None or resource.parent in seen, f"{resource.name} before its parent"
        seen.add(resource.name)


def test_a_plan_runs_in_a_process_that_ran_asyncio_before() -> None:
    """Pulumi's mocks use the thread's current event loop; `asyncio.run()` leaves none (a tool embedding byoc, or a
    test session whose earlier tests ran an asyncio server). The plan must not fail with "no current event loop"."""
    import asyncio

    from byoc.engines import program_for
    from byoc.engines.offline import run_offline
    from tests.conftest import deploy

    async def nothing() -> None:
        return None

    asyncio.run(nothing())  # leaves the main thread's loop unset, as any earlier asyncio.run does
    deployment = deploy(name="after-asyncio")
    program = program_for(deployment)
    assert program is not None
    plan = run_offline(deployment, program)
    assert plan.by_type("aws:kms/key:Key")
