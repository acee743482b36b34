"""`byoc addons add|remove|list`: LoRA addons added to and removed from a running deployment, without a restart.

`add` checks the addon with the plan-time rules (the deployment's spec with the addon in it must resolve: BF16 shapes
only, a DNS-1123 id, a reachable source; its rank within the running engines' `max_lora_rank`), builds it like any
artifact (the adapter's files and a manifest.json with the sha256 of each, verified after writing), registers it on
every engine replica (`POST /v1/load_lora_adapter`: each checks it against its base checkpoint and LoRA settings, and
the manifest), and returns once the gateway lists it in /v1/models: the first request for it is served. `remove`
unregisters it on every replica (its requests are 404; the replicas drop it from the model and its KV blocks) and
returns once the gateway no longer lists it. `list` prints the addons the gateway serves.

The gateway's API key, when it has keys, is read from the environment variable BYOC_API_KEY (never a flag: flags
end up in shell history).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from byoc.commands.common import Output, OutputOpt, print_json, reporting

API_KEY_ENV = "BYOC_API_KEY"
ANNOUNCE_TIMEOUT = 60.0


def _call(method: str, url: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    key = os.environ.get(API_KEY_ENV)
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = json.dumps(body).encode() if body is not None else None
    import urllib.error  # here, not at the top: `byoc --help` must not pay for http.client
    import urllib.request

    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        try:
            return error.code, json.loads(error.read() or b"null")
        except ValueError:
            return error.code, None


def _gateway_addons(gateway: str) -> dict[str, dict[str, Any]]:
    from byoc.errors import ByocFailure

    try:
        status, listing = _call("GET", gateway.rstrip("/") + "/v1/models")
    except OSError as exc:
        raise ByocFailure("--gateway", f"{gateway} cannot be reached ({exc})", "check the URL") from None
    if status == 401:
        raise ByocFailure("--gateway", "the gateway refused the API key", f"set {API_KEY_ENV} to a key of the gateway")
    if status != 200 or not isinstance(listing, dict):
        raise ByocFailure("--gateway", f"GET /v1/models answered {status}", "check that it is a byoc gateway")
    return {c["id"]: c for c in listing.get("data") or [] if isinstance(c, dict) and c.get("parent")}


def _wait_gateway(gateway: str, name: str, listed: bool) -> float:
    from byoc.errors import ByocFailure

    started = time.monotonic()
    while time.monotonic() - started < ANNOUNCE_TIMEOUT:
        if (name in _gateway_addons(gateway)) == listed:
            return time.monotonic() - started
        time.sleep(0.2)
    state = "list" if listed else "drop"
    raise ByocFailure(
        "--gateway",
        f"the gateway did not {state} addon {name} within {ANNOUNCE_TIMEOUT:.0f}s",
        "check that --engine names the replicas behind this gateway and that they are ready",
    )


def check_rules(name: str, source: str, file: Path | None, shape: str | None, model_source: str | None) -> int | None:
    """Resolve the deployment with the addon in it (plan-time rules); the running engines' max_lora_rank if known.

    Raises ByocError (exit 2): not a BF16 shape, a bad id or source, a rank above the running max_lora_rank, or a
    deployment planned without addons (trtllm-serve then runs without lora_config: add it to the spec and update).
    """
    from byoc.commands.build import spec_for_build
    from byoc.errors import ByocError
    from byoc.resolve import resolve
    from runtime.model_build.plan import serve_options

    before = None
    if file is not None:
        before = resolve(spec_for_build(file, None, None, None, None, [], None), build_location="local")
    spec = spec_for_build(file, model_source, None, None, shape, [f"{name}={source}"], None)
    after = resolve(spec, build_location="local")  # BF16 only, id, source: byoc/rules.py
    if before is None:
        return None
    lora = serve_options(before).get("lora_config")
    if lora is None:
        raise ByocError(
            "addons",
            "this deployment was planned without addons, so its engines run without LoRA (no lora_config)",
            "add the addon to byoc.yaml and run `byoc update`; later addons can then be added live",
        )
    rank = next(a.rank for a in after.addons if a.id == name)
    if rank > int(lora["max_lora_rank"]):
        raise ByocError(
            "--source",
            f"addon {name} has rank {rank}, above the running engines' max_lora_rank {lora['max_lora_rank']}",
            "retrain at a lower rank, or add it to byoc.yaml and run `byoc update`",
        )
    return int(lora["max_lora_rank"])


def build_addon(name: str, source: str, dest: Path) -> dict[str, Any]:
    """The adapter's files under dest/name with a manifest.json (sha256 and size of each), verified after writing."""
    from byoc.errors import ByocError
    from runtime.model_build.adapters import ADAPTER_WEIGHTS
    from runtime.model_build.manifest import FORMAT, MANIFEST, hash_tree, verify_tree
    from runtime.model_build.progress import Events
    from runtime.model_build.sources import fetch, locate

    target = dest / name
    work = dest / f".{name}.fetch"
    folder = fetch(
        locate(source, None, "--source", marker="adapter_config.json"), work, "--source", Events(False), name
    )
    if not (folder / "adapter_config.json").is_file() or not any((folder / w).is_file() for w in ADAPTER_WEIGHTS):
        raise ByocError("--source", f"{source} is not a PEFT adapter folder", "point at adapter_config.json's folder")
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(folder, target, ignore=shutil.ignore_patterns(MANIFEST, ".*"))
    shutil.rmtree(work, ignore_errors=True)
    files = hash_tree(target)
    (target / MANIFEST).write_text(json.dumps({"format": FORMAT, "kind": "lora-addon", "id": name, "files": files}))
    _, mismatches, _ = verify_tree(target)
    if mismatches:
        raise ByocError(str(target), f"{mismatches[0]}", "check the disk and run again")
    return {"path": str(target), "files": files}


def register(app: typer.Typer) -> None:
    addons = typer.Typer(
        rich_markup_mode=None, help="LoRA addons of a running deployment: add, remove, list.", no_args_is_help=True
    )
    app.add_typer(addons, name="addons")

    @addons.command("add")
    def add(
        name: Annotated[str, typer.Argument(help="The addon id clients send as `model`.")],
        source: Annotated[str, typer.Option("--source", help="The PEFT adapter: file://, s3://, gs:// or hf:// URI.")],
        engine: Annotated[list[str], typer.Option("--engine", help="An engine replica's URL (repeatable).")],
        gateway: Annotated[str, typer.Option("--gateway", help="The gateway's URL.")],
        dest: Annotated[Path, typer.Option("--dest", help="The adapter folder the replicas read.")],
        file: Annotated[Path | None, typer.Option("-f", "--file", help="The deployment's byoc.yaml.")] = None,
        shape: Annotated[str | None, typer.Option("--shape", help="The deployment's shape, without -f.")] = None,
        model_source: Annotated[
            str | None, typer.Option("--model-source", help="The base model's URI, without -f.")
        ] = None,
        output: OutputOpt = Output.text,
    ) -> None:
        """Add an addon to a running deployment: checked, built (sha256 manifest), loaded, announced."""
        from byoc.errors import ByocError

        with reporting(output):
            if not source.startswith(("file://", "s3://", "gs://", "hf://")) and Path(source).is_dir():
                source = f"file://{Path(source).resolve()}"
            max_rank = check_rules(name, source, file, shape, model_source)
            if name in _gateway_addons(gateway):
                # Replacing weights under a served name would leave replicas (and their cached KV blocks) on the
                # old adapter while the files say new: one name, one adapter.
                raise ByocError(
                    "NAME",
                    f"addon {name} is already served",
                    f"`byoc addons remove {name}` first, or add the new adapter under another name",
                )
            built = build_addon(name, source, dest)
            for url in engine:
                status, answer = _call(
                    "POST", url.rstrip("/") + "/v1/load_lora_adapter", {"lora_name": name, "lora_path": built["path"]}
                )
                if status != 200:
                    message = answer.get("message") if isinstance(answer, dict) else None
                    raise ByocError("--source", f"engine {url} refused addon {name}: {message or status}", "fix it")
            waited = _wait_gateway(gateway, name, listed=True)
            result = {
                "addon": name,
                "path": built["path"],
                "files": built["files"],
                "engines": engine,
                "max_lora_rank": max_rank,
                "gateway_listed_after_seconds": round(waited, 2),
            }
        if output == Output.json:
            print_json(result)
        else:
            print(f"addon {name} is served ({len(built['files'])} files verified, {len(engine)} replicas)")

    @addons.command("remove")
    def remove(
        name: Annotated[str, typer.Argument(help="The addon id.")],
        engine: Annotated[list[str], typer.Option("--engine", help="An engine replica's URL (repeatable).")],
        gateway: Annotated[str, typer.Option("--gateway", help="The gateway's URL.")],
        output: OutputOpt = Output.text,
    ) -> None:
        """Remove an addon: 404 for its requests from now on, unloaded from every replica."""
        from byoc.errors import ByocError

        with reporting(output):
            unloaded = []
            for url in engine:
                status, _ = _call("POST", url.rstrip("/") + "/v1/unload_lora_adapter", {"lora_name": name})
                if status not in (200, 404):
                    raise ByocError("--engine", f"engine {url} answered {status} to the unload", "check the replica")
                unloaded.append(status == 200)
            if not any(unloaded) and name not in _gateway_addons(gateway):
                raise ByocError("NAME", f"no replica serves addon {name}", "`byoc addons list` shows the addons")
            waited = _wait_gateway(gateway, name, listed=False)
        if output == Output.json:
            print_json({"addon": name, "removed": True, "gateway_dropped_after_seconds": round(waited, 2)})
        else:
            print(f"addon {name} is removed")

    @addons.command("list")
    def list_addons(
        gateway: Annotated[str, typer.Option("--gateway", help="The gateway's URL.")],
        output: OutputOpt = Output.text,
    ) -> None:
        """The addons the gateway serves."""
        with reporting(output):
            found = _gateway_addons(gateway)
        if output == Output.json:
            print_json({"addons": sorted(found)})
        else:
            for name in sorted(found):
                print(name)
