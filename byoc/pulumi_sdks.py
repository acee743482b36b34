"""The Pulumi SDK versions byoc's programs were written for, and the check that a stack keeps one set of them.

A Pulumi Python SDK package (pulumi-aws, pulumi-gcp, pulumi-kubernetes) asks the engine for the provider plugin of
its own version. Two machines driving one stack in a shared backend (a CI job and a laptop) with different SDKs
would move the stack's providers back and forth: a downgrade fails on state the newer provider wrote, and schema
differences show up as spurious updates or replacements. So:

- pyproject.toml pins the SDKs exactly, to SDK_PINS (tests/unit/test_sdk_pins.py holds the two together);
- `byoc up` (and `scale`, `update`) records the installed versions in the stack's outputs (STACK_OUTPUT), which
  live in the state backend every machine reads;
- every command that runs Pulumi on the stack reads them first and refuses (exit 2) when the installed SDKs differ,
  naming the `pip install` that matches the stack. `byoc up --upgrade-providers` moves a stack to the installed
  versions on purpose (`byoc preview --upgrade-providers` shows what that would change).
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import metadata

from byoc.errors import ByocError

# The distributions and versions the programs in stacks/ were written and tested with; pyproject.toml pins the same.
SDK_PINS: dict[str, str] = {
    "pulumi": "3.272.0",
    "pulumi-aws": "7.51.1",
    "pulumi-kubernetes": "4.34.2",
    "pulumi-gcp": "10.2.0",
    "pulumi-random": "4.21.4",
}
# Every program uses these; each cloud adds its own provider (byoc.clouds: `provider_sdk`).
COMMON_SDKS = ("pulumi", "pulumi-kubernetes", "pulumi-random")
# The stack output that records the SDK versions of the last `up`: {"pulumi": "3.272.0", "pulumi-aws": ...}.
STACK_OUTPUT = "byoc_pulumi_sdks"


def sdks_for(provider_sdk: str | None) -> tuple[str, ...]:
    """The SDK distributions a cloud's program runs on."""
    return (*COMMON_SDKS, provider_sdk) if provider_sdk else COMMON_SDKS


def installed(distributions: tuple[str, ...]) -> dict[str, str | None]:
    """The installed version of each distribution (None: not installed). Reads package metadata only: importing
    the SDKs would cost seconds."""
    found: dict[str, str | None] = {}
    for name in distributions:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def pip_install(versions: Mapping[str, str]) -> str:
    return "pip install " + " ".join(f"'{name}=={version}'" for name, version in sorted(versions.items()))


def check_recorded(name: str, recorded: object, current: Mapping[str, str | None]) -> None:
    """Refuse (ByocError, exit 2) when the stack was last deployed with other SDK versions than the installed ones.

    `recorded` is the stack output as read back (None or not a mapping: a stack that no byoc `up` recorded, such
    as a new one: nothing to compare)."""
    if not isinstance(recorded, Mapping):
        return
    differ = {
        sdk: (str(recorded[sdk]), current.get(sdk))
        for sdk in sorted(current)
        if sdk in recorded and str(recorded[sdk]) != current.get(sdk)
    }
    if not differ:
        return
    listed = ", ".join(f"{sdk} {was} (installed: {now or 'none'})" for sdk, (was, now) in differ.items())
    wanted = {sdk: was for sdk, (was, _) in differ.items()}
    raise ByocError(
        "pulumi-sdks",
        f"{name} was last deployed with {listed}; running Pulumi with other provider versions on its state can "
        "fail on a downgrade or replace resources",
        f"install the versions the stack was deployed with: {pip_install(wanted)}; or, to move {name} to the "
        f"installed versions on purpose: byoc up --name {name} --upgrade-providers (`byoc preview "
        "--upgrade-providers` shows what that changes first)",
    )


def unpinned(provider_sdk: str | None) -> dict[str, tuple[str, str | None]]:
    """The SDKs of a cloud's program whose installed version is not the one byoc pins: {sdk: (pinned, installed)}."""
    sdks = sdks_for(provider_sdk)
    return {sdk: (SDK_PINS[sdk], version) for sdk, version in installed(sdks).items() if version != SDK_PINS[sdk]}


def require_pinned(provider_sdk: str | None, where: str) -> dict[str, str]:
    """For `pulumi preview/up -C stacks/<cloud>` (the Pulumi CLI running byoc's program itself, without byoc's
    checks): the program runs only on the SDKs byoc pins, whose versions it then records in the stack
    (STACK_OUTPUT), as `byoc up` does.

    Raises:
        ByocError: naming the SDKs that differ and the pip install that matches the pins.
    """
    differ = unpinned(provider_sdk)
    if differ:
        listed = ", ".join(f"{sdk} {now or 'not installed'} (byoc pins {pin})" for sdk, (pin, now) in differ.items())
        raise ByocError(
            "pulumi-sdks",
            f"{where} was written for other Pulumi SDK versions: {listed}",
            pip_install({sdk: pin for sdk, (pin, _) in differ.items()}),
        )
    return {sdk: SDK_PINS[sdk] for sdk in sdks_for(provider_sdk)}
