"""The YAML reader of recipes and studies: PyYAML's safe loader, with a key written twice made an error.

Plain ``yaml.safe_load`` keeps the last of two ``train:`` mappings and drops the
first without a word; a recipe that says one thing twice is almost always a
mistake (a pasted section, a merge gone wrong), so :func:`load_yaml` names both
lines instead.
"""

from __future__ import annotations

from typing import Any

import yaml

from hftl.config.errors import RecipeError


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping holds the same key twice (``first_line`` and ``line`` are 1-based)."""

    def __init__(self, key: Any, first_line: int, line: int, path: str) -> None:
        super().__init__(problem=f"key '{path}' is written twice (lines {first_line} and {line})")
        self.key, self.first_line, self.line, self.path = key, first_line, line, path


class StrictSafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys in a mapping (merge keys ``<<`` may still be overridden)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node)
            try:
                first = seen.get(key)
                seen.setdefault(key, key_node.start_mark.line)
            except TypeError:  # an unhashable key: the base constructor reports it
                continue
            if first is not None:
                raise DuplicateKeyError(key, first + 1, key_node.start_mark.line + 1, _path(self, node, key))
        return super().construct_mapping(node, deep=deep)


def _path(loader: StrictSafeLoader, node: yaml.MappingNode, key: Any) -> str:
    """The dotted path of ``key`` (its parent mappings are found by walking the document's node tree)."""
    root = getattr(loader, "_hftl_root", None)
    trail = _find(root, node, [], set()) if root is not None else None
    return ".".join([*(trail or []), str(key)])


def _find(current: Any, target: yaml.Node, trail: list[str], seen: set[int]) -> list[str] | None:
    if current is target:
        return trail
    if id(current) in seen or len(trail) > 50:  # aliases may make the node graph cyclic
        return None
    seen.add(id(current))
    if isinstance(current, yaml.MappingNode):
        for key_node, value_node in current.value:
            found = _find(value_node, target, [*trail, str(getattr(key_node, "value", "?"))], seen)
            if found is not None:
                return found
    elif isinstance(current, yaml.SequenceNode):
        for i, item in enumerate(current.value):
            found = _find(item, target, [*trail, str(i)], seen)
            if found is not None:
                return found
    return None


def load_yaml(text: str, file: str | None = None) -> Any:
    """Parse one YAML document safely; a key written twice is a :class:`RecipeError` naming both lines.

    Other YAML errors propagate as ``yaml.YAMLError`` for the caller to word.
    """
    loader = StrictSafeLoader(text)
    try:
        loader._hftl_root = loader.get_single_node()
        if loader._hftl_root is None:
            return None
        return loader.construct_document(loader._hftl_root)
    except DuplicateKeyError as exc:
        raise RecipeError(
            file,
            exc.path,
            f"is written twice (lines {exc.first_line} and {exc.line}); YAML would silently keep only the last one",
            hint="Merge the two into one, or delete the one you do not mean.",
        ) from None
    finally:
        loader.dispose()
