"""Fit the planner's efficiency factors to NVIDIA's published TensorRT-LLM throughput and print the errors.

    python scripts/calibrate_planner.py             # errors of the factors in byoc/planner.py, as JSON
    python scripts/calibrate_planner.py --markdown  # the same as docs/estimates.md shows it (tested to match)
    python scripts/calibrate_planner.py --search    # grid search for better factors (minutes)

The fit minimises the mean absolute log error over every point in byoc/catalogs/benchmarks.yaml.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
from pathlib import Path

import yaml

from byoc import planner
from byoc.catalogs import load_catalog
from byoc.rules import parse_shape

BENCHMARKS = Path(__file__).resolve().parent.parent / "byoc" / "catalogs" / "benchmarks.yaml"


def published_points() -> tuple[float, list[tuple[str, str, int, int, float]]]:
    data = yaml.safe_load(BENCHMARKS.read_text())
    points = []
    for entry in data["points"]:
        for lengths, value in entry["output_tokens_per_s"].items():
            isl, osl = (int(x) for x in lengths.split("/"))
            points.append((entry["model"], entry["shape"], isl, osl, float(value)))
    return float(data["kv_cache_fraction"]), points


def errors() -> list[dict[str, object]]:
    fraction, points = published_points()
    catalog = load_catalog()
    rows = []
    for model_id, shape_text, isl, osl, published in points:
        model, shape = catalog.models[model_id], parse_shape(shape_text)
        memory = planner.plan_memory(model, shape, fraction, isl + osl)
        estimate = planner.estimate_throughput(model, shape, memory, isl, osl)
        rows.append(
            {
                "model": model_id,
                "shape": shape_text,
                "isl_osl": f"{isl}/{osl}",
                "published": published,
                "estimate": round(estimate.output_tokens_per_s),
                "ratio": round(estimate.output_tokens_per_s / published, 3),
            }
        )
    return rows


def score() -> float:
    return sum(abs(math.log(float(r["ratio"]))) for r in errors()) / len(errors())  # type: ignore[arg-type]


def search() -> dict[str, float]:
    best: tuple[float, dict[str, float]] = (math.inf, {})
    grid = itertools.product(
        [0.65, 0.75, 0.85, 0.95],  # bandwidth
        [0.3, 0.4, 0.5],  # decode compute
        [0.5, 0.6, 0.7],  # prefill compute
        [0.004, 0.008, 0.012],  # step overhead
        [0.85, 0.9, 0.95],  # TP=2 over NVLink
        [0.4, 0.5, 0.6, 0.7],  # NVFP4 share of its peak
    )
    for bw, dc, pc, step, tp2, fp4 in grid:
        planner.PRECISION_COMPUTE_EFFICIENCY["fp4"] = fp4
        planner.BANDWIDTH_EFFICIENCY, planner.DECODE_COMPUTE_EFFICIENCY = bw, dc
        planner.PREFILL_COMPUTE_EFFICIENCY, planner.STEP_OVERHEAD_S = pc, step
        planner.TP_EFFICIENCY["nvlink"][2] = tp2
        value = score()
        if value < best[0]:
            best = (value, {"bandwidth": bw, "decode": dc, "prefill": pc, "step_s": step, "tp2": tp2, "fp4": fp4})
    return {"mean_abs_log_error": round(best[0], 4), **best[1]}


def calibration() -> dict[str, object]:
    """{"summary": {...}, "rows": [...]}: the error of every published point, for the factors in the code."""
    rows = errors()
    ratios = [float(r["ratio"]) for r in rows]  # type: ignore[arg-type]
    summary = {
        "points": len(rows),
        "mean_abs_log_error": round(score(), 4),
        "median_ratio": sorted(ratios)[len(ratios) // 2],
        "min_ratio": min(ratios),
        "max_ratio": max(ratios),
        "within_25_percent": sum(0.75 <= r <= 1.25 for r in ratios),
    }
    return {"summary": summary, "rows": rows}


def markdown(result: dict[str, object]) -> str:
    """The summary as JSON and every point as a table row, exactly as docs/estimates.md carries them."""
    lines = ["```json", json.dumps({"summary": result["summary"], "rows": ["..."]}, indent=2), "```", ""]
    lines += [
        "| model | shape | ISL/OSL | published tok/s | byoc estimate | ratio |",
        "| --- | --- | --- | ---: | ---: | ---: |",
    ]
    for row in result["rows"]:  # type: ignore[attr-defined]
        lines.append(
            f"| {row['model']} | {row['shape']} | {row['isl_osl']} | {row['published']:,.0f} | "
            f"{row['estimate']:,} | {row['ratio']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--search", action="store_true")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    if args.search:
        print(json.dumps(search(), indent=2))
        return
    result = calibration()
    print(markdown(result) if args.markdown else json.dumps(result, indent=2), end="" if args.markdown else "\n")


if __name__ == "__main__":
    main()
