"""How long `byoc plan` of the example takes, wall clock: `python scripts/bench_plan.py [--runs 5]`.

Runs `python -m byoc plan -f examples/byoc.yaml --out <tmp>` in a fresh process each time (as a user or CI runs it)
and prints JSON: each run's wall seconds from start to exit, the seconds between the last line of output and the
exit (the interpreter's teardown, which byoc skips for offline commands: byoc/cli.py), the median, and the load
average at the start (the figures mean little on a busy machine). Issue 20's target: at most 3 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 3.0


def one_run(spec: Path) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as folder:
        started = time.monotonic()
        process = subprocess.Popen(
            [sys.executable, "-m", "byoc", "plan", "-f", str(spec), "--out", str(Path(folder) / "out")],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        last = started
        assert process.stdout is not None
        for _ in process.stdout:
            last = time.monotonic()
        if process.wait() != 0:
            raise SystemExit(f"byoc plan failed (exit {process.returncode})")
        ended = time.monotonic()
    return ended - started, ended - last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--spec", type=Path, default=ROOT / "examples" / "byoc.yaml")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    one_run(args.spec)  # warm the file cache and the bytecode, as a second run in CI would be
    runs = [one_run(args.spec) for _ in range(args.runs)]
    median = statistics.median(wall for wall, _ in runs)
    print(
        json.dumps(
            {
                "command": f"python -m byoc plan -f {args.spec.relative_to(ROOT)} --out <tmp>",
                "load_average_1m_at_start": round(load, 2),
                "wall_s": [round(wall, 2) for wall, _ in runs],
                "after_last_output_s": [round(tail, 2) for _, tail in runs],
                "median_wall_s": round(median, 2),
                "target_s": TARGET_S,
                "target_met": median <= TARGET_S,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
