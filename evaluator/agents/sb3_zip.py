"""Read a Stable-Baselines3 `.zip` as data: `zipfile` + `json` + raw bytes, nothing executed.

Sizes are checked from the zip's central directory before anything is decompressed, and every
read is capped at the declared size (`zipfile` also stops there and checks the CRC). The
`":serialized:"` fields of `data` (base64 pickles) are kept as opaque strings and never
decoded: the loader only looks at their readable siblings.
"""

from __future__ import annotations

import json
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from evaluator.errors import CorruptFileError, TooLargeError, UnsupportedFormatError
from evaluator.text import clean_text, clean_tree

MAX_ENTRIES = 64
MAX_ZIP_BYTES = 512 * 1024 * 1024  # the .zip file itself
MAX_DATA_BYTES = 16 * 1024 * 1024  # the `data` JSON (holds e.g. base64 `_last_obs`)
MAX_MEMBER_BYTES = 256 * 1024 * 1024  # any one member, uncompressed (policy.pth is the big one)
MAX_TOTAL_BYTES = 768 * 1024 * 1024  # all members, uncompressed (optimizer states included)
MAX_JSON_DEPTH = 64
MAX_DIRECTORY_BYTES = 1024 * 1024  # the central directory (an SB3 save's is well under 1 KB)

_EOCD = struct.Struct("<4s4H2LH")  # end of central directory record
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")
_MAX_COMMENT = 0xFFFF


@dataclass(frozen=True)
class SB3Zip:
    """What the loader needs from an SB3 save: `data` as JSON, the version, the policy bytes."""

    data: dict[str, Any]
    policy_pth: bytes
    sb3_version: str | None
    members: tuple[str, ...]


def _clip(name: str, limit: int = 120) -> str:
    """A member name for an error message (zip names may be 64 KB long)."""
    return repr(clean_text(name, limit))


def _check_member_name(name: str) -> None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise CorruptFileError(
            f"The agent zip has a member with an unsafe path {_clip(name)} (absolute or with '..'); "
            "re-save the model with SB3's `model.save()`."
        )


def _json_depth(obj: Any, depth: int = 0) -> int:
    if depth > MAX_JSON_DEPTH:
        return depth
    if isinstance(obj, dict):
        return max((_json_depth(v, depth + 1) for v in obj.values()), default=depth + 1)
    if isinstance(obj, list):
        return max((_json_depth(v, depth + 1) for v in obj), default=depth + 1)
    return depth


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    if info.flag_bits & 0x1:
        raise UnsupportedFormatError(f"The agent zip member {_clip(info.filename)} is encrypted.")
    if info.file_size > limit:
        raise TooLargeError(
            f"The agent zip member {_clip(info.filename)} is {info.file_size} bytes uncompressed (limit {limit})."
        )
    try:
        with zf.open(info) as handle:
            content = handle.read(limit + 1)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, ValueError) as exc:
        raise CorruptFileError(
            f"Cannot read {_clip(info.filename)} from the agent zip ({str(exc)[:300]}); the file is "
            "truncated or corrupt: re-upload it."
        ) from exc
    if len(content) > limit:
        raise TooLargeError(f"The agent zip member {_clip(info.filename)} exceeds {limit} bytes.")
    return content


def _directory_size(path: Path, size: int) -> tuple[int, int]:
    """(entry count, central directory bytes) as the End Of Central Directory record (or its
    zip64 twin) declares them, read from the file's tail the way `zipfile` finds it, so both can
    be checked before `zipfile` parses the whole directory into memory."""
    not_a_zip = CorruptFileError(
        f"{path.name!r} is not a readable zip file (no end of central directory): an SB3 agent is "
        "the `.zip` written by `model.save()`; the upload may be truncated."
    )
    try:
        with path.open("rb") as handle:
            tail_start = max(size - _EOCD.size - _MAX_COMMENT, 0)
            handle.seek(tail_start)
            tail = handle.read(size - tail_start)
            if len(tail) >= _EOCD.size and tail[-_EOCD.size :][:4] == b"PK\x05\x06" and tail[-2:] == b"\0\0":
                at = len(tail) - _EOCD.size  # no archive comment: the record is the last 22 bytes
            else:
                at = tail.rfind(b"PK\x05\x06")
                if at < 0 or len(tail) - at < _EOCD.size:
                    raise not_a_zip
            _sig, _disk, _cd_disk, entries_here, entries, cd_size, _cd_offset, _comment = _EOCD.unpack_from(tail, at)
            locator_at = tail_start + at - _ZIP64_LOCATOR.size
            if locator_at >= 0:
                handle.seek(locator_at)
                locator = handle.read(_ZIP64_LOCATOR.size)
                if len(locator) == _ZIP64_LOCATOR.size and locator[:4] == b"PK\x06\x07":
                    # zipfile reads the zip64 record right before the locator; so do we
                    record_at = locator_at - _ZIP64_EOCD.size
                    if record_at >= 0:
                        handle.seek(record_at)
                        record = handle.read(_ZIP64_EOCD.size)
                        if len(record) == _ZIP64_EOCD.size and record[:4] == b"PK\x06\x06":
                            fields = _ZIP64_EOCD.unpack(record)
                            entries_here, entries, cd_size = fields[6], fields[7], fields[8]
    except OSError as exc:
        raise CorruptFileError(f"Cannot read the agent file {path.name!r}: {exc}") from exc
    return max(entries_here, entries), cd_size


def read_sb3_zip(path: Path) -> SB3Zip:
    """Open `path`, check its central directory, and return `data`, version and `policy.pth`."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise CorruptFileError(f"Cannot read the agent file {path.name!r}: {exc}") from exc
    if size > MAX_ZIP_BYTES:
        raise TooLargeError(f"The agent file {path.name!r} is {size} bytes (limit {MAX_ZIP_BYTES}).")
    declared_entries, directory_bytes = _directory_size(path, size)
    if declared_entries > MAX_ENTRIES:
        raise TooLargeError(
            f"The agent zip {path.name!r} declares {declared_entries} entries (an SB3 save has about 6; "
            f"limit {MAX_ENTRIES})."
        )
    if directory_bytes > MAX_DIRECTORY_BYTES:
        raise TooLargeError(
            f"The agent zip {path.name!r} has a {directory_bytes}-byte central directory "
            f"(limit {MAX_DIRECTORY_BYTES}); refused before reading it."
        )
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        raise CorruptFileError(
            f"{path.name!r} is not a readable zip file ({exc}): an SB3 agent is the `.zip` written "
            "by `model.save()`; the upload may be truncated."
        ) from exc
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_ENTRIES:
            raise TooLargeError(
                f"The agent zip {path.name!r} has {len(infos)} entries (an SB3 save has about 6; limit {MAX_ENTRIES})."
            )
        if infos and min(info.header_offset for info in infos) != 0:
            # The directory found is not the file's own: a truncated save whose tail is gone, so
            # `zipfile` found the directory of the zip nested inside (policy.pth is a torch zip).
            raise CorruptFileError(
                f"{path.name!r} is not a readable zip file: it looks truncated (its own central "
                "directory is missing); re-upload it."
            )
        total = 0
        for info in infos:
            _check_member_name(info.filename)
            if info.file_size > MAX_MEMBER_BYTES:
                raise TooLargeError(
                    f"The agent zip member {_clip(info.filename)} is {info.file_size} bytes uncompressed "
                    f"(limit {MAX_MEMBER_BYTES})."
                )
            total += info.file_size
        if total > MAX_TOTAL_BYTES:
            raise TooLargeError(
                f"The agent zip {path.name!r} holds {total} bytes uncompressed (limit {MAX_TOTAL_BYTES})."
            )
        by_name = {info.filename: info for info in infos}
        missing = [name for name in ("data", "policy.pth") if name not in by_name]
        if missing:
            raise UnsupportedFormatError(
                f"{path.name!r} is a zip but not a Stable-Baselines3 save: it lacks "
                f"{', '.join(missing)} (members: {', '.join(_clip(n, 40) for n in sorted(by_name)[:16]) or 'none'})."
            )
        raw_data = _read_member(zf, by_name["data"], MAX_DATA_BYTES)
        policy_pth = _read_member(zf, by_name["policy.pth"], MAX_MEMBER_BYTES)
        version = None
        if "_stable_baselines3_version" in by_name:
            raw_version = _read_member(zf, by_name["_stable_baselines3_version"], 64)
            version = clean_text(raw_version.decode("utf-8", errors="replace").strip(), 64) or None
    try:
        data = clean_tree(json.loads(raw_data.decode("utf-8")))  # where the zip's text enters: sanitised
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CorruptFileError(f"The `data` member of {path.name!r} is not valid JSON ({str(exc)[:300]}).") from exc
    if not isinstance(data, dict):
        raise CorruptFileError(f"The `data` member of {path.name!r} is not a JSON object.")
    if _json_depth(data) > MAX_JSON_DEPTH:
        raise CorruptFileError(f"The `data` member of {path.name!r} is nested too deeply.")
    return SB3Zip(data=data, policy_pth=policy_pth, sb3_version=version, members=tuple(by_name))
