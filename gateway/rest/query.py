"""UPS-RS query parameters (PS3.18 §8.3.4, §11.9, §11.11) read into the core's queries and terms.

Names are compared case-insensitively; attributes may be named by keyword or tag, nested ones as
``Sequence.Attribute``. Unknown parameters are ignored as PS3.18 8.3.4 allows, except inside an
explicit ``filter=`` list, where ignoring one would silently widen a subscription. A search key
that is a DICOM attribute of the data dictionary is matched under the general rules, whether or
not the UPS IOD has it (as C-FIND matches it); one that cannot be matched (a private or unknown
tag, a binary VR, the Transaction UID) is ignored — returned, not matched — and the answer says
so in a Warning (``Search.warnings``). Only a malformed parameter (a bad value, an unknown
``includefield`` name, text that does not decode) is a 400.

The query string is read as sent (``query_pairs``): percent-escapes are decoded as UTF-8 (not
valid UTF-8 → 400). An unencoded ``+`` is a plus sign in the values of date and time attributes
(DA, DT, TM) and of Timezone Offset From UTC — where it can only be a UTC offset (``+0100``) and a
space is never valid — and a space elsewhere, as the form encoding of most HTTP clients
(URLSearchParams, requests, aiohttp) writes ``IN PROGRESS``. ``%2B`` is always a plus.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timezone
from urllib.parse import unquote

from gateway.ups import matching
from gateway.ups import tags as t
from gateway.ups.dataset import dictionary_vr, resolve
from gateway.ups.dicomtime import UTC, parse_offset
from gateway.ups.errors import InvalidQuery
from gateway.ups.vr import BINARY_VRS

_CONTROL = frozenset(("accept", "charset", "requester"))
_NOT_FILTER = frozenset(("deletionlock", "filter", "accept", "charset"))


UNSUPPORTED_MATCHING = {
    "emptyvaluematching": "The emptyvaluematching parameter is not supported. "
                          "Empty Value Matching has not been performed.",
    "multiplevaluematching": "The multiplevaluematching parameter is not supported. "
                             "Multiple Value Matching has not been performed.",
}


@dataclass
class Search:
    """A Search Workitems request: the core's query and the Warning texts its answer carries."""

    query: matching.Query
    warnings: list[str] = field(default_factory=list)


_PLUS_VRS = frozenset(("DA", "DT", "TM"))


def query_pairs(raw: str) -> list[tuple[str, str]]:
    """The (name, value) pairs of a raw query string, decoded strictly (see the module's
    docstring); ``InvalidQuery`` for an escape that is not UTF-8."""
    pairs = []
    for part in raw.split("&"):
        if part:
            raw_name, _, raw_value = part.partition("=")
            name = _unquote(raw_name.replace("+", " "), part)
            if name.lower() == "filter":  # Key=Value,Key=Value: each value as its key says
                value = ",".join(_filter_part(item, part) for item in raw_value.split(","))
            else:
                value = _unquote(_plus(name, raw_value), part)
            pairs.append((name, value))
    return pairs


def _filter_part(item: str, part: str) -> str:
    raw_key, sep, raw_text = item.partition("=")
    key = _unquote(raw_key.replace("+", " "), part)
    return f"{key}{sep}{_unquote(_plus(key, raw_text), part)}"


def _plus(name: str, raw_value: str) -> str:
    """``raw_value`` with each unencoded ``+`` made what it means for the attribute ``name``."""
    if "+" not in raw_value:
        return raw_value
    if name in ("TimezoneOffsetFromUTC", t.TimezoneOffsetFromUTC):
        return raw_value
    path = attribute_path(name.strip())
    vr = dictionary_vr(path[-1]) if path else None
    return raw_value if vr in _PLUS_VRS else raw_value.replace("+", " ")


def _unquote(text: str, part: str) -> str:
    try:
        return unquote(text, errors="strict")
    except UnicodeDecodeError:
        shown = part if len(part) <= 80 else part[:77] + "..."
        raise InvalidQuery(f"{shown!r}: a percent-encoded value that is not valid UTF-8") from None


def search_query(params: list[tuple[str, str]], *, tz: timezone = UTC, default_limit: int = 100,
                 max_limit: int = 1000) -> matching.Query:
    """The Search Workitems query of these parameters."""
    return search_request(params, tz=tz, default_limit=default_limit, max_limit=max_limit).query


def search_request(params: list[tuple[str, str]], *, tz: timezone = UTC, default_limit: int = 100,
                   max_limit: int = 1000) -> Search:
    """The Search Workitems query of these parameters, and what its answer must warn of."""
    query = matching.Query(limit=default_limit, store_tz=tz)
    search = Search(query)
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
            if number == 0:
                raise InvalidQuery("limit: 0 asks for no results; give 1 or more (the largest "
                                   f"page is {max_limit})")
            if number > max_limit:
                search.warnings.append(f"limit {number} exceeds the largest page of {max_limit} "
                                       f"results; {max_limit} are returned per page")
            query.limit = min(number, max_limit)
        elif lower in UNSUPPORTED_MATCHING:
            if _boolean(name, value):
                search.warnings.append(UNSUPPORTED_MATCHING[lower])
        elif lower in _CONTROL:
            continue
        elif name in ("TimezoneOffsetFromUTC", t.TimezoneOffsetFromUTC):
            key_tz = _offset(value, tz)
        else:
            terms.append((name, value))
    ignored = []
    for name, value in terms:
        path = attribute_path(name)
        if path is None:
            continue  # not a DICOM attribute: an unknown parameter (PS3.18 §8.3.4: ignored)
        if not _matchable(path):
            ignored.append(name)
            if path[0] not in matching.NEVER_RETURNED:
                query.include.add(path[0])  # returned (empty when absent), never matched
            continue
        # Any attribute of the data dictionary is matched under the general rules, the UPS
        # IOD's and others alike, as C-FIND matches them (one rule for both protocols).
        tag, node = matching.build_key(path, value, key_tz, top_level=False)
        matching.merge(query.keys, tag, node, name)
    if ignored:
        search.warnings.append("The following attributes are not supported as matching keys; "
                               f"they were ignored: {', '.join(ignored)}")
    return search


def _matchable(path: list[str]) -> bool:
    """Whether the attribute ``path`` can be matched: in the data dictionary (a private or
    unknown tag cannot), not the Transaction UID (never matched nor returned), not of a binary
    VR, at every level."""
    if path[0] in matching.NEVER_RETURNED:
        return False
    for tag in path:
        vr = dictionary_vr(tag)
        if vr is None or set(vr.split(" or ")) <= BINARY_VRS:
            return False
    return True


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
