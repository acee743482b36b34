"""YAML as users write it, read strictly: a key given twice in one mapping is an error, not "the last one wins".

PyYAML (like YAML 1.1 loaders generally) keeps the last of two equal keys silently, so `name: a` followed later by
`name: b` deploys `b` without a word. Every YAML file byoc reads from a user goes through `load_unique`.
"""

from __future__ import annotations

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


def _walk(node: yaml.Node, path: str) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else repr(key_node.value)
            here = f"{path}.{key}" if path else str(key)
            line = key_node.start_mark.line + 1
            if key in seen and key != "<<":
                raise DuplicateKeyError(here, seen[key], line)
            seen[key] = line
            _walk(value_node, here)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, f"{path}[{index}]")


def load_unique(text: str) -> Any:
    """`yaml.safe_load(text)`, refusing a key repeated in any mapping at any depth.

    Raises:
        DuplicateKeyError: a mapping repeats a key (path and both lines named).
        yaml.YAMLError: the text is not YAML.
    """
    for document in yaml.compose_all(text, Loader=yaml.SafeLoader):
        if document is not None:
            _walk(document, "")
    return yaml.safe_load(text)
