"""Model-card front matter -> `cardData` and `tags`, as the Hub derives them."""

from __future__ import annotations

import json

import yaml

MAX_FRONT_MATTER_CHARS = 100_000


MAX_FLOW_DEPTH = 64  # PyYAML scans deeply nested flow collections in quadratic time


def _flow_depth(text: str) -> int:
    depth = deepest = 0
    for char in text:
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth = max(0, depth - 1)
    return deepest


MAX_SEXAGESIMAL_CHARS = 24  # YAML 1.1 base-60 numbers: PyYAML computes long ones in quadratic time


class _NoAliasLoader(yaml.SafeLoader):
    """Safe YAML without aliases (a few hundred bytes of nested aliases expand to gigabytes) and
    without long base-60 numbers (`1:2:3:...`: slow, and a float one overflows)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.events.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "YAML aliases are not accepted",
                                              self.peek_event().start_mark)
        return super().compose_node(parent, index)

    def _check_number(self, node):
        if ":" in str(node.value) and len(str(node.value)) > MAX_SEXAGESIMAL_CHARS:
            raise yaml.constructor.ConstructorError(None, None, "long base-60 numbers are not accepted",
                                                    node.start_mark)

    def construct_yaml_int(self, node):
        self._check_number(node)
        return super().construct_yaml_int(node)

    def construct_yaml_float(self, node):
        self._check_number(node)
        return super().construct_yaml_float(node)


_NoAliasLoader.add_constructor("tag:yaml.org,2002:int", _NoAliasLoader.construct_yaml_int)
_NoAliasLoader.add_constructor("tag:yaml.org,2002:float", _NoAliasLoader.construct_yaml_float)


def front_matter(readme: str) -> dict:
    """The YAML block between the leading `---` lines as JSON-safe data (dates become ISO
    strings), or {} when absent, too large or malformed."""
    if not readme.startswith("---"):
        return {}
    end = readme.find("\n---", 3)
    if end < 0 or end > MAX_FRONT_MATTER_CHARS or _flow_depth(readme[3:end]) > MAX_FLOW_DEPTH:
        return {}
    try:
        data = yaml.load(readme[3:end], Loader=_NoAliasLoader)  # noqa: S506  # safe: SafeLoader subclass
        data = json.loads(json.dumps(data, default=str))
    except (yaml.YAMLError, ArithmeticError, ValueError, TypeError, AttributeError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def tags_from_card(card: dict) -> list[str]:
    """The card's own tags plus the library, license and datasets, like the Hub's tag list."""
    tags: list[str] = []
    raw = card.get("tags") or []
    if isinstance(raw, str):
        raw = [raw]
    tags.extend(str(t) for t in raw if isinstance(t, (str, int, float)))
    if isinstance(card.get("library_name"), str):
        tags.append(card["library_name"])
    if isinstance(card.get("license"), str):
        tags.append(f"license:{card['license']}")
    datasets = card.get("datasets") or []
    if isinstance(datasets, str):
        datasets = [datasets]
    tags.extend(f"dataset:{d}" for d in datasets if isinstance(d, str))
    seen: set[str] = set()
    return [t for t in tags if not (t in seen or seen.add(t))]
