"""manifest.json: what an artifact holds and how it was made, with the sha256 of every file.

The manifest is written (and uploaded) last: an artifact prefix without one is absent to every reader. Serving pods
check each file against it before trtllm-serve loads anything (`byoc artifacts fetch --verify`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from byoc.errors import ByocError, ByocFailure

MANIFEST = "manifest.json"
FORMAT = "byoc-artifact/1"
_CHUNK = 8 * 1024 * 1024


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def hash_tree(folder: Path) -> dict[str, dict[str, Any]]:
    """{relative path: {sha256, size}} for every file under folder except the manifest itself."""
    files: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.relative_to(folder).as_posix() != MANIFEST:
            files[path.relative_to(folder).as_posix()] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    return files


def safe_relative(name: str) -> str:
    """A manifest path that stays inside the artifact (no absolute paths, no '..')."""
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts or not pure.parts or name != pure.as_posix():
        raise ByocFailure("manifest", f"the manifest lists an unsafe path {name!r}", "rebuild the artifact")
    return name


@dataclass(frozen=True)
class Mismatch:
    path: str
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


def parse(data: bytes, where: str) -> dict[str, Any]:
    try:
        manifest = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ByocFailure("manifest", f"{where} is not valid JSON", "rebuild the artifact") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise ByocFailure("manifest", f"{where} has no `files` table", "rebuild the artifact with byoc build")
    for name, entry in manifest["files"].items():
        safe_relative(name)
        if not isinstance(entry, dict) or "sha256" not in entry or "size" not in entry:
            raise ByocFailure("manifest", f"{where} lists {name} without sha256 and size", "rebuild the artifact")
    return manifest


def check_file(path: Path, entry: dict[str, Any], name: str) -> Mismatch | None:
    if not path.is_file():
        return Mismatch(name, "missing")
    size = path.stat().st_size
    if size != entry["size"]:
        return Mismatch(name, f"size {size} bytes, the manifest says {entry['size']}")
    actual = sha256_file(path)
    if actual != entry["sha256"]:
        return Mismatch(name, f"sha256 {actual[:16]}... does not match the manifest's {str(entry['sha256'])[:16]}...")
    return None


# Files hashed at once by verify_tree: hashlib and file reads release the GIL, so threads hash in parallel; through
# a Mountpoint for Amazon S3 mount (cold_start.weights_cache node_cache) each file is also its own prefetch stream.
VERIFY_WORKERS = 8


def verify_tree(folder: Path, workers: int = VERIFY_WORKERS) -> tuple[dict[str, Any], list[Mismatch], list[str]]:
    """(manifest, mismatches in manifest order, files present but not in the manifest); `workers` files are read
    and hashed at once."""
    from concurrent.futures import ThreadPoolExecutor

    path = folder / MANIFEST
    if not path.is_file():
        raise ByocError(str(folder), "holds no manifest.json", "point at a folder `byoc artifacts fetch` filled")
    manifest = parse(path.read_bytes(), str(path))
    entries = list(manifest["files"].items())
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(entries)))) as pool:
        found = pool.map(lambda item: check_file(folder / item[0], item[1], item[0]), entries)
        mismatches = [problem for problem in found if problem is not None]
    listed = set(manifest["files"]) | {MANIFEST}
    extra = sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.relative_to(folder).as_posix() not in listed
    )
    return manifest, mismatches, extra
