"""Where model, adapter and draft checkpoints come from, and getting them onto local disk.

file:// is read in place. s3:// and gs:// are downloaded into the build's work folder. hf:// never downloads from the
internet: it resolves through a mirror (BYOC_HF_MIRROR, a folder or bucket laid out as <org>/<name>[/<revision>]) or a
local Hugging Face cache (HF_HUB_CACHE, the models--<org>--<name>/snapshots/<commit> layout).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from byoc.errors import ByocError
from runtime.model_build.progress import Events
from runtime.model_build.stores import ObjectMissing, join, open_store

MIRROR_ENV = "BYOC_HF_MIRROR"
CACHE_ENV = "HF_HUB_CACHE"
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class SourceLocation:
    """A checkpoint's concrete place (a store URI) and the revision it resolved to."""

    uri: str  # as the user wrote it
    store_uri: str  # file://, s3:// or gs:// root of the checkpoint's files
    revision: str | None  # as given, or the commit a Hugging Face cache resolved a branch to
    via: str  # "direct", "mirror" or "hf-cache"


def _hf_name(uri: str, field: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    parts = [p for p in (parsed.netloc + parsed.path).split("/") if p]
    if len(parts) != 2:
        raise ByocError(field, f"{uri} is not hf://<org>/<name>", "write it like hf://meta-llama/Llama-3.1-8B-Instruct")
    return parts[0], parts[1]


def locate(uri: str, revision: str | None, field: str, marker: str = "config.json") -> SourceLocation:
    """Resolve a source URI to a store location; hf:// goes through the configured mirror or cache only."""
    if not uri.startswith("hf://"):
        return SourceLocation(uri, uri, revision, "direct")
    org, name = _hf_name(uri, field)
    mirror = os.environ.get(MIRROR_ENV)
    cache = os.environ.get(CACHE_ENV)
    tried: list[str] = []
    if mirror:
        root = mirror if "://" in mirror else f"file://{Path(mirror).resolve()}"
        candidates = [join(org, name, revision)] if revision else [join(org, name)]
        for candidate in candidates:
            store = open_store(f"{root.rstrip('/')}/{candidate}", field)
            if store.exists(marker):
                return SourceLocation(uri, store.root, revision, "mirror")
            tried.append(store.uri())
    if cache:
        folder = Path(cache) / f"models--{org}--{name}"
        commit = revision if revision and _COMMIT.match(revision) else None
        if commit is None:
            ref = folder / "refs" / (revision or "main")
            commit = ref.read_text().strip() if ref.is_file() else None
        snapshot = folder / "snapshots" / (commit or "?")
        if commit and (snapshot / marker).is_file():
            return SourceLocation(uri, f"file://{snapshot}", commit, "hf-cache")
        tried.append(str(snapshot if commit else folder / "refs" / (revision or "main")))
    if not tried:
        raise ByocError(
            field,
            f"{uri} cannot be fetched: byoc never downloads from the Hugging Face Hub, and no mirror or cache is set",
            f"set {MIRROR_ENV} to a folder or bucket laid out as <org>/<name>[/<revision>], or {CACHE_ENV} to a "
            "Hugging Face cache that holds the model",
        )
    raise ByocError(
        field,
        f"{uri}{'@' + revision if revision else ''} is not in the configured mirror or cache (looked in "
        f"{', '.join(tried)})",
        f"copy the model there (with its {marker})" + (f" under the revision folder {revision}" if revision else ""),
    )


def local_path(store_uri: str) -> Path | None:
    if store_uri.startswith("file://"):
        return Path(unquote(urlparse(store_uri).path))
    if store_uri.startswith("/"):
        return Path(store_uri)
    return None


def fetch(location: SourceLocation, work: Path, field: str, events: Events, label: str) -> Path:
    """The checkpoint as a local folder: read in place for file://, else downloaded (with progress) into work."""
    path = local_path(location.store_uri)
    if path is not None:
        if not path.is_dir():
            raise ByocError(field, f"{location.uri} does not exist or is not a folder", "check the path")
        return path
    store = open_store(location.store_uri, field)
    objects = store.list_objects()
    if not objects:
        raise ByocError(field, f"{location.uri} holds no files", "check the URI (it names a folder of the checkpoint)")
    total = sum(o.size for o in objects)
    work.mkdir(parents=True, exist_ok=True)
    done = 0
    events.progress(f"fetch {label}", 0, total, "bytes")
    for item in objects:

        def advance(count: int) -> None:
            nonlocal done
            done += count
            events.progress(f"fetch {label}", done, total, "bytes")

        store.download(item.key, work / item.key, advance)
    events.progress(f"fetch {label}", total, total, "bytes", final=True)
    return work


def peek(location: SourceLocation, name: str, field: str) -> bytes | None:
    """One small file of a checkpoint (config.json, adapter_config.json) without fetching the rest."""
    path = local_path(location.store_uri)
    if path is not None:
        target = path / name
        return target.read_bytes() if target.is_file() else None
    try:
        return open_store(location.store_uri, field).read_bytes(name)
    except ObjectMissing:
        return None
