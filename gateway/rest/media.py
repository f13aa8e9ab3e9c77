"""Media types of UPS-RS payloads (PS3.18 §8.7, §11.1.3): DICOM JSON (the default) or the XML
Native DICOM Model, as multipart/related parts or a bare document.

Requests: ``Content-Type`` decides — ``application/dicom+json`` (or ``application/json``),
``application/dicom+xml``, or ``multipart/related`` with ``type=`` either of them and exactly one
part (every UPS-RS request payload is one dataset). Responses: the ``accept`` query parameter
when present (PS3.18 §8.3.3.1; it takes the Accept header's place), else the ``Accept`` header;
the supported media range with the highest ``q`` wins, DICOM JSON on a tie; ``q=0`` refuses a
type. Nothing acceptable → 406.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from aiohttp import web

from gateway.ups.errors import InvalidDataset

DICOM_JSON = "application/dicom+json"
DICOM_XML = "application/dicom+xml"
MULTIPART = "multipart/related"
JSON_TYPES = frozenset((DICOM_JSON, "application/json"))


@dataclass(frozen=True)
class Choice:
    xml: bool  # else DICOM JSON
    multipart: bool = True  # XML as multipart/related (a bare document only when asked so)


JSON = Choice(xml=False, multipart=False)
XML_PARTS = Choice(xml=True)
XML_DOCUMENT = Choice(xml=True, multipart=False)


# ---- what a request carries ----------------------------------------------------------------------

def payload_kind(content_type: str) -> tuple[str, bytes | None] | None:
    """``("json" | "xml", boundary or None)`` for a request's Content-Type, None if neither."""
    media, params = parse_media(content_type)
    if media in JSON_TYPES:
        return "json", None
    if media == DICOM_XML:
        return "xml", None
    if media == MULTIPART:
        root = params.get("type", "").lower()
        kind = "xml" if root == DICOM_XML else "json" if root in JSON_TYPES else None
        boundary = params.get("boundary")
        if kind is None:
            return None
        if not boundary:
            raise InvalidDataset("the multipart/related Content-Type has no boundary parameter")
        return kind, boundary.encode("latin-1", "replace")
    return None


def single_part(body: bytes, boundary: bytes, kind: str) -> tuple[str, bytes]:
    """The one part of a multipart/related body: its kind and its bytes (RFC 2046 §5.1)."""
    parts = split_parts(body, boundary)
    if len(parts) != 1:
        raise InvalidDataset(f"the multipart payload must hold exactly one dataset, got "
                             f"{len(parts)} parts")
    headers, content = parts[0]
    media = parse_media(headers.get("content-type", ""))[0]
    if media in JSON_TYPES:
        return "json", content
    if media in ("", DICOM_XML):  # no Content-Type of its own: the root type
        return ("xml" if media == DICOM_XML else kind), content
    raise InvalidDataset(f"a part's Content-Type {media} is not {DICOM_XML} or {DICOM_JSON}")


def split_parts(body: bytes, boundary: bytes) -> list[tuple[dict[str, str], bytes]]:
    delimiter = b"--" + boundary
    if not body.startswith(delimiter):
        at = body.find(b"\r\n" + delimiter)
        if at < 0:
            raise InvalidDataset("the multipart payload does not contain its boundary")
        body = body[at + 2:]
    chunks = body.split(b"\r\n" + delimiter)
    first, rest = chunks[0], chunks[1:]
    pieces = [first[len(delimiter):]] + rest
    parts = []
    for piece in pieces:
        if piece.startswith(b"--"):  # the close delimiter: what follows is the epilogue
            return parts
        line_end = piece.find(b"\r\n")
        if line_end < 0 or piece[:line_end].strip(b" \t"):
            raise InvalidDataset("the multipart payload is malformed after a boundary")
        piece = piece[line_end + 2:]
        head_end = piece.find(b"\r\n\r\n")
        if piece.startswith(b"\r\n"):
            head, content = b"", piece[2:]
        elif head_end < 0:
            raise InvalidDataset("a part of the multipart payload has no end of its headers")
        else:
            head, content = piece[:head_end], piece[head_end + 4:]
        headers = {}
        for line in head.decode("latin-1").split("\r\n"):
            name, sep, value = line.partition(":")
            if not sep:
                raise InvalidDataset(f"a part header is malformed: {line[:60]!r}")
            headers[name.strip().lower()] = value.strip()
        parts.append((headers, content))
    raise InvalidDataset("the multipart payload has no close delimiter")


# ---- what a response may be ------------------------------------------------------------------

def negotiate(request: web.Request) -> Choice:
    """The response media type: from ``?accept=`` when present, else the Accept header."""
    offered = request.query.get("accept")
    source = "accept parameter" if offered is not None else "Accept header"
    text = offered if offered is not None else request.headers.get("Accept", "")
    if not text.strip():
        return JSON
    best: tuple | None = None  # (q, DICOM JSON first, the client's order), choice
    for position, part in enumerate(_split_list(text)):
        media, params = parse_media(part)
        try:
            q = float(params.get("q", "1"))
        except ValueError:
            continue  # an invalid value is ignored (§8.7.7)
        choice = _supported(media, params)
        if choice is None or q <= 0:
            continue
        rank = (q, not choice.xml, -position)
        if best is None or rank > best[0]:
            best = (rank, choice)
    if best is None:
        raise web.HTTPNotAcceptable(text=f"the {source} ({text[:100]}) accepts neither "
                                    f"{DICOM_JSON} nor multipart/related; type=\"{DICOM_XML}\"")
    return best[1]


def _supported(media: str, params: dict[str, str]) -> Choice | None:
    if media in JSON_TYPES or media in ("*/*", "application/*"):
        return JSON
    if media == DICOM_XML:
        return XML_DOCUMENT
    if media in (MULTIPART, "multipart/*"):
        root = params.get("type", "").lower()
        if root == DICOM_XML:
            return XML_PARTS
        if root in JSON_TYPES or root == "":
            return JSON  # (JSON has no multipart form here: the plain array is sent)
    return None


def parse_media(text: str) -> tuple[str, dict[str, str]]:
    """``type/subtype`` (lower case) and its parameters (names lower case, quotes removed)."""
    pieces = _split(text, ";")
    media = pieces[0].strip().lower() if pieces else ""
    params = {}
    for piece in pieces[1:]:
        name, sep, value = piece.partition("=")
        if sep:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1].replace('\\"', '"')
            params[name.strip().lower()] = value
    return media, params


def _split_list(text: str) -> list[str]:
    return [part for part in _split(text, ",") if part.strip()]


def _split(text: str, separator: str) -> list[str]:
    """Split at ``separator`` outside quoted strings."""
    parts, current, quoted = [], [], False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == separator and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def multipart(parts: list[bytes], media: str = DICOM_XML) -> tuple[bytes, str]:
    """A multipart/related body of ``parts`` and its Content-Type."""
    boundary = uuid.uuid4().hex
    head = f"--{boundary}\r\nContent-Type: {media}\r\n\r\n".encode()
    body = b"".join(head + part + b"\r\n" for part in parts) + f"--{boundary}--\r\n".encode()
    return body, f'{MULTIPART}; type="{media}"; boundary={boundary}'
