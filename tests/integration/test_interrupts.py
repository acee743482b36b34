"""Ctrl+C and usage errors as users and CI meet them: a real `byoc` subprocess.

Ctrl+C: the first one stops any command with exit 130, no traceback, and nothing half-written (byoc.interrupts).
A field report had `byoc plan` hang in 7 of ~65 tries and otherwise print asyncio tracebacks or a "report this as
a bug" error, depending on where in the run the signal landed; so the signal is sent at points spread across a
whole run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_byoc

EXAMPLE = ROOT / "examples" / "byoc.yaml"
STOP_WITHIN_S = 5.0
# 130 from byoc; or, when Ctrl+C lands while Python itself is still starting (before byoc's first line runs, so no
# handler of byoc's can exist yet), killed by SIGINT, which a shell reports as 130 as well
STOPPED = (130, -signal.SIGINT)
# Earlier than this the signal may land in the interpreter's own start (importing `site`), which no program can
# handle: Python reports "Fatal Python error: init_import_site" there, whatever the program
PYTHON_START_S = 0.2


def _plan(out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "byoc", "plan", "-f", str(EXAMPLE), "--out", str(out), "--output", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )


def _assert_whole_or_absent(out: Path) -> None:
    """OUT holds a complete plan or nothing of one: no staging folder, no half of the four outputs."""
    entries = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert not [e for e in entries if e.startswith(".")], f"staging left behind in {out}: {entries}"
    if not entries:
        assert not out.exists(), f"an empty {out} left behind: the run made it and published nothing"
        return
    assert entries == ["compliance", "helm-releases.yaml", "manifests", "plan.json"], entries
    plan = json.loads((out / "plan.json").read_text())
    assert plan["resources"]
    manifest = (out / "compliance" / "manifest.sha256").read_text().splitlines()
    for line in manifest:  # every file of the evidence pack is there, and whole
        digest, name = line.split("  ", 1)
        assert hashlib.sha256((out / "compliance" / name).read_bytes()).hexdigest() == digest, name


def test_ctrl_c_at_any_point_of_a_plan_stops_it_at_once_and_cleanly(tmp_path: Path) -> None:
    started = time.monotonic()
    baseline = _plan(tmp_path / "baseline")
    baseline.communicate(timeout=120)
    assert baseline.returncode == 0
    duration = time.monotonic() - started
    rng = random.Random(20)
    delays = [max(PYTHON_START_S, duration * (index + rng.random()) / 10) for index in range(10)]
    outcomes = []
    for index, delay in enumerate(delays):
        out = tmp_path / f"out-{index}"
        process = _plan(out)
        time.sleep(delay)
        with contextlib.suppress(ProcessLookupError):  # done already
            os.killpg(process.pid, signal.SIGINT)  # Ctrl+C reaches the whole foreground process group
        sent = time.monotonic()
        try:
            stdout, stderr = process.communicate(timeout=STOP_WITHIN_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            pytest.fail(f"byoc plan did not stop within {STOP_WITHIN_S}s of Ctrl+C at {delay:.2f}s")
        took = time.monotonic() - sent
        outcomes.append((round(delay, 2), process.returncode, round(took, 2)))
        assert "Traceback" not in stderr, (delay, stderr[-2000:])
        assert "report this as a bug" not in stderr, (delay, stderr[-2000:])
        # 0 only for a plan that was done before the signal came: then its whole output is there
        assert process.returncode in (0, *STOPPED), (delay, process.returncode, stderr[-2000:])
        if process.returncode == 0 or stdout.strip():  # stdout is the whole JSON document or nothing
            assert json.loads(stdout)["plan"] == str(out / "plan.json")
        if process.returncode == 0:
            assert (out / "plan.json").exists()
        _assert_whole_or_absent(out)
    assert sum(1 for _, code, _ in outcomes if code in STOPPED) >= 5, outcomes


def test_ctrl_c_keeps_the_previous_plan_whole(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run_byoc("plan", "-f", str(EXAMPLE), "--out", str(out)).returncode == 0
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    for delay in (1.0, 2.5, 4.0):
        process = _plan(out)
        time.sleep(delay)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=STOP_WITHIN_S)
        assert process.returncode in (0, *STOPPED) and "Traceback" not in stderr
        _assert_whole_or_absent(out)  # the previous plan, or (stopped after the last rename) this one, whole
        assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


@pytest.mark.parametrize(
    "args",
    [
        ["shapes", "--model", "llama-3.1-8b-instruct", "--output", "json"],
        ["validate", "-f", str(EXAMPLE), "--output", "json"],
    ],
)
def test_ctrl_c_in_a_quick_command_is_exit_130_without_a_traceback(args: list[str]) -> None:
    """Whether the signal lands while Python starts, while the command runs or while the process ends."""
    for delay in (PYTHON_START_S, 0.25, 0.3, 0.35, 0.45, 0.6):
        process = subprocess.Popen(
            [sys.executable, "-m", "byoc", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            start_new_session=True,
        )
        time.sleep(delay)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGINT)
        stdout, stderr = process.communicate(timeout=STOP_WITHIN_S)
        # 0 only for a command that was done before the signal came: then its whole output is there
        assert process.returncode in (0, *STOPPED), (delay, process.returncode, stderr[-2000:])
        assert "Traceback" not in stderr
        if process.returncode == 0 or stdout.strip():
            json.loads(stdout)


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["plan", "--bogus", "--output", "json"], "--bogus"),  # unknown option
        (["scale", "-o", "json"], "NAME"),  # missing argument
        (["scale", "demo", "--min", "1", "-o", "json"], "--max"),  # missing option
        (["status", "--output=json", "--interval", "soon"], "--interval"),  # a value of the wrong type
        (["regions", "-o", "json", "--cloud", "azure"], "--cloud"),  # a bad choice
        (["up", "-ojson", "-f"], "-f"),  # an option without its value
    ],
)
def test_usage_errors_under_output_json_are_one_json_error(args: list[str], field: str) -> None:
    result = run_byoc(*args, timeout=60)
    assert result.returncode == 2
    error = json.loads(result.stdout)["error"]  # one object: json.loads fails on anything else
    assert error["exit_code"] == 2 and error["field"] == field and error["message"]
    assert "--help" in error["hint"]
    assert "Error: " in result.stderr and "Traceback" not in result.stderr  # text on stderr as before


def test_usage_errors_in_text_mode_print_nothing_on_stdout() -> None:
    result = run_byoc("plan", "--bogus", timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert "No such option: --bogus" in result.stderr
