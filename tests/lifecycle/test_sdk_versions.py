"""One set of Pulumi SDK versions per stack: pinned in pyproject.toml as in byoc.pulumi_sdks, recorded in the
stack's outputs at `up`, and a stack last deployed with other versions refused before Pulumi runs on it.

Tests marked "stand-in" put tests/lifecycle/standin_pulumi.py on PATH as `pulumi`; the recorded state is written
into the stand-in's stack state (where `pulumi stack output` reads it), as a CI job with other SDKs would find it.
"""

from __future__ import annotations

import json
import re
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from byoc.pulumi_sdks import SDK_PINS, STACK_OUTPUT
from tests.conftest import ROOT, deploy
from tests.lifecycle.conftest import QuotaServer, StandIn, aws_env, byoc
from tests.lifecycle.test_commands import deployed

AWS_SDKS = ("pulumi", "pulumi-aws", "pulumi-kubernetes")


def _pinned_in_pyproject() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    pins = {}
    for requirement in requirements:
        match = re.fullmatch(r"(pulumi[a-z-]*)\s*(.*)", requirement.split(";")[0].strip())
        if match:
            pins[match.group(1)] = match.group(2)
    return pins


def test_pyproject_pins_exactly_the_sdk_versions_byoc_declares() -> None:
    assert _pinned_in_pyproject() == {name: f"=={version}" for name, version in SDK_PINS.items()}


def test_the_installed_sdks_are_the_pinned_ones() -> None:
    """What `pip install byoc-inference[gcp]` gives (CI installs from pyproject.toml as users do)."""
    assert {name: metadata.version(name) for name in SDK_PINS} == SDK_PINS


def test_every_cloud_program_records_the_sdks_it_ran_on(monkeypatch: pytest.MonkeyPatch) -> None:
    import pulumi

    from byoc.engines.live import stack_program

    exported: dict[str, Any] = {}
    monkeypatch.setattr(pulumi, "export", exported.__setitem__)
    versions: dict[str, str | None] = {"pulumi": "3.272.0", "pulumi-aws": "7.51.1", "pulumi-kubernetes": "4.34.2"}
    stack_program(deploy(), lambda _: {"cluster_name": "byoc-test"}, versions)()
    assert exported == {"cluster_name": "byoc-test", STACK_OUTPUT: versions}


def _record(standin: StandIn, versions: dict[str, str]) -> None:
    """The stack state as a `byoc up` with these SDK versions leaves it in the (shared) backend."""
    stacks = standin.home / "stacks"
    stacks.mkdir(exist_ok=True)
    state = {"version": 3, "deployment": {"resources": [], "pending_operations": []}}
    state["outputs"] = {"cluster_name": "byoc-demo", STACK_OUTPUT: versions}
    (stacks / "demo.json").write_text(json.dumps(state))


@pytest.fixture
def run_env(moto_endpoint: str, quota_server: QuotaServer, standin: StandIn, tmp_path: Path) -> dict[str, str]:
    quota_server.applied["L-417A185B"] = 1024
    return standin.env(aws_env(moto_endpoint, quota_server.url)) | {
        "BYOC_HOME": str(tmp_path / "home"),
        "PULUMI_CONFIG_PASSPHRASE": "correct horse",
    }


def test_a_stack_deployed_with_other_sdks_is_refused_before_pulumi_runs(
    run_env: dict[str, str], standin: StandIn
) -> None:
    """stand-in: the laptop deployed with pulumi-aws 7.40.0; this machine has the pinned 7.51.1."""
    deployed(Path(run_env["BYOC_HOME"])).close()
    _record(standin, {**{n: SDK_PINS[n] for n in AWS_SDKS}, "pulumi-aws": "7.40.0"})
    example = str(ROOT / "tests" / "lifecycle" / "data" / "byoc-one-region.yaml")  # one stack
    for args in (
        ["preview", "-f", example],
        ["up", "--name", "demo", "--yes"],
        ["destroy", "demo", "--yes"],
        ["scale", "demo", "--min", "0", "--max", "3"],
    ):
        result = byoc(*args, env=run_env)
        assert result.returncode == 2, (args, result.stderr)
        assert f"demo was last deployed with pulumi-aws 7.40.0 (installed: {SDK_PINS['pulumi-aws']})" in result.stderr
        assert "pip install 'pulumi-aws==7.40.0'" in result.stderr
        assert "byoc up --name demo --upgrade-providers" in result.stderr and "Traceback" not in result.stderr
    refused = byoc("preview", "-f", example, "--output", "json", env=run_env)
    error = json.loads(refused.stdout.splitlines()[-1])["error"]
    assert (error["field"], error["exit_code"]) == ("pulumi-sdks", 2)
    ran = [c.split()[0] for c in standin.commands()]
    assert not {"preview", "up", "destroy", "refresh"} & set(ran), ran
    assert json.loads(byoc("status", "demo", "--no-probe", "-o", "json", env=run_env).stdout)[0]["state"] == "DEPLOYED"

    previewed = byoc("preview", "-f", example, "--upgrade-providers", env=run_env)  # what the move would change
    assert previewed.returncode == 0, previewed.stderr
    upgraded = byoc("up", "--name", "demo", "--yes", "--upgrade-providers", env=run_env)
    assert upgraded.returncode == 0, upgraded.stderr
    assert "up" in [c.split()[0] for c in standin.commands()]


def test_a_stack_deployed_with_the_same_sdks_runs(run_env: dict[str, str], standin: StandIn) -> None:
    """stand-in: the recorded versions are the installed ones; a stack with no record (made before byoc recorded
    them, or by hand) is not refused either."""
    deployed(Path(run_env["BYOC_HOME"])).close()
    example = str(ROOT / "tests" / "lifecycle" / "data" / "byoc-one-region.yaml")  # one stack
    _record(standin, {n: SDK_PINS[n] for n in AWS_SDKS})
    assert byoc("preview", "-f", example, env=run_env).returncode == 0
    state = json.loads((standin.home / "stacks" / "demo.json").read_text())
    state["outputs"].pop(STACK_OUTPUT)
    (standin.home / "stacks" / "demo.json").write_text(json.dumps(state))
    assert byoc("preview", "-f", example, env=run_env).returncode == 0


def test_the_pulumi_cli_path_runs_only_on_the_pinned_sdks(monkeypatch: pytest.MonkeyPatch) -> None:
    """`pulumi preview -C stacks/aws` runs byoc's program without byoc's checks: the program itself refuses SDKs
    other than the pinned ones, naming them and the pip install that matches, and records the pinned set."""
    from byoc import pulumi_sdks
    from byoc.errors import ByocError

    assert pulumi_sdks.require_pinned("pulumi-aws", "stacks/aws") == {
        sdk: pulumi_sdks.SDK_PINS[sdk] for sdk in pulumi_sdks.sdks_for("pulumi-aws")
    }
    real = pulumi_sdks.installed

    def older(distributions: tuple[str, ...]) -> dict[str, str | None]:
        return {**real(distributions), "pulumi-aws": "7.0.0"}

    monkeypatch.setattr(pulumi_sdks, "installed", older)
    with pytest.raises(ByocError) as refused:
        pulumi_sdks.require_pinned("pulumi-aws", "stacks/aws")
    assert refused.value.field == "pulumi-sdks"
    assert f"pulumi-aws 7.0.0 (byoc pins {pulumi_sdks.SDK_PINS['pulumi-aws']})" in refused.value.message
    assert refused.value.hint == f"pip install 'pulumi-aws=={pulumi_sdks.SDK_PINS['pulumi-aws']}'"
    main = (Path(__file__).parents[2] / "stacks" / "aws" / "__main__.py").read_text()
    assert 'pulumi.export(STACK_OUTPUT, require_pinned("pulumi-aws", "stacks/aws"))' in main
