#!/usr/bin/env python3
"""Pin byoc's runtime image by digest in the image catalog (byoc/catalogs/images.yaml).

    python3 scripts/pin_runtime_image.py --digest sha256:<64 hex> [--repository ghcr.io/<owner>/byoc-runtime]

Run by .github/workflows/release-runtime.yml after it publishes the image, or by hand with the digest from the
release's job summary. Only the `runtime:` entry's `repository` and `digest` lines change; comments, the other
entries and key order stay as they are (the catalog is edited as text for that reason, with the standard library
only, so the release runner needs nothing installed). Exit 0 when the catalog is pinned (or already was), 2 for a
malformed digest or repository, 1 when the catalog has no runtime entry to edit.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

CATALOG = Path(__file__).resolve().parent.parent / "byoc" / "catalogs" / "images.yaml"
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
# An OCI repository without tag or digest: lowercase path components, optional registry host[:port] first.
REPOSITORY = re.compile(
    r"(?:[a-z0-9]+(?:[.-][a-z0-9]+)*(?::[0-9]+)?/)?[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
    r"(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
)
ENTRY = "runtime"


class CatalogError(Exception):
    pass


def pin(text: str, digest: str, repository: str | None) -> str:
    """The catalog text with the runtime entry's digest (and repository, when given) set."""
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if re.match(rf"{ENTRY}:\s*(#.*)?$", line.rstrip("\n"))), None)
    if start is None:
        raise CatalogError(f"no top-level `{ENTRY}:` entry")
    end = next(
        (i for i in range(start + 1, len(lines)) if lines[i].strip() and not lines[i].startswith((" ", "\t"))),
        len(lines),
    )
    wanted = {"digest": digest, **({"repository": repository} if repository else {})}
    seen: set[str] = set()
    for i in range(start + 1, end):
        match = re.match(r"(\s+)(repository|digest):(\s*)([^#\n]*?)(\s*#.*)?$", lines[i].rstrip("\n"))
        if match and match.group(2) in wanted:
            indent, key, _, _, comment = match.groups()
            ending = "\n" if lines[i].endswith("\n") else ""
            lines[i] = f"{indent}{key}: {wanted[key]}{comment or ''}{ending}"
            seen.add(key)
    missing = sorted(set(wanted) - seen)
    if missing:
        raise CatalogError(f"the `{ENTRY}:` entry has no {' or '.join(missing)} line")
    return "".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--digest", required=True, help="the published image's digest, sha256:<64 hex>")
    parser.add_argument("--repository", help="the image repository, e.g. ghcr.io/<owner>/byoc-runtime")
    parser.add_argument("--catalog", type=Path, default=CATALOG, help=f"the image catalog (default {CATALOG})")
    args = parser.parse_args(argv)

    if not DIGEST.fullmatch(args.digest):
        print(
            f"--digest {args.digest!r} is not an image digest: expected sha256: followed by 64 lowercase hex "
            "characters (the `digest` output of docker/build-push-action)",
            file=sys.stderr,
        )
        return 2
    if args.repository is not None and not REPOSITORY.fullmatch(args.repository):
        print(
            f"--repository {args.repository!r} is not an image repository: expected a lowercase path such as "
            "ghcr.io/<owner>/byoc-runtime, without a tag or digest",
            file=sys.stderr,
        )
        return 2
    try:
        text = args.catalog.read_text()
        pinned = pin(text, args.digest, args.repository)
    except (OSError, CatalogError) as error:
        print(f"cannot pin the runtime image in {args.catalog}: {error}", file=sys.stderr)
        return 1
    if pinned != text:
        args.catalog.write_text(pinned)
    pinned_to = f"{args.repository}@{args.digest}" if args.repository else args.digest
    print(f"{args.catalog}: runtime pinned to {pinned_to}" + ("" if pinned != text else " (unchanged)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
