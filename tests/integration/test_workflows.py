"""Every GitHub Actions workflow byoc ships (.github/workflows/ and the CI recipes under examples/) is lint-clean
under actionlint and zizmor (offline, default policy: actions pinned by commit SHA, no template injection, least
privilege), and both linters are shown to catch a planted injection."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT

RELEASE = ROOT / ".github" / "workflows" / "release-runtime.yml"
PINNED_USES = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40} # v\d+(\.\d+)*$")


def _is_workflow(path: Path) -> bool:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return path.parent.name == "workflows"  # a broken workflow must still be linted (and fail)
    # PyYAML reads the `on:` key as True.
    return isinstance(data, dict) and "jobs" in data and ("on" in data or True in data)


def workflows() -> list[Path]:
    candidates = [*(ROOT / ".github" / "workflows").glob("*.y*ml"), *(ROOT / "examples").rglob("*.y*ml")]
    return sorted(path for path in candidates if _is_workflow(path))


def _tool(name: str) -> str:
    """A linter installed with the dev extra: on PATH or beside this Python."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if not found:
        pytest.fail(f"{name} is not installed: `python3 -m pip install -e '.[dev]'` installs it (scripts/test.sh does)")
    return found


def actionlint(paths: list[Path], cwd: Path = ROOT) -> list[dict[str, Any]]:
    result = subprocess.run(
        [_tool("actionlint"), "-no-color", "-format", "{{json .}}", *map(str, paths)],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
        timeout=120,
    )
    assert result.returncode in (0, 1), f"actionlint exited {result.returncode}: {result.stderr}"
    errors: list[dict[str, Any]] = json.loads(result.stdout or "[]")
    return errors


def zizmor(paths: list[Path], cwd: Path = ROOT) -> list[dict[str, Any]]:
    # --no-config: zizmor's default policy (hash-pinned actions everywhere), whatever a local zizmor.yml says.
    result = subprocess.run(
        [_tool("zizmor"), "--offline", "--no-config", "--format", "json", *map(str, paths)],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
        timeout=120,
    )
    # 0: no findings; 10 + the highest severity when there are some.
    assert result.returncode == 0 or result.returncode >= 10, f"zizmor exited {result.returncode}: {result.stderr}"
    findings: list[dict[str, Any]] = json.loads(result.stdout or "[]")
    return findings


def _where(finding: dict[str, Any]) -> str:
    location = finding["locations"][0]
    path = location["symbolic"]["key"]["Local"]["verbatim_path"]
    return f"{path}:{location['concrete']['location']['start_point']['row'] + 1}"


def test_the_release_workflow_is_among_those_checked() -> None:
    found = workflows()
    assert RELEASE in found, found


def test_actionlint_finds_nothing() -> None:
    errors = actionlint(workflows())
    assert errors == [], "\n".join(f"{e['filepath']}:{e['line']}: {e['message']} [{e['kind']}]" for e in errors)


def test_zizmor_finds_nothing() -> None:
    findings = zizmor(workflows())
    assert findings == [], "\n".join(f"{_where(f)}: {f['ident']}: {f['desc']}" for f in findings)


def test_every_action_is_pinned_by_commit_with_its_version() -> None:
    """zizmor checks the pin; the trailing `# vX.Y.Z` is what a reviewer (and Dependabot) reads."""
    for path in workflows():
        for line in path.read_text().splitlines():
            stripped = line.strip().removeprefix("- ")
            if stripped.startswith("uses:") and not stripped.startswith("uses: ./"):
                assert PINNED_USES.match(stripped.removeprefix("uses:").strip()), f"{path.name}: {line.strip()}"


def test_the_release_publishes_runtime_dockerfile_and_pins_its_digest() -> None:
    workflow = yaml.safe_load(RELEASE.read_text())
    assert workflow[True] == {"push": {"tags": ["v*"]}, "workflow_dispatch": None}
    assert workflow["permissions"] == {}
    publish, pin = workflow["jobs"]["publish"], workflow["jobs"]["pin"]
    assert publish["permissions"] == {"contents": "read", "packages": "write"}
    build = next(s for s in publish["steps"] if s.get("id") == "build")
    assert build["uses"].startswith("docker/build-push-action@")
    assert (ROOT / build["with"]["file"]).is_file()
    assert build["with"]["push"] is True
    assert build["with"]["provenance"] == "mode=max" and build["with"]["sbom"] is True
    assert publish["outputs"]["digest"] == "${{ steps.build.outputs.digest }}"
    assert "ghcr.io/${OWNER,,}/byoc-runtime" in RELEASE.read_text()
    assert any("GITHUB_STEP_SUMMARY" in s.get("run", "") and "DIGEST" in s.get("env", {}) for s in publish["steps"])
    assert pin["needs"] == "publish"
    assert any("scripts/pin_runtime_image.py --digest" in s.get("run", "") for s in pin["steps"])
    assert (ROOT / "scripts" / "pin_runtime_image.py").is_file()
    catalog = yaml.safe_load((ROOT / "byoc" / "catalogs" / "images.yaml").read_text())
    assert ROOT / catalog["runtime"]["published_by"] == RELEASE


PLANTED = """\
name: greet
on: pull_request
permissions:
  contents: read
jobs:
  greet:
    runs-on: ubuntu-24.04
    steps:
      - run: echo "Thanks for ${{ github.event.pull_request.title }}"
"""


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    folder = tmp_path / ".github" / "workflows"
    folder.mkdir(parents=True)
    (folder / "greet.yml").write_text(PLANTED)
    return folder / "greet.yml"


def test_actionlint_catches_a_planted_injection(planted: Path) -> None:
    errors = actionlint([planted], cwd=planted.parents[2])
    assert [(e["line"], e["kind"]) for e in errors] == [(9, "expression")], errors
    assert "github.event.pull_request.title" in errors[0]["message"] and "untrusted" in errors[0]["message"]


def test_zizmor_catches_a_planted_injection(planted: Path) -> None:
    findings = zizmor([planted], cwd=planted.parents[2])
    assert [(f["ident"], _where(f).rsplit(":", 1)[1]) for f in findings] == [("template-injection", "9")], findings
    assert findings[0]["determinations"]["severity"] == "High"
