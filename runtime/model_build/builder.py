"""The builder: Deployment -> build plan -> (cache hit | fetch, quantize or copy, place addons, manifest, upload).

What the Kubernetes build Job runs (`byoc build -f /etc/byoc/byoc.yaml --dest <store root> --output json`) and what
`byoc build` runs on a laptop. The artifact lands under `<dest>/<plan.artifact_prefix>/`:

    model/                  the checkpoint for the shape (ModelOpt export for FP8/FP4, the source as is for BF16)
    adapters/<addon id>/    each LoRA addon, checked against the base
    draft/                  the speculative-decoding draft model, when the spec names one
    options.yaml            the trtllm-serve LLM-API options (the same the ConfigMap carries)
    build-plan.json         the full build plan
    manifest.json           provenance and the sha256 of every file above; uploaded last

Every check that can fail on input runs before the first byte is uploaded; an upload that fails part-way removes
what it wrote, so a prefix either holds a complete artifact with its manifest or nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from byoc import __version__
from byoc.catalogs import load_catalog, model_from_hf_config
from byoc.errors import ByocError, ByocFailure
from byoc.resolve import Deployment, resolve
from byoc.rules import check_model_identity
from byoc.spec import ModelRef, Spec
from runtime.model_build import checkpoint
from runtime.model_build.adapters import AdapterInfo, validate_adapter
from runtime.model_build.manifest import FORMAT, MANIFEST, hash_tree, parse
from runtime.model_build.plan import ADAPTER_DIR, DRAFT_DIR, MODEL_DIR, BuildPlan, Calibration, build_plan
from runtime.model_build.progress import Events
from runtime.model_build.sources import SourceLocation, fetch, locate, peek
from runtime.model_build.stores import ObjectMissing, Store, join, open_store

# The artifact's folders are the serving pod's: `byoc artifacts fetch --to /models` puts model/ at MODEL_DIR.
MODEL_SUBDIR = PurePosixPath(MODEL_DIR).name
ADAPTER_SUBDIR = PurePosixPath(ADAPTER_DIR).name
DRAFT_SUBDIR = PurePosixPath(DRAFT_DIR).name
OPTIONS_FILE = "options.yaml"
PLAN_FILE = "build-plan.json"
KMS_ENV = "BYOC_ARTIFACT_KMS_KEY"


@dataclass(frozen=True)
class BuildRequest:
    spec: Spec
    dest: str | None
    kms_key: str | None = None
    plan_only: bool = False
    merge_adapter: str | None = None
    calibration: Calibration | None = None
    work_dir: Path | None = None


@dataclass
class _Timer:
    steps: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.steps[name] = round(self.steps.get(name, 0.0) + time.monotonic() - started, 3)


def options_yaml(plan: BuildPlan) -> str:
    return yaml.safe_dump(plan.options, sort_keys=False)


def _needs_remote_config(spec: Spec) -> ModelRef | None:
    """A model outside the catalog whose config.json is not on local disk: resolve cannot read it by itself."""
    model = spec.model
    remote = isinstance(model, ModelRef) and bool(model.source) and not str(model.source).startswith("file://")
    if isinstance(model, ModelRef) and remote and model.id not in load_catalog().models:
        return model
    return None


def resolve_for_build(spec: Spec, work: Path) -> Deployment:
    """resolve(spec); for a remote model outside the catalog, with its config.json fetched first (only that file)."""
    remote = _needs_remote_config(spec)
    if remote is None or remote.source is None:
        return resolve(spec, build_location="local")
    try:
        # every shape and addon rule runs first, so a refused spec never touches the source
        resolve(spec, build_location="local")
    except ByocError as exc:
        if exc.field != "model.source":
            raise
    location = locate(remote.source, remote.revision, "model.source")
    config = peek(location, "config.json", "model.source")
    if config is None:
        raise ByocError(
            "model.source", f"{remote.source} holds no config.json", "point it at a Hugging Face model folder"
        )
    folder = work / "source-config"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_bytes(config)
    local = ModelRef(id=remote.id, source=f"file://{folder}", revision=remote.revision)
    deployment = resolve(spec.model_copy(update={"model": local}), build_location="local")
    # the cache key and the manifest name the source as the user wrote it, not the temporary copy
    return dataclasses.replace(deployment, spec=spec, model_source=remote.source)


def _verify_source(deployment: Deployment, folder: Path, uri: str) -> None:
    """config.json present, architecture known and the one planned for, weights present."""
    found = model_from_hf_config(deployment.model.id, uri, folder / "config.json")
    check_model_identity(deployment.model, found, uri)
    if not checkpoint.has_weights(folder):
        raise ByocError("model.source", f"{uri} holds config.json but no weights (*.safetensors)", "copy the weights")


def _tree_digest(folder: Path) -> str:
    """One sha256 over every file's path and sha256: the content the build started from."""
    files = hash_tree(folder)
    return "sha256:" + hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def _existing_manifest(store: Store, prefix: str) -> dict[str, Any] | None:
    try:
        data = store.read_bytes(join(prefix, MANIFEST))
    except ObjectMissing:
        return None
    return parse(data, store.uri(join(prefix, MANIFEST)))


def _upload(store: Store, prefix: str, staging: Path, events: Events) -> int:
    """Every file, then manifest.json; on any failure remove what this upload wrote."""
    files = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
    ordered = [f for f in files if f != MANIFEST] + [MANIFEST]
    total = sum((staging / f).stat().st_size for f in ordered)
    done = 0
    written: list[str] = []

    def advance(count: int) -> None:
        nonlocal done
        done += count
        events.progress("upload", done, total, "bytes")

    current = ""
    try:
        for name in ordered:
            current = join(prefix, name)
            store.upload(staging / name, current, advance)
            written.append(current)
    except BaseException as exc:
        attempted = [*written, current] if current and current not in written else written
        try:
            store.delete(attempted)
            cleanup = f"removed the {len(written)} file(s) already uploaded; no partial artifact is left"
        except ByocError as cleanup_error:
            cleanup = f"could not remove the {len(written)} file(s) already uploaded ({cleanup_error}); delete them"
        events.step("upload", f"upload failed at {current}: {cleanup}")
        if isinstance(exc, ByocError):
            raise ByocFailure(exc.field, f"{exc.message}; {cleanup}", exc.hint) from None
        if isinstance(exc, Exception):
            raise ByocFailure("--dest", f"uploading {current} failed: {exc}; {cleanup}", "retry the build") from None
        raise
    events.progress("upload", total, total, "bytes", final=True)
    return len(written)


@dataclass
class _Inputs:
    """Everything fetched and checked before the build writes anything."""

    source: SourceLocation
    source_dir: Path
    adapters: list[tuple[str, SourceLocation, Path, AdapterInfo]]
    merge: tuple[SourceLocation, Path, AdapterInfo] | None
    draft: tuple[SourceLocation, Path] | None


def _gather(deployment: Deployment, request: BuildRequest, work: Path, events: Events, timer: _Timer) -> _Inputs:
    spec = deployment.spec
    with timer.step("fetch"):
        source = locate(deployment.model_source, deployment.model_revision, "model.source")
        events.step(
            "fetch",
            f"source {source.uri}" + (f" via {source.via} {source.store_uri}" if source.via != "direct" else ""),
        )
        source_dir = fetch(source, work / "source", "model.source", events, "source")
        _verify_source(deployment, source_dir, source.uri)
        adapters = []
        for index, addon in enumerate(spec.addons):
            where = f"addons[{index}].source"
            location = locate(addon.source, None, where, marker="adapter_config.json")
            folder = fetch(location, work / "adapters" / addon.id, where, events, f"addon {addon.id}")
            info = validate_adapter(folder, addon.id, addon.rank, source_dir, where)
            adapters.append((addon.id, location, folder, info))
            events.step(
                "addon", f"{addon.id}: LoRA rank {info.rank} on {', '.join(info.target_modules)}: fits the base"
            )
        merge = None
        if request.merge_adapter:
            where = "--merge-adapter"
            location = locate(request.merge_adapter, None, where, marker="adapter_config.json")
            folder = fetch(location, work / "merge", where, events, "merge adapter")
            info = validate_adapter(folder, "merge", 1 << 20, source_dir, where)
            merge = (location, folder, info)
        draft = None
        if spec.speculative is not None:
            where = "speculative.draft_model"
            known = load_catalog().models.get(spec.speculative.draft_model)
            uri = known.source if known else spec.speculative.draft_model
            location = locate(uri, None, where)
            folder = fetch(location, work / "draft", where, events, "draft")
            found = model_from_hf_config(spec.speculative.draft_model, uri, folder / "config.json")
            if found.vocab_size != deployment.model.vocab_size:
                raise ByocError(
                    where,
                    f"the draft's vocabulary ({found.vocab_size}) differs from the model's "
                    f"({deployment.model.vocab_size})",
                    "use a draft model with the same tokenizer",
                )
            draft = (location, folder)
    return _Inputs(source, source_dir, adapters, merge, draft)


def _make_artifact(
    deployment: Deployment, plan: BuildPlan, inputs: _Inputs, staging: Path, events: Events, timer: _Timer
) -> dict[str, Any]:
    model_dir = staging / MODEL_SUBDIR
    merge_dir = inputs.merge[1] if inputs.merge else None
    details: dict[str, Any] = {}
    if plan.quantization and plan.calibration:
        with timer.step("quantize"):
            details = checkpoint.quantize(
                inputs.source_dir,
                model_dir,
                plan.quantization,
                plan.kv_cache_dtype,
                plan.calibration,
                merge_dir,
                events,
            )
        timer.steps.update({f"quantize.{k}": v for k, v in details.pop("timings", {}).items()})
        installed = details.get("modelopt_installed")
        if installed and installed != plan.tool_versions["modelopt"]:
            events.warn(f"ModelOpt {installed} is installed; the plan pins {plan.tool_versions['modelopt']}")
    elif merge_dir is not None:
        with timer.step("merge"):
            details = checkpoint.merge_bf16(inputs.source_dir, model_dir, merge_dir, events)
    else:
        with timer.step("copy"):
            events.step("copy", "BF16 shape: the checkpoint is served as is")
            checkpoint.copy_checkpoint(inputs.source_dir, model_dir, events, "copy")
    with timer.step("place"):
        for addon_id, _, folder, _ in inputs.adapters:
            checkpoint.copy_checkpoint(folder, staging / ADAPTER_SUBDIR / addon_id, events, f"place {addon_id}")
        if inputs.draft is not None:
            checkpoint.copy_checkpoint(inputs.draft[1], staging / DRAFT_SUBDIR, events, "place draft")
    return details


def _manifest(
    deployment: Deployment,
    plan: BuildPlan,
    inputs: _Inputs,
    staging: Path,
    details: dict[str, Any],
    started: datetime,
    timer: _Timer,
) -> dict[str, Any]:
    options_text = (staging / OPTIONS_FILE).read_bytes()
    shape = deployment.shape
    return {
        "format": FORMAT,
        "model_id": plan.model_id,
        "source": {
            "uri": plan.source,
            "revision": plan.revision,
            "resolved_revision": inputs.source.revision,
            "via": inputs.source.via,
            "digest": _tree_digest(inputs.source_dir),
        },
        "shape": plan.shape,
        "precision": plan.precision,
        "quantization": plan.quantization,
        "kv_cache_dtype": plan.kv_cache_dtype,
        "kv_cache_quantization": details.get("kv_cache_quantization"),
        "calibration": None if plan.calibration is None else dataclasses.asdict(plan.calibration),
        "gpu": shape.gpu.id,
        "gpu_architecture": f"sm{shape.gpu.sm}",
        "tensor_parallel_size": plan.tensor_parallel_size,
        "modelopt_version": plan.tool_versions["modelopt"],
        "tensorrt_llm_version": plan.tool_versions["tensorrt_llm"],
        "tool_versions": {**plan.tool_versions, "modelopt_installed": details.get("modelopt_installed")},
        "byoc_version": __version__,
        "options_file": OPTIONS_FILE,
        "options_sha256": hashlib.sha256(options_text).hexdigest(),
        "cache_key": plan.cache_key,
        "artifact_prefix": plan.artifact_prefix,
        "built_at": started.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "build_seconds": timer.steps,
        "layout": {"model": MODEL_SUBDIR, "adapters": ADAPTER_SUBDIR, "draft": DRAFT_SUBDIR},
        "addons": [
            {"id": addon_id, "source": location.uri, "path": f"{ADAPTER_SUBDIR}/{addon_id}", **info.as_dict()}
            for addon_id, location, _, info in inputs.adapters
        ],
        "merged_adapter": None
        if inputs.merge is None
        else {"source": inputs.merge[0].uri, **inputs.merge[2].as_dict()},
        "draft": None if inputs.draft is None else {"source": inputs.draft[0].uri, "path": DRAFT_SUBDIR},
        "files": hash_tree(staging),
    }


def plan_result(plan: BuildPlan, dest: str | None) -> dict[str, Any]:
    artifact = None if dest is None else f"{dest.rstrip('/')}/{plan.artifact_prefix}"
    return {"artifact": artifact, "plan": plan.as_dict(), "options_yaml": options_yaml(plan)}


def run_build(request: BuildRequest, events: Events) -> dict[str, Any]:
    """Run a build; returns the result the CLI prints (its JSON form is the Job's last log line)."""
    timer = _Timer()
    started = datetime.now(UTC)
    work = Path(tempfile.mkdtemp(prefix="byoc-build-", dir=request.work_dir))
    try:
        deployment = resolve_for_build(request.spec, work)
        plan = build_plan(deployment, request.merge_adapter, request.calibration)
        if request.plan_only:
            return plan_result(plan, request.dest)
        if not request.dest:
            raise ByocError("--dest", "is required to build", "pass the artifact store root, e.g. s3://bucket")
        store = open_store(request.dest, "--dest", request.kms_key)
        store.check_writable()
        artifact = store.uri(plan.artifact_prefix)
        result: dict[str, Any] = {
            "artifact": artifact,
            "cache_key": plan.cache_key,
            "model_id": plan.model_id,
            "shape": plan.shape,
            "precision": plan.precision,
            "quantization": plan.quantization,
        }
        existing = _existing_manifest(store, plan.artifact_prefix)
        if existing is not None:
            return _cache_hit(existing, plan, result, events)
        events.step("plan", f"{plan.model_id} for {plan.shape}: building {artifact}")
        if request.dest.startswith("s3://") and not request.kms_key:
            events.warn(f"no KMS key (--kms-key-id or {KMS_ENV}): objects get the bucket's default encryption")
        if plan.revision is None:
            events.warn("the source has no revision: the cache is keyed by its URI; pin model.revision to rebuild")
        inputs = _gather(deployment, request, work, events, timer)
        staging = work / "artifact"
        staging.mkdir()
        details = _make_artifact(deployment, plan, inputs, staging, events, timer)
        (staging / OPTIONS_FILE).write_text(options_yaml(plan))
        (staging / PLAN_FILE).write_text(json.dumps(plan.as_dict(), indent=2) + "\n")
        with timer.step("manifest"):
            manifest = _manifest(deployment, plan, inputs, staging, details, started, timer)
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        leftovers = store.list_objects(plan.artifact_prefix)
        if leftovers:
            events.warn(
                f"{len(leftovers)} file(s) of an unfinished build under {artifact} (no manifest): removing them"
            )
            store.delete([o.key for o in leftovers])
        with timer.step("upload"):
            events.step("upload", f"{len(manifest['files']) + 1} files to {artifact} (manifest.json last)")
            uploaded = _upload(store, plan.artifact_prefix, staging, events)
        total_bytes = sum(int(f["size"]) for f in manifest["files"].values())
        result.update(
            cache_hit=False,
            uploaded=uploaded,
            files=len(manifest["files"]),
            bytes=total_bytes,
            options_sha256=manifest["options_sha256"],
            kms_key=request.kms_key if request.dest.startswith(("s3://", "gs://")) else None,
            timings=timer.steps,
            seconds=round(events.elapsed(), 3),
        )
        events.step("done", f"built {artifact} ({len(manifest['files'])} files) in {result['seconds']:.1f} s")
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _cache_hit(existing: dict[str, Any], plan: BuildPlan, result: dict[str, Any], events: Events) -> dict[str, Any]:
    if existing.get("cache_key") != plan.cache_key:
        raise ByocFailure(
            "--dest",
            f"{result['artifact']} holds a manifest for cache key {existing.get('cache_key')}, not {plan.cache_key}",
            "the store was written by something else; remove that prefix and build again",
        )
    options_sha = hashlib.sha256(options_yaml(plan).encode()).hexdigest()
    changed = existing.get("options_sha256") != options_sha
    if changed:
        events.warn(
            "the serving options differ from the cached artifact's options.yaml (the weights are the same; serving "
            "reads its options from the deployment's ConfigMap)"
        )
    events.step("cache", f"cache hit: {result['artifact']} was built {existing.get('built_at')}; nothing to upload")
    result.update(
        cache_hit=True,
        uploaded=0,
        files=len(existing["files"]),
        bytes=sum(int(f["size"]) for f in existing["files"].values()),
        built_at=existing.get("built_at"),
        options_sha256=options_sha,
        options_changed=changed,
        seconds=round(events.elapsed(), 3),
    )
    return result
