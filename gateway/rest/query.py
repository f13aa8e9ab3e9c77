"""UPS-RS query parameters (PS3.18 §8.3.4, §11.9, §11.11) read into the core's queries and terms.

Names are compared case-insensitively; attributes may be named by keyword or tag, nested ones as
``Sequence.Attribute``. Unknown parameters are ignored as PS3.18 8.3.4 allows, except inside an
explicit ``filter=`` list, where ignoring one would silently widen a subscription.
"""

from __future__ import annotations

from datetime import timezone

from gateway.ups import matching
from gateway.ups import tags as t
from gateway.ups.dataset import resolve
from gateway.ups.dicomtime import UTC, parse_offset
from gateway.ups.errors import InvalidQuery

_CONTROL = frozenset(("accept", "charset", "requester"))
_NOT_FILTER = frozenset(("deletionlock", "filter", "accept", "charset"))


def search_query(params: list[tuple[str, str]], *, tz: timezone = UTC, default_limit: int = 100,
                 max_limit: int = 1000) -> matching.Query:
    """The Search Workitems query of these parameters."""
    query = matching.Query(limit=default_limit, store_tz=tz)
    terms: list[tuple[str, str]] = []
    key_tz = tz
    for name, value in params:
        lower = name.lower()
        if lower == "includefield":
            _include(query, value)
        elif lower == "fuzzymatching":
            query.fuzzy = _boolean(name, value)
        elif lower == "offset":
            query.offset = _count(name, value)
        elif lower == "limit":
            number = _count(name, value)
            query.limit = min(number, max_limit) if number else default_limit
        elif lower in ("emptyvaluematching", "multiplevaluematching"):
            _boolean(name, value)
        elif lower in _CONTROL:
            continue
        elif name in ("TimezoneOffsetFromUTC", t.TimezoneOffsetFromUTC):
            key_tz = _offset(value, tz)
        else:
            terms.append((name, value))
    for name, value in terms:
        path = attribute_path(name)
        if path is not None:
            matching.add_term(query, path, value, key_tz, name)
    return query


def filter_terms(params: list[tuple[str, str]], filtered: bool) -> matching.Terms | None:
    """A subscription's filter from ``filter=Key=Value,Key=Value`` and, for the Filtered Global
    Subscription (``filtered``), plain ``Key=Value`` parameters; None when there is none."""
    terms: matching.Terms = []
    for name, value in params:
        if name.lower() == "filter":
            for part in filter(None, value.split(",")):
                key, sep, text = part.partition("=")
                path = attribute_path(key.strip()) if sep else None
                if not sep:
                    raise InvalidQuery(f"filter: {part!r} is not Key=Value")
                if path is None:
                    raise InvalidQuery(f"filter: {key.strip()!r} is not a UPS attribute keyword "
                                       "or tag")
                terms.append([".".join(path), text])
        elif filtered and name.lower() not in _NOT_FILTER:
            if name in ("TimezoneOffsetFromUTC", t.TimezoneOffsetFromUTC):
                terms.append([t.TimezoneOffsetFromUTC, value])
            elif (path := attribute_path(name)) is not None:
                terms.append([".".join(path), value])
    if not terms:
        return None
    matching.from_terms(terms)  # validate now: a bad key is the subscriber's 400, not later
    return terms


def attribute_path(name: str) -> list[str] | None:
    """``Sequence.Attribute`` (keywords or tags) as tag keys; None when it names no attribute."""
    try:
        return [resolve(part) for part in name.split(".")]
    except KeyError:
        return None


def _include(query: matching.Query, value: str) -> None:
    for name in filter(None, (f.strip() for f in value.split(","))):
        if name.lower() == "all":
            query.include_all = True
            continue
        path = attribute_path(name)
        if path is None:
            raise InvalidQuery(f"includefield: {name!r} is not a DICOM attribute keyword or tag")
        query.include.add(path[0])


def _offset(value: str, default: timezone) -> timezone:
    try:
        return parse_offset(value, default)
    except ValueError:
        raise InvalidQuery(f"TimezoneOffsetFromUTC: {value!r} is not +HHMM/-HHMM") from None


def _boolean(name: str, value: str) -> bool:
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise InvalidQuery(f"{name}: {value!r} must be true or false")


def _count(name: str, value: str) -> int:
    if not value.isdigit():
        raise InvalidQuery(f"{name}: {value!r} must be a non-negative integer")
    return int(value)
