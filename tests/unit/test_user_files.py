"""Every file a user points byoc at is read the same strict way: spec (-f), gateway config (--config), keys file
(--api-keys), plan (--plan). Bad files are one ByocError naming the option, never a traceback or a hang."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from byoc.errors import ByocError
from byoc.spec import load_spec_file
from byoc.yamlio import MAX_FILE_BYTES
from compliance.evaluate import load_plan
from runtime.serve.config import load_config_file
from runtime.serve.keys import load_keys

READERS: dict[str, tuple[Callable[[Path], Any], str]] = {
    "spec": (load_spec_file, "-f"),
    "gateway config": (load_config_file, "--config"),
    "keys file": (load_keys, "--api-keys"),
}


def _alias_bomb() -> str:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for previous, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{previous}"] * 10) + "]")
    return "\n".join(lines) + "\n"


BAD_FILES: dict[str, tuple[bytes, str]] = {
    "not UTF-8": (b"name: d\xe9mo\n", "not UTF-8"),
    "random bytes": (bytes(range(256)) * 8, "not UTF-8"),
    "aliases that expand a billion times": (_alias_bomb().encode(), "aliases are expanded"),
    "larger than a spec can be": (b"# " + b"x" * MAX_FILE_BYTES + b"\n", "bytes"),
}


@pytest.mark.parametrize("reader", sorted(READERS))
@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_files_are_one_clear_error(tmp_path: Path, reader: str, case: str) -> None:
    content, words = BAD_FILES[case]
    path = tmp_path / "input.yaml"
    path.write_bytes(content)
    read, option = READERS[reader]
    with pytest.raises(ByocError) as caught:
        read(path)
    assert caught.value.field == option
    assert words in caught.value.message
    assert len(str(caught.value)) < 400  # the file's content is not echoed back


def test_a_plan_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    path.write_bytes(b'{"placement": "\xff"}')
    with pytest.raises(ByocError) as caught:
        load_plan(path)
    assert caught.value.field == "--plan" and "UTF-8" in caught.value.message


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("name: a\n---\nname: b\n", "more than one YAML document"),
        ("name: a\nautoscaling:\n\tmax_replicas: 2\n", "a tab indents a line"),
    ],
)
def test_yaml_mistakes_say_what_is_wrong(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "byoc.yaml"
    path.write_text(text)
    with pytest.raises(ByocError) as caught:
        load_spec_file(path)
    assert words in caught.value.message


def test_a_plain_key_file_with_a_byte_order_mark_authenticates(tmp_path: Path) -> None:
    """Editors on Windows start UTF-8 files with a BOM; it is not part of the first key."""
    from runtime.serve.keys import KeyRing

    path = tmp_path / "keys.txt"
    path.write_bytes("\ufeffsk-plain-0123456789abcdef\r\n".encode())
    store = KeyRing(load_keys(path))
    assert store.authenticate("Bearer sk-plain-0123456789abcdef") is not None
    assert store.authenticate("bearer sk-plain-0123456789abcdef") is not None  # RFC 7235: scheme case-insensitive
    assert store.authenticate("Bearer sk-plain-0123456789abcdeX") is None
