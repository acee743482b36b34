"""Figures in the docs are the code's: each one is recomputed here, so a doc cannot drift from what byoc does."""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import ROOT
from tests.stacks.plans import graph

ROW = re.compile(
    r"^\| `--region (?P<region>\S+) --model (?P<model>\S+) --shape (?P<shape>\S+)`[^|]*"
    r"\| (?P<total>\d+) \| (?P<aws>\d+) \| (?P<k8s>\d+) \|$",
    re.MULTILINE,
)


def test_aws_foundation_resource_counts() -> None:
    rows = list(ROW.finditer((ROOT / "docs" / "aws-foundation.md").read_text()))
    assert len(rows) >= 2, "the Numbers table of docs/aws-foundation.md was not found"
    for row in rows:
        plan = graph(region=row["region"], model=row["model"], shape=row["shape"])
        counted = {
            "total": len(plan.resources),
            "aws": sum(r.type.startswith("aws:") for r in plan.resources),
            "k8s": sum(r.type.startswith("kubernetes:") for r in plan.resources),
        }
        written = {key: int(row[key]) for key in counted}
        assert written == counted, f"docs/aws-foundation.md row for {row['shape']}: write {counted}"


@pytest.mark.parametrize("doc", sorted((ROOT / "docs").glob("*.md")), ids=lambda p: p.name)
def test_markdown_tables_are_well_formed(doc: object) -> None:
    """Every row of a Markdown table has as many cells as its header (a broken table renders as text)."""
    lines = doc.read_text().splitlines()  # type: ignore[attr-defined]
    in_code = False
    header_cells = None
    for number, line in enumerate(lines, 1):
        if line.startswith("```"):
            in_code = not in_code
            continue
        if in_code or not line.startswith("|"):
            header_cells = None
            continue
        cells = len(re.split(r"(?<!\\)\|", line.strip().strip("|")))
        if header_cells is None:
            header_cells = cells
            # a table's second line is its separator; a stray line inside a table starts a "table" without one
            following = lines[number] if number < len(lines) else ""
            assert re.fullmatch(r"\|( *:?-+:? *\|)+", following.strip()), f"{doc.name}:{number}: no separator row"  # type: ignore[attr-defined]
        else:
            assert cells == header_cells, f"{doc.name}:{number}: {cells} cells, the header has {header_cells}"  # type: ignore[attr-defined]


def test_estimates_calibration_is_generated() -> None:
    """docs/estimates.md carries exactly what scripts/calibrate_planner.py --markdown prints for today's planner."""
    import subprocess
    import sys

    doc = (ROOT / "docs" / "estimates.md").read_text()
    begin = doc.index("<!-- generated: python scripts/calibrate_planner.py --markdown")
    body = doc[doc.index("\n", begin) + 1 : doc.index("<!-- end generated -->")]
    printed = subprocess.run(
        [sys.executable, "scripts/calibrate_planner.py", "--markdown"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    assert body == printed, "run: python scripts/calibrate_planner.py --markdown, and paste it into docs/estimates.md"
    summary = json.loads(printed.split("```json\n", 1)[1].split("```", 1)[0])["summary"]
    prose = doc[doc.index("<!-- end generated -->") :]
    assert f"{summary['mean_abs_log_error']:.3f}" in prose and f"{summary['within_25_percent']} of" in prose
