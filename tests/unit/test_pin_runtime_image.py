"""scripts/pin_runtime_image.py: the release workflow's way to pin the published runtime image by digest, run on a
copy of the real image catalog."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT

SCRIPT = ROOT / "scripts" / "pin_runtime_image.py"
CATALOG = ROOT / "byoc" / "catalogs" / "images.yaml"
DIGEST = "sha256:" + "0123456789abcdef" * 4
REPOSITORY = "ghcr.io/acme/byoc-runtime"


@pytest.fixture
def catalog(tmp_path: Path) -> Path:
    copy = tmp_path / "images.yaml"
    shutil.copyfile(CATALOG, copy)
    return copy


def run(catalog: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--catalog", str(catalog), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


def test_pins_repository_and_digest_and_nothing_else(catalog: Path) -> None:
    before = load(catalog)
    result = run(catalog, "--digest", DIGEST, "--repository", REPOSITORY)
    assert result.returncode == 0, result.stderr
    assert f"{REPOSITORY}@{DIGEST}" in result.stdout
    after = load(catalog)
    assert after["runtime"] == {**before["runtime"], "repository": REPOSITORY, "digest": DIGEST}
    assert {k: v for k, v in after.items() if k != "runtime"} == {k: v for k, v in before.items() if k != "runtime"}
    # Only the two lines change: the catalog's comments (where each pin comes from) survive.
    changed = [
        (old, new)
        for old, new in zip(CATALOG.read_text().splitlines(), catalog.read_text().splitlines(), strict=True)
        if old != new
    ]
    assert [new.strip() for _, new in changed] == [f"repository: {REPOSITORY}", f"digest: {DIGEST}"]


def test_the_pinned_catalog_is_what_a_deployment_references(catalog: Path) -> None:
    """The same rule byoc's resolve uses (repository@digest when a digest is set) gives the published image."""
    run(catalog, "--digest", DIGEST, "--repository", REPOSITORY)
    entry = load(catalog)["runtime"]
    assert f"{entry['repository']}@{entry['digest']}" == f"{REPOSITORY}@{DIGEST}"


def test_digest_alone_keeps_the_repository(catalog: Path) -> None:
    repository = load(catalog)["runtime"]["repository"]
    assert run(catalog, "--digest", DIGEST).returncode == 0
    assert load(catalog)["runtime"]["repository"] == repository
    assert load(catalog)["runtime"]["digest"] == DIGEST


def test_pinning_twice_changes_nothing_more(catalog: Path) -> None:
    run(catalog, "--digest", DIGEST, "--repository", REPOSITORY)
    once = catalog.read_text()
    result = run(catalog, "--digest", DIGEST, "--repository", REPOSITORY)
    assert result.returncode == 0
    assert "unchanged" in result.stdout
    assert catalog.read_text() == once


@pytest.mark.parametrize(
    "digest",
    [
        "sha256:" + "0" * 63,  # too short
        "sha256:" + "0" * 65,
        "sha256:" + "A" * 64,  # digests are lowercase hex
        "sha512:" + "0" * 64,
        "0" * 64,  # no algorithm
        "sha256:" + "g" * 64,
        f"{REPOSITORY}@sha256:" + "0" * 64,  # a reference, not a digest
    ],
)
def test_a_malformed_digest_is_refused_with_exit_2(catalog: Path, digest: str) -> None:
    before = catalog.read_text()
    result = run(catalog, "--digest", digest)
    assert result.returncode == 2
    assert "--digest" in result.stderr
    assert "Traceback" not in result.stderr
    assert catalog.read_text() == before


@pytest.mark.parametrize("repository", ["ghcr.io/Acme/byoc-runtime", f"{REPOSITORY}:0.1.0", f"{REPOSITORY}@{DIGEST}"])
def test_a_malformed_repository_is_refused_with_exit_2(catalog: Path, repository: str) -> None:
    before = catalog.read_text()
    result = run(catalog, "--digest", DIGEST, "--repository", repository)
    assert result.returncode == 2
    assert "--repository" in result.stderr
    assert catalog.read_text() == before


def test_a_catalog_without_a_runtime_entry_fails_plainly(tmp_path: Path) -> None:
    other = tmp_path / "images.yaml"
    other.write_text("trtllm:\n  repository: nvcr.io/nvidia/tensorrt-llm/release\n  digest: null\n")
    result = run(other, "--digest", DIGEST)
    assert result.returncode == 1
    assert "no top-level `runtime:` entry" in result.stderr
