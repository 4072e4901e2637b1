"""YAML from repos (model cards, RL Zoo configs): `yaml.SafeLoader` without anchors or aliases
(a few hundred bytes of nested aliases expand to gigabytes once walked), bounded before and
while parsing, so a hostile document costs milliseconds, on any thread (no signal-based
timeouts: cards are also parsed off the main thread, in the Space and in Ray tasks):

- before: at most MAX_YAML_CHARS characters, MAX_FLOW_COLLECTIONS flow collections (`[`, `{`)
  nested at most MAX_YAML_DEPTH deep (PyYAML scans flow collections slowly);
- while: at most MAX_YAML_NODES nodes, nesting at most MAX_YAML_DEPTH, and no long base-60
  numbers (`1:2:3:...`, YAML 1.1 sexagesimal: PyYAML computes them in quadratic time).
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from evaluator.errors import CorruptFileError, TooLargeError, UnsafeContentError

MAX_YAML_DEPTH = 64
MAX_YAML_CHARS = 256_000
MAX_FLOW_COLLECTIONS = 2_000
MAX_YAML_NODES = 5_000  # a course card holds about 50, an RL Zoo config.yml fewer than 100
MAX_SEXAGESIMAL_CHARS = 24  # `190:20:30.15` is YAML 1.1's example; nobody writes more
_FLOW = re.compile(r"[\[\]{}]")


def check_structure(text: str | bytes, *, max_chars: int = MAX_YAML_CHARS) -> None:
    """Refuse a document that is too large or holds too many or too deep flow collections,
    before any parsing (a linear scan)."""
    if len(text) > max_chars:
        raise TooLargeError(f"The YAML is {len(text):,} characters long (limit {max_chars:,}).")
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    opened = depth = 0
    for match in _FLOW.finditer(text):
        if match.group() in "[{":
            opened += 1
            depth += 1
            if opened > MAX_FLOW_COLLECTIONS:
                raise CorruptFileError(f"The YAML holds more than {MAX_FLOW_COLLECTIONS:,} flow collections.")
            if depth > MAX_YAML_DEPTH:
                raise CorruptFileError(f"The YAML is nested more than {MAX_YAML_DEPTH} levels deep.")
        else:
            depth = max(0, depth - 1)


class StrictSafeLoader(yaml.SafeLoader):
    """Refuses anchors and aliases (UnsafeContentError), oversized or flow-heavy documents,
    more than MAX_YAML_NODES nodes, nesting deeper than MAX_YAML_DEPTH and long base-60
    numbers (CorruptFileError / TooLargeError), before the offending node is composed."""

    _depth = 0
    _nodes = 0

    def __init__(self, stream: Any) -> None:
        if isinstance(stream, (str, bytes)):
            check_structure(stream)
        super().__init__(stream)

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise UnsafeContentError(
                "The YAML uses anchors or aliases (`&name` / `*name`): they can expand into huge "
                "documents; write the values out."
            )
        if self._depth >= MAX_YAML_DEPTH:
            raise CorruptFileError(f"The YAML is nested more than {MAX_YAML_DEPTH} levels deep.")
        self._nodes += 1
        if self._nodes > MAX_YAML_NODES:
            raise CorruptFileError(f"The YAML holds more than {MAX_YAML_NODES:,} values.")
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def _check_number(self, node: yaml.ScalarNode) -> None:
        value = str(node.value)
        if ":" in value and len(value) > MAX_SEXAGESIMAL_CHARS:
            raise CorruptFileError(f"The YAML holds a base-60 number of {len(value):,} characters: refused.")

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        self._check_number(node)
        return super().construct_yaml_int(node)

    def construct_yaml_float(self, node: yaml.ScalarNode) -> float:
        self._check_number(node)
        return super().construct_yaml_float(node)


StrictSafeLoader.add_constructor("tag:yaml.org,2002:int", StrictSafeLoader.construct_yaml_int)
StrictSafeLoader.add_constructor("tag:yaml.org,2002:float", StrictSafeLoader.construct_yaml_float)
