"""The one sanitiser for text that comes from outside (a repo's card, file names, zip fields,
pickled names, a player's messages): data, never markup or terminal commands.

`clean_text` replaces lone surrogates (they make UTF-8 encoders, SQLite and pyarrow raise),
escapes every other character Python does not call printable: control characters (ANSI escapes,
carriage returns and newlines could draw fake lines on a terminal), invisible formatting
(bidirectional overrides, zero-width characters), private-use and unassigned code points, line
and paragraph separators and spaces other than ' '; and caps the length. Its output is always
printable, and it is idempotent: cleaning a clean string changes nothing. `clean_tree` applies it to every string
(and key) of parsed data (JSON, YAML), without a length cap.
"""

from __future__ import annotations

from typing import Any

DEFAULT_LIMIT = 2000
ELLIPSIS = "…"
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    if 0xD800 <= code <= 0xDFFF:
        return "\ufffd"  # a lone surrogate: not a character at all
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def clean_text(value: Any, limit: int | None = DEFAULT_LIMIT) -> str:
    """`value` as safe, printable text of at most `limit` characters (None: no cap)."""
    text = value if isinstance(value, str) else str(value)
    if limit is not None and len(text) > 4 * limit:
        text = text[: 4 * limit]  # escaping at most quadruples a character: enough to fill `limit`
    if not text.isprintable():  # the fast path: plain text is returned as it is
        text = "".join(ch if ch.isprintable() else _escape(ch) for ch in text)
    if limit is not None and len(text) > limit:
        text = text[: max(limit - 1, 0)] + ELLIPSIS
    return text


def clean_tree(value: Any, limit: int | None = None) -> Any:
    """Parsed data (dicts, lists, tuples, scalars) with every string and key cleaned."""
    if isinstance(value, str):
        return clean_text(value, limit)
    if isinstance(value, dict):
        return {clean_tree(k, limit): clean_tree(v, limit) for k, v in value.items()}
    if isinstance(value, list):
        return [clean_tree(v, limit) for v in value]
    if isinstance(value, tuple):
        return tuple(clean_tree(v, limit) for v in value)
    return value


def is_clean(text: str) -> bool:
    """True when `clean_text` would leave `text` as it is (no cap)."""
    return clean_text(text, None) == text
