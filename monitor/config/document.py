"""Reading the config file into plain data: YAML as SafeLoader builds it, duplicate keys refused."""

# No pydantic here, nor anything heavy: `run` forks the reading child (reader.py) before the models load.

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    pass


class ConfigError(Exception):
    """A configuration file that cannot be used; the message names file, key path and problem."""


# libyaml's parser when PyYAML has it: the pure-Python one needs ~10 s for 10,000 probes.
_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_STR_TAG = yaml.resolver.BaseResolver.DEFAULT_SCALAR_TAG
_MAP_TAG = yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG
_SEQ_TAG = yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG
# Scalars whose values are immutable and built from the text alone, so equal texts may share one.
_PLAIN_SCALAR_TAGS = frozenset(f"tag:yaml.org,2002:{name}" for name in ("null", "bool", "int", "float"))
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _UniqueKeyLoader(_SafeLoader):  # type: ignore[valid-type,misc]
    """A YAML loader that refuses duplicate mapping keys instead of keeping the last."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._plain_tags: dict[str, str] = {}

    def resolve(self, kind: type[yaml.Node], value: Any, implicit: tuple[bool, bool]) -> Any:
        # Called for every scalar: 10,000 probes repeat the same keys and values 100,000 times, and
        # a plain scalar's tag depends on its text alone (SafeLoader has no path resolvers).
        if kind is yaml.ScalarNode and implicit[0] and not self.yaml_path_resolvers:
            tag = self._plain_tags.get(value)
            if tag is None:
                tag = self._plain_tags[value] = super().resolve(kind, value, implicit)
            return tag
        return super().resolve(kind, value, implicit)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except yaml.YAMLError:
            raise
        except Exception:  # PyYAML lets `!!int x` or `!!timestamp x` escape as ValueError and the like
            if not isinstance(node, yaml.ScalarNode):
                raise
            kind = node.tag.rsplit(":", 1)[-1]
            raise yaml.constructor.ConstructorError(
                None, None, f"{node.value!r} is not a valid {kind}", node.start_mark
            ) from None


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.Node) -> Iterator[dict[Any, Any]]:
    """SafeLoader's construct_yaml_map (a generator, so a mapping may hold itself), refusing duplicates."""
    data: dict[Any, Any] = {}
    yield data
    if isinstance(node, yaml.MappingNode):  # else (`!!map [a]`) construct_mapping words the error
        _refuse_duplicate_keys(loader, node)
    data.update(loader.construct_mapping(node))


def _refuse_duplicate_keys(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> None:
    own = sum(1 for key_node, _ in node.value if key_node.tag != _MERGE_TAG)
    # As SafeLoader does before it builds a mapping: `<<: *base` puts base's pairs in front of the
    # mapping's own (which may override them, so only those are checked), `=` keys become strings.
    loader.flatten_mapping(node)
    keys = set()
    for key_node, _ in node.value[len(node.value) - own :]:
        key = loader.construct_object(key_node)
        try:
            duplicate = key in keys
        except TypeError:
            # An unhashable key (`? [a, b]`) raised TypeError, a traceback instead of a
            # ConfigError: SafeLoader's construct_mapping reports it as a YAML error.
            return
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        keys.add(key)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


class _Unusual(Exception):
    """A node beyond plain mappings, sequences and scalars: PyYAML's constructor builds the document."""


class _PlainBuilder:
    """PyYAML's SafeConstructor for the shapes a config has, at a fraction of its per-node cost.

    Anything else (other tags, merge keys, aliased collections, duplicate or complex keys) raises
    _Unusual; nodes are never modified, so PyYAML's constructor can start over on them."""

    def __init__(self, loader: _UniqueKeyLoader) -> None:
        self._loader = loader
        self._scalars: dict[tuple[str, str], Any] = {}
        self._seen: set[int] = set()  # collection nodes: an alias makes one appear twice

    def build(self, node: yaml.Node) -> Any:
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node)
        if id(node) in self._seen:
            raise _Unusual
        self._seen.add(id(node))
        if isinstance(node, yaml.MappingNode) and node.tag == _MAP_TAG:
            data: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    raise _Unusual  # a sequence or mapping key: unhashable, PyYAML words the error
                key = self._scalar(key_node)
                if key in data:
                    raise _Unusual  # a duplicate: _refuse_duplicate_keys words it, with its mark
                data[key] = self.build(value_node)
            return data
        if isinstance(node, yaml.SequenceNode) and node.tag == _SEQ_TAG:
            return [self.build(item) for item in node.value]
        raise _Unusual

    def _scalar(self, node: yaml.ScalarNode) -> Any:
        tag = node.tag
        if tag == _STR_TAG:
            return node.value
        if tag not in _PLAIN_SCALAR_TAGS:
            raise _Unusual  # timestamps, binary, merge keys, `=`, explicit application tags
        key = (tag, node.value)
        if key not in self._scalars:
            self._scalars[key] = self._loader.yaml_constructors[tag](self._loader, node)
        return self._scalars[key]


def load_yaml(text: str) -> Any:
    """The document as `yaml.load(text, Loader=yaml.SafeLoader)` gives it, duplicate keys refused."""
    loader = _UniqueKeyLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        try:
            return _PlainBuilder(loader).build(node)
        except Exception:  # any surprise, even a bad `!!int x`: PyYAML's constructor gives the answer or the error
            return loader.construct_document(node)
    finally:
        loader.dispose()


def read_document(path: Path | str) -> Any:
    """Read and parse a YAML config file, not yet validated; every failure is a ConfigError."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc.reason}") from None
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        if isinstance(exc, yaml.reader.ReaderError) and isinstance(exc.position, int):
            # Not a MarkedYAMLError: its str() spans two lines and names "<unicode string>".
            line = text.count("\n", 0, exc.position) + 1
            column = exc.position - text.rfind("\n", 0, exc.position)
            where = f"line {line}, column {column}: "
            char = f"#x{exc.character:04x}" if isinstance(exc.character, int) else repr(exc.character)
            problem = f"unacceptable character {char}: {exc.reason}"
        raise ConfigError(f"{path}: invalid YAML: {where}{problem}") from None
    return data
