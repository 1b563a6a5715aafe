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

_MERGE_TAG = "tag:yaml.org,2002:merge"
_STR_TAG = yaml.resolver.BaseResolver.DEFAULT_SCALAR_TAG


class _UniqueKeyLoader(_SafeLoader):  # type: ignore[valid-type,misc]  # a base chosen at import: libyaml's or not
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
    own_pairs = node.value[len(node.value) - own :]
    # The usual key is a plain string, equal to another exactly when their texts are: compared as texts, no key
    # is built twice. At 10,000 probes (70,000 keys) read_document took 0.49-0.57 s, now 0.43-0.46 s.
    texts = {
        key_node.value for key_node, _ in own_pairs if key_node.tag == _STR_TAG and type(key_node) is yaml.ScalarNode
    }
    if len(texts) == own:  # none other than a distinct plain string
        return
    keys = set()
    for key_node, _ in own_pairs:
        key = loader.construct_object(key_node)
        try:
            duplicate = key in keys
        except TypeError:
            # An unhashable key (`? [a, b]`) raised TypeError, a traceback instead of a
            # ConfigError: SafeLoader's construct_mapping reports it as a YAML error.
            return
        if duplicate:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        keys.add(key)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def load_yaml(text: str) -> Any:
    """The document as `yaml.load(text, Loader=yaml.SafeLoader)` gives it, duplicate keys refused."""
    loader = _UniqueKeyLoader(text)
    try:
        return loader.get_single_data()
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
