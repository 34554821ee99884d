"""YAML loading that remembers where every value came from.

PyYAML's node marks give each mapping, sequence and scalar its line and
column; the containers built here keep them, so every later check can name
``path:line:col``. Duplicate mapping keys, which PyYAML accepts silently,
are load errors here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from agent.errors import LoadError, Location, access_hint

# libyaml parses several times faster; its marks (line, column) are the same.
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class LDict(dict[str, Any]):
    """A mapping from YAML with the location of itself, its keys and values."""

    where: Location
    key_where: dict[str, Location]
    value_where: dict[str, Location]

    def at(self, key: str) -> Location:
        """Where the value of ``key`` is, or the mapping itself if absent."""
        return self.value_where.get(key, self.where)

    def key_at(self, key: str) -> Location:
        """Where ``key`` itself is written."""
        return self.key_where.get(key, self.where)


class LList(list[Any]):
    """A sequence from YAML with the location of itself and its items."""

    where: Location
    item_where: list[Location]

    def at(self, index: int) -> Location:
        """Where item ``index`` is."""
        if 0 <= index < len(self.item_where):
            return self.item_where[index]
        return self.where


class LStr(str):
    """A string scalar from YAML that remembers its place and quoting style."""

    where: Location
    style: str | None


def where_of(value: object, default: Location) -> Location:
    """The location of a loaded value, or ``default`` for plain values."""
    loc = getattr(value, "where", None)
    return loc if isinstance(loc, Location) else default


def _loc(path: str, mark: yaml.Mark | None) -> Location:
    if mark is None:
        return Location(path)
    return Location(path, mark.line + 1, mark.column + 1)


MAX_NODES = 1_000_000  # aliases can multiply a small file into billions of nodes ("billion laughs")


def _check_size(path: str, root: yaml.Node) -> None:
    """Fail before building when aliases would expand the document past MAX_NODES values.

    Aliases share one node, so the expanded size is summed once per distinct node: a billion-laughs file is
    refused in microseconds instead of after building a million values. Merge keys are counted as written
    (slightly more than after merging), so the builder's own count stays the exact limit.
    """
    sizes: dict[int, int] = {}

    def size(node: yaml.Node, total: int) -> int:
        known = sizes.get(id(node))
        if known is None:
            known = 1
            if isinstance(node, yaml.MappingNode):
                for key_node, value_node in node.value:
                    known += size(key_node, total + known)
                    known += size(value_node, total + known)
            elif isinstance(node, yaml.SequenceNode):
                for item in node.value:
                    known += size(item, total + known)
            sizes[id(node)] = known
        if total + known > MAX_NODES:
            raise LoadError(_loc(path, node.start_mark),
                            f"document expands to more than {MAX_NODES:,} values (aliases of aliases?)")
        return known

    size(root, 0)


class _Builder:
    def __init__(self, path: str) -> None:
        self.path = path
        self.constructor = yaml.SafeLoader("")
        self.nodes = 0

    def build(self, node: yaml.Node) -> Any:
        where = _loc(self.path, node.start_mark)
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise LoadError(where, f"document expands to more than {MAX_NODES:,} values (aliases of aliases?)")
        if isinstance(node, yaml.MappingNode):
            self.constructor.flatten_mapping(node)
            out = LDict()
            out.where = where
            out.key_where = {}
            out.value_where = {}
            for key_node, value_node in node.value:
                key = self.build(key_node)
                key_loc = _loc(self.path, key_node.start_mark)
                if not isinstance(key, (str, int, float, bool)) or key is None:
                    raise LoadError(key_loc, "mapping keys must be plain scalars")
                skey = str(key)
                if skey in out:
                    raise LoadError(key_loc, f"duplicate key {skey!r}")
                out[skey] = self.build(value_node)
                out.key_where[skey] = key_loc
                out.value_where[skey] = _loc(self.path, value_node.start_mark)
            return out
        if isinstance(node, yaml.SequenceNode):
            seq = LList(self.build(item) for item in node.value)
            seq.where = where
            seq.item_where = [_loc(self.path, item.start_mark) for item in node.value]
            return seq
        value = self.constructor.construct_object(node, deep=True)
        if isinstance(value, str):
            s = LStr(value)
            s.where = where
            s.style = node.style if isinstance(node, yaml.ScalarNode) else None
            return s
        return value


def load_text(text: str, path: str) -> Any:
    """Parse one YAML document from text; raise LoadError with its place."""
    try:
        node = yaml.compose(text, Loader=_LOADER)
    except RecursionError:
        raise LoadError(Location(path), "YAML nested too deeply") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        raise LoadError(_loc(path, mark), f"YAML syntax error: {problem}") from None
    except yaml.YAMLError as exc:
        raise LoadError(Location(path), f"YAML error: {exc}") from None
    except (ValueError, OverflowError) as exc:
        # PyYAML's scanner lets these out for escapes such as "\U80000000" (out of range).
        raise LoadError(Location(path), f"YAML syntax error: bad escape sequence ({exc})") from None
    if node is None:
        return None
    try:
        _check_size(path, node)
        return _Builder(path).build(node)
    except RecursionError:
        raise LoadError(_loc(path, node.start_mark), "YAML nested too deeply, or an alias that contains "
                                                     "itself") from None
    except yaml.constructor.ConstructorError as exc:
        raise LoadError(_loc(path, exc.problem_mark), f"YAML error: {exc.problem}") from None


def load_file(path: str | Path) -> Any:
    """Read and parse a YAML file; unreadable or non-UTF-8 files are LoadErrors."""
    p = str(path)
    try:
        data = Path(p).read_bytes()
    except OSError as exc:
        raise LoadError(Location(p), f"cannot read: {exc.strerror or exc}{access_hint(exc)}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LoadError(Location(p), f"not UTF-8 text (byte {exc.start})") from None
    return load_text(text, p)
