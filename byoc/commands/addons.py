"""`byoc addons add|remove|list`: LoRA addons added to and removed from a running deployment, without a restart.

`add` checks the addon with the plan-time rules (the deployment's spec with the addon in it must resolve: BF16 shapes
only, a DNS-1123 id, a reachable source; its rank within the running engines' `max_lora_rank`), builds it like any
artifact (the adapter's files and a manifest.json with the sha256 of each, verified after writing), registers it on
every engine replica (`POST /v1/load_lora_adapter`: each checks it against its base checkpoint and LoRA settings, and
the manifest), and returns once the gateway lists it in /v1/models: the first request for it is served. `remove`
unregisters it on every replica (its requests are 404; the replicas drop it from the model and its KV blocks) and
returns once the gateway no longer lists it. `list` prints the addons the gateway serves.

The gateway's API key, when it has keys, is read from the environment variable BYOC_API_KEY (never a flag: flags
end up in shell history); it is sent to the gateway only, never to the replicas.

What byoc assumes of its peers is checked before anything is built or loaded: every URL is an http(s) URL, every
server answers `GET /v1/models`, the gateway takes the key, and the name is neither taken nor the base model's. A
server that cannot be reached, times out or answers an error is one line naming its flag (exit 1; exit 2 where the
input is at fault), never a traceback; and an `add` that fails once it has started unloads the addon from the
replicas it reached and removes the files it wrote, so nothing is left half-added.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from byoc.commands.common import Output, OutputOpt, fields_as_flags, print_json, reporting
from byoc.errors import ByocError, ByocFailure

API_KEY_ENV = "BYOC_API_KEY"
ANNOUNCE_TIMEOUT = 60.0
CALL_TIMEOUT = 30.0
URI_SCHEMES = ("file://", "s3://", "gs://", "hf://")
_KEY_HINT = (
    f"export {API_KEY_ENV}=KEY with a key of the gateway's --api-keys file (a variable keeps it out of shell history)"
)

WaitOpt = Annotated[
    float,
    typer.Option("--wait", min=0.1, help="Longest wait for the gateway to list (or drop) the addon (seconds)."),
]
TimeoutOpt = Annotated[
    float,
    typer.Option("--timeout", min=0.1, help="Longest wait for each answer of the gateway or a replica (seconds)."),
]


def _api_key() -> str | None:
    """BYOC_API_KEY, checked before anything is sent: unset (None: a gateway without keys), or one word."""

    key = os.environ.get(API_KEY_ENV)
    if key is None:
        return None
    if not key.strip():
        raise ByocError(API_KEY_ENV, "is set but empty", f"{_KEY_HINT}; or unset it for a gateway without keys")
    if any(c.isspace() for c in key):
        raise ByocError(
            API_KEY_ENV,
            "holds whitespace (a space or a line break), and a key is one word",
            f"set it to the key alone: export {API_KEY_ENV}=\"$(tr -d '[:space:]' < key.txt)\"",
        )
    return key


def _check_url(url: str, flag: str) -> None:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        port_ok = False
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise ByocError(flag, f"{url!r} is not an http(s) URL", "e.g. http://10.0.1.7:8000")


def _json(data: bytes) -> Any:
    try:
        return json.loads(data or b"null")
    except ValueError:
        return None  # an answer that is not JSON: the caller reports its status


def _message(answer: Any) -> str:
    message = answer.get("message") if isinstance(answer, dict) else None
    return f": {message}" if isinstance(message, str) and message else ""


class NoAnswer(ByocFailure):
    """A server took the request and did not answer in time: it may have acted on it."""


@dataclass(frozen=True)
class Peers:
    """The gateway and the engine replicas an addons command talks to, checked before anything is sent (URLs, key).

    Every answer is awaited `timeout` seconds at most. A server that cannot be reached or does not answer in time is a
    ByocFailure naming its flag (exit 1); the key goes to the gateway only."""

    gateway: str
    engines: list[str]
    timeout: float = CALL_TIMEOUT
    key: str | None = None

    @classmethod
    def checked(cls, gateway: str, engines: list[str], timeout: float) -> Peers:
        _check_url(gateway, "--gateway")
        for url in engines:
            _check_url(url, "--engine")
        return cls(gateway.rstrip("/"), [url.rstrip("/") for url in engines], timeout, _api_key())

    def call(self, method: str, url: str, flag: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        """(status, JSON answer or None)."""
        import http.client  # here, not at the top: `byoc --help` must not pay for http.client
        import urllib.error
        import urllib.request

        headers = {"Content-Type": "application/json"}
        if self.key is not None and flag == "--gateway":
            headers["Authorization"] = f"Bearer {self.key}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        server = "/".join(url.split("/", 3)[:3])  # scheme://host:port, as the user gave it
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, _json(response.read())
        except urllib.error.HTTPError as error:
            return error.code, _json(error.read())
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            if isinstance(reason, TimeoutError):
                raise NoAnswer(
                    flag,
                    f"{server} did not answer {method} {url[len(server) :]} within {self.timeout:g}s",
                    "check that the server is up and not overloaded, then run the command again (--timeout)",
                ) from None
            why = getattr(reason, "strerror", None) or str(reason) or type(exc).__name__
            raise ByocFailure(flag, f"{server} cannot be reached ({why})", f"check {flag} and that it runs") from None

    def models(self, url: str, flag: str) -> list[dict[str, Any]]:
        """The entries of a server's `GET /v1/models` (the gateway's or a replica's)."""

        status, listing = self.call("GET", url + "/v1/models", flag)
        if status == 401 and flag == "--gateway":
            raise _refused_key()
        data = listing.get("data") if isinstance(listing, dict) else None
        if status != 200 or not isinstance(data, list):
            what = "a byoc gateway" if flag == "--gateway" else "an engine replica"
            raise ByocFailure(
                flag, f"GET {url}/v1/models answered {status} without a model list", f"check that {flag} is {what}"
            )
        return [c for c in data if isinstance(c, dict) and isinstance(c.get("id"), str)]

    def gateway_addons(self) -> dict[str, dict[str, Any]]:
        return {c["id"]: c for c in self.models(self.gateway, "--gateway") if c.get("parent")}

    def wait_gateway(self, name: str, listed: bool, wait: float) -> float:
        """Seconds until the gateway lists (or no longer lists) addon `name`, `wait` seconds at most."""

        started = time.monotonic()
        while time.monotonic() - started < wait:
            if (name in self.gateway_addons()) == listed:
                return time.monotonic() - started
            time.sleep(0.2)
        state = "list" if listed else "drop"
        raise ByocFailure(
            "--gateway",
            f"the gateway did not {state} addon {name} within {wait:g}s",
            "check that --engine names the replicas behind this gateway and that they are ready",
        )

    def load(self, url: str, name: str, path: str) -> None:
        """Register a built adapter on one replica: its refusal is the input's fault (exit 2), an error is exit 1."""

        body = {"lora_name": name, "lora_path": path}
        status, answer = self.call("POST", url + "/v1/load_lora_adapter", "--engine", body)
        if status == 200:
            return
        if status == 404:
            raise ByocError(
                "--engine",
                f"engine {url} has no POST /v1/load_lora_adapter, so it cannot take addons while it runs",
                "on trtllm-serve put the adapter on the replicas' volume and add it to the gateway's --addon list "
                "(docs/gateway.md, Addons on a running deployment)",
            )
        if status == 400:
            field = "NAME" if isinstance(answer, dict) and answer.get("param") == "lora_name" else "--source"
            raise ByocError(field, f"engine {url} refused addon {name}{_message(answer)}", "fix it and add it again")
        raise ByocFailure(
            "--engine",
            f"engine {url} answered {status} to the load{_message(answer)}",
            "check the replica's log, then add the addon again",
        )

    def unload(self, url: str, name: str) -> None:
        """Unregister an addon on one replica (done too if the replica does not have it: 404)."""

        status, answer = self.call("POST", url + "/v1/unload_lora_adapter", "--engine", {"lora_name": name})
        if status not in (200, 404):
            raise ByocFailure(
                "--engine",
                f"engine {url} answered {status} to the unload{_message(answer)}",
                "check the replica's log, then remove the addon again",
            )


def _refused_key() -> ByocError:

    if os.environ.get(API_KEY_ENV) is None:
        return ByocError(API_KEY_ENV, "is not set, and the gateway requires an API key", _KEY_HINT)
    return ByocError(API_KEY_ENV, "the gateway refused this key", "set it to a key of the gateway's --api-keys file")


def _refuse_taken(name: str, models: list[dict[str, Any]], where: str) -> None:
    """An addon under a name the server already serves: refused (exit 2) before anything is built."""

    for entry in models:
        if entry["id"] != name:
            continue
        if not entry.get("parent"):
            raise ByocError("NAME", f"{name} is the base model's name at {where}", "give the addon a name of its own")
        # Replacing weights under a served name would leave replicas (and their cached KV blocks) on the old
        # adapter while the files say new: one name, one adapter.
        raise ByocError(
            "NAME",
            f"addon {name} is already served by {where}",
            f"`byoc addons remove {name}` first, or add the new adapter under another name",
        )


def _undo(peers: Peers, name: str, loaded: list[str], remove: list[Path]) -> str:
    """Take back a failed `add`: unload the addon where it was loaded, remove the folders it made. Says what was
    undone."""

    stuck = []
    for url in loaded:
        try:
            peers.unload(url, name)
        except ByocError:
            stuck.append(url)
    written = [folder for folder in remove if folder.exists()]
    for folder in written:
        shutil.rmtree(folder, ignore_errors=True)
    done = [f"unloaded from {len(loaded) - len(stuck)} replica(s)"] if len(loaded) > len(stuck) else []
    done += ["its files removed"] if written else []
    done += [f"not unloaded from {', '.join(stuck)}: `byoc addons remove {name}` once it answers"] if stuck else []
    return f"undone: {', '.join(done)}" if done else ""


def check_rules(name: str, source: str, file: Path | None, shape: str | None, model_source: str | None) -> int | None:
    """Resolve the deployment with the addon in it (plan-time rules); the running engines' max_lora_rank if known.

    Raises ByocError (exit 2): not a BF16 shape, a bad id or source, a rank above the running max_lora_rank, or a
    deployment planned without addons (trtllm-serve then runs without lora_config: add it to the spec and update).
    """
    from byoc.commands.build import spec_for_build
    from byoc.resolve import resolve
    from runtime.model_build.plan import serve_options

    if file is None:
        missing = [flag for flag, value in (("--model-source", model_source), ("--shape", shape)) if not value]
        if missing:
            raise ByocError(
                missing[0],
                "is required without -f",
                "pass -f byoc.yaml (the deployment's spec), or --model-source URI --shape SHAPE",
            )
    before = None
    if file is not None:
        before = resolve(spec_for_build(file, None, None, None, None, [], None), build_location="local")
    # the file's own addons resolved above: an error about an addon now is about this one
    flags = {r"addons\[\d+\]\.id": "NAME", r"addons\[\d+\]\.(source|rank)": "--source", r"addons\[\d+\]": "--source"}
    if file is None:
        flags |= {r"model\.source": "--model-source", r"shape": "--shape"}
    with fields_as_flags(flags):
        spec = spec_for_build(file, model_source, None, None, shape, [f"{name}={source}"], None, "--source")
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


def add_addon(
    name: str,
    source: str,
    peers: Peers,
    dest: Path,
    file: Path | None,
    shape: str | None,
    model_source: str | None,
    wait: float = ANNOUNCE_TIMEOUT,
) -> dict[str, Any]:
    """`byoc addons add` once the peers are checked: every check that needs no server, then every server, then
    build, load and announce; a failure after the build takes everything back (`_undo`)."""
    from byoc.names import addon_id_problem

    problem = addon_id_problem(name)
    if problem:
        raise ByocError("NAME", problem, "rename it, e.g. legal-v2: clients send it as `model`")
    if not source.startswith(URI_SCHEMES):
        if not Path(source).is_dir():
            raise ByocError(
                "--source",
                f"{source!r} is neither a folder nor a file://, s3://, gs:// or hf:// URI",
                "point at the adapter's folder, the one holding adapter_config.json",
            )
        source = f"file://{Path(source).resolve()}"
    max_rank = check_rules(name, source, file, shape, model_source)
    # then every server, before anything is built: reachable, the key taken, the name free
    _refuse_taken(name, peers.models(peers.gateway, "--gateway"), "the gateway")
    for url in peers.engines:
        _refuse_taken(name, peers.models(url, "--engine"), f"engine {url}")
    target, work = dest / name, dest / f".{name}.fetch"
    made = [p for p in (target, work) if not p.exists()] if dest.exists() else [dest]
    loaded: list[str] = []
    try:
        built = build_addon(name, source, dest)
        for url in peers.engines:
            try:
                peers.load(url, name, built["path"])
            except NoAnswer:
                loaded.append(url)  # asked and silent: it may have registered the addon, so it is unloaded too
                raise
            loaded.append(url)
        waited = peers.wait_gateway(name, listed=True, wait=wait)
    except ByocError as error:
        done = _undo(peers, name, loaded, made)
        raise type(error)(error.field, f"{error.message} ({done})" if done else error.message, error.hint) from None
    except BaseException:  # Ctrl-C included: nothing is left half-added
        _undo(peers, name, loaded, made)
        raise
    return {
        "addon": name,
        "path": built["path"],
        "files": built["files"],
        "engines": peers.engines,
        "max_lora_rank": max_rank,
        "gateway_listed_after_seconds": round(waited, 2),
    }


def remove_addon(name: str, peers: Peers, wait: float = ANNOUNCE_TIMEOUT) -> float:
    """`byoc addons remove`: unloaded from the replicas that have it, then dropped by the gateway (seconds waited)."""

    # every server answers before any replica unloads: never an addon left on some replicas only
    served = peers.models(peers.gateway, "--gateway")
    holders = [u for u in peers.engines if name in {c["id"] for c in peers.models(u, "--engine") if c.get("parent")}]
    at_gateway = next((c for c in served if c["id"] == name), None)
    if at_gateway is not None and not at_gateway.get("parent"):
        raise ByocError("NAME", f"{name} is the base model, not an addon", "`byoc addons list` shows the addons")
    if not holders and at_gateway is None:
        raise ByocError("NAME", f"no replica serves addon {name}", "`byoc addons list` shows the addons")
    if not holders:
        raise ByocError(
            "NAME",
            f"addon {name} is declared by the gateway itself (its --addon or addons: setting), and none of these "
            "replicas has it loaded",
            "remove it from the gateway's settings and restart it, or pass the --engine replicas that serve it",
        )
    for url in holders:
        peers.unload(url, name)
    return peers.wait_gateway(name, listed=False, wait=wait)


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
        wait: WaitOpt = ANNOUNCE_TIMEOUT,
        timeout: TimeoutOpt = CALL_TIMEOUT,
        output: OutputOpt = Output.text,
    ) -> None:
        """Add an addon to a running deployment: checked, built (sha256 manifest), loaded, announced."""
        with reporting(output):
            peers = Peers.checked(gateway, engine, timeout)
            result = add_addon(name, source, peers, dest, file, shape, model_source, wait)
        if output == Output.json:
            print_json(result)
        else:
            print(f"addon {name} is served ({len(result['files'])} files verified, {len(engine)} replicas)")

    @addons.command("remove")
    def remove(
        name: Annotated[str, typer.Argument(help="The addon id.")],
        engine: Annotated[list[str], typer.Option("--engine", help="An engine replica's URL (repeatable).")],
        gateway: Annotated[str, typer.Option("--gateway", help="The gateway's URL.")],
        wait: WaitOpt = ANNOUNCE_TIMEOUT,
        timeout: TimeoutOpt = CALL_TIMEOUT,
        output: OutputOpt = Output.text,
    ) -> None:
        """Remove an addon: 404 for its requests from now on, unloaded from every replica."""
        with reporting(output):
            waited = remove_addon(name, Peers.checked(gateway, engine, timeout), wait)
        if output == Output.json:
            print_json({"addon": name, "removed": True, "gateway_dropped_after_seconds": round(waited, 2)})
        else:
            print(f"addon {name} is removed")

    @addons.command("list")
    def list_addons(
        gateway: Annotated[str, typer.Option("--gateway", help="The gateway's URL.")],
        timeout: TimeoutOpt = CALL_TIMEOUT,
        output: OutputOpt = Output.text,
    ) -> None:
        """The addons the gateway serves."""
        with reporting(output):
            found = Peers.checked(gateway, [], timeout).gateway_addons()
        if output == Output.json:
            print_json({"addons": sorted(found)})
        else:
            for name in sorted(found):
                print(name)
