"""The rows `byoc shapes`, `byoc regions` and `byoc estimate` print, as plain dicts (JSON and tables alike)."""

from __future__ import annotations

from typing import Any

from byoc import planner, rules, sizing
from byoc.catalogs import ModelArch, load_catalog
from byoc.clouds import get_cloud
from byoc.errors import ByocError, ByocFailure
from byoc.resolve import catalog_shapes, resolve_model, wake_from_zero
from byoc.spec import ModelRef


def _model(model: str | ModelRef) -> ModelArch:
    return resolve_model(model)[0]


def priced_instance(
    cloud: Any, shape: rules.DeploymentShape, candidates: list[Any], needs: Any, region: str = "GLOBAL"
) -> Any:
    """The machine `estimate` and `shapes` price a shape on: the one `byoc plan` launches for it in `region` (a
    region id, or a mega-region's first region offering a candidate, and the first candidate offered there: a
    spec's region with `estimate -f`, GLOBAL otherwise), so all three name the same type; the first candidate where
    no region offers one (the catalog's best guess)."""
    try:
        name = cloud.place(region, shape, needs).instance_type
    except ByocError:
        return candidates[0]
    return next((t for t in candidates if t.name == name), candidates[0])


def estimate_row(
    cloud_name: str,
    model_id: str | ModelRef,
    shape_text: str,
    input_tokens: int,
    output_tokens: int,
    kv_cache_fraction: float,
    max_context: int | None,
    price_per_gpu_hour: float | None,
    min_replicas: int = 0,
    max_replicas: int = 1,
    cold_start: dict[str, Any] | None = None,
    region: str = "GLOBAL",
) -> dict[str, Any]:
    """The estimate of one shape. A model that does not fit gets its memory lines only: throughput, cost and cold
    start are None, with the reason in `not_estimated` (a model that cannot load serves nothing). `cold_start` holds
    the spec's cold_start options (image_cache, weights_cache, warm_pool, image_disk; the spec's defaults when None),
    rendered as `byoc plan` renders them in `region` (byoc/resolve.py wake_from_zero). `byoc estimate` first checks
    the spec these make with every rule `byoc validate` runs (byoc/resolve.py resolve); the checks here are those a
    caller without a spec meets."""
    if not 0 < kv_cache_fraction < 1:
        raise ByocError("--kv-cache-fraction", f"{kv_cache_fraction} is not strictly between 0 and 1", "use 0.9")
    if min_replicas > max_replicas:
        raise ByocError(
            "--min-replicas",
            f"min_replicas {min_replicas} is above max_replicas {max_replicas}",
            f"set --max-replicas to at least {min_replicas}",
        )
    model = _model(model_id)
    shape = rules.parse_shape(shape_text, "--shape")
    cloud = get_cloud(cloud_name)
    cloud.check_shape(shape)
    context = max_context or model.max_context
    rules.check_max_context(context, model.max_context, model.id)
    memory = planner.plan_memory(model, shape, kv_cache_fraction, context)
    # priced on the first machine whose node holds the shape's pods (byoc/sizing.py), as `byoc plan` places it
    needs = sizing.pod_needs(shape, model)
    candidates = cloud.instance_candidates(shape, needs)
    instance = priced_instance(cloud, shape, candidates, needs, region) if candidates else cloud.gpu_types(shape)[0]
    row: dict[str, Any] = {
        "model": model.id,
        "shape": shape.name,
        "cloud": cloud_name,
        "instance_type": instance.name,
        "fits": memory.fits,
        "output_tokens_per_s": None,
        "cost_per_million_output_tokens": None,
        "memory": memory.as_dict(),
        "throughput": None,
        "cost": None,
        "cold_start": None,
    }
    if not memory.fits:
        return row | {
            "not_estimated": f"{model.id} does not fit {shape.name} at max_context {context}: a model that cannot "
            "load has no throughput or cost per token"
        }
    if not candidates:
        raise cloud.no_room_error(shape, needs, f"try another shape: `byoc shapes --model {model.id}`")
    throughput = planner.estimate_throughput(model, shape, memory, input_tokens, output_tokens)
    if price_per_gpu_hour is None:
        source = f"{cloud.title} on-demand list price of {instance.name}"
    else:
        source = "--price-per-gpu-hour"
    cost = planner.estimate_cost(
        shape,
        throughput,
        instance,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        price_source=source,
        price_per_gpu_hour=price_per_gpu_hour,
        fallbacks=candidates if cloud.node_pool_fallbacks else [],
    )
    # the plan's caches and wake for these options (GKE node_cache: the Hyperdisk ML volume per zone and its cost),
    # through the checks the plan runs on them (byoc/clouds/base.py node_caches)
    caches, wake = wake_from_zero(
        cloud,
        model_id,
        model,
        shape,
        needs,
        instance.name,
        cold_start,
        max_replicas,
        cost.node.hourly_usd,
        region,
        min_replicas,
    )
    shared = {"weights_disk": caches.weights.disk.as_dict()} if caches.weights.disk is not None else {}
    return row | {
        "output_tokens_per_s": round(throughput.output_tokens_per_s, 1),
        "cost_per_million_output_tokens": round(cost.cost_per_million_output_tokens, 4),
        "throughput": throughput.as_dict(),
        "cost": cost.as_dict(),
        # gateway.store: managed (the default) adds the shared store, billed every hour, replicas or none
        "store": planner.store_estimate(cloud.name).as_dict(),
        "cold_start": wake.as_dict(),
        **shared,
    }


# What `byoc shapes --model` ranks by: one replica pays for its whole node(s), as it is billed. Ranking by the
# per-replica share of a full node would pretend a node's idle GPUs cost nothing.
RANKED_BY = "cost_per_million_output_tokens_one_replica"


def shape_rows(
    clouds: list[str], model_id: str | None, max_context: int | None, input_tokens: int, output_tokens: int
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    model = _model(model_id) if model_id else None
    if model is not None and max_context is not None:
        rules.check_max_context(max_context, model.max_context, model.id)
    for cloud_name in clouds:
        cloud = get_cloud(cloud_name)
        for shape in catalog_shapes(cloud_name):
            # the first machine whose node holds the shape's pods (with a model: that model's pods)
            needs = sizing.pod_needs(shape, model)
            candidates = cloud.instance_candidates(shape, needs)
            if not candidates:
                continue
            instance = priced_instance(cloud, shape, candidates, needs)
            row: dict[str, Any] = {
                "cloud": cloud_name,
                "shape": shape.name,
                "gpu": shape.gpu.id,
                "gpu_name": shape.gpu.name,
                "gpu_count": shape.count,
                "precision": shape.precision,
                "gpu_memory_gib": round(shape.memory_bytes / planner.GIB, 1),
                "instance_type": instance.name,
                "replica_hourly_usd": round(instance.gpu_hourly_usd * shape.count, 4),
                "node_hourly_usd": round(instance.hourly_usd, 4),
                "replicas_per_node": instance.gpus // shape.count,
                "regions": len(cloud.regions_offering(shape)),
            }
            if model is not None:
                context = max_context or model.max_context
                memory = planner.plan_memory(model, shape, 0.9, context)
                if not memory.fits:
                    continue
                throughput = planner.estimate_throughput(model, shape, memory, input_tokens, output_tokens)
                cost = planner.estimate_cost(
                    shape, throughput, instance, min_replicas=1, max_replicas=1, price_source=instance.name
                )
                row |= {
                    "output_tokens_per_s": round(throughput.output_tokens_per_s, 1),
                    "cost_per_million_output_tokens": round(cost.cost_per_million_output_tokens, 4),
                    "one_replica_hourly_usd": round(cost.serving_floor.hourly_usd, 4),
                    RANKED_BY: round(cost.cost_per_million_output_tokens_at_floor, 4),
                    "kv_capacity_tokens": memory.kv_capacity_tokens,
                    "max_context": context,
                    # a wake from zero as `byoc plan` gives it with the spec's cold_start defaults
                    "cold_start_seconds": round(
                        wake_from_zero(cloud, model_id or model.id, model, shape, needs, instance.name)[
                            1
                        ].total_seconds,
                        1,
                    ),
                }
            rows.append(row)
    if model is not None:
        rows.sort(key=lambda r: (r[RANKED_BY], r["cost_per_million_output_tokens"]))
    return rows


def region_rows(clouds: list[str], refresh: bool) -> list[dict[str, Any]]:
    catalog = load_catalog()
    rows: list[dict[str, Any]] = []
    for cloud_name in clouds:
        cloud = get_cloud(cloud_name)
        live = cloud.live_offerings(cloud.regions) if refresh else {}
        if live and all(isinstance(seen, str) for seen in live.values()):
            first = next(iter(live.values()))
            raise ByocFailure(
                "--refresh", f"{cloud.title} answered no region: {first}", "check the credentials' rights"
            )
        for region in cloud.regions:
            offered = cloud.offerings(region)
            gpus = sorted({cloud.instance_types[t].gpu for t in offered})
            row: dict[str, Any] = {
                "cloud": cloud_name,
                "region": region,
                "mega_region": catalog.mega_region_of(cloud_name, region),
                "gpus": gpus,
                "instance_types": sorted(offered),
            }
            if refresh:
                seen = live.get(region)
                if isinstance(seen, str):
                    row["live"] = {"error": seen, "summary": f"not checked: {seen}"}
                else:
                    live_types = seen or frozenset()
                    added, missing = sorted(live_types - offered), sorted(offered - live_types)
                    summary = (
                        "same"
                        if not (added or missing)
                        else (" ".join([f"+{t}" for t in added] + [f"-{t}" for t in missing]))
                    )
                    row["live"] = {
                        "instance_types": sorted(live_types),
                        "not_in_table": added,
                        "not_offered_live": missing,
                        "summary": summary,
                    }
            rows.append(row)
    return rows
