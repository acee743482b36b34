"""`byoc serve ...` as an operator runs it: bad input exits 2 with one message naming the flag, no traceback."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import ROOT


def byoc(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "byoc", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )


def test_gateway_without_keys_refuses_to_start() -> None:
    result = byoc("serve", "gateway", "--upstream", "http://127.0.0.1:9", "--listen", "127.0.0.1:0")
    assert result.returncode == 2
    assert "--api-keys" in result.stderr and "--insecure-no-auth" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_bad_flags_name_the_flag(tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("sk-local-0123456789abcdef\n")
    cases = {
        "--upstream": ["--upstream", "ftp://engine:8000", "--api-keys", str(keys)],
        "--listen": ["--upstream", "http://127.0.0.1:9", "--api-keys", str(keys), "--listen", "nowhere"],
        "--max-concurrency": ["--upstream", "http://127.0.0.1:9", "--api-keys", str(keys), "--max-concurrency", "0"],
        "--config": ["--upstream", "http://127.0.0.1:9", "--api-keys", str(keys), "--config", str(tmp_path / "no")],
    }
    for flag, args in cases.items():
        result = byoc("serve", "gateway", *args)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith(f"error: {flag}"), result.stderr
        assert "Traceback" not in result.stderr


def test_bad_keys_file_and_config_setting(tmp_path: Path) -> None:
    bad = tmp_path / "keys.yaml"
    bad.write_text("keys:\n  - {name: ci, sha256: not-hex}\n")
    result = byoc("serve", "gateway", "--upstream", "http://127.0.0.1:9", "--api-keys", str(bad))
    assert result.returncode == 2 and "--api-keys" in result.stderr and "hash-key" in result.stderr
    config = tmp_path / "gateway.yaml"
    config.write_text("max_queue: lots\n")
    result = byoc("serve", "gateway", "--upstream", "http://127.0.0.1:9", "--insecure-no-auth", "--config", str(config))
    assert result.returncode == 2 and "max_queue" in result.stderr


def test_hash_key_prints_an_entry_without_the_key() -> None:
    key = "sk-operator-9c1b7e3f5a2d4c6e"
    result = byoc("serve", "hash-key", "--name", "ci", "--rpm", "600", "--max-concurrency", "8", stdin=key + "\n")
    assert result.returncode == 0, result.stderr
    assert key not in result.stdout
    entry = yaml.safe_load(result.stdout)[0]
    assert entry == {"name": "ci", "sha256": hashlib.sha256(key.encode()).hexdigest(), "rpm": 600, "max_concurrency": 8}
    assert byoc("serve", "hash-key", "--name", "ci", stdin="short\n").returncode == 2


def _gateway_refuses(keys: Path) -> str:
    result = byoc("serve", "gateway", "--upstream", "http://127.0.0.1:9", "--api-keys", str(keys))
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: --api-keys") and "Traceback" not in result.stderr
    return result.stderr


def test_a_keys_file_that_yields_nothing_usable_refuses_to_start(tmp_path: Path) -> None:
    digest = hashlib.sha256(b"sk-operator-9c1b7e3f5a2d4c6e").hexdigest()
    cases = {
        "comments.txt": "# no keys yet\n\n",
        "empty-list.yaml": "keys: []\n",
        "empty.yaml": "[]\n",
        # YAML-looking text that is not valid YAML: never read as plain keys
        "broken.yaml": "- {name: ci, sha256: " + digest + "\n",
        "mapping.yaml": "ci: " + digest + "\n",
        # a bare digest, as if copied out of an entry: read as a plain key, the digest would be the key
        "digest.txt": digest + "\n",
        "note.txt": "sk-operator-9c1b7e3f5a2d4c6e  # the CI key\n",
        "short.txt": "sk-short\n",
    }
    for name, text in cases.items():
        path = tmp_path / name
        path.write_text(text)
        message = _gateway_refuses(path)
        assert "sk-operator" not in message  # the message never quotes a key


def test_hash_key_output_works_as_is_and_appended(tmp_path: Path) -> None:
    """`hash-key > keys.yaml`, then `hash-key >> keys.yaml`: the gateway reads both entries as hashed keys."""
    from runtime.serve.keys import KeyRing, load_keys

    keys = tmp_path / "keys.yaml"
    first, second = "sk-first-0a1b2c3d4e5f6a7b", "sk-second-9f8e7d6c5b4a3f2e"
    keys.write_text(byoc("serve", "hash-key", "--name", "ci", stdin=first + "\n").stdout)
    with keys.open("a") as out:
        out.write(byoc("serve", "hash-key", "--name", "batch", "--rpm", "60", stdin=second + "\n").stdout)
    loaded = load_keys(keys)
    assert [(k.name, k.kind, k.rpm) for k in loaded] == [("ci", "sha256", None), ("batch", "sha256", 60)]
    ring = KeyRing(loaded)
    assert ring.describe() == "2 API keys (2 sha256, 0 plaintext)"


def test_the_cpu_engine_refuses_a_quantized_checkpoint(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """It would load FP8/NVFP4 weights without their scales and answer with wrong numbers: exit 2, one line."""
    import json
    import shutil

    from tests.conftest import run_byoc

    cases = {
        # ModelOpt's unified export (what `byoc build` writes for FP8 and FP4 shapes)
        "FP8": ("hf_quant_config.json", {"producer": {"name": "modelopt"}, "quantization": {"quant_algo": "FP8"}}),
        "NVFP4": ("hf_quant_config.json", {"quantization": {"quant_algo": "NVFP4", "kv_cache_quant_algo": "FP8"}}),
        # any other quantizer, in config.json
        "gptq": ("config.json", {"quantization_config": {"quant_method": "gptq", "bits": 4}}),
        # byoc's artifact manifest
        "FP4": ("manifest.json", {"format": "byoc-artifact/1", "precision": "fp4", "files": {}}),
    }
    for what, (name, content) in cases.items():
        folder = tmp_path / what
        shutil.copytree(tiny_models["base"], folder)
        path = folder / name
        data = json.loads(path.read_text()) if path.exists() else {}
        path.write_text(json.dumps({**data, **content}))
        result = run_byoc("serve", "engine", "--model-dir", str(folder), "--listen", "127.0.0.1:0", timeout=120)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
        assert lines[0].startswith("error: --model-dir") and what in lines[0]
        assert "BF16 artifact" in lines[0] and "trtllm-serve" in lines[0]
