"""Registry locks across processes: two commands at once, a holder killed mid-run, a lock of another host."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from byoc.errors import ByocError
from byoc.registry import Registry, State
from tests.conftest import ROOT
from tests.lifecycle.conftest import byoc, no_pulumi_path

HOLD = """
import sys, time
from pathlib import Path
from byoc.registry import Registry, State
registry = Registry(Path(sys.argv[1]))
registry.acquire("demo", "up")
registry.transition("demo", State.DEPLOYING)
print("holding", flush=True)
time.sleep(120)
"""


def _deployed(home: Path) -> Registry:
    registry = Registry(home)
    registry.create(
        name="demo",
        cloud="aws",
        region="eu-west-2",
        requested_region="EUROPE",
        shape="h100x1-fp8",
        instance_type="p5.4xlarge",
        spec={
            "name": "demo",
            "cloud": "aws",
            "region": "EUROPE",
            "model": "llama-3.1-8b-instruct",
            "shape": "h100x1-fp8",
        },
        backend=f"file://{home / 'state'}",
    )
    registry.transition("demo", State.DEPLOYING)
    registry.transition("demo", State.DEPLOYED)
    return registry


@pytest.fixture
def holder(tmp_path: Path) -> subprocess.Popen[str]:
    """Another process holding demo's lock in the middle of an `up`."""
    _deployed(tmp_path).close()
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert process.stdout is not None and process.stdout.readline().strip() == "holding"
    yield process
    if process.poll() is None:
        process.kill()
        process.wait()


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "BYOC_HOME": str(home), "PATH": no_pulumi_path()}


def _status(home: Path) -> dict:
    result = byoc("status", "demo", "--no-probe", "--output", "json", env=_env(home))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)[0]


def test_a_second_command_is_refused_while_a_live_process_holds_the_lock(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    with pytest.raises(ByocError, match=rf"`byoc up` \(pid {holder.pid} .*two commands on one deployment at once"):
        Registry(tmp_path).acquire("demo", "destroy")
    result = byoc("unlock", "demo", env=_env(tmp_path))
    assert result.returncode == 2
    assert f"pid {holder.pid}" in result.stderr and "is still running" in result.stderr
    row = _status(tmp_path)
    assert row["state"] == "DEPLOYING"
    assert row["health"].startswith(f"in progress: `byoc up` (pid {holder.pid}")


def test_a_killed_run_ends_failed_with_the_reason_and_the_lock_is_recovered(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    row = _status(tmp_path)
    assert row["state"] == "FAILED"
    assert f"`byoc up` (pid {holder.pid}" in row["reason"] and "killed or crashed" in row["reason"]
    assert row["running"] is None
    messages = [e["message"] for e in row["events"]]
    assert any(m.startswith("recovered the lock of a dead process") for m in messages)
    assert messages[-1].startswith("DEPLOYING -> FAILED")
    registry = Registry(tmp_path)
    with registry.locked("demo", "destroy"):  # free again
        assert registry.lock_of("demo") is not None
    assert registry.lock_of("demo") is None


def test_a_lock_of_another_host_is_never_taken_over(tmp_path: Path) -> None:
    registry = _deployed(tmp_path)
    registry._db.execute(
        "INSERT INTO locks (name, pid, host, started, command, acquired_at) VALUES ('demo', 1, 'ci-runner-7', NULL, "
        "'up', '2026-11-29T10:00:00Z')"
    )
    assert socket.gethostname() != "ci-runner-7"
    result = byoc("unlock", "demo", env=_env(tmp_path))
    assert result.returncode == 2
    assert "runs on another host" in result.stderr and "stop it on ci-runner-7" in result.stderr
    with pytest.raises(ByocError, match="ci-runner-7"):
        registry.acquire("demo", "up")


def test_a_reused_pid_is_not_mistaken_for_the_holder(tmp_path: Path) -> None:
    """Our own pid with another start time: the process that took the lock is gone, its pid now someone else's."""
    registry = _deployed(tmp_path)
    registry._db.execute(
        "INSERT INTO locks (name, pid, host, started, command, acquired_at) VALUES ('demo', ?, ?, '1', 'scale', "
        "'2026-11-29T10:00:00Z')",
        (os.getpid(), socket.gethostname()),
    )
    result = byoc("unlock", "demo", "--output", "json", env=_env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["cleared"] == [
        f"byoc lock of `byoc scale` (pid {os.getpid()} on {socket.gethostname()}, since 2026-11-29T10:00:00Z)"
    ]
    assert Registry(tmp_path).lock_of("demo") is None


HOLD_WITH_PULUMI = """
import os, subprocess, sys, time
from pathlib import Path
from byoc.engines.live import RUN_MARKER
from byoc.registry import Registry, State
home = Path(sys.argv[1])
registry = Registry(home)
registry.acquire("demo", "up")
registry.transition("demo", State.DEPLOYING)
# a stand-in for the `pulumi` CLI the Automation API starts, with the marker byoc gives it
child = subprocess.Popen(["sleep", "300"], env={**os.environ, RUN_MARKER: str((home / "work" / "demo").resolve())})
print(child.pid, flush=True)
time.sleep(120)
"""


def test_a_pulumi_left_running_by_a_killed_byoc_is_shown_by_status_and_ended_by_unlock(tmp_path: Path) -> None:
    _deployed(tmp_path).close()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_WITH_PULUMI, str(tmp_path)], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    assert holder.stdout is not None
    orphan = int(holder.stdout.readline())
    try:
        holder.kill()  # SIGKILL: byoc runs no cleanup, its pulumi keeps running
        holder.wait()
        env = {**os.environ, "BYOC_HOME": str(tmp_path), "PATH": no_pulumi_path()}
        status = byoc("status", "demo", "--no-probe", "--output", "json", env=env)
        assert status.returncode == 0, status.stderr
        row = json.loads(status.stdout)[0]
        assert row["state"] == "FAILED" and row["running"] is None  # the run ended ...
        assert [o["pid"] for o in row["orphaned_pulumi"]] == [orphan]  # ... but its pulumi did not
        assert "sleep 300" in row["orphaned_pulumi"][0]["command"]
        assert f"Pulumi still runs without its byoc (pid {orphan})" in row["health"]
        assert "`byoc unlock demo` ends it" in row["health"]
        text = byoc("status", "demo", "--no-probe", env=env)
        assert f"orphaned   pid {orphan}: sleep 300" in text.stdout

        unlocked = byoc("unlock", "demo", "--output", "json", env=env)
        assert unlocked.returncode == 0, unlocked.stderr
        assert any(c.startswith(f"orphaned Pulumi process {orphan}") for c in json.loads(unlocked.stdout)["cleared"])
        stat = Path(f"/proc/{orphan}/stat")
        assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"
        after = json.loads(byoc("status", "demo", "--no-probe", "--output", "json", env=env).stdout)[0]
        assert after["orphaned_pulumi"] == [] and "Pulumi still runs" not in after["health"]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(orphan, signal.SIGKILL)
