"""multipart/related (RFC 2387) for DICOMweb: a streaming writer and a parser."""

from __future__ import annotations

import re
import uuid
from typing import Iterable, Iterator

_BOUNDARY_RE = re.compile(r'boundary\s*=\s*(?:"([^"]+)"|([^;\s]+))', re.I)
_TYPE_RE = re.compile(r'(?:^|;)\s*type\s*=\s*(?:"([^"]+)"|([^;\s]+))', re.I)


def new_boundary() -> str:
    return f"osirixpy-{uuid.uuid4().hex}"


def content_type(part_type: str, boundary: str, transfer_syntax: str | None = None) -> str:
    ts = f"; transfer-syntax={transfer_syntax}" if transfer_syntax else ""
    return f'multipart/related; type="{part_type}"; boundary={boundary}{ts}'


def stream_parts(parts: Iterable[tuple[dict[str, str], bytes]], boundary: str) -> Iterator[bytes]:
    """Chunks of a multipart body; *parts* may be a lazy iterator (files read one at a time)."""
    b = boundary.encode("ascii")
    for headers, body in parts:
        head = b"--" + b + b"\r\n" + b"".join(
            f"{k}: {v}\r\n".encode("latin-1") for k, v in headers.items()) + b"\r\n"
        yield head
        yield body
        yield b"\r\n"
    yield b"--" + b + b"--\r\n"


def part_head(headers: dict[str, str], boundary: str) -> bytes:
    """The delimiter and header lines that open one part."""
    return b"--" + boundary.encode("ascii") + b"\r\n" + b"".join(
        f"{k}: {v}\r\n".encode("latin-1") for k, v in headers.items()) + b"\r\n"


def closing(boundary: str) -> bytes:
    return b"--" + boundary.encode("ascii") + b"--\r\n"


def boundary_of(ctype: str) -> str | None:
    m = _BOUNDARY_RE.search(ctype or "")
    return (m.group(1) or m.group(2)) if m else None


def type_of(ctype: str) -> str | None:
    m = _TYPE_RE.search(ctype or "")
    return (m.group(1) or m.group(2)).strip().lower() if m else None


class MultipartError(ValueError):
    pass


def parse(body: bytes, boundary: str) -> list[tuple[dict[str, str], bytes]]:
    """Split a multipart body into (headers with lower-case names, content) parts."""
    delim = b"--" + boundary.encode("latin-1")
    start = body.find(delim)
    if start < 0:
        raise MultipartError("the body does not contain the boundary of its Content-Type")
    parts = []
    pos = start + len(delim)
    while True:
        if body[pos:pos + 2] == b"--":
            break  # closing delimiter
        eol = body.find(b"\r\n", pos)
        if eol < 0:
            raise MultipartError("truncated multipart body")
        pos = eol + 2
        nxt = body.find(b"\r\n" + delim, pos)
        if nxt < 0:
            raise MultipartError("truncated multipart body (no closing boundary)")
        chunk = body[pos:nxt]
        hend = chunk.find(b"\r\n\r\n")
        if chunk.startswith(b"\r\n"):
            raw_headers, content = b"", chunk[2:]
        elif hend < 0:
            raise MultipartError("a part has no header/body separator")
        else:
            raw_headers, content = chunk[:hend], chunk[hend + 4:]
        headers = {}
        for line in raw_headers.split(b"\r\n"):
            if b":" in line:
                k, v = line.split(b":", 1)
                headers[k.decode("latin-1").strip().lower()] = v.decode("latin-1").strip()
        parts.append((headers, content))
        pos = nxt + 2 + len(delim)
    return parts
