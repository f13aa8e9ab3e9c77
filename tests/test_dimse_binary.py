"""The direct byte reader (gateway.dimse.binary) must give exactly what the pydicom path gives."""

import io

import pytest
from pydicom import Dataset
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pynetdicom.dsutils import decode, encode

from gateway.dimse import binary, convert
from gateway.ups.dataset import normalize
from tests.helpers import completion_payload, workitem


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
