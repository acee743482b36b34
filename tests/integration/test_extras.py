"""Commands whose pip extra is not installed exit 2 with the exact `pip install` to run, never a traceback.

The extra's modules are hidden in a real subprocess (`sys.modules[name] = None` makes both `import` and
`importlib.util.find_spec` see them as absent), which is what a plain install (no extra) looks like to byoc.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


def byoc_without(hidden: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    code = (
        "import sys\n"
        f"for name in {hidden!r}: sys.modules[name] = None\n"
        f"sys.argv = ['byoc', *{list(args)!r}]\n"
        "from byoc.cli import main\n"
        "main()\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120, cwd=ROOT
    )


@pytest.mark.parametrize(
    ("hidden", "args", "extra"),
    [
        (["aiohttp"], ["serve", "gateway", "--insecure-no-auth"], "runtime"),
        (["prometheus_client"], ["serve", "engine-stats"], "runtime"),
        (["torch"], ["serve", "engine", "--model-dir", "/nonexistent"], "runtime"),
        (["redis"], ["usage", "--store", "redis://127.0.0.1:1"], "runtime"),
        (
            ["redis"],
            ["serve", "gateway", "--insecure-no-auth", "--upstream", "http://127.0.0.1:1", "--store", "redis://x:1"],
            "runtime",
        ),
        (["torch", "transformers"], ["build", "--source", "file:///nonexistent", "--shape", "h100x1-bf16"], "runtime"),
    ],
)
def test_a_missing_extra_names_the_pip_command(hidden: list[str], args: list[str], extra: str) -> None:
    result = byoc_without(hidden, *args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"byoc's {extra} extra" in result.stderr
    assert "pip install" in result.stderr and f"[{extra}]" in result.stderr
    assert hidden[0] in result.stderr  # names what is missing


def test_hash_key_needs_no_extra(tmp_path: Path) -> None:
    result = byoc_without(["aiohttp", "torch", "prometheus_client"], "serve", "hash-key", "--help")
    assert result.returncode == 0, result.stderr


def test_plan_needs_no_extra(tmp_path: Path) -> None:
    """The main job runs on the plain install: the runtime extra (torch, aiohttp) is not needed by byoc plan."""
    out = tmp_path / "out"
    result = byoc_without(
        ["torch", "transformers", "aiohttp", "prometheus_client", "peft"],
        "plan",
        "-f",
        str(ROOT / "examples" / "byoc.yaml"),
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    assert (out / "plan.json").is_file()
    assert (out / "compliance").is_dir()


@pytest.mark.parametrize("command", ["gateway", "engine", "engine-stats"])
def test_help_is_readable_before_the_extra_is_installed(command: str) -> None:
    result = byoc_without(["aiohttp", "torch", "prometheus_client"], "serve", command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout
