"""The CLI as users and CI run it: a real subprocess, exit codes, files written (or not), JSON out."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from byoc.catalogs import load_catalog
from byoc.cli import app
from tests.conftest import EXAMPLES, ROOT, run_byoc

runner = CliRunner()


def byoc(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_byoc(*args, env=env, timeout=120)


def test_help() -> None:
    result = byoc("--help")
    assert result.returncode == 0
    for command in (
        "validate",
        "plan",
        "estimate",
        "shapes",
        "regions",
        "schema",
        "build",
        "artifacts",
        "serve",
        "compliance",
        "up",
        "preview",
        "usage",
    ):
        assert command in result.stdout


def test_help_does_not_import_heavy_modules() -> None:
    code = (
        "import sys; from typer.testing import CliRunner; from byoc.cli import app; "
        "CliRunner().invoke(app, ['--help']); "
        "heavy = ('boto3', 'pulumi', 'torch', 'byoc.resolve', 'rich', 'pydantic', 'urllib.request', 'aiohttp', "
        "'redis'); "
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_plan_places_in_an_eu_region_that_offers_p5(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = byoc(
        "plan",
        "--cloud",
        "aws",
        "--region",
        "EUROPE",
        "--model",
        "llama-3.1-8b-instruct",
        "--shape",
        "h100x1-fp8",
        "--out",
        str(out),
        "--output",
        "json",
    )
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    plan = json.loads((out / "plan.json").read_text())
    assert printed["placement"] == plan["placement"]
    placement = plan["placement"]
    catalog = load_catalog()
    assert placement["region"] in catalog.mega_regions["aws"]["EUROPE"]
    assert placement["instance_type"].startswith("p5")
    assert placement["instance_type"] in catalog.offerings["aws"][placement["region"]]
    assert {"placement", "shape", "model", "engine", "estimates"} <= set(plan)
    assert plan["shape"]["name"] == "h100x1-fp8"
    assert plan["engine"]["tensor_parallel_size"] == 1
    assert plan["estimates"]["memory"]["fits"] is True
    resources = plan["resources"]
    assert len(resources) > 100
    assert set(resources[0]) == {"type", "name", "id", "inputs", "parent", "provider", "stack"}
    # EUROPE: two EU regions, each its own stack with its own private cluster and its own regional provider
    regions = placement["regions"]
    assert len(regions) == 2 and regions[0]["region"] == placement["region"]
    for region in regions:
        assert region["region"] in catalog.mega_regions["aws"]["EUROPE"]
        assert region["instance_type"] in catalog.offerings["aws"][region["region"]]
        ours = [r for r in resources if r["stack"] == region["stack"]]
        (cluster,) = [r for r in ours if r["type"] == "aws:eks/cluster:Cluster"]
        assert cluster["inputs"]["vpcConfig"]["endpointPublicAccess"] is False
        providers = [r for r in ours if r["type"] == "pulumi:providers:aws"]
        assert providers and {p["inputs"]["region"] for p in providers} == {region["region"]}


def test_plan_b200_fp4_in_the_us(tmp_path: Path) -> None:
    result = byoc(
        "plan",
        "--cloud",
        "aws",
        "--region",
        "US",
        "--model",
        "llama-3.1-8b-instruct",
        "--shape",
        "b200x8-fp4",
        "--out",
        str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    assert "aws:eks/cluster:Cluster" in result.stdout  # the summary counts resources by type
    plan = json.loads((tmp_path / "plan.json").read_text())
    pool = next(r for r in plan["resources"] if r["type"] == "kubernetes:karpenter.sh/v1:NodePool")
    requirements = pool["inputs"]["spec"]["template"]["spec"]["requirements"]
    assert requirements[0]["values"] == ["p6-b200.48xlarge"]


def test_plan_from_the_example_spec(tmp_path: Path) -> None:
    result = byoc("plan", "-f", "examples/byoc.yaml", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "eu-west-2" in result.stdout
    assert json.loads((tmp_path / "plan.json").read_text())["name"] == "demo"


def test_invalid_input_exits_2_with_one_message_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = byoc(
        "plan",
        "--cloud",
        "aws",
        "--region",
        "EUROPE",
        "--model",
        "llama-3.1-8b-instruct",
        "--shape",
        "a100x1-fp8",
        "--out",
        str(out),
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: shape: a100x1-fp8")
    assert "a100x1-bf16" in lines[0]
    assert not out.exists()


def test_invalid_input_as_json(tmp_path: Path) -> None:
    result = byoc(
        "plan",
        "--cloud",
        "aws",
        "--region",
        "mars-1",
        "--model",
        "llama-3.1-8b-instruct",
        "--shape",
        "h100x1-fp8",
        "--out",
        str(tmp_path / "o"),
        "--output",
        "json",
    )
    assert result.returncode == 2
    error = json.loads(result.stdout)["error"]
    assert error["field"] == "region"
    assert error["exit_code"] == 2


def test_a_failed_plan_keeps_the_previous_plan(tmp_path: Path) -> None:
    assert byoc("plan", "-f", "examples/byoc.yaml", "--out", str(tmp_path)).returncode == 0
    before = {p: p.read_text() for p in tmp_path.rglob("*") if p.is_file()}
    result = byoc("plan", "-f", "examples/byoc.yaml", "--shape", "h100x1-fp4", "--out", str(tmp_path))
    assert result.returncode == 2
    assert {p: p.read_text() for p in tmp_path.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["compliance", "helm-releases.yaml", "manifests", "plan.json"]


def test_unwritable_out_is_an_input_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = byoc("plan", "-f", "examples/byoc.yaml", "--out", str(blocker / "sub"))
    assert result.returncode == 2
    assert "--out" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_validate_accepts_the_examples(path: Path) -> None:
    result = runner.invoke(app, ["validate", "-f", str(path), "--output", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["valid"] is True


def test_validate_refuses_a_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "byoc.yaml"
    path.write_text((ROOT / "examples" / "lora-bf16.yaml").read_text().replace("h100x1-bf16", "h100x1-fp8"))
    result = byoc("validate", "-f", str(path))
    assert result.returncode == 2
    assert "addons: shape h100x1-fp8 cannot take LoRA addons" in result.stderr


def test_estimate_json() -> None:
    result = byoc(
        "estimate",
        "--model",
        "llama-3.1-8b-instruct",
        "--shape",
        "h100x1-fp8",
        "--input-tokens",
        "1000",
        "--output-tokens",
        "1000",
        "--output",
        "json",
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert {"output_tokens_per_s", "memory", "fits", "cost_per_million_output_tokens"} <= set(data)
    assert data["fits"] is True
    assert data["memory"]["kv_bytes_per_token"] == 64 * 1024
    assert 5_000 < data["output_tokens_per_s"] < 30_000


def test_estimate_says_when_a_model_does_not_fit() -> None:
    result = runner.invoke(
        app, ["estimate", "--model", "llama-3.1-70b-instruct", "--shape", "l4x1-fp8", "--output", "json"]
    )
    assert result.exit_code == 2  # as validate: invalid input, the estimate still shown
    data = json.loads(result.stdout)
    assert data["fits"] is False
    # validate's words, the input named as given (a flag here): what does not fit, and the shape that would
    assert data["error"]["field"] == "--shape" and "the cheapest shape that holds it" in data["error"]["hint"]
    text = byoc("estimate", "--model", "llama-3.1-70b-instruct", "--shape", "l4x1-fp8")
    assert text.returncode == 2
    assert "fits               NO" in text.stdout
    assert text.stderr.startswith("error: --shape: llama-3.1-70b-instruct does not fit l4x1-fp8")


def test_estimate_with_own_price() -> None:
    args = ["estimate", "--model", "llama-3.1-8b-instruct", "--shape", "h100x1-fp8", "--output", "json"]
    list_price = json.loads(runner.invoke(app, args).stdout)
    own = json.loads(runner.invoke(app, [*args, "--price-per-gpu-hour", "3.44"]).stdout)
    assert own["cost_per_million_output_tokens"] == pytest.approx(
        list_price["cost_per_million_output_tokens"] / 2, rel=0.01
    )


def test_shapes_for_a_model_rank_by_cost_per_token() -> None:
    result = runner.invoke(app, ["shapes", "--model", "llama-3.1-70b-instruct", "--cloud", "aws", "--output", "json"])
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    rows = data["shapes"]
    # ranked by one replica paying its whole node, not by a share of a node nobody else fills
    assert data["ranked_by"] == "cost_per_million_output_tokens_one_replica"
    costs = [r["cost_per_million_output_tokens_one_replica"] for r in rows]
    assert costs == sorted(costs)
    names = {r["shape"] for r in rows}
    assert "h100x1-fp8" not in names  # does not fit at 128K context
    assert "h100x2-fp8" in names


def test_shapes_rank_by_whole_nodes() -> None:
    result = runner.invoke(app, ["shapes", "--model", "llama-3.1-70b-instruct", "--cloud", "aws", "--output", "json"])
    rows = {r["shape"]: r for r in json.loads(result.stdout)["shapes"]}
    order = list(rows)
    one, eight = rows["b200x1-fp4"], rows["b200x8-fp4"]
    assert one["replicas_per_node"] == 8 and one["one_replica_hourly_usd"] == 113.93
    assert one["replica_hourly_usd"] == pytest.approx(113.93 / 8, abs=1e-3)
    # per GPU share, b200x1 looks cheapest per token; paying for the node it takes, b200x8 is
    assert one["cost_per_million_output_tokens"] < eight["cost_per_million_output_tokens"]
    assert order.index("b200x8-fp4") < order.index("b200x1-fp4")
    assert one["cost_per_million_output_tokens_one_replica"] == pytest.approx(
        8 * one["cost_per_million_output_tokens"], rel=1e-3
    )
    table = runner.invoke(app, ["shapes", "--model", "llama-3.1-70b-instruct", "--cloud", "aws"])
    assert "one replica paying its whole node" in table.stdout
    assert "$/1M out 1 replica (whole node)" in table.stdout


def test_estimate_costs_whole_nodes() -> None:
    args = ["estimate", "--model", "llama-3.3-70b-instruct", "--shape", "b200x1-fp4", "--min-replicas", "1"]
    data = json.loads(runner.invoke(app, [*args, "--max-replicas", "9", "--output", "json"]).stdout)
    cost = data["cost"]
    assert cost["node"] == {
        "instance_type": "p6-b200.48xlarge",
        "gpus": 8,
        "hourly_usd": 113.93,
        "replicas_per_node": 8,
    }
    assert cost["floor_hourly_usd"] == 113.93
    assert cost["at_max_replicas"] == {"replicas": 9, "nodes": 2, "hourly_usd": 227.86}
    assert cost["replica_hourly_usd"] == pytest.approx(14.2413)
    text = runner.invoke(app, args).stdout
    assert "p6-b200.48xlarge, 8 GPUs, $113.93/h billed whole: 8 replicas per node ($14.24/h each when full)" in text
    assert "$113.93/h (1 node) at min_replicas 1" in text
    assert "at saturation on full nodes" in text


def test_validate_says_the_floor_and_warns() -> None:
    result = byoc("validate", "-f", str(ROOT / "examples" / "b200-fp4.yaml"))
    assert result.returncode == 0, result.stderr
    assert "floor       $113.93/h at min_replicas 1 (1 node)" in result.stdout
    assert "8 replicas per node ($14.24/h each when full)" in result.stdout
    assert "warning: shape: b200x1-fp4 takes 1 of the 8 GPUs of a p6-b200.48xlarge node" in result.stderr
    full = byoc("validate", "-f", str(ROOT / "examples" / "byoc.yaml"))
    assert "$0/h at min_replicas 0, $6.88/h while serving (1 replica, 1 node)" in full.stdout
    assert "may also launch p5.48xlarge (8 GPUs, $55.04/h)" in full.stderr


def test_estimate_of_a_model_that_does_not_fit_has_no_throughput_or_cost() -> None:
    args = ["estimate", "--model", "llama-3.1-70b-instruct", "--shape", "l4x1-fp8"]
    result = runner.invoke(app, [*args, "--output", "json"])
    assert result.exit_code == 2
    data = json.loads(result.stdout)
    assert data["output_tokens_per_s"] is None and data["cost_per_million_output_tokens"] is None
    assert data["throughput"] is None and data["cost"] is None
    assert "does not fit l4x1-fp8" in data["not_estimated"]
    assert data["memory"]["fits"] is False
    text = runner.invoke(app, args)
    assert text.exit_code == 2
    assert "throughput         n/a (does not fit)" in text.stdout
    assert "cost               n/a (does not fit)" in text.stdout
    assert "tokens/s" not in text.stdout and "per 1M" not in text.stdout


def test_shapes_table_for_people() -> None:
    result = runner.invoke(app, ["shapes", "--cloud", "gcp"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "a3-highgpu-1g" in result.stdout


def test_regions_json() -> None:
    result = runner.invoke(app, ["regions", "--cloud", "aws", "--output", "json"])
    rows = {r["region"]: r for r in json.loads(result.stdout)["regions"]}
    assert "h100" in rows["eu-west-2"]["gpus"]
    assert rows["eu-west-2"]["mega_region"] == "EUROPE"
    assert rows["eu-west-1"]["gpus"] == ["a100-40gb"]


def test_refresh_is_aws_only() -> None:
    result = runner.invoke(app, ["regions", "--cloud", "gcp", "--refresh"])
    assert result.exit_code == 2


def test_schema_describes_every_field() -> None:
    schema = json.loads(runner.invoke(app, ["schema"]).stdout)
    models = [schema, *schema["$defs"].values()]
    for model in models:
        for name, prop in model.get("properties", {}).items():
            described = prop.get("description") or ("$ref" in prop)
            assert described, f"{model.get('title')}.{name} has no description"


def test_docs_spec_md_is_generated_from_the_schema() -> None:
    result = runner.invoke(app, ["schema", "--markdown"])
    assert (ROOT / "docs" / "spec.md").read_text() == result.stdout, "run: make docs"


def test_no_args_shows_help() -> None:
    result = byoc(env={**os.environ})
    assert "Usage" in result.stdout + result.stderr


def test_live_commands_say_when_the_pulumi_cli_is_missing(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path)}  # no `pulumi` on this PATH
    result = subprocess.run(
        [sys.executable, "-m", "byoc", "preview", "-f", "examples/byoc.yaml"],
        capture_output=True,
        check=False,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 2  # issue 13: no CLI is a refusal before anything runs, like invalid input
    assert "Pulumi CLI is not installed" in result.stderr
    assert "byoc plan" in result.stderr
    assert "Traceback" not in result.stderr


def test_live_commands_need_a_stack_for_the_cloud() -> None:
    result = runner.invoke(app, ["up", "-f", "examples/gcp-l4.yaml"])
    assert result.exit_code == 2


def test_version() -> None:
    from byoc import __version__

    result = byoc("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"byoc {__version__}"


def test_schema_takes_output_json_and_text() -> None:
    as_json = byoc("schema", "--output", "json")
    assert as_json.returncode == 0
    assert json.loads(as_json.stdout)["title"] == "byoc deployment spec"
    assert byoc("schema", "--output", "text").stdout == (ROOT / "docs" / "spec.md").read_text()
    assert byoc("schema", "--markdown", "--output", "json").returncode == 2


def test_tables_never_cut_names_in_a_pipe() -> None:
    """In a pipe (no terminal width) or at 80 columns, shape and instance names come out whole."""
    piped = byoc("shapes", "--cloud", "aws")
    assert piped.returncode == 0
    for shape in ("h100x1-bf16", "b200x8-fp4", "l40sx4-fp8"):
        assert shape in piped.stdout
    assert "…" not in piped.stdout
    narrow = runner.invoke(app, ["shapes", "--cloud", "aws"], env={"COLUMNS": "80"})
    assert "h100x1-bf16" in narrow.stdout and "p6-b200.48xlarge" in narrow.stdout


def test_duplicate_keys_are_refused(tmp_path: Path) -> None:
    spec = tmp_path / "byoc.yaml"
    spec.write_text(
        "name: a\ncloud: aws\nregion: EUROPE\nmodel: llama-3.1-8b-instruct\nshape: h100x1-fp8\n"
        "autoscaling:\n  max_replicas: 2\n  max_replicas: 8\n"
    )
    result = byoc("validate", "-f", str(spec))
    assert result.returncode == 2
    assert result.stderr.startswith("error: autoscaling.max_replicas: is given twice")
    assert "lines 7 and 8" in result.stderr and "Traceback" not in result.stderr


def test_plan_refuses_to_replace_folders_it_did_not_write(tmp_path: Path) -> None:
    """`plan --out .` in a repository must not delete its manifests/."""
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "app.yaml").write_text("kind: ConfigMap\n")
    result = byoc("plan", "-f", str(EXAMPLES[0]), "--out", str(tmp_path))
    assert result.returncode == 2
    assert "--out" in result.stderr and "manifests" in result.stderr
    assert (tmp_path / "manifests" / "app.yaml").read_text() == "kind: ConfigMap\n"
    assert not (tmp_path / "plan.json").exists()


def test_plan_prints_warnings_and_lists_them(tmp_path: Path) -> None:
    spec = tmp_path / "byoc.yaml"
    spec.write_text(
        "name: w\ncloud: aws\nregion: EUROPE\nmodel: llama-3.1-8b-instruct\nshape: h100x1-fp8\n"
        "network: {endpoint: public}\nnode_image: al2023@latest\n"
    )
    result = byoc("plan", "-f", str(spec), "--out", str(tmp_path / "out"), "--output", "json")
    assert result.returncode == 0, result.stderr
    fields = {w["field"] for w in json.loads(result.stdout)["warnings"]}
    assert {"network.endpoint", "node_image"} <= fields
    assert "warning: network.endpoint: public opens" in result.stderr


def test_a_failing_evidence_worker_is_a_clear_failure(tmp_path: Path) -> None:
    from byoc.commands.plan import EvidenceWriter
    from byoc.errors import ByocFailure

    with EvidenceWriter() as writer, pytest.raises(ByocFailure) as failed:
        writer.write({"resources": []}, tmp_path / "compliance")  # no "compliance" section: the worker raises
    assert failed.value.field == "compliance" and "KeyError" in failed.value.message
    assert not (tmp_path / "compliance").exists()


def test_a_killed_evidence_worker_is_a_clear_failure(tmp_path: Path) -> None:
    from byoc.commands.plan import EvidenceWriter
    from byoc.errors import ByocFailure

    with EvidenceWriter() as writer:
        if writer._process is None:
            pytest.skip("the worker process is used on Linux only")
        writer._process.kill()
        writer._process.join()
        with pytest.raises(ByocFailure) as failed:
            writer.write({"compliance": {"frameworks": []}, "resources": []}, tmp_path / "compliance")
    assert "died" in failed.value.message


def test_up_says_the_warnings_validate_says(tmp_path: Path) -> None:
    spec = tmp_path / "byoc.yaml"
    spec.write_text(
        "name: w\ncloud: aws\nregion: EUROPE\nmodel: llama-3.1-8b-instruct\nshape: h100x1-fp8\n"
        "network: {endpoint: public}\n"
    )
    env = {**os.environ, "PATH": str(tmp_path), "BYOC_HOME": str(tmp_path / "home")}  # no `pulumi` on this PATH
    result = byoc("up", "-f", str(spec), "--yes", env=env)
    assert result.returncode == 2
    assert "warning: network.endpoint: public opens" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_plan_leaves_no_process_and_keeps_the_previous_plan(tmp_path: Path, sig: signal.Signals) -> None:
    """CI steps that read byoc's output must never wait on an orphan; Ctrl+C shows no traceback."""
    import psutil

    out = tmp_path / "out"
    assert byoc("plan", "-f", str(EXAMPLES[0]), "--out", str(out)).returncode == 0
    before = (out / "plan.json").read_text()
    process = subprocess.Popen(
        [sys.executable, "-m", "byoc", "plan", "-f", str(EXAMPLES[0]), "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while not psutil.Process(process.pid).children() and time.monotonic() < deadline:
        time.sleep(0.05)
    worker = psutil.Process(process.pid).children()[0]
    if sig == signal.SIGINT:
        os.killpg(process.pid, sig)  # Ctrl+C reaches the whole foreground process group
    else:
        process.send_signal(sig)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode != 0
    assert "Traceback" not in stderr
    worker.wait(timeout=10)  # gone, not orphaned
    assert not worker.is_running()
    assert (out / "plan.json").read_text() == before


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--region", "mars", "--deployment", "demo"], "--region"),
        (["--region", "eu-west-2", "--deployment", "BAD NAME"], "--deployment"),
    ],
)
def test_live_report_checks_its_input_before_the_account(tmp_path: Path, args: list[str], field: str) -> None:
    """Bad input is exit 2 naming it, even without credentials (which would be exit 1)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env |= {"AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_CONFIG_FILE": "/nonexistent"}
    env |= {"AWS_EC2_METADATA_DISABLED": "true"}
    result = byoc("compliance", "report", "--live", *args, "--out", str(tmp_path / "pack"), env=env)
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {field}:")


def test_a_spec_whose_objects_kubernetes_cannot_store_is_refused(tmp_path: Path) -> None:
    """Thousands of addons grow the engine ConfigMap past Kubernetes' 1 MiB: refused by validate and at plan, not
    at apply (the rule lives in byoc.manifests, not in the plan command)."""
    addons = "\n".join(f"  - {{id: a{i}, source: s3://bucket/adapters/{'x' * 200}{i}}}" for i in range(4000))
    spec = tmp_path / "byoc.yaml"
    spec.write_text(
        "name: many\ncloud: aws\nregion: us-east-1\nmodel: llama-3.1-8b-instruct\nshape: h100x1-bf16\n"
        f"addons:\n{addons}\n"
    )
    result = byoc("plan", "-f", str(spec), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr.startswith("error: addons: the rendered ConfigMap byoc-many-engine is")
    assert not (tmp_path / "out" / "plan.json").exists()
    checked = byoc("validate", "-f", str(spec), "-o", "json")
    assert checked.returncode == 2, checked.stderr
    assert json.loads(checked.stdout)["error"]["field"] == "addons"
    assert "Kubernetes stores at most 1 MiB in one object (4,000 addons)" in checked.stderr


def test_a_bad_source_date_epoch_is_input_error(tmp_path: Path) -> None:
    result = byoc("plan", "-f", str(EXAMPLES[0]), "--out", str(tmp_path), env={**os.environ, "SOURCE_DATE_EPOCH": "x"})
    assert result.returncode == 2 and result.stderr.startswith("error: SOURCE_DATE_EPOCH:")


def test_a_closed_stdout_is_said_not_a_traceback() -> None:
    """`byoc shapes >&-`: file descriptor 1 closed, so Python has no sys.stdout at all."""
    result = subprocess.run(
        ["bash", "-c", f"{sys.executable} -m byoc shapes >&-"],
        check=False,
        capture_output=False,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 2
    assert (
        result.stderr == "error: stdout: closed; byoc prints its results there (redirect it to a file or /dev/null)\n"
    )


def test_plan_writes_only_into_its_own_folder(tmp_path: Path) -> None:
    """A wrong --out (a repository root, `/`, a CI variable left empty) is refused, not filled with byoc's files;
    a plan.json that merely mentions byoc_version does not make a folder byoc's (its manifests/ would be deleted)."""
    crowded = tmp_path / "repo"
    crowded.mkdir()
    (crowded / "README.md").write_text("mine\n")
    result = byoc("plan", "-f", str(EXAMPLES[0]), "--out", str(crowded))
    assert result.returncode == 2
    assert f"error: --out: {crowded} already holds files byoc did not write (README.md)" in result.stderr
    assert sorted(p.name for p in crowded.iterdir()) == ["README.md"]

    decoy = tmp_path / "decoy"
    (decoy / "manifests").mkdir(parents=True)
    (decoy / "manifests" / "keep.yaml").write_text("mine\n")
    for fake in ('["byoc_version"]', '{"byoc_version": null}', '"byoc_version"'):
        (decoy / "plan.json").write_text(fake)
        result = byoc("plan", "-f", str(EXAMPLES[0]), "--out", str(decoy))
        assert result.returncode == 2, fake
        assert (decoy / "manifests" / "keep.yaml").read_text() == "mine\n"

    hidden = tmp_path / "ci-out"
    hidden.mkdir()
    (hidden / ".gitkeep").write_text("")
    assert byoc("plan", "-f", str(EXAMPLES[0]), "--out", str(hidden)).returncode == 0
    assert byoc("plan", "-f", str(EXAMPLES[0]), "--out", str(hidden)).returncode == 0  # byoc's own plan: replaced
