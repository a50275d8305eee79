"""Reading a user's YAML file: unreadable files, bad YAML and duplicate keys become one InputError that
names the file and the line (a duplicate key would otherwise silently keep its last value)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from profiler.errors import InputError


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader (YAML 1.1, plain Python values) that refuses a key given twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` then overriding a key is not a duplicate
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, value_node)
            except TypeError:  # unhashable: the base class says so
                continue
            if first is not value_node:
                raise yaml.constructor.ConstructorError(
                    None, None, f"found duplicate key \"{key}\" (first on line {first.start_mark.line + 1})",
                    key_node.start_mark)
        return super().construct_mapping(node, deep)


def read_yaml(path: str | Path, *, round_trip: bool = False) -> Any:
    """The file's YAML. ``round_trip``: ruamel's round-trip data (comments, key order and line numbers kept, for
    files pdsim rewrites); otherwise plain dicts, lists and scalars."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InputError("file not found", where=str(path)) from None
    except (UnicodeDecodeError, IsADirectoryError, NotADirectoryError) as e:
        raise InputError(f"cannot read ({e.__class__.__name__})", where=str(path)) from None
    if round_trip:
        from ruamel.yaml import YAML  # noqa: PLC0415
        from ruamel.yaml.error import YAMLError  # noqa: PLC0415 (ruamel refuses duplicate keys itself)

        loader = YAML()
        loader.preserve_quotes = True
        errors: tuple[type[Exception], ...] = (YAMLError,)
        load = loader.load
    else:
        errors, load = (yaml.YAMLError,), lambda t: yaml.load(t, Loader=_UniqueKeyLoader)  # noqa: S506
    try:
        return load(text)
    except errors as e:
        mark = getattr(e, "problem_mark", None)
        place = f"line {mark.line + 1}: " if mark else ""
        raise InputError(f"{place}not valid YAML ({getattr(e, 'problem', None) or e})", where=str(path)) from None
