"""The planning commands: `byoc validate|schema|shapes|regions|estimate|plan`. Offline, no credentials.

Heavy modules (rich, Pulumi, the cloud SDKs) are imported inside the commands that use them, so `byoc --help`
stays instant.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import tempfile
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from byoc.commands.common import Output, OutputOpt, print_json, print_warnings, reporting
from byoc.errors import ByocError

if TYPE_CHECKING:
    from byoc.caches import NodeCaches, WarmPool
    from byoc.resolve import Deployment
    from byoc.spec import Spec


class CloudName(StrEnum):
    aws = "aws"
    gcp = "gcp"


class WeightsCacheName(StrEnum):
    """The spec's cold_start.weights_cache (byoc/spec.py WeightsCache)."""

    local_ssd = "local_ssd"
    node_cache = "node_cache"
    none = "none"


SpecFileOpt = Annotated[Path | None, typer.Option("--file", "-f", help="Spec file (byoc.yaml).")]
CloudOpt = Annotated[CloudName | None, typer.Option("--cloud", help="aws or gcp (overrides the spec).")]
# For the commands that read no spec: the cloud to list.
ListCloudOpt = Annotated[CloudName | None, typer.Option("--cloud", help="Only this cloud (aws or gcp).")]
RegionOpt = Annotated[str | None, typer.Option("--region", help="GLOBAL, US, EUROPE, APAC, or a region id.")]
ModelOpt = Annotated[str | None, typer.Option("--model", help="Catalog model id (overrides the spec).")]
ShapeOpt = Annotated[str | None, typer.Option("--shape", help="Shape such as h100x1-fp8 (overrides the spec).")]
NameOpt = Annotated[str | None, typer.Option("--name", help="Deployment name (overrides the spec).")]
InputTokensOpt = Annotated[int, typer.Option("--input-tokens", min=1, help="Prompt tokens per request.")]
OutputTokensOpt = Annotated[int, typer.Option("--output-tokens", min=1, help="Generated tokens per request.")]


def _console() -> Any:
    import sys

    from rich.console import Console

    # In a pipe or a file there is no terminal width to respect: never cut a value to fit 80 columns.
    return Console() if sys.stdout.isatty() else Console(width=1000)


def _table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for index, column in enumerate(columns):
        # Identifiers and numbers (no spaces) are never wrapped or cut ("h100x1-b..." is a wrong shape name);
        # free text may wrap in a narrow terminal.
        values = [row[index] for row in rows]
        atomic = all(" " not in value for value in values)
        table.add_column(column, no_wrap=atomic, min_width=max(map(len, values), default=0) if atomic else None)
    for row in rows:
        table.add_row(*row)
    _console().print(table)


def _spec(
    file: Path | None,
    cloud: CloudName | None,
    region: str | None,
    model: str | None,
    shape: str | None,
    name: str | None,
) -> Spec:
    from byoc.spec import load_spec

    overrides = {
        "cloud": cloud.value if cloud else None,
        "region": region,
        "model": model,
        "shape": shape,
        "name": name,
    }
    return load_spec(file, overrides)


def _summary_lines(deployment: Deployment) -> list[str]:
    from byoc.planner import floor_text

    p, m, t, c = deployment.placement, deployment.memory, deployment.throughput, deployment.cost
    pods = deployment.pods
    gib = 1024**3
    node, floor, top = c.node, c.serving_floor, c.at_max_replicas
    share = f" (${c.replica_hourly_usd:.2f}/h each when full)" if node.replicas_per_node > 1 else ""
    return [
        f"deployment  {deployment.name}: {deployment.model.id} on {deployment.shape.name}",
        f"placement   {p.cloud} {p.region} ({p.reason}); instance {p.instance_type}",
        f"memory      weights {m.weight_bytes / gib:.1f} GiB, KV cache {m.kv_cache_bytes / gib:.1f} GiB "
        f"({m.kv_capacity_tokens} tokens, {m.concurrent_sequences} sequences at {m.max_context})",
        f"throughput  ~{t.output_tokens_per_s:,.0f} output tokens/s per replica at {t.input_tokens}/"
        f"{t.output_tokens} tokens ({t.bound}-bound)",
        f"pods        a replica and the build Job each request {pods.slot.text()} of a {pods.priced_on} node's "
        f"{pods.allocatable.allocatable.text()} allocatable ({pods.daemonsets.text()} left to its DaemonSets)",
        f"cost        node {node.instance_type} ${node.hourly_usd:.2f}/h, billed whole, "
        f"{_replicas(node.replicas_per_node)} per node{share}",
        f"floor       {floor_text(c)}; ${top.hourly_usd + c.standing.hourly_usd:,.2f}/h ({top.nodes} "
        + ("node" if top.nodes == 1 else "nodes")
        + (f", plus {c.standing.what}" if c.standing.hourly_usd else "")
        + f") at max_replicas {top.replicas}"
        + (f" (in {p.region}; every region's below)" if deployment.multi_region else ""),
        f"per token   ${c.cost_per_million_output_tokens:.3f} per 1M output tokens at saturation on full nodes, "
        f"${c.cost_per_million_output_tokens_at_floor:.3f} at the floor ({_replicas(floor.replicas)} saturated)",
        _cold_start_summary(deployment),
        *_cache_lines(deployment),
        *_region_lines(deployment),
    ]


def _region_lines(deployment: Deployment) -> list[str]:
    """A multi-region deployment's regions, one line each (placement, network, stack and costs; the figures above
    are the primary's), and the total of all of them, as plan.json's estimates.regions holds them."""
    if not deployment.multi_region:
        return []
    costs = deployment.region_estimates()
    where = f"residency {deployment.residency}: serves and stores only there" if deployment.residency else ""
    layer = f"; global layer: stack {deployment.stack_name()}"
    lines = [f"regions     {len(deployment.regions)} ({where}{layer})"]
    width = max(len(r.region) for r in deployment.regions)
    for index, regional in enumerate(deployment.per_region):
        figures = costs["per_region"][regional.region]
        role = "primary, " if index == 0 else ""
        lines.append(
            f"  {regional.region:<{width}}  {role}{regional.placement.instance_type} "
            f"${regional.cost.node.hourly_usd:.2f}/h, network {regional.network.cidr}, stack "
            f"{deployment.stack_name(regional.region)}: {_cost_words(figures)}"
        )
    lines.append(f"  {'total':<{width}}  {_cost_words(costs['total'])} (every region at once)")
    return lines


def _cost_words(figures: dict[str, Any]) -> str:
    return (
        f"${figures['at_min_replicas_hourly_usd']:,.2f}/h at min_replicas, ${figures['floor_hourly_usd']:,.2f}/h "
        f"while serving, ${figures['at_max_replicas_hourly_usd']:,.2f}/h at max_replicas"
    )


def _cold_start_summary(deployment: Deployment) -> str:
    from byoc.coldstart import PHASE_WORDS, duration_words

    estimate = deployment.cold_start
    phases = ", ".join(f"{PHASE_WORDS[p.name]} {duration_words(p.seconds)}" for p in estimate.phases)
    return (
        f"cold start  ~{duration_words(estimate.total_seconds)} {estimate.applies_to} ({phases}); the gateway holds "
        f"requests {estimate.wake_timeout_s} s (`byoc estimate -f` for the sources)"
    )


def _cache_lines(deployment: Deployment) -> list[str]:
    """cold_start's caches and warm pool, as plan.json `cold_start_caches` has them (byoc/caches.py): each region's
    image and weights where a multi-region deployment's regions differ (their machines do), and the warm pool of
    every region, in total."""
    caches = deployment.caches
    if caches is None:
        return []
    warm = caches.warm_pool
    regional = [(region, _node_cache_words(c)) for region, c in caches.per_region] or [("", _node_cache_words(caches))]
    if len({words for _, words in regional}) == 1:
        lines = [f"caches      {regional[0][1]}; {warm_pool_words(warm)}"]
    else:
        lines = [f"caches      {warm_pool_words(warm)}"]
        lines += [f"  {region}: {words}" for region, words in regional]
    regionals = deployment.per_region or (deployment,)
    budgets = [(r.region, r.warm_pool_budget) for r in regionals if r.warm_pool_budget is not None]
    if len({spends for _, spends in budgets}) == 1:  # the same in every region
        lines.append(f"budget      {budgets[0][1].words()}" + (" (in each region)" if len(budgets) > 1 else ""))
    else:  # each region's Prometheus counts its own placeholders, as many as its machine holds
        lines += [f"budget      {region}: {spends.words()}" for region, spends in budgets]
    return lines


def _node_cache_words(caches: NodeCaches) -> str:
    image = {
        "secondary_boot_disk": f"on a secondary boot disk ({caches.image.disk_image})",
        "image_streaming": "streamed from Artifact Registry",
        "fast_image_pull": "pulled with SOCI parallel pull (FastImagePull)",
        "pulled": "pulled on every new node",
    }[caches.image.mode]
    weights = caches.weights
    where = f"local NVMe ({weights.local_nvme_gib:,.0f} GiB)" if weights.on == "local_nvme" else "the root disk"
    if weights.disk is not None:  # GKE's node_cache: one read-only volume per zone, every GPU node attaches it
        where = (
            f"{weights.disk.size_gib} GiB read-only {weights.disk.disk_type} per zone ({weights.shared_through}), "
            f"${weights.disk.monthly_usd_per_zone:,.2f}/month per zone, ${weights.disk.monthly_usd:,.2f}/month in "
            f"{weights.disk.zones} zones"
        )
    elif weights.shared_by_node:
        where += f", one copy per node shared by its replicas ({weights.shared_through})"
    return f"image {image}; weights on {where}"


def warm_pool_words(warm: WarmPool) -> str:
    """The warm pool as `byoc plan` and `byoc estimate` say it: every region's, in total, and each region's where
    their machines differ."""
    if not warm.nodes:
        return "no warm pool (cold_start.warm_pool)"
    regions = warm.regions
    if warm.uniform:
        each = f" in each of {len(regions)} regions" if len(regions) > 1 else ""
        return f"{warm.nodes} x {warm.instance_type} kept warm{each}, ${warm.total_hourly_usd:,.2f}/h"
    parts = "; ".join(f"{r.region} {r.nodes} x {r.instance_type} ${r.hourly_usd:,.2f}/h" for r in regions)
    return (
        f"{warm.nodes} node(s) kept warm in each of {len(regions)} regions, ${warm.total_hourly_usd:,.2f}/h in all "
        f"({parts})"
    )


def _replicas(count: int) -> str:
    return f"{count} replica" if count == 1 else f"{count} replicas"


# ---------------------------------------------------------------------------------------------------------------


def validate(
    file: Annotated[Path, typer.Option("--file", "-f", help="Spec file (byoc.yaml).")],
    output: OutputOpt = Output.text,
) -> None:
    """Check a spec against every rule, without creating anything."""
    from byoc.engines.offline import check_renders
    from byoc.resolve import resolve

    with reporting(output):
        deployment = resolve(_spec(file, None, None, None, None, None))
        check_renders(deployment)
    print_warnings(deployment.warnings)
    if output is Output.json:
        print_json({"valid": True, **deployment.plan_document()})
    else:
        print(f"{file}: valid")
        for line in _summary_lines(deployment):
            print("  " + line)


def schema(
    markdown: Annotated[bool, typer.Option("--markdown", help="Print the spec reference as Markdown.")] = False,
    output: Annotated[
        Output | None, typer.Option("--output", "-o", help="json: the JSON Schema (default); text: the Markdown.")
    ] = None,
) -> None:
    """Print the spec's JSON Schema (--output json, the default) or its Markdown reference (docs/spec.md)."""
    from byoc.schema import spec_json_schema, spec_markdown

    if markdown and output is Output.json:
        with reporting(output):
            raise ByocError("--markdown", "asks for Markdown and --output json for JSON", "pass one of the two")
    if markdown or output is Output.text:
        print(spec_markdown(), end="")
    else:
        print_json(spec_json_schema())


def shapes(
    model: Annotated[str | None, typer.Option("--model", help="Rank the shapes that fit this model.")] = None,
    cloud: ListCloudOpt = None,
    max_context: Annotated[int | None, typer.Option("--max-context", min=1, help="Context to fit.")] = None,
    input_tokens: InputTokensOpt = 1000,
    output_tokens: OutputTokensOpt = 1000,
    output: OutputOpt = Output.text,
) -> None:
    """List deployment shapes; with --model, the ones that fit, cheapest per token for one replica on whole nodes
    first."""
    from byoc.tables import RANKED_BY, shape_rows

    with reporting(output):
        clouds = [cloud.value] if cloud else [c.value for c in CloudName]
        rows = shape_rows(clouds, model, max_context, input_tokens, output_tokens)
    if output is Output.json:
        print_json({"model": model, "ranked_by": RANKED_BY if model else None, "shapes": rows})
        return
    if model:
        _table(
            f"Shapes that fit {model} ({input_tokens}/{output_tokens} tokens), ranked by $ per 1M output tokens "
            "of one replica paying its whole node",
            [
                "cloud",
                "shape",
                "instance",
                "replicas/node",
                "$/h 1 replica (whole node)",
                "tokens/s",
                "$/1M out 1 replica (whole node)",
                "$/1M out full nodes",
                "KV tokens",
                "cold start s",
            ],
            [
                [
                    r["cloud"],
                    r["shape"],
                    r["instance_type"],
                    str(r["replicas_per_node"]),
                    f"{r['one_replica_hourly_usd']:.2f}",
                    f"{r['output_tokens_per_s']:,.0f}",
                    f"{r[RANKED_BY]:.3f}",
                    f"{r['cost_per_million_output_tokens']:.3f}",
                    f"{r['kv_capacity_tokens']:,}",
                    f"{r['cold_start_seconds']:,.0f}",
                ]
                for r in rows
            ],
        )
    else:
        _table(
            "Deployment shapes",
            [
                "cloud",
                "shape",
                "GPU",
                "memory GiB",
                "instance",
                "node $/h",
                "replicas/node",
                "$/h per replica (full node)",
                "regions",
            ],
            [
                [
                    r["cloud"],
                    r["shape"],
                    r["gpu"],
                    f"{r['gpu_memory_gib']:.0f}",
                    r["instance_type"],
                    f"{r['node_hourly_usd']:.2f}",
                    str(r["replicas_per_node"]),
                    f"{r['replica_hourly_usd']:.2f}",
                    str(r["regions"]),
                ]
                for r in rows
            ],
        )


def regions(
    cloud: ListCloudOpt = None,
    refresh: Annotated[
        bool, typer.Option("--refresh", help="Ask the cloud's API (AWS EC2) and show where it differs.")
    ] = False,
    output: OutputOpt = Output.text,
) -> None:
    """List regions, their mega-region and the GPUs each offers."""
    from byoc.tables import region_rows

    clouds = [cloud.value] if cloud else [c.value for c in CloudName]
    with reporting(output):
        if refresh:
            from byoc.clouds import Feature, get_cloud

            for name in clouds:
                get_cloud(name).check_features([Feature.LIVE_OFFERINGS], "--refresh", "add --cloud aws")
        rows = region_rows(clouds, refresh)
    if output is Output.json:
        print_json({"regions": rows})
        return
    columns = ["cloud", "region", "mega-region", "GPUs"]
    if refresh:
        columns.append("live vs table")
    _table(
        "Regions",
        columns,
        [
            [r["cloud"], r["region"], r["mega_region"] or "-", ", ".join(r["gpus"]) or "-"]
            + ([r["live"]["summary"]] if refresh else [])
            for r in rows
        ],
    )


def estimate(
    file: Annotated[
        Path | None,
        typer.Option("--file", "-f", help="Spec file: model, shape, cloud, context, KV share, replicas, cold_start."),
    ] = None,
    model: Annotated[str | None, typer.Option("--model", help="Catalog model id (overrides the spec's).")] = None,
    shape: Annotated[str | None, typer.Option("--shape", help="Shape, e.g. h100x1-fp8 (overrides the spec's).")] = None,
    input_tokens: InputTokensOpt = 1000,
    output_tokens: OutputTokensOpt = 1000,
    cloud: Annotated[CloudName | None, typer.Option("--cloud", help="Cloud whose prices to use [aws].")] = None,
    kv_cache_fraction: Annotated[
        float | None, typer.Option("--kv-cache-fraction", help="KV cache share [0.9; or the spec's].")
    ] = None,
    max_context: Annotated[int | None, typer.Option("--max-context", min=1, help="Context to fit.")] = None,
    price_per_gpu_hour: Annotated[
        float | None, typer.Option("--price-per-gpu-hour", min=0.0, help="Your own $/GPU-hour.")
    ] = None,
    min_replicas: Annotated[
        int | None,
        typer.Option("--min-replicas", min=0, help="Fewest replicas, costed in whole nodes [0; or the spec's]."),
    ] = None,
    max_replicas: Annotated[
        int | None, typer.Option("--max-replicas", min=1, help="Most replicas [1; or the spec's].")
    ] = None,
    image_cache: Annotated[
        bool | None,
        typer.Option("--image-cache/--no-image-cache", help="Serving image already on new nodes [on; or the spec's]."),
    ] = None,
    weights_cache: Annotated[
        WeightsCacheName | None,
        typer.Option(
            "--weights-cache", help="Where a node keeps the weights [local_ssd, node_cache, none; or the spec's]."
        ),
    ] = None,
    warm_pool: Annotated[
        int | None,
        typer.Option("--warm-pool", min=0, max=64, help="GPU nodes kept warm, no replica [0; or the spec's]."),
    ] = None,
    image_disk: Annotated[
        str | None,
        typer.Option(
            "--image-disk",
            help="GKE: disk image holding the serving image (cold_start.image_disk) [none; or the spec's].",
        ),
    ] = None,
    output: OutputOpt = Output.text,
) -> None:
    """Memory fit, max throughput, cost (nodes billed whole) and cold start of a model on a shape, from flags or
    from a spec (-f; a flag given beside it overrides the spec's value)."""
    from byoc.errors import fields_as_flags
    from byoc.planner import priced_per_gpu_hour
    from byoc.resolve import ModelDoesNotFit, resolve
    from byoc.tables import estimate_row

    given: dict[str, Any] = {
        "cloud": cloud,
        "model": model,
        "shape": shape,
        "kv_cache_fraction": kv_cache_fraction,
        "max_context": max_context,
        "autoscaling.min_replicas": min_replicas,
        "autoscaling.max_replicas": max_replicas,
        "cold_start.image_cache": image_cache,
        "cold_start.weights_cache": weights_cache,
        "cold_start.warm_pool": warm_pool,
        "cold_start.image_disk": image_disk,
    }
    deployment: Deployment | None = None
    does_not_fit: ByocError | None = None
    with reporting(output):
        if price_per_gpu_hour is not None and not math.isfinite(price_per_gpu_hour):
            raise ByocError(
                "--price-per-gpu-hour", f"{price_per_gpu_hour} is not a price", "pass dollars per GPU-hour, e.g. 2.5"
            )
        if file is None and (model is None or shape is None):
            raise ByocError(
                "--model" if model is None else "--shape",
                "byoc estimate needs a model and a shape",
                "pass --model and --shape (`byoc shapes --model ID` lists them), or a spec with -f byoc.yaml",
            )
        # the spec the flags and the file make: validate's rules (the cloud's fields, every region's checks, the
        # multi-region rules) decide whether it is valid, in the words the user gave it (a flag or a spec field)
        spec, flags = _estimate_spec(file, given)
        # the user's price, where given, for every node the estimate prices (each region's, the warm pool's)
        with fields_as_flags(flags), priced_per_gpu_hour(price_per_gpu_hour):
            try:
                deployment = resolve(spec)
            except ModelDoesNotFit as exc:  # the memory lines below say why, then exit 2 with validate's words
                does_not_fit = exc
            # the spec's cold_start options, in its words: the estimate renders them as `byoc plan` does
            # (byoc/resolve.py wake_from_zero) and says where the plan does otherwise, and why
            options = {"image_cache", "weights_cache", "warm_pool", "image_disk"}
            row = estimate_row(
                spec.cloud,
                spec.model,
                spec.shape,
                input_tokens,
                output_tokens,
                spec.kv_cache_fraction,
                spec.max_context,
                price_per_gpu_hour,
                spec.autoscaling.min_replicas,
                spec.autoscaling.max_replicas,
                spec.cold_start.model_dump(include=options),
                spec.region if file is not None else "GLOBAL",
            )
    shape, cloud = spec.shape, CloudName(spec.cloud)
    if row["fits"] and deployment is not None:
        _add_standing(row, deployment)
    model = row["model"]
    misfit = None
    if not row["fits"]:
        # As validate does, in its words: a model that does not fit is invalid input (exit 2), the memory lines
        # still shown.
        misfit = does_not_fit or ByocError(
            "shape",
            f"{model} does not fit {shape} at max_context {row['memory']['max_context']}",
            f"`byoc shapes --model {model}` lists the shapes that hold it",
        )
    if output is Output.json:
        print_json({**row, "error": misfit.as_dict()} if misfit else row)
        if misfit:
            raise typer.Exit(misfit.exit_code)
        return
    memory = row["memory"]
    lines = [
        f"{model} on {shape} ({cloud.value}, {row['instance_type']})",
        f"  fits               {'yes' if row['fits'] else 'NO'} (max_context {memory['max_context']})",
        f"  weights            {memory['weights_gib']} GiB of {memory['gpu_memory_gib']} GiB",
        f"  KV cache           {memory['kv_cache_gib']} GiB = {memory['kv_capacity_tokens']:,} tokens "
        f"({memory['kv_bytes_per_token']:,} bytes/token, {memory['kv_cache_dtype']})",
    ]
    if misfit:
        lines += ["  throughput         n/a (does not fit)", "  cost               n/a (does not fit)"]
    else:
        lines += _estimate_cost_lines(row, input_tokens, output_tokens)
        if row.get("regions"):
            per_region = row["regions"]["per_region"]
            width = max(len(r) for r in per_region)
            lines.append(f"  regions            {len(per_region)}, each with its own replicas and nodes:")
            lines += [f"    {r:<{width}}  {_cost_words(f)} ({f['instance_type']})" for r, f in per_region.items()]
            lines.append(f"    {'total':<{width}}  {_cost_words(row['regions']['total'])}")
        lines += cold_start_lines(row["cold_start"], row.get("warm_pool"))
    print("\n".join(lines))
    if misfit:
        with reporting(output):
            raise misfit


# The spec fields `byoc estimate` takes as flags: a message names such a field by its flag where the user gave it
# as one (byoc.errors.fields_as_flags).
ESTIMATE_FLAGS = {
    "cloud": "--cloud",
    "model": "--model",
    "shape": "--shape",
    "kv_cache_fraction": "--kv-cache-fraction",
    "max_context": "--max-context",
    "autoscaling.min_replicas": "--min-replicas",
    "autoscaling.max_replicas": "--max-replicas",
    "cold_start.image_cache": "--image-cache",
    "cold_start.weights_cache": "--weights-cache",
    "cold_start.warm_pool": "--warm-pool",
    "cold_start.image_disk": "--image-disk",
}


def _estimate_spec(file: Path | None, given: dict[str, Any]) -> tuple[Spec, dict[str, str]]:
    """The spec `byoc estimate` checks and prices: the file's (-f) with the flags given over it, or, with no file,
    one made of the flags alone (one region of GLOBAL, the spec's defaults for the rest); and the fields the user
    gave as flags, with their flags (all of them without a file: every value is a flag's or its default).

    Raises:
        ByocError: an invalid spec, naming the field or its flag.
    """
    from byoc.errors import fields_as_flags
    from byoc.spec import build_spec, load_spec_file

    values = {k: v.value if isinstance(v, StrEnum) else v for k, v in given.items() if v is not None}
    if file is not None:
        data = load_spec_file(file)
        flags = {k: ESTIMATE_FLAGS[k] for k in values}
    else:
        data = {"name": "estimate", "cloud": "aws", "region": "GLOBAL", "placement": {"min_regions": 1}}
        flags = dict(ESTIMATE_FLAGS)
    for path, value in values.items():
        *parents, leaf = path.split(".")
        node = data
        for parent in parents:
            node[parent] = dict(node.get(parent) or {}) if isinstance(node.get(parent) or {}, dict) else node[parent]
            node = node[parent]
        if isinstance(node, dict):  # else the spec's own value is wrong, and validation says so
            node[leaf] = value
    scaling = data.get("autoscaling")
    if values.get("autoscaling.min_replicas") and isinstance(scaling, dict):
        scaling.pop("scale_to_zero_window", None)  # --min-replicas keeps replicas up: no window to zero
    with fields_as_flags(flags):
        return build_spec(data), flags


def _add_standing(row: dict[str, Any], deployment: Deployment) -> None:
    """The estimate's cost as plan.json's estimates.cost has it: with what the warm pool and node_cache's volumes
    bill at every replica count (byoc/planner.py StandingCost), from the row's own figures; and a multi-region
    spec's cost per region and in total, and its warm pool in every region (each at its own machine); and what the
    warm pool spends of the spec's GPU-hour budget."""
    from byoc.planner import StandingCost, warm_pool_budget
    from byoc.rules import parse_shape

    cold_start, disk = row["cold_start"], row.get("weights_disk")
    standing = StandingCost(
        warm_pool_nodes=int(cold_start["options"]["warm_pool"]),
        warm_pool_hourly_usd=float(cold_start["warm_pool_hourly_usd"] or 0.0),
        weights_disk_zones=int(disk["zones"]) if disk else 0,
        weights_disk_monthly_usd_per_zone=float(disk["monthly_usd_per_zone"]) if disk else 0.0,
    )
    paid = row["cost"]["at_min_replicas"]["hourly_usd"] + standing.hourly_usd
    row["cost"] |= {"standing": standing.as_dict(), "paid_at_min_replicas_hourly_usd": round(paid, 4)}
    # the region the top-level figures are for (a multi-region spec's primary: `regions` has every region's), as
    # plan.json's estimates.region
    row["region"] = deployment.region
    if deployment.multi_region:
        row["cost"]["region"] = deployment.region
        row["regions"] = deployment.region_estimates()
        if deployment.caches is not None:
            row["warm_pool"] = deployment.caches.warm_pool.as_dict()
    warm = int(cold_start["options"]["warm_pool"]) * int(row["cost"]["node"]["replicas_per_node"])
    spends = warm_pool_budget(warm, parse_shape(row["shape"], "--shape"), deployment.budget)
    row["warm_pool_budget"] = spends.as_dict() if spends else None


def cold_start_lines(estimate: dict[str, Any], pool: dict[str, Any] | None = None) -> list[str]:
    """A wake from zero, phase by phase, as `byoc estimate` and `byoc plan` print it (plan.json
    estimates.cold_start holds the same figures with their sources). `pool`: a multi-region spec's warm pool in every
    region (plan.json cold_start_caches.warm_pool), priced in all."""
    from byoc.coldstart import PHASE_WORDS, duration_words

    options = estimate["options"]
    said = (
        f"image_cache {'on' if options['image_cache'] else 'off'}, weights_cache {options['weights_cache']}, "
        f"warm_pool {options['warm_pool']}"
    )
    renders = options.get("plan_renders")
    if renders:
        # the spec's words first, then what the plan does instead and why (plan.json cold_start_caches)
        weights_on = renders.get("weights_on", "")
        said += (
            f"; the plan renders image_cache {'on' if renders['image_cache'] else 'off'}, weights_cache "
            f"{renders['weights_cache']}" + (f" on the {weights_on.replace('_', ' ')}" if weights_on else "")
        )
    lines = [f"  cold start         ~{duration_words(estimate['total_seconds'])} {estimate['applies_to']} ({said})"]
    lines += [f"    {'why':<16} {'':>10}  {reason}" for reason in options.get("why", [])]
    for phase in estimate["phases"]:
        lines.append(f"    {PHASE_WORDS[phase['phase']]:<16} {duration_words(phase['seconds']):>10}  {phase['basis']}")
    cached = estimate.get("weights_fetch_cached")
    fetched = next((p for p in estimate["phases"] if p["phase"] == "weights_fetch"), None)
    if cached is not None and not options["warm_pool"] and cached != fetched:
        # node_cache: the weights phase of a replica on a node whose cache has them
        lines.append(f"    {'weights cached':<16} {duration_words(cached['seconds']):>10}  {cached['basis']}")
    if options["warm_pool"]:
        price = (
            f"in each of {pool['regions']} regions, ${pool['hourly_usd']:,.2f}/h in all,"
            if pool and pool["regions"] > 1
            else f"at ${estimate['warm_pool_hourly_usd']:,.2f}/h"
        )
        lines.append(
            f"    warm pool        {options['warm_pool']} node(s) {price} save "
            f"{duration_words(estimate['new_node_seconds'] - estimate['total_seconds'])} of a "
            f"{duration_words(estimate['new_node_seconds'])} wake on a new node"
        )
    lines.append(
        f"    wake timeout     {estimate['wake_timeout_seconds']} s at the gateway (the estimate x margin; sources: "
        f"{estimate['catalog']})"
    )
    return lines


def _estimate_cost_lines(row: dict[str, Any], input_tokens: int, output_tokens: int) -> list[str]:
    cost, node = row["cost"], row["cost"]["node"]
    fewest, floor, most = cost["at_min_replicas"], cost["serving_floor"], cost["at_max_replicas"]

    from byoc.planner import standing_what

    standing = cost["standing"]["hourly_usd"]
    what = standing_what(cost["standing"]["warm_pool_hourly_usd"] > 0, cost["standing"]["weights_disk_zones"] > 0)
    plus = f", plus {what}" if standing else ""
    paid = f"${cost['paid_at_min_replicas_hourly_usd']:,.2f}/h" if cost["paid_at_min_replicas_hourly_usd"] else "$0/h"
    at_min = (
        f"{paid} at min_replicas 0, ${floor['hourly_usd'] + standing:,.2f}/h while serving (1 replica, "
        f"{floor['nodes']} node{plus})"
        if fewest["replicas"] == 0
        else f"{paid} ({fewest['nodes']} node{'' if fewest['nodes'] == 1 else 's'}{plus}) at min_replicas "
        f"{fewest['replicas']}"
    )
    top = f"${most['hourly_usd'] + standing:,.2f}/h ({most['nodes']} node{'' if most['nodes'] == 1 else 's'}{plus})"
    gpus = f"{node['gpus']} GPU{'' if node['gpus'] == 1 else 's'}"
    share = f" (${cost['replica_hourly_usd']:.2f}/h each when full)" if node["replicas_per_node"] > 1 else ""
    lines = [
        f"  throughput         ~{row['output_tokens_per_s']:,.0f} output tokens/s per replica "
        f"({input_tokens}/{output_tokens} tokens, batch {row['throughput']['batch_size']}, "
        f"{row['throughput']['bound']}-bound)",
        f"  node               {node['instance_type']}, {gpus}, ${node['hourly_usd']:,.2f}/h billed whole: "
        f"{_replicas(node['replicas_per_node'])} per node{share}",
        f"  cost               {at_min}; {top} at max_replicas {most['replicas']}",
        f"  per 1M output      ${cost['cost_per_million_output_tokens']:.3f} at saturation on full nodes, "
        f"${cost['cost_per_million_output_tokens_at_floor']:.3f} at the floor ({_replicas(floor['replicas'])} "
        "saturated)",
        f"  price              {cost['price_source']}",
    ]
    warm = (row.get("cold_start") or {}).get("options", {}).get("warm_pool", 0)
    regional = row.get("warm_pool")  # a multi-region spec: every region's pool, each at its own machine
    if warm and regional:
        per = regional["per_region"]
        each = "; ".join(f"{r} {p['nodes']} x {p['instance_type']} ${p['hourly_usd']:,.2f}/h" for r, p in per.items())
        lines.append(
            f"  warm pool          ${regional['hourly_usd']:,.2f}/h in all ({each}; cold_start.warm_pool), every "
            f"hour; the cost above is {row['cost']['region']}'s, the regions below count each one's"
        )
    elif warm:
        pool_usd = row["cold_start"]["warm_pool_hourly_usd"]
        lines.append(
            f"  warm pool          ${pool_usd:,.2f}/h ({warm} idle node{'' if warm == 1 else 's'} kept ready, "
            "cold_start.warm_pool), every hour, counted in the costs above"
        )
    disk = row.get("weights_disk")
    if disk:  # weights_cache node_cache on GKE: the shared Hyperdisk ML volume, billed while it exists
        lines.append(
            f"  weights disk       {disk['size_gib']} GiB {disk['disk_type']}, "
            f"{disk['provisioned_throughput_mib_s']:,} MiB/s, ${disk['monthly_usd_per_zone']:,.2f}/month per zone of "
            f"the GPU pool, ${disk['monthly_usd']:,.2f}/month in {disk['zones']} zones, counted in the costs above "
            f"(weights_cache: node_cache; {disk['price_source']})"
        )
    budgets = {
        region: figures["warm_pool_budget"]
        for region, figures in (row.get("regions") or {}).get("per_region", {}).items()
        if figures.get("warm_pool_budget")
    }
    if budgets and len({str(b) for b in budgets.values()}) > 1:  # each region counts its own placeholders
        lines += [f"  budget             {region}: {spends['words']}" for region, spends in budgets.items()]
    elif row.get("warm_pool_budget"):
        each = " (in each region)" if len(budgets) > 1 else ""
        lines.append(f"  budget             {row['warm_pool_budget']['words']}{each}")
    store = row.get("store")
    if store:
        regions = len(row["regions"]["per_region"]) if row.get("regions") else 1
        lines.append(
            f"  shared store       {store['service']}, {store['nodes']} nodes, ${store['hourly_usd']:,.4f}/h "
            f"(${store['monthly_usd']:,.2f}/month) at every replica count"
            + (f" in each of {regions} regions (the regions below count each one's)" if regions > 1 else "")
            + f" (gateway.store: managed; {store['price_source']})"
        )
    for fallback in cost["fallback_nodes"]:
        lines.append(
            f"  fallback node      {fallback['instance_type']}, {fallback['gpus']} GPUs, "
            f"${fallback['hourly_usd']:,.2f}/h, if the node pool finds no {node['instance_type']}"
        )
    return lines


# Finding statuses as the plan's summary line says them.
STATUS_WORDS = {
    "PASS": "pass",
    "FAIL": "fail",
    "NOT_APPLICABLE": "not applicable",
    "ERROR": "error",
    "NOT_ASSESSED": "not assessed",
    "EXCEPTION": "excepted by design",
}
PLAN_OUTPUTS = ("manifests", "helm-releases.yaml", "compliance", "plan.json")


def _pulumi_sdks(deployment: Deployment) -> dict[str, Any]:
    """The SDK versions the plan was recorded with, beside the ones byoc pins (byoc.pulumi_sdks): a plan made with
    others says so, since `up` would refuse them."""
    from byoc.clouds import get_cloud
    from byoc.pulumi_sdks import SDK_PINS, installed, sdks_for

    sdks = sdks_for(get_cloud(deployment.cloud).provider_sdk)
    found = installed(sdks)
    return {"installed": found, "pinned": {sdk: SDK_PINS[sdk] for sdk in sdks}}


def _warn_unpinned(sdks: dict[str, Any]) -> None:
    differ = [
        f"{sdk} {version or 'not installed'} (byoc pins {sdks['pinned'][sdk]})"
        for sdk, version in sdks["installed"].items()
        if version != sdks["pinned"][sdk]
    ]
    if differ:
        print(
            f"warning: pulumi-sdks: this plan was recorded with {', '.join(differ)}; `byoc up` runs only on the "
            "pinned versions",
            file=sys.stderr,
        )


def _check_out_is_ours(out: Path) -> None:
    """`plan` replaces its outputs whole; in a folder byoc did not write (`--out .` in a repository, `--out /`, a
    wrong $OUT in CI), refuse rather than scatter files there or delete someone's manifests/ or compliance/. A
    folder is byoc's when its plan.json is a plan byoc wrote (an object with byoc's version); a new folder, or one
    holding only hidden entries (.gitkeep), is fine.

    Raises:
        ByocError: naming --out and what is in the way.
    """
    plan_file = out / "plan.json"
    if plan_file.is_file():
        try:
            document = json.loads(plan_file.read_text())
        except (OSError, ValueError):
            document = None
        if isinstance(document, dict) and isinstance(document.get("byoc_version"), str) and document["byoc_version"]:
            return
    hint = "choose an empty or new folder (the default is ./byoc-out), or move it away"
    for name in PLAN_OUTPUTS:
        if (out / name).exists():
            raise ByocError(
                "--out", f"{out / name} exists and {out} holds no plan written by byoc; plan would replace it", hint
            )
    try:
        others = sorted(e.name for e in out.iterdir() if not e.name.startswith(".")) if out.is_dir() else []
    except OSError:
        others = []  # an unreadable folder: writing into it says why
    if others:
        listed = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise ByocError(
            "--out",
            f"{out} already holds files byoc did not write ({listed}); plan writes only into its own folder",
            hint,
        )


def _write_plan(out: Path, document: dict[str, Any], graph: Any, evidence: EvidenceWriter) -> dict[str, Any] | None:
    """plan.json, manifests/, helm-releases.yaml and compliance/, written whole into one staging folder inside OUT
    and then moved into place together, with a signal held back for the moves: a failed or interrupted plan keeps
    the previous one whole and leaves no staging folder (Ctrl+C removes it before byoc exits). Returns the
    compliance summary."""
    import shutil

    from byoc import interrupts
    from byoc.manifests import write_helm_releases, write_manifests

    created = [p for p in (out, *out.parents) if not p.exists()]  # the folders this run makes (none published yet)
    staging: Path | None = None
    published = False

    def remove() -> None:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if not published:  # an interrupted or failed first plan leaves no empty --out behind either
            for folder in created:
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only if empty

    try:
        # the clean-up is in place before the first folder is made: a Ctrl+C between the two left an empty --out
        with interrupts.on_stop(remove):
            out.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(dir=out, prefix=".byoc-plan-"))
            compliance = None
            if graph is not None:
                write_manifests(graph, staging / "manifests")
                write_helm_releases(graph, staging / "helm-releases.yaml")
                compliance = evidence.write(document, staging / "compliance")
            (staging / "plan.json").write_text(json.dumps(document, indent=2) + "\n")
            with interrupts.deferred():
                for name in PLAN_OUTPUTS:  # plan.json last: a reader that finds it finds the rest of this plan
                    if not (staging / name).exists():
                        continue
                    if (out / name).is_dir():
                        os.replace(out / name, staging / f"previous-{name}")
                    os.replace(staging / name, out / name)
                    published = True
    finally:
        remove()
    return compliance


def write_evidence_pack(document: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Evaluate the plan's controls and write the evidence pack into `folder`; returns the pack's summary."""
    from compliance.evaluate import evaluate, graph_from_plan
    from compliance.reports import write_pack

    frameworks = document["compliance"]["frameworks"]
    declared = graph_from_plan(document)
    return write_pack(declared, evaluate(declared, frameworks), frameworks, folder)


def _evidence_worker(connection: Any, parent: int) -> None:
    """The worker: load the OSCAL models at once, then write the one pack it is sent (or nothing).

    It never outlives `byoc plan`: Ctrl+C is the parent's to handle (it kills the worker), and the kernel kills the
    worker when the parent dies any other way (SIGTERM, SIGKILL), through prctl(PR_SET_PDEATHSIG) (Linux, man 2
    prctl), so a CI step that reads the command's output never waits on an orphan.
    """
    import ctypes
    import os
    import signal
    import traceback

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the parent's handler (byoc.interrupts), forked with it
    pr_set_pdeathsig = 1  # <linux/prctl.h>
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the call above took effect
        return

    # The OSCAL models (compliance-trestle) are most of the pack's cost: ~0.6 s of imports, done while the parent
    # process loads Pulumi. compliance.reports.oscal imports them lazily, so name them here.
    import trestle.oscal.assessment_results
    import trestle.oscal.common
    import trestle.oscal.component  # noqa: F401

    import compliance.reports  # noqa: F401

    try:
        job = connection.recv()
    except EOFError:
        return
    if job is None:
        return
    try:
        connection.send(("ok", write_evidence_pack(*job)))
    except BaseException:
        connection.send(("error", traceback.format_exc()))


class EvidenceWriter:
    """Writes the evidence pack in a forked worker process that loads the OSCAL models (compliance-trestle)
    while this process loads Pulumi and runs the program: on two cores the two imports overlap
    (docs/performance.md). Where fork is not the platform's way (macOS, Windows), it writes in-process.

    Raises (from `write`):
        ByocFailure: the worker failed or died; the message carries its traceback's last line.
    """

    def __init__(self) -> None:
        self._process: Any = None
        self._connection: Any = None

    def __enter__(self) -> EvidenceWriter:
        import sys

        if sys.platform == "linux":
            import multiprocessing

            context = multiprocessing.get_context("fork")
            # Forked now, before Pulumi starts its threads; the worker only ever runs byoc's own code.
            self._connection, theirs = context.Pipe()
            self._process = context.Process(target=_evidence_worker, args=(theirs, os.getpid()), daemon=True)
            self._process.start()
            theirs.close()
        return self

    def write(self, document: dict[str, Any], folder: Path) -> dict[str, Any]:
        if self._process is None:
            return write_evidence_pack(document, folder)
        from byoc import interrupts
        from byoc.errors import ByocFailure

        try:
            # stopped meanwhile: the worker goes first, so that nothing writes into the staging folder being removed
            with interrupts.on_stop(self._kill):
                self._connection.send((document, folder))
                status, result = self._connection.recv()
        except (EOFError, OSError):
            raise ByocFailure("compliance", "the evidence pack's worker died", "run byoc plan again") from None
        if status != "ok":
            last = str(result).strip().splitlines()[-1]
            raise ByocFailure("compliance", f"writing the evidence pack failed: {last}", "report this as a bug")
        summary: dict[str, Any] = result
        return summary

    def _kill(self) -> None:
        self._process.kill()
        self._process.join(timeout=5)

    def __exit__(self, *exc: object) -> None:
        if self._process is None:
            return
        if exc[0] is None:
            with contextlib.suppress(OSError):
                self._connection.send(None)
            self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.kill()  # an invalid spec or a failure: do not wait for the worker's imports
            self._process.join()
        self._connection.close()


def plan(
    file: SpecFileOpt = None,
    cloud: CloudOpt = None,
    region: RegionOpt = None,
    model: ModelOpt = None,
    shape: ShapeOpt = None,
    name: NameOpt = None,
    out: Annotated[Path, typer.Option("--out", help="Folder for plan.json.")] = Path("byoc-out"),
    output: OutputOpt = Output.text,
) -> None:
    """Resolve the spec and record the cloud program's resource graph offline (no credentials): OUT/plan.json.

    Also writes OUT/manifests/, OUT/helm-releases.yaml and OUT/compliance/; each is replaced whole on every run
    (files you add inside them are not kept), and a folder byoc did not write is never replaced.
    """
    from byoc import interrupts
    from byoc.engines.offline import render
    from byoc.resolve import resolve

    # Ctrl+C anywhere in a plan stops it at once (byoc.interrupts): the staging folder and the evidence worker are
    # cleaned up, OUT keeps the previous plan whole, and nothing is half-printed.
    with interrupts.abrupt(), reporting(output), EvidenceWriter() as evidence:
        deployment = resolve(_spec(file, cloud, region, model, shape, name))
        epoch = os.environ.get("SOURCE_DATE_EPOCH")
        if epoch is not None and not epoch.strip().isdigit():
            raise ByocError(
                "SOURCE_DATE_EPOCH", f"{epoch[:40]!r} is not a whole number of seconds", "unset it, or e.g. 1767225600"
            )
        _check_out_is_ours(out)
        document = deployment.plan_document()
        graph = render(deployment)
        document["pulumi_sdks"] = _pulumi_sdks(deployment)
        if graph is not None:
            document["resources"] = [r.as_dict() for r in graph.resources]
        target = out / "plan.json"
        try:
            compliance = _write_plan(out, document, graph, evidence)
        except OSError as exc:
            raise ByocError("--out", f"cannot write {target}: {exc.strerror}", "choose a writable folder") from None
    with interrupts.deferred():
        _warn_unpinned(document["pulumi_sdks"])
        print_warnings(deployment.warnings)
        if output is Output.json:
            print_json({"plan": str(target), **document})
        else:
            print("\n".join(_plan_lines(deployment, graph, compliance, out)), flush=True)


def _plan_lines(deployment: Deployment, graph: Any, compliance: dict[str, Any] | None, out: Path) -> list[str]:
    lines = _summary_lines(deployment)
    target = out / "plan.json"
    if graph is None:
        lines.append(f"resources   none yet: byoc has no {deployment.cloud} stack (placement and estimates only)")
        lines.append(f"wrote {target}")
        return lines
    counts = graph.counts()
    lines.append(f"resources   {sum(counts.values())} ({len(counts)} types)")
    lines += [f"  {count:4d}  {type_token}" for type_token, count in counts.items()]
    if compliance is not None:
        found = compliance["findings"]
        lines.append(
            f"compliance  {compliance['checks']} checks ({compliance['checks_evaluated']} with a PASS or FAIL), "
            f"{sum(found.values())} findings: "
            + ", ".join(
                f"{count} {STATUS_WORDS.get(status, status.lower())}" for status, count in found.items() if count
            )
            + f" ({', '.join(compliance['failing_controls']) or 'no failing control'}"
            + (f"; not assessed: {', '.join(unseen)})" if (unseen := compliance.get("not_assessed_controls")) else ")")
        )
    lines.append(f"wrote {target}, {out / 'manifests'}/, {out / 'helm-releases.yaml'}, {out / 'compliance'}/")
    return lines


def register(app: typer.Typer) -> None:
    for command in (validate, schema, shapes, regions, estimate, plan):
        app.command()(command)
