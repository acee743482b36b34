"""Reading artifacts back: what the serving pods' init container runs before trtllm-serve loads anything.

`fetch` downloads every file the manifest lists into a hidden staging folder beside the target, checks each one's
size and sha256, and only then moves the folders into place (manifest.json last). A mismatch names the file and
leaves the target as it was: nothing half-verified is ever where trtllm-serve would read it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from byoc.errors import ByocError, ByocFailure
from runtime.model_build.manifest import MANIFEST, check_file, parse, verify_tree
from runtime.model_build.progress import Events
from runtime.model_build.stores import ObjectMissing, open_store


def read_manifest(uri: str) -> tuple[dict[str, Any], bytes]:
    """The artifact's manifest, parsed and as stored."""
    store = open_store(uri, "--from")
    try:
        data = store.read_bytes(MANIFEST)
    except ObjectMissing:
        raise ByocFailure(
            "--from",
            f"no artifact at {store.uri()}: it has no manifest.json (the build has not finished, or failed)",
            "run the build (the deployment's build Job, or byoc build) and retry",
        ) from None
    return parse(data, store.uri(MANIFEST)), data


def _place(staging: Path, target: Path) -> list[str]:
    """Move staging's top-level entries into target, replacing what was there; manifest.json goes last."""
    names = [*sorted(p.name for p in staging.iterdir() if p.name != MANIFEST), MANIFEST]
    for name in names:
        destination = target / name
        if destination.is_dir() and not destination.is_symlink():
            shutil.rmtree(destination)
        elif destination.exists() or destination.is_symlink():
            destination.unlink()
        os.replace(staging / name, destination)
    return names


def fetch_artifact(uri: str, target: Path, verify: bool, events: Events) -> dict[str, Any]:
    store = open_store(uri, "--from")
    manifest, manifest_bytes = read_manifest(uri)
    files: dict[str, dict[str, Any]] = manifest["files"]
    total = sum(int(entry["size"]) for entry in files.values())
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ByocError("--to", f"cannot create {target}: {exc.strerror}", "choose a writable folder") from None
    staging = Path(tempfile.mkdtemp(prefix=".byoc-fetch-", dir=target))
    done = 0

    def advance(count: int) -> None:
        nonlocal done
        done += count
        events.progress("fetch", done, total, "bytes")

    try:
        events.step("fetch", f"{len(files)} files ({total / 1024**2:.1f} MiB) from {store.uri()}")
        for name in files:
            try:
                store.download(name, staging / name, advance)
            except ObjectMissing:
                raise ByocFailure("--from", f"{name} is in the manifest but not in {store.uri()}", "rebuild") from None
        events.progress("fetch", total, total, "bytes", final=True)
        (staging / MANIFEST).write_bytes(manifest_bytes)
        if verify:
            events.step("verify", f"checking the sha256 of {len(files)} files against manifest.json")
            for name, entry in files.items():
                problem = check_file(staging / name, entry, name)
                if problem is not None:
                    raise ByocFailure(
                        "--verify",
                        f"{name} does not match the manifest of {store.uri()} ({problem.problem}); nothing was "
                        f"placed in {target}",
                        "the artifact was changed after the build: rebuild it (delete its prefix, rerun the build)",
                    )
        placed = _place(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {
        "artifact": store.uri(),
        "to": str(target),
        "files": len(files),
        "bytes": total,
        "verified": verify,
        "placed": placed,
        "cache_key": manifest.get("cache_key"),
        "shape": manifest.get("shape"),
    }


def verify_folder(folder: Path) -> dict[str, Any]:
    manifest, mismatches, extra = verify_tree(folder)
    if mismatches:
        first = mismatches[0]
        more = f" (and {len(mismatches) - 1} more)" if len(mismatches) > 1 else ""
        raise ByocFailure(
            str(folder),
            f"{first.path} does not match manifest.json: {first.problem}{more}",
            "fetch the artifact again with byoc artifacts fetch --verify",
        )
    return {
        "folder": str(folder),
        "verified": len(manifest["files"]),
        "extra_files": extra,
        "cache_key": manifest.get("cache_key"),
        "shape": manifest.get("shape"),
    }
