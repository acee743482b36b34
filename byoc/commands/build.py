"""`byoc build` and `byoc artifacts`: building a model for a shape (runtime/model_build/).

`byoc build` is also the Kubernetes build Job's entrypoint (`byoc build -f /etc/byoc/byoc.yaml --dest <store root>
--output json`); `byoc artifacts fetch --verify` is the serving pods' init container. torch, ModelOpt and boto3 are
imported inside the commands, so `byoc --help` stays instant.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from byoc.commands.common import Output, OutputOpt, fields_as_flags, print_json, reporting

if TYPE_CHECKING:
    from runtime.model_build.progress import Events

_ID_CHARS = re.compile(r"[^a-z0-9._-]+")
DEFAULT_ADDON_RANK = 16


def _last_line(data: dict[str, Any]) -> None:
    """--output json: the result is the last line on stdout, one compact JSON object."""
    print(json.dumps(data, default=str), flush=True)


def _model_id(source: str) -> str:
    """A model id from a source URI: its folder (or hf:// repository) name, lowercased."""
    from urllib.parse import urlparse

    parsed = urlparse(source)
    name = [p for p in (parsed.netloc + parsed.path).split("/") if p][-1:] or ["model"]
    return _ID_CHARS.sub("-", name[0].lower()).strip("-.") or "model"


def _addon_rank(uri: str, field: str) -> int:
    """An addon given on the command line declares the rank its adapter_config.json says (else the spec default)."""
    from runtime.model_build.sources import locate, peek

    data = peek(locate(uri, None, field, marker="adapter_config.json"), "adapter_config.json", field)
    try:
        rank = int(json.loads(data or b"{}").get("r", DEFAULT_ADDON_RANK))
    except (ValueError, TypeError, AttributeError):
        return DEFAULT_ADDON_RANK
    return rank if rank >= 1 else DEFAULT_ADDON_RANK


def _parse_addons(addons: list[str]) -> list[tuple[str, str]]:
    from byoc.errors import ByocError

    parsed = []
    for text in addons:
        name, sep, uri = text.partition("=")
        if not sep or not name or not uri:
            raise ByocError("--addon", f"{text!r} is not NAME=URI", "write it like --addon support=file:///adapters/x")
        parsed.append((name, uri))
    return parsed


def spec_for_build(
    file: Path | None,
    source: str | None,
    revision: str | None,
    model_id: str | None,
    shape: str | None,
    addons: list[str],
    kv_cache_fraction: float | None,
    addon_field: str = "--addon",
) -> Any:
    """The spec a build runs: the file's (if any) with the flags over it, or one made from the flags alone.

    `addon_field` is the flag a user gave the addons' sources with (`byoc addons add` takes one, as --source)."""
    from byoc.errors import ByocError
    from byoc.spec import build_spec, load_spec_file

    if file is not None:
        data = load_spec_file(file)
    else:
        missing = [flag for flag, value in (("--source", source), ("--shape", shape)) if not value]
        if missing:
            raise ByocError(
                missing[0], "is required without -f", "pass -f byoc.yaml, or --source URI --shape S --dest URI"
            )
        data = {"name": "build", "cloud": "aws", "region": "GLOBAL"}
    if source is not None or model_id is not None or revision is not None:
        current = data.get("model")
        model: dict[str, Any] = dict(current) if isinstance(current, dict) else {"id": current} if current else {}
        if source is not None:
            model["source"] = source
            model.pop("revision", None)  # the file's revision belongs to the file's source
        if revision is not None:
            model["revision"] = revision
        model["id"] = model_id or model.get("id") or _model_id(str(model.get("source") or "model"))
        data["model"] = model
    if shape is not None:
        data["shape"] = shape
    if kv_cache_fraction is not None:
        data["kv_cache_fraction"] = kv_cache_fraction
    if addons:
        listed = [dict(a) for a in data.get("addons") or [] if isinstance(a, dict)]
        for index, (name, uri) in enumerate(_parse_addons(addons)):
            field = f"{addon_field}[{index}]" if len(addons) > 1 or addon_field == "--addon" else addon_field
            entry = {"id": name, "source": uri, "rank": _addon_rank(uri, field)}
            listed = [a for a in listed if a.get("id") != name] + [entry]
        data["addons"] = listed
    return build_spec(data)


def _print_build(result: dict[str, Any]) -> None:
    if "plan" in result:
        plan = result["plan"]
        print(f"model        {plan['model_id']} ({plan['source']}{'@' + plan['revision'] if plan['revision'] else ''})")
        print(
            f"shape        {plan['shape']}: {plan['precision']}, quantization {plan['quantization'] or 'none'}, "
            f"KV cache {plan['kv_cache_dtype']}, tensor parallel {plan['tensor_parallel_size']}"
        )
        if plan["calibration"]:
            c = plan["calibration"]
            print(f"calibration  {c['samples']} samples x {c['sequence_length']} tokens ({c['dataset']})")
        print(f"cache key    {plan['cache_key']}")
        print(f"artifact     {result['artifact'] or plan['artifact_prefix'] + ' (under --dest)'}")
        print(f"serve        {' '.join(plan['serve_command'])}")
        print("options.yaml:")
        print("  " + result["options_yaml"].rstrip().replace("\n", "\n  "))
        return
    if result["cache_hit"]:
        print(f"cache hit: {result['artifact']} (built {result.get('built_at')}); nothing uploaded")
        return
    print(f"built {result['artifact']}")
    print(
        f"  {result['files']} files, {result['bytes'] / 1024**2:.1f} MiB, in {result['seconds']:.1f} s "
        f"({', '.join(f'{k} {v:.1f} s' for k, v in result['timings'].items())})"
    )


def register(app: typer.Typer) -> None:
    @app.command()
    def build(
        file: Annotated[Path | None, typer.Option("--file", "-f", help="Spec file (byoc.yaml).")] = None,
        source: Annotated[
            str | None, typer.Option("--source", help="Model checkpoint: file://, s3://, gs:// or hf:// URI.")
        ] = None,
        revision: Annotated[str | None, typer.Option("--revision", help="Revision of the source.")] = None,
        model_id: Annotated[
            str | None, typer.Option("--model-id", help="Model id (default: the source's folder name).")
        ] = None,
        shape: Annotated[str | None, typer.Option("--shape", help="Shape such as h100x1-fp8.")] = None,
        addon: Annotated[
            list[str] | None, typer.Option("--addon", help="LoRA addon NAME=URI (BF16 shapes; repeatable).")
        ] = None,
        kv_cache_fraction: Annotated[
            float | None, typer.Option("--kv-cache-fraction", help="KV cache share of free GPU memory.")
        ] = None,
        merge_adapter: Annotated[
            str | None,
            typer.Option("--merge-adapter", help="Fold this LoRA adapter (URI) into the weights before quantizing."),
        ] = None,
        dest: Annotated[
            str | None, typer.Option("--dest", help="Artifact store root: file://, s3:// or gs:// URI.")
        ] = None,
        kms_key_id: Annotated[
            str | None,
            typer.Option(
                "--kms-key-id", envvar="BYOC_ARTIFACT_KMS_KEY", help="KMS key for the uploads (SSE-KMS / CMEK)."
            ),
        ] = None,
        calibration_samples: Annotated[
            int | None,
            typer.Option("--calibration-samples", min=1, help="Calibration samples (default 512; changes the key)."),
        ] = None,
        calibration_seq_len: Annotated[
            int | None,
            typer.Option("--calibration-seq-len", min=16, help="Tokens per calibration sample (default 512)."),
        ] = None,
        plan_only: Annotated[bool, typer.Option("--plan-only", help="Print the build plan; build nothing.")] = False,
        work_dir: Annotated[
            Path | None, typer.Option("--work-dir", help="Scratch space for downloads and the export.")
        ] = None,
        output: OutputOpt = Output.text,
    ) -> None:
        """Build a model for a shape (ModelOpt FP8/NVFP4, or BF16 with LoRA addons) into the artifact store."""
        with reporting(output):
            if not plan_only:
                from byoc.extras import require

                require("runtime", "byoc build")
            from runtime.model_build.builder import BuildRequest, run_build
            from runtime.model_build.plan import DEFAULT_CALIBRATION, Calibration
            from runtime.model_build.progress import Events

            # errors about what was typed as a flag name the flag, not the spec field it fills
            flags = {
                field: flag
                for field, flag, value in (
                    (r"model\.source", "--source", source),
                    (r"model\.revision", "--revision", revision),
                    (r"model\.id", "--model-id", model_id),
                    (r"shape", "--shape", shape),
                    (r"kv_cache_fraction", "--kv-cache-fraction", kv_cache_fraction),
                    (r"addons\[\d+\].*", "--addon", addon if file is None else None),
                )
                if value
            }
            with fields_as_flags(flags):
                spec = spec_for_build(file, source, revision, model_id, shape, addon or [], kv_cache_fraction)
            request = BuildRequest(
                spec=spec,
                dest=dest,
                kms_key=kms_key_id or None,
                plan_only=plan_only,
                merge_adapter=merge_adapter,
                calibration=None
                if calibration_samples is None and calibration_seq_len is None
                else Calibration(
                    DEFAULT_CALIBRATION.dataset,
                    calibration_samples or DEFAULT_CALIBRATION.samples,
                    calibration_seq_len or DEFAULT_CALIBRATION.sequence_length,
                ),
                work_dir=work_dir,
            )
            with fields_as_flags(flags):
                result = run_build(request, Events(json_lines=output is Output.json))
        if output is Output.json:
            _last_line(result)
        else:
            _print_build(result)

    artifacts = typer.Typer(
        rich_markup_mode=None, help="Fetch, verify and inspect built model artifacts.", no_args_is_help=True
    )
    app.add_typer(artifacts, name="artifacts")

    @artifacts.command("fetch")
    def fetch(
        source: Annotated[str, typer.Option("--from", help="Artifact URI (<store>/artifacts/<model>/<key>).")],
        to: Annotated[Path, typer.Option("--to", help="Folder to fill: model/, adapters/, draft/, manifest.json.")],
        verify: Annotated[bool, typer.Option("--verify", help="Check every file's sha256 before placing.")] = False,
        concurrency: Annotated[
            int, typer.Option("--concurrency", min=1, max=256, help="Ranged reads in flight at once.")
        ] = 16,
        part_mib: Annotated[
            int, typer.Option("--part-mib", min=1, max=5120, help="Size of each ranged read, in MiB.")
        ] = 16,
        output: OutputOpt = Output.text,
    ) -> None:
        """Download an artifact with parallel ranged reads (and with --verify check it against its manifest) into a
        folder; a fetch cut short resumes from the files it already has."""
        with reporting(output):
            from runtime.model_build.artifacts import fetch_artifact

            result = fetch_artifact(source, to, verify, _events(output), concurrency, part_mib * 1024 * 1024)
        if output is Output.json:
            _last_line(result)
        else:
            print(f"{'verified and placed' if verify else 'placed'} {result['files']} files in {result['to']}")

    @artifacts.command("verify")
    def verify_cmd(
        folder: Annotated[Path, typer.Argument(help="A folder holding manifest.json (e.g. /models).")],
        output: OutputOpt = Output.text,
    ) -> None:
        """Check every file in a fetched artifact against its manifest.json."""
        with reporting(output):
            from runtime.model_build.artifacts import verify_folder

            result = verify_folder(folder)
        if output is Output.json:
            _last_line(result)
        else:
            print(f"{folder}: {result['verified']} files match manifest.json")
            for name in result["extra_files"]:
                print(f"  note: {name} is not in the manifest", file=sys.stderr)

    @artifacts.command("show")
    def show(
        source: Annotated[str, typer.Argument(help="Artifact URI.")],
        output: OutputOpt = Output.text,
    ) -> None:
        """Print an artifact's manifest."""
        with reporting(output):
            from runtime.model_build.artifacts import read_manifest

            manifest, _ = read_manifest(source)
        if output is Output.json:
            _last_line(manifest)
            return
        print_json({k: v for k, v in manifest.items() if k != "files"})
        print(f"files: {len(manifest['files'])}")
        for name, entry in manifest["files"].items():
            print(f"  {entry['sha256'][:16]}  {entry['size']:>12}  {name}")


def _events(output: Output) -> Events:
    from runtime.model_build.progress import Events

    return Events(json_lines=output is Output.json)
