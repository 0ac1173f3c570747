"""Config files read strictly: a key given twice in one mapping is refused (PyYAML keeps the last one silently), and
a syntax error says where (line, column) and why, in one line."""

from __future__ import annotations

from typing import Any

import yaml

from distracer.errors import ConfigError


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys, naming the key and both lines."""


def _mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    loader.flatten_mapping(node)  # merge keys (<<) first, as SafeLoader does
    first_line: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            hash(key)
        except TypeError:
            continue  # SafeLoader's own error for an unhashable key follows
        if key in first_line:
            raise ConfigError(f"{loader.source}: key {key!r} is given twice in one mapping (lines {first_line[key]} "
                              f"and {line}); keep one")
        first_line[key] = line
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def load_yaml(text: str, source: str) -> Any:
    """Parse `text` (from `source`, named in errors) as YAML, refusing duplicate keys.

    Raises ConfigError: 'SOURCE: not valid YAML at line L, column C: CAUSE', or the duplicate key's line."""
    loader = _StrictLoader(text)
    loader.source = source
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        cause = "; ".join(part for part in (exc.problem, exc.context) if part) or type(exc).__name__
        raise ConfigError(f"{source}: not valid YAML{where}: {cause}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {str(exc).splitlines()[0]}") from None
    finally:
        loader.dispose()
