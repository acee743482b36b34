"""YAML as users write it, read strictly: a key given twice in one mapping is an error, not "the last one wins".

PyYAML (like YAML 1.1 loaders generally) keeps the last of two equal keys silently, so `name: a` followed later by
`name: b` deploys `b` without a word. Every YAML file byoc reads from a user goes through `load_unique` (and files
through `read_user_file`, which also refuses what is not UTF-8 text, what is too large, and aliases that expand a
few hundred bytes into millions of values).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class DuplicateKeyError(ValueError):
    """A mapping holds the same key twice.

    Attributes:
        path: dotted path of the key (`autoscaling.max_replicas`, `addons[1].id`).
        first_line, line: 1-based lines of the first and the repeated key.
    """

    def __init__(self, path: str, first_line: int, line: int) -> None:
        self.path = path
        self.first_line = first_line
        self.line = line
        super().__init__(f"{path} is given twice (lines {first_line} and {line})")


class ExpansionError(ValueError):
    """The document holds more values than `limit` once its aliases are expanded (a "billion laughs" file)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"more than {limit:,} values once its aliases are expanded")


# A byoc spec or gateway config holds a few hundred values; this is far above any real one and far below what
# would take a noticeable time to walk.
MAX_VALUES = 100_000


def _walk(node: yaml.Node, path: str, budget: list[int]) -> None:
    budget[0] -= 1
    if budget[0] < 0:
        raise ExpansionError(MAX_VALUES)
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else repr(key_node.value)
            here = f"{path}.{key}" if path else str(key)
            line = key_node.start_mark.line + 1
            if key in seen and key != "<<":
                raise DuplicateKeyError(here, seen[key], line)
            seen[key] = line
            _walk(value_node, here, budget)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, f"{path}[{index}]", budget)


def load_unique(text: str) -> Any:
    """`yaml.safe_load(text)`, refusing a key repeated in any mapping at any depth.

    Raises:
        DuplicateKeyError: a mapping repeats a key (path and both lines named).
        ExpansionError: aliases expand the document past MAX_VALUES values (checked before anything is built).
        yaml.YAMLError: the text is not YAML, or holds more than one document.
    """
    budget = [MAX_VALUES]
    document = yaml.compose(text, Loader=yaml.SafeLoader)  # raises ComposerError for a second document
    if document is not None:
        _walk(document, "", budget)
    return yaml.safe_load(text)


# Spec and config files are a few kilobytes; anything this large is a wrong path or an attack.
MAX_FILE_BYTES = 1 << 20


def read_user_file(path: Path, field: str, what: str) -> str:
    """The text of a file a user points byoc at, as UTF-8.

    Raises:
        ByocError: naming `field`: missing, unreadable, larger than MAX_FILE_BYTES, or not UTF-8 text.
    """
    from byoc.errors import ByocError

    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ByocError(field, f"{path} is {size:,} bytes; {what} is a few kilobytes", f"pass the path of {what}")
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ByocError(field, f"{path} does not exist", f"pass the path of {what}") from None
    except IsADirectoryError:
        raise ByocError(field, f"{path} is a folder", f"pass the path of {what}") from None
    except UnicodeDecodeError as exc:
        raise ByocError(field, f"{path} is not UTF-8 text (byte {exc.start})", f"save {what} as UTF-8 text") from None
    except OSError as exc:
        raise ByocError(field, f"cannot read {path}: {exc.strerror}", "check the path and its permissions") from None


def load_user_yaml(path: Path, field: str, what: str) -> Any:
    """A user's YAML file, strictly: `read_user_file`, then `load_unique`, every failure one ByocError.

    Raises:
        ByocError: naming `field` (or, for a key given twice, the key's own path).
    """
    from byoc.errors import ByocError

    text = read_user_file(path, field, what)
    try:
        return load_unique(text)
    except DuplicateKeyError as exc:
        raise ByocError(
            exc.path,
            f"is given twice in {path} (lines {exc.first_line} and {exc.line}); YAML would keep the last silently",
            f"keep one {exc.path.rsplit('.', 1)[-1]}: line",
        ) from None
    except ExpansionError as exc:
        raise ByocError(field, f"{path} holds {exc}", "write the values out instead of nesting YAML aliases") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or ""
        if "expected a single document" in str(exc):
            problem = "it holds more than one YAML document (a second ---)"
        elif "\t" in text and "found character '\\t'" in str(exc):
            problem = "a tab indents a line; YAML indents with spaces"
        detail = f": {problem}" if problem else ""
        raise ByocError(field, f"{path} is not valid YAML{where}{detail}", "fix the YAML syntax") from None
