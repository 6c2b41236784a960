"""Streaming reader of ALBEF-style annotation files: a JSON list of records or JSON lines.

Each record is an object with `image` (a path relative to an image root), `caption` (a string or
a list of strings) and optionally `image_id`. `iter_records` yields (line, record) with the
1-based line where the record starts, reading a few MiB at a time, so a file of millions of
records streams in constant memory; malformed input raises `AnnotationError` naming file:line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

_CHUNK = 1 << 22


class AnnotationError(ValueError):
    """A malformed annotation file or record; the message names the file and line."""


def _first_char(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        while chunk := f.read(4096):
            stripped = chunk.lstrip()
            if stripped:
                return stripped[0]
    return ""


def iter_records(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line, record) for every record of a JSON-list or JSON-lines annotation file."""
    path = os.fspath(path)
    if _first_char(path) == "[":
        yield from _iter_json_array(path)
    else:
        yield from _iter_json_lines(path)


def _iter_json_lines(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise AnnotationError(f"{path}:{line_no}: invalid JSON ({e.msg})") from None
            yield line_no, _check_record(record, path, line_no)


def _iter_json_array(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    decoder = json.JSONDecoder()
    with open(path, encoding="utf-8") as f:
        buf, pos, line, eof = "", 0, 1, False

        def more() -> bool:
            nonlocal buf, pos, eof
            if eof:
                return False
            chunk = f.read(_CHUNK)
            eof = not chunk
            buf, pos = buf[pos:] + chunk, 0
            return bool(chunk)

        def skip_space() -> str:
            nonlocal pos, line
            while True:
                while pos < len(buf) and buf[pos] in " \t\r\n":
                    line += buf[pos] == "\n"
                    pos += 1
                if pos < len(buf) or not more():
                    return buf[pos] if pos < len(buf) else ""

        if skip_space() != "[":
            raise AnnotationError(f"{path}:{line}: expected a JSON list")
        pos += 1
        expect_record = True
        while True:
            c = skip_space()
            if c == "]":
                return
            if c == "":
                raise AnnotationError(f"{path}:{line}: the JSON list is not closed")
            if not expect_record:
                if c != ",":
                    raise AnnotationError(f"{path}:{line}: expected ',' or ']' after a record")
                pos += 1
                expect_record = True
                continue
            while True:
                try:
                    record, end = decoder.raw_decode(buf, pos)
                    break
                except json.JSONDecodeError as e:
                    if not more():
                        bad_line = line + buf.count("\n", pos, e.pos)
                        msg = f"{path}:{bad_line}: invalid JSON ({e.msg})"
                        raise AnnotationError(msg) from None
            start_line = line
            line += buf.count("\n", pos, end)
            pos = end
            expect_record = False
            yield start_line, _check_record(record, path, start_line)


def _check_record(record: Any, path: str, line: int) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise AnnotationError(f"{path}:{line}: a record must be a JSON object, got {record!r:.60}")
    for key in ("image", "caption"):
        if key not in record:
            raise AnnotationError(f"{path}:{line}: record has no {key!r} (keys: {sorted(record)})")
    if not isinstance(record["image"], str) or not record["image"]:
        raise AnnotationError(f"{path}:{line}: 'image' must be a non-empty string")
    captions = record["caption"]
    captions = [captions] if isinstance(captions, str) else captions
    if (
        not isinstance(captions, list)
        or not captions
        or not all(isinstance(c, str) and c.strip() for c in captions)
    ):
        raise AnnotationError(
            f"{path}:{line}: 'caption' must be a non-empty string or a list of them, "
            f"got {record['caption']!r:.60}"
        )
    return record


def captions_of(record: dict[str, Any]) -> list[str]:
    """A record's captions as a list (one training pair each)."""
    caption = record["caption"]
    return [caption] if isinstance(caption, str) else list(caption)
