"""The XML Native DICOM Model (PS3.19 A.1) beside DICOM JSON (issue 19): the conversion
round-trips with the canonical JSON form (property-based), hand-written PS3.19 documents read as
the JSON they mean, bad XML is refused clearly, and a real gateway takes XML requests and answers
in XML as Content-Type, Accept (with q values) and ``?accept=`` say (PS3.18 §8.7)."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gateway.rest import media
from gateway.rest.native_xml import NotRepresentable, from_xml, to_xml
from gateway.ups.dataset import normalize
from gateway.ups.errors import InvalidDataset
from tests.helpers import completion_payload, element, new_uid, state_payload, workitem

XML_PARTS = 'multipart/related; type="application/dicom+xml"'
NS = 'xmlns="http://dicom.nema.org/PS3.19/models/NativeDICOM"'


# ---- the conversion ----------------------------------------------------------------------------

_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs"),
                              exclude_characters="\\^="), max_size=20)
_cs = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_ ", max_size=16).map(str.strip)
_pn_part = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs"),
                                 exclude_characters="\\^=,"), max_size=8)
_pn_group = st.lists(_pn_part, min_size=1, max_size=5).map("^".join)
_pn = st.one_of(st.none(), st.fixed_dictionaries({}, optional={
    "Alphabetic": _pn_group, "Ideographic": _pn_group, "Phonetic": _pn_group}))
_lt = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs"),
                            include_characters="\r\n\t"), max_size=40)

# (tag, vr, value strategy) of real attributes, so that normalize judges them by their VR.
_SCALARS = [
    ("00100020", "LO", _text), ("00080050", "SH", _text), ("00741000", "CS", _cs),
    ("00741202", "LO", _text), ("00104000", "LT", _lt), ("00400280", "ST", _lt),
    ("00101030", "DS", st.floats(-1e6, 1e6, allow_nan=False).map(lambda f: round(f, 4))),
    ("00200013", "IS", st.integers(-2**31, 2**31 - 1)),
    ("00280010", "US", st.integers(0, 65535)),
    ("00189087", "FD", st.floats(allow_nan=False, allow_infinity=False)),
    ("00404005", "DT", st.sampled_from(["20261125100000", "20261125", "20261125100000.123456+0100"])),
    ("00081195", "UI", st.sampled_from(["1.2.3", "2.25.1234567890"])),
]


def _element(vr: str, values: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(st.just({"vr": vr}),
                     st.lists(st.one_of(st.none(), values) if vr not in ("US", "FD")
                              else values, min_size=1, max_size=3)
                     .map(lambda vals: {"vr": vr, "Value": vals}))


def _dataset(depth: int) -> st.SearchStrategy:
    fields = {tag: _element(vr, values) for tag, vr, values in _SCALARS}
    fields["00100010"] = st.lists(_pn, min_size=1, max_size=2).map(
        lambda vals: {"vr": "PN", "Value": vals})
    fields["00420011"] = st.binary(max_size=12).map(
        lambda b: {"vr": "OB", "InlineBinary": base64.b64encode(b).decode()})
    if depth:
        fields["0040A370"] = st.lists(_dataset(depth - 1), max_size=2).map(
            lambda items: {"vr": "SQ", "Value": items})
    return st.fixed_dictionaries({}, optional=fields)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_dataset(2))
def test_xml_round_trips_with_the_canonical_json_form(ds):
    try:
        canonical = normalize(ds)
    except InvalidDataset:
        assume(False)
    assert without_empty_lists(normalize(from_xml(to_xml(canonical)))) == \
        without_empty_lists(canonical)


def without_empty_lists(ds: dict) -> dict:
    """What XML cannot tell apart, in one form: an empty ``Value`` array and no ``Value`` (the
    same empty attribute), an empty string (or PN object) and null (the same empty value); both
    spellings are canonical in JSON."""
    out = {}
    for tag, elem in ds.items():
        elem = dict(elem)
        if elem.get("Value") == []:
            del elem["Value"]
        elif elem.get("vr") == "SQ" and "Value" in elem:
            elem["Value"] = [without_empty_lists(item) for item in elem["Value"]]
        elif "Value" in elem:
            elem["Value"] = [None if value in ("", {}) else value for value in elem["Value"]]
        out[tag] = elem
    return out


def test_a_workitem_round_trips_through_xml():
    ds = normalize({**workitem(accession="ACC1", study_uid=new_uid()), **completion_payload(),
                    "00104000": element("LT", "line one\r\nline <two> & \"three\"\t")})
    xml = to_xml(ds)
    assert xml.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    assert normalize(from_xml(xml)) == ds


PS319_DOCUMENT = f"""<?xml version="1.0" encoding="UTF-8"?>
<NativeDicomModel {NS} xml:space="preserve">
  <DicomAttribute tag="00100010" vr="PN" keyword="PatientName">
    <PersonName number="1">
      <Alphabetic><FamilyName>Yamada</FamilyName><GivenName>Tarou</GivenName></Alphabetic>
      <Ideographic><FamilyName>山田</FamilyName><GivenName>太郎</GivenName></Ideographic>
    </PersonName>
  </DicomAttribute>
  <DicomAttribute tag="00741000" vr="CS"><Value number="1">SCHEDULED</Value></DicomAttribute>
  <DicomAttribute tag="00081195" vr="UI"/>
  <DicomAttribute tag="00200013" vr="IS"><Value number="1">7</Value></DicomAttribute>
  <DicomAttribute tag="00280010" vr="US"><Value number="1">512</Value></DicomAttribute>
  <DicomAttribute tag="00080060" vr="CS" keyword="Modality">
    <Value number="2">MR</Value><Value number="1">CT</Value><Value number="3"/>
  </DicomAttribute>
  <DicomAttribute tag="00420011" vr="OB"><InlineBinary>AAEC</InlineBinary></DicomAttribute>
  <DicomAttribute tag="00404025" vr="SQ">
    <Item number="1">
      <DicomAttribute tag="00080100" vr="SH"><Value number="1">STATION1</Value></DicomAttribute>
      <DicomAttribute tag="00080102" vr="SH"><Value number="1">99LOCAL</Value></DicomAttribute>
    </Item>
  </DicomAttribute>
</NativeDicomModel>
"""


def test_a_ps319_document_reads_as_the_json_it_means():
    assert from_xml(PS319_DOCUMENT.encode()) == {
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Yamada^Tarou",
                                            "Ideographic": "山田^太郎"}]},
        "00741000": {"vr": "CS", "Value": ["SCHEDULED"]},
        "00081195": {"vr": "UI"},
        "00200013": {"vr": "IS", "Value": ["7"]},
        "00280010": {"vr": "US", "Value": [512]},
        "00080060": {"vr": "CS", "Value": ["CT", "MR", None]},
        "00420011": {"vr": "OB", "InlineBinary": "AAEC"},
        "00404025": {"vr": "SQ", "Value": [{"00080100": {"vr": "SH", "Value": ["STATION1"]},
                                            "00080102": {"vr": "SH", "Value": ["99LOCAL"]}}]},
    }


def test_liberal_reading_no_namespace_no_numbers_2011_single_byte():
    doc = (b'<NativeDicomModel><DicomAttribute tag="00100010" vr="PN"><PersonName>'
           b"<SingleByte><FamilyName>Doe</FamilyName></SingleByte></PersonName>"
           b'</DicomAttribute><DicomAttribute tag="0020000d" vr="UI"><Value>1.2.3</Value>'
           b"</DicomAttribute></NativeDicomModel>")
    assert from_xml(doc) == {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe"}]},
                             "0020000D": {"vr": "UI", "Value": ["1.2.3"]}}


@pytest.mark.parametrize("doc, says", [
    (b"<NativeDicomModel><DicomAttribute", "not well-formed"),
    (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><NativeDicomModel/>',
     "document type declaration"),
    ("<NativeDicomModel/>".encode("utf-16"), "not UTF-8"),
    (b"<Dataset/>", "root element is Dataset"),
    (b'<NativeDicomModel><DicomAttribute tag="0010001" vr="LO"/></NativeDicomModel>',
     "not 8 hexadecimal digits"),
    (b'<NativeDicomModel><DicomAttribute tag="00100020" vr="LO"/>'
     b'<DicomAttribute tag="00100020" vr="LO"/></NativeDicomModel>', "appears twice"),
    (b'<NativeDicomModel><DicomAttribute tag="00100020" vr="LO"><Value number="1">a</Value>'
     b'<Value number="1">b</Value></DicomAttribute></NativeDicomModel>', "same number"),
    (b'<NativeDicomModel><DicomAttribute tag="00100020" vr="LO"><Blob/></DicomAttribute>'
     b"</NativeDicomModel>", "unexpected element <Blob>"),
])
def test_bad_xml_is_refused_saying_why(doc, says):
    with pytest.raises(InvalidDataset, match=says):
        from_xml(doc)


def test_deep_nesting_is_refused_before_it_can_exhaust_the_stack():
    depth = 5000
    doc = (b'<NativeDicomModel>' + b'<DicomAttribute tag="0040A370" vr="SQ"><Item>' * depth
           + b"</Item></DicomAttribute>" * depth + b"</NativeDicomModel>")
    with pytest.raises(InvalidDataset, match="nested more than"):
        from_xml(doc)


def test_a_value_xml_cannot_carry_is_not_written_silently():
    with pytest.raises(NotRepresentable, match="00104000"):
        to_xml({"00104000": {"vr": "LT", "Value": ["page one\x0cpage two"]}})


def test_a_bulk_data_reference_reaches_the_usual_refusal():
    doc = (b'<NativeDicomModel><DicomAttribute tag="00420011" vr="OB">'
           b'<BulkData uri="http://elsewhere/1"/></DicomAttribute></NativeDicomModel>')
    with pytest.raises(InvalidDataset, match="BulkDataURI"):
        normalize(from_xml(doc))


# ---- a real gateway ----------------------------------------------------------------------------

def parts_of(body: bytes, content_type: str) -> list[dict]:
    kind, boundary = media.payload_kind(content_type)
    assert kind == "xml" and boundary
    return [normalize(from_xml(content)) for _, content in media.split_parts(body, boundary)]


def xml_parts(*documents: bytes) -> tuple[bytes, dict]:
    body, content_type = media.multipart(list(documents))
    return body, {"Content-Type": content_type}


async def retrieve_json(http, gateway, uid: str) -> dict:
    async with http.get(f"{gateway.base}/workitems/{uid}",
                        headers={"Accept": "application/dicom+json"}) as r:
        assert r.status == 200
        return (await r.json(content_type=None))[0]


async def test_create_in_xml_retrieve_in_both_forms(gateway, http):
    uid = new_uid()
    body, headers = xml_parts(to_xml(normalize(workitem(label="XMLPARTS"))))
    async with http.post(f"{gateway.base}/workitems?workitem={uid}", data=body,
                         headers=headers) as r:
        assert r.status == 201, await r.text()
    as_json = await retrieve_json(http, gateway, uid)
    async with http.get(f"{gateway.base}/workitems/{uid}", headers={"Accept": XML_PARTS}) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith(XML_PARTS)
        [as_xml] = parts_of(await r.read(), r.headers["Content-Type"])
    assert as_xml == as_json
    assert as_json["00741202"] == {"vr": "LO", "Value": ["XMLPARTS"]}


async def test_bare_xml_requests_update_and_change_state(gateway, http):
    uid = new_uid()
    xml = {"Content-Type": "application/dicom+xml"}
    async with http.post(f"{gateway.base}/workitems?workitem={uid}",
                         data=to_xml(normalize(workitem())), headers=xml) as r:
        assert r.status == 201, await r.text()
    tx = new_uid()
    async with http.put(f"{gateway.base}/workitems/{uid}/state",
                        data=to_xml(normalize(state_payload("IN PROGRESS", tx))), headers=xml) as r:
        assert r.status == 200, await r.text()
    comment = {"00400280": element("ST", "done <well> & quickly")}
    async with http.post(f"{gateway.base}/workitems/{uid}?transaction-uid={tx}",
                         data=to_xml(normalize(comment)), headers=xml) as r:
        assert r.status == 200, await r.text()
    stored = await retrieve_json(http, gateway, uid)
    assert stored["00741000"]["Value"] == ["IN PROGRESS"]
    assert stored["00400280"]["Value"] == ["done <well> & quickly"]
    async with http.get(f"{gateway.base}/workitems/{uid}",
                        headers={"Accept": "application/dicom+xml"}) as r:
        assert r.status == 200 and r.content_type == "application/dicom+xml"
        assert normalize(from_xml(await r.read())) == stored


async def test_search_in_xml_holds_the_same_results_as_in_json(gateway, http):
    label = f"XS{new_uid()[-10:]}"
    for start in ("20261125100000", "20261125110000", "20261125120000"):
        async with http.post(f"{gateway.base}/workitems", data=json.dumps(
                workitem(new_uid(), label=label, start=start)),
                headers={"Content-Type": "application/dicom+json"}) as r:
            assert r.status == 201
    query = {"WorklistLabel": label, "limit": "2"}
    async with http.get(f"{gateway.base}/workitems", params=query) as r:
        as_json = await r.json(content_type=None)
        json_warning = r.headers["Warning"]
    async with http.get(f"{gateway.base}/workitems", params=query,
                        headers={"Accept": XML_PARTS}) as r:
        assert r.status == 200
        as_xml = parts_of(await r.read(), r.headers["Content-Type"])
        assert r.headers["Warning"] == json_warning  # "There are 1 additional results …"
    assert len(as_xml) == 2 and as_xml == as_json
    # The accept parameter is a content-negotiation parameter, not a matching key.
    async with http.get(f"{gateway.base}/workitems", params={**query, "accept": XML_PARTS}) as r:
        assert r.status == 200
        assert parts_of(await r.read(), r.headers["Content-Type"]) == as_json


@pytest.mark.parametrize("accept, params, xml", [
    (XML_PARTS, {}, True),
    (f"application/dicom+json; q=0.5, {XML_PARTS}", {}, True),
    (f"{XML_PARTS}; q=0.9, application/dicom+json", {}, False),
    (f"{XML_PARTS}, application/dicom+json", {}, False),  # a tie: the default
    (f"{XML_PARTS}; q=0, */*", {}, False),
    ("application/dicom+json", {"accept": XML_PARTS}, True),  # the parameter decides
    (XML_PARTS, {"accept": "application/dicom+json"}, False),
    ("", {"accept": "application/dicom+xml"}, True),
    ("multipart/related; type=\"application/dicom+json\"", {}, False),
])
async def test_the_response_type_follows_accept_q_values_and_the_parameter(
        gateway, http, accept, params, xml):
    uid = new_uid()
    async with http.post(f"{gateway.base}/workitems?workitem={uid}",
                         data=json.dumps(workitem()),
                         headers={"Content-Type": "application/dicom+json"}) as r:
        assert r.status == 201
    headers = {"Accept": accept} if accept else {}
    async with http.get(f"{gateway.base}/workitems/{uid}", params=params,
                        headers=headers) as r:
        assert r.status == 200
        body = await r.read()
        if xml:
            assert "dicom+xml" in r.headers["Content-Type"]
        else:
            assert r.content_type == "application/dicom+json"
            assert json.loads(body)[0]["00080018"]["Value"] == [uid]


async def test_nothing_acceptable_is_406_saying_what_is_offered(gateway, http):
    async with http.get(f"{gateway.base}/workitems",
                        headers={"Accept": f"image/jpeg, {XML_PARTS}; q=0"}) as r:
        assert r.status == 406
        assert "application/dicom+json" in r.headers["Warning"]


@pytest.mark.parametrize("body, content_type, says", [
    (b"<NativeDicomModel><DicomAttr", "application/dicom+xml", "not well-formed"),
    (b"<NativeDicomModel/>", "multipart/related; type=\"application/dicom+xml\"", "boundary"),
    (None, None, "exactly one dataset, got 2 parts"),
    (b"<NativeDicomModel>" + b'<DicomAttribute tag="00741000" vr="CS"><Value number="1">'
     b"SCHEDULED</Value></DicomAttribute></NativeDicomModel>", "application/dicom+xml",
     "(0074,1200) is required"),
])
async def test_bad_xml_requests_are_400_and_store_nothing(gateway, http, body, content_type,
                                                         says):
    if body is None:
        body, headers = xml_parts(to_xml(normalize(workitem())), to_xml(normalize(workitem())))
    else:
        headers = {"Content-Type": content_type}
    uid = new_uid()
    async with http.post(f"{gateway.base}/workitems?workitem={uid}", data=body,
                         headers=headers) as r:
        assert r.status == 400, await r.text()
        assert says.lower() in r.headers["Warning"].lower(), r.headers["Warning"]
    async with http.get(f"{gateway.base}/workitems/{uid}") as r:
        assert r.status == 404


async def test_the_mpps_service_takes_and_gives_xml_too(gateway, http):
    """The PS3.18 chapter 15 service reads its payloads through the same edge."""
    from gateway.ups import mwl
    from tests.test_modality_rest import _mpps_create, _order
    workitem_uid = await _order(http, gateway, "MR01", "20261125090000")
    uid = new_uid()
    url = f"{gateway.base}/modality-performed-procedure-steps/{uid}"
    body, headers = xml_parts(to_xml(normalize(_mpps_create(mwl.step_id(workitem_uid)))))
    async with http.post(url, data=body, headers=headers) as r:
        assert r.status == 201, await r.text()
    async with http.get(url, headers={"Accept": "application/dicom+json"}) as r:
        [as_json] = await r.json(content_type=None)
    async with http.get(url, params={"accept": XML_PARTS}) as r:
        assert r.status == 200
        [as_xml] = parts_of(await r.read(), r.headers["Content-Type"])
    assert as_xml == as_json and as_json["00400252"]["Value"] == ["IN PROGRESS"]
