from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from byoc.errors import ByocError
from byoc.resolve import Deployment, resolve
from byoc.spec import build_spec

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def spec_data(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "test",
        "cloud": "aws",
        "region": "EUROPE",
        "model": "llama-3.1-8b-instruct",
        "shape": "h100x1-fp8",
        # one region of the mega-region, as every test of a one-region capability wants; the multi-region tests
        # (tests/unit/test_multi_region_placement.py, tests/stacks/test_multi_region.py) pass their own placement
        "placement": {"min_regions": 1},
    }
    data.update(overrides)
    return data


def deploy(**overrides: Any) -> Deployment:
    return resolve(build_spec(spec_data(**overrides)))


def run_byoc(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`python -m byoc ARGS` in a real subprocess from the repository root, as a user or CI runs it."""
    return subprocess.run(
        [sys.executable, "-m", "byoc", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
        check=False,
    )


@contextmanager
def moto_server() -> Iterator[str]:
    """A real moto server on 127.0.0.1 (an ephemeral port); yields its endpoint URL and stops it."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def refused(**overrides: Any) -> ByocError:
    with pytest.raises(ByocError) as caught:
        deploy(**overrides)
    error = caught.value
    # Every refusal reads as one sentence with a fix: a field, a message, a hint that ends cleanly.
    assert error.field and error.message and error.hint, str(error)
    assert not error.hint.endswith((",", ";", " ", "(")) and not error.message.endswith((",", " ")), str(error)
    return error


# ---------------------------------------------------------------------------------------------------------------
# A guard against tests silently dropping out of CI (pytest skips folders named `build` by default: tests/build
# once ran in no CI run). scripts/test.sh passes --min-collected with the floor in tests/min-collected.txt.

TESTS = ROOT / "tests"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--min-collected",
        type=int,
        default=None,
        help="Fail unless at least this many tests are collected and every tests/ folder with test files has some.",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    floor = config.getoption("--min-collected")
    if floor is None:
        return
    folders = {path.parent for path in TESTS.rglob("test_*.py") if "node_modules" not in path.parts}
    collected = {Path(str(item.path)).parent for item in items}
    silent = sorted(str(folder.relative_to(ROOT)) for folder in folders - collected)
    problems = []
    if silent:
        problems.append(f"test folders with no collected test: {', '.join(silent)}")
    if len(items) < floor:
        problems.append(f"{len(items)} tests collected, fewer than the floor of {floor} (tests/min-collected.txt)")
    if problems:
        pytest.exit("; ".join(problems), returncode=3)
