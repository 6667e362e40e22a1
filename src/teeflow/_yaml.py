"""YAML safe loading that rejects duplicate mapping keys.

PyYAML's ``SafeLoader`` silently keeps the *last* of two equal keys in a mapping, so a
second ``allow_emulated: true`` further down a policy or manifest would override the first
without anyone noticing. :class:`UniqueKeySafeLoader` is a ``yaml.SafeLoader`` (only plain
YAML types, YAML 1.1 resolution, merge keys ``<<`` flattened) whose mappings raise
:class:`DuplicateKeyError` on a repeated or unhashable key.

Used by :mod:`teeflow.attestation.policy` and :mod:`teeflow.workload.manifest`.
"""

from __future__ import annotations

from typing import Any

import yaml

__all__ = ["DuplicateKeyError", "UniqueKeySafeLoader", "safe_load_unique"]


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping repeats a key (``problem`` ``"duplicate key 'k'"``) or has an unhashable key
    (``"unhashable mapping key"``). A ``yaml.YAMLError``; ``line`` is 1-based."""

    def __init__(self, problem: str, mark: yaml.Mark) -> None:
        super().__init__(None, None, problem, mark)
        self.line: int = mark.line + 1


class UniqueKeySafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that raises :class:`DuplicateKeyError` on duplicate mapping keys."""


def _construct_unique_mapping(
    loader: UniqueKeySafeLoader, node: yaml.MappingNode
) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    out: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in out
        except TypeError:
            raise DuplicateKeyError("unhashable mapping key", key_node.start_mark) from None
        if duplicate:
            raise DuplicateKeyError(f"duplicate key {key!r}", key_node.start_mark)
        out[key] = loader.construct_object(value_node, deep=True)
    return out


UniqueKeySafeLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_unique_mapping,
)


def safe_load_unique(text: str) -> Any:
    """Parse one YAML document with :class:`UniqueKeySafeLoader`.

    Raises:
        DuplicateKeyError: a mapping repeats a key or has an unhashable key.
        yaml.YAMLError: any other malformed YAML.
        RecursionError: nesting deeper than the interpreter's recursion limit.
    """
    return yaml.load(text, Loader=UniqueKeySafeLoader)  # noqa: S506 - SafeLoader subclass
