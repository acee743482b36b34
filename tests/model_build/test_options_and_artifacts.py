"""The options YAML for every catalog shape obeys the rules; local verification; the CLI stays light."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from byoc.errors import ByocError
from byoc.resolve import catalog_shapes, resolve
from byoc.spec import build_spec
from runtime.model_build.plan import build_plan
from tests.model_build.conftest import byoc, files_under

FRACTION = 0.85


@pytest.mark.parametrize("cloud", ["aws", "gcp"])
def test_options_for_every_catalog_shape(cloud: str, tiny: Path) -> None:
    shapes = catalog_shapes(cloud)
    assert shapes
    for shape in shapes:
        bf16 = shape.precision == "bf16"
        data = {
            "name": "opts",
            "cloud": cloud,
            "region": "GLOBAL",
            # a cloud deployment builds from a store the cluster reads; the architecture comes from the local config
            "model": {"id": "tiny", "source": "hf://byoc-examples/tiny", "config": f"file://{tiny}/config.json"},
            "shape": shape.name,
            "kv_cache_fraction": FRACTION,
            "addons": [{"id": "support", "source": "hf://byoc-examples/support-lora", "rank": 8}],
        }
        if not bf16:
            with pytest.raises(ByocError, match="cannot take LoRA addons"):
                resolve(build_spec(data))
            data["addons"] = []
        plan = build_plan(resolve(build_spec(data)))
        options = plan.options
        assert options["backend"] == "pytorch"
        assert options["tensor_parallel_size"] == shape.count == plan.tensor_parallel_size, shape.name
        assert options["kv_cache_config"]["free_gpu_memory_fraction"] == FRACTION
        assert ("lora_config" in options) == bf16, shape.name
        assert options["guided_decoding_backend"] == "xgrammar", shape.name  # structured output is enforced
        assert options["kv_cache_config"]["dtype"] == ("auto" if bf16 else "fp8")
        assert (
            plan.quantization == {"fp8": "FP8_DEFAULT_CFG", "fp4": "NVFP4_DEFAULT_CFG", "bf16": None}[shape.precision]
        )
        assert (plan.calibration is None) == bf16
        if shape.precision == "fp4":
            assert shape.gpu.sm >= 100, shape.name
        assert plan.serve_command()[plan.serve_command().index("--tp_size") + 1] == str(shape.count)


def test_verify_names_a_locally_corrupted_file(tiny: Path, tmp_path: Path) -> None:
    run = byoc("build", "--source", f"file://{tiny}", "--shape", "h100x1-bf16", "--dest", f"file://{tmp_path}/s")
    assert run.exit_code == 0, run.stderr
    artifact = next((tmp_path / "s" / "artifacts" / "tiny-llama").iterdir())
    target = tmp_path / "models"
    assert byoc("artifacts", "fetch", "--from", f"file://{artifact}", "--to", str(target), "--verify").exit_code == 0
    assert {p.name for p in target.iterdir()} == {"model", "options.yaml", "build-plan.json", "manifest.json"}
    ok = byoc("artifacts", "verify", str(target), "--output", "json")
    assert ok.exit_code == 0 and ok.result["extra_files"] == []
    tokenizer = target / "model" / "tokenizer.json"
    data = bytearray(tokenizer.read_bytes())
    data[0] ^= 0xFF
    tokenizer.write_bytes(bytes(data))
    bad = byoc("artifacts", "verify", str(target))
    assert bad.exit_code == 1
    assert "model/tokenizer.json does not match manifest.json" in bad.stderr
    show = byoc("artifacts", "show", f"file://{artifact}", "--output", "json")
    assert show.exit_code == 0 and show.result["shape"] == "h100x1-bf16"


def test_verify_without_a_manifest_is_invalid_input(tmp_path: Path) -> None:
    run = byoc("artifacts", "verify", str(tmp_path))
    assert run.exit_code == 2
    assert "holds no manifest.json" in run.stderr
    assert files_under(tmp_path) == []


def test_build_help_imports_no_heavy_modules() -> None:
    code = (
        "import sys; from typer.testing import CliRunner; from byoc.cli import app; "
        "r = CliRunner(); r.invoke(app, ['build', '--help']); r.invoke(app, ['artifacts', 'fetch', '--help']); "
        "print(sorted(m for m in ('boto3', 'torch', 'modelopt', 'byoc.resolve') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
