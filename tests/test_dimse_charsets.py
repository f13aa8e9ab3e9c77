"""Specific Character Set in both directions (issue 16, conformance §9 Character sets): text is
stored as Unicode with no character set kept; each reply is written in the requester's
character set when it can represent it, else UTF-8; the listed character sets are decoded on
input. Real associations with pynetdicom (whose datasets pydicom encodes byte for byte in the
declared character set; dcmjs-dimse mis-encodes Latin-1 in sequence items, so it is not used
here), REST read-back over real HTTP."""

from __future__ import annotations

import json
import urllib.request

import pytest
from pydicom.dataset import Dataset

from gateway.dimse import convert
from tests import dimse_util as d
from tests.helpers import code, element, new_uid, workitem

LATIN1_NAME = "Müller^Jürgen"


def rest_get(gateway, uid: str) -> dict:
    with urllib.request.urlopen(f"{gateway.base}/workitems/{uid}", timeout=10) as r:
        body = json.load(r)
    return body[0] if isinstance(body, list) else body


def rest_create(gateway, uid: str, payload: dict) -> None:
    req = urllib.request.Request(f"{gateway.base}/workitems?{uid}", method="POST",
                                 data=json.dumps(payload).encode(),
                                 headers={"Content-Type": "application/dicom+json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 201


def create_in(assoc, charset, name: str, performer: str | None = None, **kw) -> str:
    """N-CREATE a workitem whose dataset is encoded in ``charset`` (pydicom writes it)."""
    ds = d.dataset({k: v for k, v in workitem(**kw).items() if k != "00100010"})
    ds.SpecificCharacterSet = charset
    ds.PatientName = name
    if performer:
        item = Dataset()
        item.HumanPerformerCodeSequence = [d.dataset(code("P1", meaning="Performer"))]
        item.HumanPerformerName = performer
        ds.ScheduledHumanPerformersSequence = [item]
    uid = new_uid()
    status, _ = assoc.send_n_create(ds, d.PUSH, uid)
    assert d.status_of(status) == 0x0000, d.comment_of(status)
    return uid


def raw_value(ds: Dataset, tag: int) -> bytes:
    """The bytes of an element as the gateway sent them (pydicom decodes lazily; a decoded
    person name keeps the bytes it was read from)."""
    value = ds.get_item(tag).value
    return value if isinstance(value, bytes) else value.original_string


def test_a_latin1_requester_gets_its_names_back_byte_correct_in_latin1(gateway):
    with d.association(gateway) as assoc:
        uid = create_in(assoc, "ISO_IR 100", LATIN1_NAME, performer="Weiß^Jörg")
        status, got = d.n_get(assoc, uid)
    assert d.status_of(status) == 0x0000
    assert got.SpecificCharacterSet == "ISO_IR 100"
    assert raw_value(got, 0x00100010).rstrip(b" ") == LATIN1_NAME.encode("latin-1")
    performer = got.ScheduledHumanPerformersSequence[0]
    assert raw_value(performer, 0x00404037).rstrip(b" ") == "Weiß^Jörg".encode("latin-1")
    assert str(got.PatientName) == LATIN1_NAME
    # Stored as Unicode, no character set kept: REST shows the text, not the input's charset.
    stored = rest_get(gateway, uid)
    assert "00080005" not in stored
    assert stored["00100010"]["Value"][0]["Alphabetic"] == LATIN1_NAME
    assert "00080005" not in stored["00404034"]["Value"][0]


def test_c_find_answers_in_the_identifiers_character_set(gateway):
    label = f"CS-{new_uid()[-8:]}"
    with d.association(gateway) as assoc:
        uid = create_in(assoc, "ISO_IR 192", LATIN1_NAME, label=label)
    identifier = Dataset()
    identifier.SpecificCharacterSet = "ISO_IR 100"
    identifier.WorklistLabel = label
    identifier.PatientName = ""
    with d.association(gateway) as assoc:
        status, results, _ = d.c_find(assoc, identifier)
    assert status == 0x0000 and [r.SOPInstanceUID for r in results] == [uid]
    assert results[0].SpecificCharacterSet == "ISO_IR 100"
    assert raw_value(results[0], 0x00100010).rstrip(b" ") == LATIN1_NAME.encode("latin-1")


def test_a_reply_the_requesters_charset_cannot_hold_is_utf8(gateway):
    label = f"CY-{new_uid()[-8:]}"
    uid = new_uid()
    rest_create(gateway, uid, workitem(label=label, patient_name="Иванов^Иван"))
    identifier = Dataset()
    identifier.SpecificCharacterSet = "ISO_IR 100"
    identifier.WorklistLabel = label
    identifier.PatientName = ""
    with d.association(gateway) as assoc:
        status, results, _ = d.c_find(assoc, identifier)
    assert status == 0x0000 and len(results) == 1
    assert results[0].SpecificCharacterSet == "ISO_IR 192"
    assert raw_value(results[0], 0x00100010).rstrip(b" ") == "Иванов^Иван".encode()
    # A reply that is all ASCII declares no character set at all.
    identifier.PatientName = None
    del identifier.PatientName
    with d.association(gateway) as assoc:
        status, results, _ = d.c_find(assoc, identifier)
    assert status == 0x0000 and "SpecificCharacterSet" not in results[0]


@pytest.mark.parametrize("charset,name", [
    ("ISO_IR 100", LATIN1_NAME),
    ("ISO_IR 101", "Dvořák^Antonín"),
    ("ISO_IR 109", "Ĝojo^Ĉu"),
    ("ISO_IR 110", "Ņemuns^Ļaima"),
    ("ISO_IR 144", "Иванов^Иван"),
    ("ISO_IR 148", "Şahin^Çağla"),
    ("ISO_IR 192", "Müller^中文"),
    ("GB18030", "王^小明"),
    (["ISO 2022 IR 6", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎"),
    (["ISO 2022 IR 13", "ISO 2022 IR 87"], "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎"),
    (["ISO 2022 IR 6", "ISO 2022 IR 149"], "Kim^Hee-Jung=김^희중"),
])
def test_listed_character_sets_are_decoded_on_input(gateway, charset, name):
    with d.association(gateway) as assoc:
        uid = create_in(assoc, charset, name)
    stored = rest_get(gateway, uid)
    groups = stored["00100010"]["Value"][0]
    assert "=".join(groups[g] for g in ("Alphabetic", "Ideographic") if g in groups) == name
    assert "00080005" not in stored


def test_n_set_in_another_charset_never_makes_the_character_set_multi_valued(gateway):
    with d.association(gateway) as assoc:
        uid = create_in(assoc, "ISO_IR 100", LATIN1_NAME)
        tx = new_uid()
        status, _ = d.change_state(assoc, uid, "IN PROGRESS", tx)
        assert d.status_of(status) == 0x0000
        mods = Dataset()
        mods.SpecificCharacterSet = "ISO_IR 144"
        mods.ProcedureStepLabel = "Анализ"
        mods.TransactionUID = tx
        status, _ = assoc.send_n_set(mods, d.PUSH, uid, meta_uid=d.PULL)
        assert d.status_of(status) == 0x0000, d.comment_of(status)
        status, got = d.n_get(assoc, uid)
    assert d.status_of(status) == 0x0000
    # Cyrillic and Latin-1 text together: neither ISO_IR 144 nor 100 holds both.
    assert got.SpecificCharacterSet == "ISO_IR 192"
    assert got.ProcedureStepLabel == "Анализ" and str(got.PatientName) == LATIN1_NAME
    assert "00080005" not in rest_get(gateway, uid)


def test_event_information_is_encoded_by_the_same_conversion():
    info = {"00741000": element("CS", "IN PROGRESS"),
            "00404037": element("PN", {"Alphabetic": LATIN1_NAME}),
            "00080005": element("CS", "ISO_IR 100", "ISO_IR 144")}  # kept by an older version
    out = convert.from_canonical(info)
    assert out.SpecificCharacterSet == "ISO_IR 192"  # one value, whatever was stored
    assert convert.from_canonical(info, ["ISO_IR 100"]).SpecificCharacterSet == "ISO_IR 100"
    plain = convert.from_canonical({"00741000": element("CS", "IN PROGRESS"),
                                    "00080005": element("CS", "ISO_IR 100")})
    assert "SpecificCharacterSet" not in plain


@pytest.mark.parametrize("charset,name,escape", [
    (["ISO 2022 IR 6", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎", b"\x1b$B"),
    (["", "ISO 2022 IR 149"], "Kim^Hee-Jung=김^희중", b"\x1b$)C"),
])
def test_a_requester_with_code_extensions_gets_them_back_when_they_hold_the_reply(
        gateway, charset, name, escape):
    with d.association(gateway) as assoc:
        uid = create_in(assoc, charset, name)
        status, got = d.n_get(assoc, uid, [0x00100010, 0x00741204])
        assert d.status_of(status) == 0x0000
        assert list(got.SpecificCharacterSet) == charset
        assert escape in raw_value(got, 0x00100010)
        assert str(got.PatientName) == name
        # A reply they cannot hold (Latin-1 text as well) comes in UTF-8.
        label = Dataset()
        label.SpecificCharacterSet = charset
        label.ProcedureStepLabel = "Größe"
        mods_tx = new_uid()
        status, _ = d.change_state(assoc, uid, "IN PROGRESS", mods_tx)
        assert d.status_of(status) == 0x0000
        label.TransactionUID = mods_tx
        status, _ = assoc.send_n_set(label, d.PUSH, uid, meta_uid=d.PULL)
        assert d.status_of(status) == 0x0000, d.comment_of(status)
        status, got = d.n_get(assoc, uid, [0x00100010, 0x00741204])
    assert got.SpecificCharacterSet == "ISO_IR 192"
    assert got.ProcedureStepLabel == "Größe" and str(got.PatientName) == name
