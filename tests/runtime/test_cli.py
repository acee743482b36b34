"""`byoc serve ...` as an operator runs it: bad input exits 2 with one message naming the flag, no traceback."""

from __future__ import annotations

import hashlib
import json
import os
import socket
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


def test_hash_key_refuses_a_key_no_client_could_send() -> None:
    # the gateway would take it, but `byoc addons` and `byoc status` refuse such a BYOC_API_KEY, and HTTP clients
    # strip or reject it: one line naming the key on stdin, and the key never echoed
    for key in ("two words here-long-enough", "tab\tseparated-key-long-enough", "bell\x07in-the-key-long-enough"):
        result = byoc("serve", "hash-key", "--name", "sp", stdin=key + "\n")
        assert result.returncode == 2, (key, result.stdout, result.stderr)
        assert result.stdout == ""
        assert result.stderr.startswith("error: stdin") and "whitespace or a control character" in result.stderr
        assert len(result.stderr.strip().splitlines()) <= 2 and "Traceback" not in result.stderr
        assert "long-enough" not in result.stderr


def test_a_plain_keys_file_with_a_control_character_refuses_to_start(tmp_path: Path) -> None:
    path = tmp_path / "keys.txt"
    path.write_text("sk-operator-9c1b7e3f5a2d4c6e\nsk-second\x01key-3f9a0c7e5b1d\n")
    message = _gateway_refuses(path)
    assert "line 2" in message and "control character" in message
    assert "sk-second" not in message and "sk-operator" not in message


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


# ---------------------------------------------------------------------------------------------------------------
# What a server assumes of the machine: its listen addresses. Each fault is one line naming the flag, exit 2, before
# the gateway opens connections or the engine loads its model; the process is gone when the command returns.


def _one_line(result: subprocess.CompletedProcess[str], code: int, flag: str) -> str:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {flag}: "), result.stderr
    return lines[0]


def _held_port() -> tuple[socket.socket, int]:
    """A port another process holds, as when a second gateway is started on the first one's port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    return sock, int(sock.getsockname()[1])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_listen_address_that_cannot_be_taken_is_one_line_naming_the_flag(tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("sk-local-0123456789abcdef\n")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")  # never read: the address is refused before the model loads
    gateway = ["serve", "gateway", "--upstream", "http://127.0.0.1:9", "--api-keys", str(keys)]
    held, port = _held_port()
    free = _free_port()
    with held:
        cases = {
            "--listen": [*gateway, "--listen", f"127.0.0.1:{port}"],
            "--metrics-listen": [*gateway, "--listen", f"127.0.0.1:{free}", "--metrics-listen", f"127.0.0.1:{port}"],
        }
        for flag, args in cases.items():
            assert "already in use" in _one_line(byoc(*args), 2, flag)
        engine = byoc("serve", "engine", "--model-dir", str(model), "--listen", f"127.0.0.1:{port}")
        assert "already in use" in _one_line(engine, 2, "--listen")
        stats = byoc("serve", "engine-stats", "--engine", "http://127.0.0.1:9", "--listen", f"127.0.0.1:{port}")
        assert "already in use" in _one_line(stats, 2, "--listen")
    # one port given to both listeners, as the same address, through a wildcard, or through a name
    for listen, metrics in (("127.0.0.1", "127.0.0.1"), ("127.0.0.1", "0.0.0.0"), ("localhost", "127.0.0.1")):
        both = byoc(*gateway, "--listen", f"{listen}:{free}", "--metrics-listen", f"{metrics}:{free}")
        assert "takes the port of --listen" in _one_line(both, 2, "--metrics-listen")
    # set in --config, it is named there
    config = tmp_path / "gateway.yaml"
    config.write_text(f"listen: 127.0.0.1:{free}\nmetrics_listen: 0.0.0.0:{free}\n")
    from_file = byoc(*gateway, "--config", str(config))
    assert "takes the port of --config: listen" in _one_line(from_file, 2, "--config: metrics_listen")
    # an address of no interface here (TEST-NET-1, RFC 5737), and a name that resolves to nothing
    assert "not an address of this machine" in _one_line(byoc(*gateway, "--listen", "192.0.2.1:8080"), 2, "--listen")
    assert "does not resolve" in _one_line(byoc(*gateway, "--listen", "no-such-host.invalid:8080"), 2, "--listen")


def test_key_names_fit_the_access_log(tmp_path: Path) -> None:
    """A key's name is the access log's `key=NAME`: a name with a space would split that field in two."""
    key = "sk-operator-9c1b7e3f5a2d4c6e"
    for name in ("my key", "ci\tpipeline", "", "-ci", "ci.", "é", "k" * 64, "ci=1"):
        result = byoc("serve", "hash-key", "--name", name, stdin=key + "\n")
        assert "letters, digits" in _one_line(result, 2, "--name") or "above 63" in result.stderr
        assert result.stdout == ""
    for name in ("ci", "ci.pipeline_2", "Team-A", "k" * 63, "7"):
        result = byoc("serve", "hash-key", "--name", name, stdin=key + "\n")
        assert result.returncode == 0, result.stderr
        assert yaml.safe_load(result.stdout)[0]["name"] == name
    # the same rule when the gateway loads a keys file written by hand
    digest = hashlib.sha256(key.encode()).hexdigest()
    for entry in ('"my key"', "2024", '"ci=1"'):
        path = tmp_path / "keys.yaml"
        path.write_text(f"- {{name: ci, sha256: {'a' * 64}}}\n- {{name: {entry}, sha256: {digest}}}\n")
        line = _one_line(
            byoc("serve", "gateway", "--upstream", "http://127.0.0.1:9", "--api-keys", str(path)), 2, "--api-keys"
        )
        assert "key 2" in line and key not in line


def test_addon_names_the_engine_or_gateway_cannot_route_are_refused(tmp_path: Path) -> None:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    gateway = ["serve", "gateway", "--upstream", "http://127.0.0.1:9", "--insecure-no-auth", "--model", "tiny"]
    for addon in ("Bad_Name=hf://org/x", "a/b=hf://org/x", "x" * 64 + "=hf://org/x", "tiny=hf://org/x", "=hf://o/x"):
        _one_line(byoc(*gateway, "--addon", addon), 2, "--addon")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    engine = ["serve", "engine", "--model-dir", str(model), "--model-name", "tiny", "--listen", "127.0.0.1:0"]
    for addons in ([f"Bad_Name={adapter}"], [f"tiny={adapter}"], [f"sql={adapter}", f"sql={adapter}"]):
        _one_line(byoc(*engine, *[a for pair in (("--addon", a) for a in addons) for a in pair]), 2, "--addon")


def test_addons_refuse_bad_input_before_any_server_is_asked(tmp_path: Path) -> None:
    dest = tmp_path / "adapters"
    nowhere = f"http://127.0.0.1:{_free_port()}"
    where = ["--engine", nowhere, "--gateway", nowhere, "--dest", str(dest)]
    adapter = ["--source", str(tmp_path)]
    bf16 = ["--shape", "h100x1-bf16"]
    cases = [
        # the option the user has to pass, not the name it has in `byoc build`
        ("--model-source", ["add", "legal", *adapter, *where, *bf16]),
        ("--shape", ["add", "legal", *adapter, *where, "--model-source", f"file://{tmp_path}"]),
        # a spec field filled from a flag is named as the flag (model.source: a folder without config.json)
        ("--model-source", ["add", "legal", *adapter, *where, *bf16, "--model-source", f"file://{tmp_path}"]),
        ("NAME", ["add", "Legal_v2", *adapter, *where, *bf16, "--model-source", "file:///m"]),
        ("--source", ["add", "legal", "--source", "not/a/folder", *where, *bf16]),
        ("--engine", ["add", "legal", *adapter, *where[2:], "--engine", "10.0.1.7:8000", *bf16]),
        ("--gateway", ["list", "--gateway", "llm.internal"]),
    ]
    for flag, args in cases:
        for output in ("text", "json"):
            result = byoc("addons", *args, "--output", output)
            _one_line(result, 2, flag)
            if output == "json":
                assert json.loads(result.stdout)["error"]["field"] == flag
    assert not dest.exists()


def test_addons_with_the_gateway_down_say_so_in_one_line(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    dest = tmp_path / "adapters"
    nowhere = f"http://127.0.0.1:{_free_port()}"
    adapter = tiny_models["sql"]
    deployment = ["--shape", "h100x1-bf16", "--model-source", f"file://{tiny_models['base']}"]
    commands = {
        "add": [
            "add",
            "legal",
            "--source",
            str(adapter),
            "--engine",
            nowhere,
            "--gateway",
            nowhere,
            "--dest",
            str(dest),
            *deployment,
        ],
        "remove": ["remove", "legal", "--engine", nowhere, "--gateway", nowhere],
        "list": ["list", "--gateway", nowhere],
    }
    for command, args in commands.items():
        result = byoc("addons", *args, "--output", "json")
        assert "cannot be reached" in _one_line(result, 1, "--gateway"), command
        assert json.loads(result.stdout)["error"]["exit_code"] == 1
    assert not dest.exists()


def test_the_api_key_variable_is_checked_before_it_is_sent() -> None:
    nowhere = f"http://127.0.0.1:{_free_port()}"
    for value, says in (
        ("", "set but empty"),
        ("  ", "set but empty"),
        ("sk-abc 123", "whitespace"),
        ("sk\n", "whitespace"),
    ):
        env = {**os.environ, "BYOC_API_KEY": value}
        result = subprocess.run(
            [sys.executable, "-m", "byoc", "addons", "list", "--gateway", nowhere, "-o", "json"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
            env=env,
            check=False,
        )
        assert says in _one_line(result, 2, "BYOC_API_KEY")
        assert json.loads(result.stdout)["error"]["field"] == "BYOC_API_KEY"
