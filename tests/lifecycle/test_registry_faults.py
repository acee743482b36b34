"""A registry file that is damaged or not a registry is one clear failure naming BYOC_HOME, in text and JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


@pytest.mark.parametrize("damage", ["random bytes", "truncated"])
def test_a_damaged_registry_is_a_clear_failure(tmp_path: Path, damage: str) -> None:
    home = tmp_path / "home"
    env = {**os.environ, "BYOC_HOME": str(home)}
    run = [sys.executable, "-m", "byoc", "status", "--output", "json"]
    assert json.loads(subprocess.run(run, capture_output=True, text=True, env=env, cwd=ROOT, check=True).stdout) == []
    registry = home / "registry.db"
    if damage == "random bytes":
        registry.write_bytes(os.urandom(5000))
    else:
        registry.write_bytes(registry.read_bytes()[:100])
    for side in ("-wal", "-shm"):
        (home / f"registry.db{side}").unlink(missing_ok=True)
    result = subprocess.run(run, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert json.loads(result.stdout)["error"]["field"] == "BYOC_HOME"
    assert "move it aside" in result.stderr
