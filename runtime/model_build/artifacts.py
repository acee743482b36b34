"""Reading artifacts back: what the serving pods' init container runs before trtllm-serve loads anything.

`fetch` downloads every file the manifest lists into a hidden staging folder beside the target, with parallel ranged
reads (runtime/model_build/fetch.py), checks each one's size and sha256, and only then moves the folders into place
(manifest.json last). A mismatch names the file and leaves the target as it was: nothing half-verified is ever where
trtllm-serve would read it.

Resume: the staging folder is named after the manifest (`.byoc-fetch-<sha256 of manifest.json, 16 hex>`), and a fetch
cut short (the init container killed, the network gone) leaves it: the next fetch of the same artifact keeps the
files already there whose size and sha256 match and reads only the rest. A file that does not match its manifest is
a bad artifact, not a cut-short fetch: that failure removes the staging folder (a clean failure, nothing kept).
Staging folders of other artifacts are removed first, so an older artifact's leftovers never fill the node's disk.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

from byoc.errors import ByocError, ByocFailure
from runtime.model_build.fetch import CONCURRENCY, PART_BYTES, FetchTuning, parallel_download
from runtime.model_build.manifest import MANIFEST, check_file, parse, verify_tree
from runtime.model_build.progress import Events
from runtime.model_build.stores import ObjectMissing, open_store

STAGING_PREFIX = ".byoc-fetch-"


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


def _staging(target: Path, manifest_bytes: bytes) -> Path:
    """This artifact's staging folder in `target`; other artifacts' leftovers removed."""
    staging = target / f"{STAGING_PREFIX}{hashlib.sha256(manifest_bytes).hexdigest()[:16]}"
    for stale in target.glob(f"{STAGING_PREFIX}*"):
        if stale != staging:
            shutil.rmtree(stale, ignore_errors=True)
    staging.mkdir(exist_ok=True)
    return staging


def _already_staged(staging: Path, files: dict[str, dict[str, Any]]) -> set[str]:
    """The files a cut-short fetch left in staging that match the manifest (size first: cheap; then sha256)."""
    kept = set()
    for name, entry in files.items():
        path = staging / name
        if path.is_file() and path.stat().st_size == int(entry["size"]) and check_file(path, entry, name) is None:
            kept.add(name)
    return kept


def fetch_artifact(
    uri: str, target: Path, verify: bool, events: Events, concurrency: int = CONCURRENCY, part_bytes: int = PART_BYTES
) -> dict[str, Any]:
    """Fetch the artifact at `uri` into `target` (module docstring); `concurrency` ranged reads of `part_bytes` in
    flight. Raises ByocFailure (exit 1) naming the file for a missing or mismatched file, ByocError for bad input."""
    tuning = FetchTuning(concurrency=concurrency, part_bytes=part_bytes)
    store = open_store(uri, "--from")
    manifest, manifest_bytes = read_manifest(uri)
    files: dict[str, dict[str, Any]] = manifest["files"]
    total = sum(int(entry["size"]) for entry in files.values())
    try:
        target.mkdir(parents=True, exist_ok=True)
        staging = _staging(target, manifest_bytes)
    except OSError as exc:
        raise ByocError("--to", f"cannot create {target}: {exc.strerror}", "choose a writable folder") from None
    kept = _already_staged(staging, files)
    resumed = sum(int(files[name]["size"]) for name in kept)
    done = resumed

    def advance(count: int) -> None:
        nonlocal done
        done += count
        events.progress("fetch", done, total, "bytes")

    wanted = [(name, staging / name) for name in files if name not in kept]
    clean = False  # a store or network failure keeps staging for the next fetch to resume
    try:
        events.step(
            "fetch",
            f"{len(files)} files ({total / 1024**2:.1f} MiB) from {store.uri()}, {tuning.concurrency} ranged reads "
            f"of {tuning.part_bytes // 1024**2} MiB in flight"
            + (f"; {len(kept)} files ({resumed / 1024**2:.1f} MiB) kept from a cut-short fetch" if kept else ""),
        )
        try:
            parallel_download(store, wanted, advance, tuning)
        except ObjectMissing as missing:
            clean = True
            raise ByocFailure(
                "--from", f"{missing.args[0]} is in the manifest but not in {store.uri()}", "rebuild"
            ) from None
        events.progress("fetch", total, total, "bytes", final=True)
        if verify:
            events.step("verify", f"checking the sha256 of {len(files)} files against manifest.json")
            for name, entry in files.items():
                problem = None if name in kept else check_file(staging / name, entry, name)
                if problem is not None:
                    clean = True
                    raise ByocFailure(
                        "--verify",
                        f"{name} does not match the manifest of {store.uri()} ({problem.problem}); nothing was "
                        f"placed in {target}",
                        "the artifact was changed after the build: rebuild it (delete its prefix, rerun the build)",
                    )
        (staging / MANIFEST).write_bytes(manifest_bytes)
        placed = _place(staging, target)
        clean = True
    finally:
        if clean:
            shutil.rmtree(staging, ignore_errors=True)
    return {
        "artifact": store.uri(),
        "to": str(target),
        "files": len(files),
        "bytes": total,
        "resumed_bytes": resumed,
        "concurrency": tuning.concurrency,
        "part_bytes": tuning.part_bytes,
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
