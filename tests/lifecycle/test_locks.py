"""Registry locks across processes: two commands at once, a holder killed mid-run, a lock of another host."""

from __future__ import annotations

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
