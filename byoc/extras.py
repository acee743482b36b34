"""Optional dependency groups (pip extras) and the one error a command gives when its group is not installed.

The plain install (the distribution `byoc-inference`; "byoc" on PyPI is an unrelated project) carries everything
`byoc plan` needs for the default cloud (AWS), evidence pack included. Heavier groups stay optional:

| extra | what needs it | modules it brings |
| --- | --- | --- |
| `gcp` | a plan or deployment with `--cloud gcp` | pulumi_gcp, google.auth (preflight and sweep) |
| `runtime` | `byoc serve`, `byoc build`, `byoc artifacts`, `byoc usage` | aiohttp, prometheus_client, torch, redis |

`require` checks with `importlib.util.find_spec` (nothing is imported), so a command fails before any work with
exit 2 and the exact `pip install` to run, never a `ModuleNotFoundError` traceback.
"""

from __future__ import annotations

import importlib.util
import json
from importlib import metadata

from byoc.errors import ByocError

# The distribution's name ("byoc" on PyPI belongs to an unrelated project).
DISTRIBUTION = "byoc-inference"
# extra -> the top-level modules whose absence means the extra is missing (a subset of pyproject's list: the ones
# the commands import first).
EXTRAS: dict[str, tuple[str, ...]] = {
    "gcp": ("pulumi_gcp",),
    "serve": ("aiohttp", "prometheus_client", "yaml"),
    "runtime": ("aiohttp", "prometheus_client", "torch", "transformers", "safetensors", "peft"),
    "store": ("redis",),  # the gateway's --store (shared limits, the usage ledger), `byoc keys`, `byoc usage`
}
# The pip extra each group above is installed by (serve's and store's modules come with the runtime extra).
PIP_EXTRA = {"gcp": "gcp", "serve": "runtime", "runtime": "runtime", "store": "runtime"}


def missing_modules(group: str) -> list[str]:
    """The modules of `group` that cannot be imported here (empty when the extra is installed)."""
    return [name for name in EXTRAS[group] if importlib.util.find_spec(name) is None]


def install_command(extra: str) -> str:
    """The pip command that adds `extra` to this install: editable checkouts get `-e <path>[extra]`."""
    target = f"'{DISTRIBUTION}[{extra}]'"
    try:
        direct = metadata.distribution(DISTRIBUTION).read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        direct = None
    if direct:
        # Installed from a checkout, a wheel file or a git URL: the extra comes from the same place (PEP 610).
        info = json.loads(direct)
        url = str(info.get("url", ""))
        if info.get("dir_info", {}).get("editable") and url.startswith("file://"):
            target = f"-e '{url.removeprefix('file://')}[{extra}]'"
        elif "vcs_info" in info:
            commit = info["vcs_info"].get("commit_id", "")
            target = f"'{DISTRIBUTION}[{extra}] @ {info['vcs_info'].get('vcs', 'git')}+{url}@{commit}'"
        elif url:
            target = f"'{DISTRIBUTION}[{extra}] @ {url}'"
    return f"python3 -m pip install {target}"


def require(group: str, needed_by: str) -> None:
    """Raise ByocError (exit 2) naming the missing modules and the pip command, when `group` is not installed.

    Raises:
        ByocError: field `needed_by` (the command or option), message listing the missing modules, hint the
            `pip install` that adds the extra.
    """
    missing = missing_modules(group)
    if missing:
        extra = PIP_EXTRA[group]
        raise ByocError(
            needed_by,
            f"needs byoc's {extra} extra, which is not installed (missing: {', '.join(missing)})",
            f"run: {install_command(extra)}",
        )
