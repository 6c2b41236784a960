"""Streaming reader of ALBEF-style annotation files: a JSON list of records or JSON lines.

Each record is an object with `image` (a path relative to an image root), `caption` (a string or
a list of strings) and optionally `image_id`. `iter_records` yields (line, record) with the
1-based line where the record starts, reading a few MiB at a time, so a file of millions of
records streams in constant memory; malformed input raises `AnnotationError` naming file:line,
or with `on_error="skip"` yields (line, None) for a malformed record and goes on (a JSON list
whose syntax is broken cannot be resynchronised and always raises).
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


def iter_records(
    path: str | os.PathLike, on_error: str = "raise"
) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """(line, record) for every record of a JSON-list or JSON-lines annotation file; with
    `on_error="skip"`, (line, None) for each malformed record instead of raising."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error={on_error!r}; use 'raise' or 'skip'")
    path = os.fspath(path)
    records = _iter_json_array(path) if _first_char(path) == "[" else _iter_json_lines(path)
    for line, record in records:
        try:
            yield line, _check_record(record, path, line)
        except AnnotationError:
            if on_error == "raise":
                raise
            yield line, None


class _InvalidLine:
    """A JSON-lines line that does not parse, carried to `_check_record` to raise or skip."""

    def __init__(self, message: str) -> None:
        self.message = message


def _iter_json_lines(path: str) -> Iterator[tuple[int, Any]]:
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                record = _InvalidLine(f"invalid JSON ({e.msg})")
            yield line_no, record


def _iter_json_array(path: str) -> Iterator[tuple[int, Any]]:
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
            yield start_line, record


def _check_record(record: Any, path: str, line: int) -> dict[str, Any]:
    if isinstance(record, _InvalidLine):
        raise AnnotationError(f"{path}:{line}: {record.message}")
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
