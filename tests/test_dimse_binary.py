"""The direct byte reader (gateway.dimse.binary) must give exactly what the pydicom path gives,
and the gateway must really use it for the datasets it can read."""

import io

import pytest
from pydicom import Dataset
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.dsutils import decode, encode

from gateway.dimse import binary, convert
from gateway.ups.dataset import normalize
from tests import dimse_util as d
from tests.helpers import GatewayProcess, completion_payload, new_uid, workitem


def _both(ds: Dataset, implicit: bool):
    raw = encode(ds, implicit, True)
    reference = convert.to_canonical(decode(io.BytesIO(raw), implicit, True))
    fast = binary.read(raw, binary.IMPLICIT_LE if implicit else binary.EXPLICIT_LE)
    return reference, fast


def _rich() -> Dataset:
    json_ds = workitem(accession="A1", study_uid="1.2.3.4", patient_name="Müller^Jürgen=山田^太郎")
    json_ds.update(completion_payload())
    json_ds["00081195"] = {"vr": "UI"}
    json_ds["00080005"] = {"vr": "CS", "Value": ["ISO_IR 192"]}
    json_ds["00102000"] = {"vr": "LO", "Value": ["ALLERGY", "", "ASTHMA"]}
    json_ds["001021C0"] = {"vr": "US", "Value": [4]}
    json_ds["00741004"] = {"vr": "DS", "Value": ["42.5"]}
    return Dataset.from_json(json_ds)


@pytest.mark.parametrize("implicit", [True, False])
def test_same_result_as_pydicom(implicit):
    reference, fast = _both(_rich(), implicit)
    assert fast is not None
    assert normalize(fast) == reference


def test_undefined_length_sequences_and_items():
    ds = _rich()
    buffer = io.BytesIO()
    from pydicom.filebase import DicomFileLike
    fp = DicomFileLike(buffer)
    fp.is_little_endian, fp.is_implicit_VR = True, False
    for elem in ds.iterall():
        if elem.VR == "SQ":
            elem.is_undefined_length = True
            for item in elem.value:
                item.is_undefined_length_sequence_item = True
    write_dataset(fp, ds)
    raw = buffer.getvalue()
    assert b"\xfe\xff\xdd\xe0" in raw  # sequence delimiters really present
    fast = binary.read(raw, binary.EXPLICIT_LE)
    assert normalize(fast) == convert.to_canonical(decode(io.BytesIO(raw), False, True))


def test_deflated():
    import zlib
    raw = encode(_rich(), False, True)
    compressor = zlib.compressobj(wbits=-15)
    deflated = compressor.compress(raw) + compressor.flush()
    assert normalize(binary.read(deflated, binary.DEFLATED_LE)) == normalize(
        binary.read(raw, binary.EXPLICIT_LE))


def test_iso_2022_character_sets_fall_back_to_pydicom():
    ds = Dataset()
    ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    ds.PatientName = "Yamada^Tarou"
    assert binary.read(encode(ds, False, True), binary.EXPLICIT_LE) is None


def test_big_endian_and_garbage_fall_back():
    assert binary.read(b"\x08\x00\x05\x00CS", binary.EXPLICIT_LE) is None
    assert binary.read(b"anything", "1.2.840.10008.1.2.2") is None


# ---- the gateway really reads ordinary datasets with the binary reader ------------------------

def test_gateway_reads_plain_datasets_with_the_binary_reader(tmp_path):
    """The fast path is the one taken: the DEBUG log line of each DIMSE request says which
    decoder read its dataset (conformance §9 "Decoding")."""
    japanese = workitem(patient_name="Yamada^Tarou=山田^太郎=やまだ^たろう")
    japanese["00080005"] = {"vr": "CS", "Value": ["", "ISO 2022 IR 87"]}  # code extensions
    cases = [("explicit", ExplicitVRLittleEndian, workitem(), "binary"),
             ("implicit", ImplicitVRLittleEndian, workitem(), "binary"),
             ("iso 2022", ExplicitVRLittleEndian, japanese, "pydicom")]
    proc = GatewayProcess(tmp_path, extra={"log": {"level": "DEBUG", "format": "json"}}).start()
    try:
        uids = {}
        for name, syntax, json_ds, _ in cases:
            uids[name] = new_uid()
            with d.association(proc, contexts=(d.PUSH,), syntaxes=[syntax]) as assoc:
                status, _ = d.n_create(assoc, json_ds, uids[name])
                assert d.status_of(status) == 0x0000, (name, d.comment_of(status))
        for name, _, _, decoder in cases:
            [record] = proc.records("N-CREATE 0x0000", uid=uids[name])
            assert record.get("decoder") == decoder, (name, record)
        # and what pydicom read of the ISO 2022 name was stored as Unicode
        with d.association(proc, contexts=(d.PULL,)) as assoc:
            status, ds = d.n_get(assoc, uids["iso 2022"], [0x00100010])
            assert d.status_of(status) == 0x0000, d.comment_of(status)
            assert ds.PatientName.ideographic == "山田^太郎"
    finally:
        proc.stop()


def test_only_empty_values_read_as_an_empty_element_both_ways():
    """Found by the fuzz tier: "\\" (two empty values) was [null, null] here, empty there."""
    for value in (["", ""], ["", "", ""]):
        ds = Dataset()
        ds.OtherPatientIDs = value
        reference, fast = _both(ds, implicit=False)
        assert normalize(fast) == reference == {"00101000": {"vr": "LO"}}


def test_leading_spaces_that_are_not_significant_are_trimmed_both_ways():
    """Found by the fuzz tier: pydicom kept " 0" in a CS, the binary reader read "0"."""
    ds = Dataset()
    ds.ScheduledProcedureStepPriority = " HIGH"
    ds.PatientID = "  PID-7"
    ds.CommentsOnTheScheduledProcedureStep = "  indented on purpose"  # LT: significant
    reference, fast = _both(ds, implicit=True)
    assert normalize(fast) == reference
    assert reference["00741200"]["Value"] == ["HIGH"]
    assert reference["00100020"]["Value"] == ["PID-7"]
    assert reference["00400400"]["Value"] == ["  indented on purpose"]
