"""The PS3.19 Native DICOM Model (``application/dicom+xml``) as the other spelling of DICOM JSON.

The REST edge converts once: a request's XML becomes a DICOM JSON object (``from_xml``), which is
then validated like any JSON payload (``ups.dataset.normalize``: every rule stays in one place);
a response's canonical DICOM JSON is written as XML (``to_xml``). The mapping, element by element
(PS3.19 A.1, PS3.18 F.2):

  DicomAttribute tag/vr (keyword, privateCreator)  ⇄  "GGGGEEEE": {"vr": …}
  Value number=n (text; empty element = empty value)  ⇄  "Value"[n-1] (null)
  PersonName number=n > Alphabetic|Ideographic|Phonetic > FamilyName, GivenName, MiddleName,
      NamePrefix, NameSuffix  ⇄  {"Alphabetic": "Family^Given^Middle^Prefix^Suffix", …}
  Item number=n > DicomAttribute…  ⇄  "Value"[n-1] = {…}
  InlineBinary (base64)  ⇄  "InlineBinary";  BulkData uri  ⇄  "BulkDataURI" (refused later)

Numbers of binary VRs (US, SS, UL, SL, UV, SV, FL, FD) become JSON numbers; IS and DS stay text
for ``normalize``, which reads them as it reads JSON strings. The XML written escapes what an XML
parser would otherwise change (CR, and tabs and newlines in attributes) so that text values
round-trip exactly; a value holding a character XML 1.0 cannot carry (e.g. form feed, allowed in
LT/ST/UT) cannot be written: ``NotRepresentable``.

Reading is strict about the document (UTF-8, one ``NativeDicomModel`` root, no DTD — so no
entity expansion) and liberal about the rest: the namespace may be absent, ``number`` may be
left out (document order), ``keyword`` and ``privateCreator`` are ignored (the tag decides), and
PS3.19-2011's ``SingleByte`` is read as ``Alphabetic``.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any

from pydicom.datadict import keyword_for_tag

from gateway.ups.dataset import MAX_DEPTH
from gateway.ups.errors import InvalidDataset

NAMESPACE = "http://dicom.nema.org/PS3.19/models/NativeDICOM"
PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")
PN_COMPONENTS = ("FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix")
_INTEGER_VRS = frozenset(("US", "SS", "UL", "SL", "UV", "SV"))
_FLOAT_VRS = frozenset(("FL", "FD"))
_TAG = re.compile(r"[0-9A-Fa-f]{8}")
# Characters XML 1.0 cannot carry at all (PS3.18 allows FF in LT/ST/UT).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


class NotRepresentable(Exception):
    """A dataset that has no XML form (the message names the attribute)."""


# ---- writing -----------------------------------------------------------------------------------

def to_xml(ds: dict) -> bytes:
    parts = ['<?xml version="1.0" encoding="UTF-8"?>\n'
             f'<NativeDicomModel xmlns="{NAMESPACE}" xml:space="preserve">']
    _write_dataset(ds, parts, "")
    parts.append("</NativeDicomModel>\n")
    return "".join(parts).encode("utf-8")


def _write_dataset(ds: dict, out: list[str], path: str) -> None:
    for tag in sorted(ds, key=str.upper):
        elem = ds[tag]
        vr = elem.get("vr", "UN")
        tag_int = int(tag, 16)
        keyword = keyword_for_tag(tag_int) or ""
        attrs = f'tag="{tag.upper()}" vr="{vr}"'
        if keyword:
            attrs += f' keyword="{keyword}"'
        creator = _private_creator(ds, tag_int)
        if creator:
            attrs += f' privateCreator="{_attr(creator, path + tag)}"'
        out.append(f"<DicomAttribute {attrs}>")
        where = f"{path}{tag}"
        if "InlineBinary" in elem:
            out.append(f"<InlineBinary>{_text(elem['InlineBinary'], where)}</InlineBinary>")
        elif "BulkDataURI" in elem:
            out.append(f'<BulkData uri="{_attr(elem["BulkDataURI"], where)}"/>')
        for n, value in enumerate(elem.get("Value") or (), 1):
            if vr == "SQ":
                out.append(f'<Item number="{n}">')
                _write_dataset(value or {}, out, f"{where}[{n}] > ")
                out.append("</Item>")
            elif vr == "PN":
                out.append(_person_name(n, value, where))
            elif value is None:
                out.append(f'<Value number="{n}"/>')
            else:
                out.append(f'<Value number="{n}">{_text(_scalar(value), where)}</Value>')
        out.append("</DicomAttribute>")


def _person_name(n: int, value: Any, where: str) -> str:
    if isinstance(value, str):
        value = {"Alphabetic": value}
    if not value:
        return f'<PersonName number="{n}"/>'
    groups = []
    for group in PN_GROUPS:
        text = value.get(group)
        if text is None:
            continue
        components = text.split("^")
        inner = "".join(f"<{name}>{_text(part, where)}</{name}>"
                        for name, part in zip(PN_COMPONENTS, components))
        groups.append(f"<{group}>{inner}</{group}>")
    return f'<PersonName number="{n}">{"".join(groups)}</PersonName>'


def _private_creator(ds: dict, tag: int) -> str | None:
    group, element = tag >> 16, tag & 0xFFFF
    if not group % 2 or element < 0x1000:
        return None
    creator = ds.get(f"{group:04X}{element >> 8:04X}") or {}
    values = creator.get("Value") or [None]
    return values[0] if isinstance(values[0], str) else None


def _scalar(value: Any) -> str:
    if isinstance(value, bool):  # not a DICOM value; normalize never lets one through
        return str(value).lower()
    return value if isinstance(value, str) else repr(value) if isinstance(value, float) \
        else str(value)


def _text(value: str, where: str) -> str:
    if _NOT_XML.search(value):
        raise NotRepresentable(f"{where}: a value holds a character XML 1.0 cannot carry; ask "
                               "for application/dicom+json")
    return (value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace("\r", "&#13;"))


def _attr(value: str, where: str) -> str:
    return (_text(value, where).replace('"', "&quot;").replace("\n", "&#10;")
            .replace("\t", "&#9;"))


# ---- reading -----------------------------------------------------------------------------------

def from_xml(raw: bytes) -> dict:
    """The DICOM JSON object of one Native DICOM Model document (not yet normalised)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidDataset("the XML payload is not UTF-8") from None
    if "<!DOCTYPE" in text or "<!ENTITY" in text:
        raise InvalidDataset("the XML payload has a document type declaration; none is "
                             "accepted (PS3.19 Native DICOM Model has no DTD)")
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise InvalidDataset(f"the payload is not well-formed XML: {exc}") from None
    if _local(root.tag) != "NativeDicomModel":
        raise InvalidDataset(f"the XML payload's root element is {_local(root.tag)}, not "
                             "NativeDicomModel (PS3.19 Native DICOM Model)")
    return _read_dataset(root, "", 0)


def _read_dataset(node: ET.Element, path: str, depth: int) -> dict:
    if depth > MAX_DEPTH:  # (before normalize's own check: this reading recurses too)
        raise InvalidDataset(f"{path}: sequences are nested more than {MAX_DEPTH} levels deep")
    ds: dict = {}
    for child in node:
        name = _local(child.tag)
        if name != "DicomAttribute":
            raise InvalidDataset(f"{path or 'NativeDicomModel'}: unexpected element <{name}>; "
                                 "a dataset holds DicomAttribute elements")
        tag = child.get("tag", "")
        if not _TAG.fullmatch(tag):
            raise InvalidDataset(f"{path}DicomAttribute: tag {tag!r} is not 8 hexadecimal digits")
        tag = tag.upper()
        if tag in ds:
            raise InvalidDataset(f"{path}{tag}: the attribute appears twice")
        ds[tag] = _read_attribute(child, child.get("vr"), f"{path}{tag}", depth)
    return ds


def _read_attribute(node: ET.Element, vr: str | None, where: str, depth: int) -> dict:
    elem: dict = {} if vr is None else {"vr": vr}
    values: list = []
    for child in _numbered(node, where):
        name = _local(child.tag)
        if name == "Value":
            values.append(_value(child.text, vr) if child.text else None)  # empty: no value
        elif name == "PersonName":
            values.append(_read_person_name(child, where))
        elif name == "Item":
            values.append(_read_dataset(child, f"{where}[{len(values) + 1}] > ", depth + 1))
        elif name == "InlineBinary":
            elem["InlineBinary"] = "".join((child.text or "").split())
        elif name == "BulkData":
            elem["BulkDataURI"] = child.get("uri") or child.get("uuid") or ""
        else:
            raise InvalidDataset(f"{where}: unexpected element <{name}> in a DicomAttribute")
    if values:
        elem["Value"] = values
    return elem


def _numbered(node: ET.Element, where: str) -> list[ET.Element]:
    """The children in ``number`` order (document order for those without one)."""
    children = list(node)
    keyed = []
    for position, child in enumerate(children, 1):
        number = child.get("number")
        if number is None:
            keyed.append((position, child))
            continue
        if not number.isdigit() or int(number) < 1:
            raise InvalidDataset(f"{where}: number={number!r} is not a positive integer")
        keyed.append((int(number), child))
    numbers = [n for n, _ in keyed]
    if len(set(numbers)) != len(numbers):
        raise InvalidDataset(f"{where}: two values have the same number")
    return [child for _, child in sorted(keyed, key=lambda pair: pair[0])]


def _value(text: str, vr: str | None) -> Any:
    if vr in _INTEGER_VRS:
        try:
            return int(text.strip())
        except ValueError:
            return text  # normalize refuses it, naming the attribute
    if vr in _FLOAT_VRS:
        try:
            return float(text.strip())
        except ValueError:
            return text
    return text


def _read_person_name(node: ET.Element, where: str) -> dict | None:
    value = {}
    for group in node:
        name = _local(group.tag)
        if name == "SingleByte":  # PS3.19-2011
            name = "Alphabetic"
        if name not in PN_GROUPS:
            raise InvalidDataset(f"{where}: unexpected element <{name}> in a PersonName")
        parts = {}
        for component in group:
            part = _local(component.tag)
            if part not in PN_COMPONENTS:
                raise InvalidDataset(f"{where}: unexpected element <{part}> in a PersonName")
            parts[part] = component.text or ""
        last = max((PN_COMPONENTS.index(p) for p in parts), default=-1)
        value[name] = "^".join(parts.get(p, "") for p in PN_COMPONENTS[:last + 1])
    return value or None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]
