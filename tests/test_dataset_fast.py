"""The fast whole-value checks of ``normalize`` accept exactly what the precise checks accept.

The fast path only decides "valid"; anything it refuses goes through the precise checks, which
raise with a message. If the two ever disagreed, the fast path would let an invalid value in.
"""

from __future__ import annotations

import random

import pytest

from gateway.ups import dataset
from gateway.ups.errors import InvalidDataset

ALPHABET = ("A", "Z", "a", "z", "0", "1", "9", " ", "_", ".", "-", "+", ":", "^", "\\", "\n",
            "\t", "\r", "\x0c", "\x0b", "\x00", "\x1f", "\x7f", "é", "\u4e2d", "\ud800", "\udfff")
EDGES = ["", " ", "0", "00", "01", "1.2", "1..2", "1.2.", ".1", "1.02", "1." + "2" * 62,
         "1." + "2" * 63, "24", "23", "2359", "235960", "235961", "2360", "12.5", "120000.123456",
         "120000.1234567", "1200001", "ABC_12", "abc", "A\\B", "x" * 16, "x" * 17, "x" * 64,
         "x" * 65, "x" * 1024, "x" * 1025, "1.2\n", "ABC\n", "120000\n",
         "20261125", "20261125\n", "20260230", "20261301", "2026112", "202611251", "2026",
         "20261125120000", "20261125120000.123456+0100", "20261125120000.1234567",
         "20261125240000", "20261125120000-1400", "\u0662\u0660\u0662\u0666\u0661\u0661\u0662\u0665"]


def precise_accepts(vr: str, value: str) -> bool:
    try:
        dataset._check_unicode(value, "")
        dataset._check_string(vr, value, "")
    except InvalidDataset:
        return False
    return True


STRING_FAST_VRS = sorted(vr for vr in dataset._FAST_VALUE if vr in dataset.STRING_VRS)


def test_every_string_vr_with_a_fast_check_is_tested():
    assert set(dataset._FAST_STRING) <= set(STRING_FAST_VRS)
    assert {"DA", "DT"} <= set(STRING_FAST_VRS)


@pytest.mark.parametrize("vr", STRING_FAST_VRS)
def test_fast_check_agrees_with_precise_checks(vr):
    rng = random.Random(vr)
    values = list(EDGES)
    for _ in range(4000):
        length = rng.choice((0, 1, 2, 3, 5, 8, 13, 16, 17, 40, 64, 65))
        values.append("".join(rng.choice(ALPHABET) for _ in range(length)))
    check = dataset._FAST_VALUE[vr]
    disagree = [v for v in values if bool(check(v)) != precise_accepts(vr, v)]
    assert not disagree, f"{vr}: fast and precise checks disagree on {disagree[:5]!r}"


def precise_value(vr: str, value):
    """What the precise path makes of one value, or None when it refuses it."""
    try:
        return dataset._normalize_element("00111010", {"vr": vr, "Value": [value]}, "")["Value"][0]
    except (InvalidDataset, KeyError):
        return None


NUMBERS = [0, 1, -1, 2**15 - 1, 2**15, -2**15, -2**15 - 1, 2**16 - 1, 2**16, 2**31 - 1, 2**31,
           -2**31, -2**31 - 1, 2**32 - 1, 2**32, 2**53, 2**53 + 1, -2**53 - 1, 2**63 - 1, 2**63,
           -2**63, -2**63 - 1, 2**64 - 1, 2**64, 1.5, -0.0, 1e308, 3.0, float("inf"),
           float("-inf"), float("nan"), True, False, None, "1", "1.5", " 2 "]


@pytest.mark.parametrize("vr", sorted(vr for vr in dataset._FAST_VALUE
                                      if vr in dataset.NUMBER_VRS | dataset.NUMERIC_STRING_VRS))
def test_fast_number_check_keeps_exactly_what_the_precise_path_keeps_unchanged(vr):
    for value in NUMBERS:
        precise = precise_value(vr, value)
        kept = precise is not None and type(precise) is type(value) and precise == value
        assert bool(dataset._FAST_VALUE[vr](value)) == kept, (vr, value)


def test_fast_person_name_check_keeps_exactly_what_the_precise_path_keeps_unchanged():
    rng = random.Random("PN")
    names = [{"Alphabetic": "Doe^Jane"}, {"Alphabetic": ""}, {"Alphabetic": "x" * 64},
             {"Alphabetic": "x" * 65}, {"Ideographic": "X"}, {"Alphabetic": "A", "Phonetic": "B"},
             {"alphabetic": "A"}, {"Alphabetic": 1}, "Doe^Jane", None, {}]
    for _ in range(2000):
        names.append({"Alphabetic": "".join(rng.choice(ALPHABET) for _ in range(rng.choice((0, 1, 5, 64, 65))))})
    accepted = 0
    for value in names:
        precise = precise_value("PN", value)
        kept = precise is not None and precise == value
        # The fast check covers the usual form (one Alphabetic group); others take the precise path.
        if dataset._FAST_VALUE["PN"](value):
            accepted += 1
            assert kept, value
        elif kept:
            assert set(value) != {"Alphabetic"}, value
    assert accepted > 100


def test_fast_path_result_equals_precise_result():
    elem = {"vr": "LO", "Value": ["Ward 3", "Bed 2"]}
    fast = dataset.normalize({"00102000": elem})["00102000"]
    precise = {"vr": "LO", "Value": [dataset._normalize_value("LO", v, "") for v in elem["Value"]]}
    assert fast == precise


def test_elements_come_out_with_vr_first():
    ds = dataset.normalize({"00100020": {"Value": ["X"], "vr": "LO"}, "00380050": {"vr": "LO"}})
    assert [list(elem) for elem in ds.values()] == [["vr", "Value"], ["vr"]]


def test_invalid_value_still_gets_its_precise_message():
    with pytest.raises(InvalidDataset, match=r"PatientID \(0010,0020\): backslash"):
        dataset.normalize({"00100020": {"vr": "LO", "Value": ["A\\B"]}})
    with pytest.raises(InvalidDataset, match="not a valid CS"):
        dataset.normalize({"00741000": {"vr": "CS", "Value": ["scheduled"]}})
    with pytest.raises(InvalidDataset, match="VR SH is wrong"):
        dataset.normalize({"00100020": {"vr": "SH", "Value": ["X"]}})


def test_keys_come_out_upper_case_and_in_tag_order():
    ds = dataset.normalize({"00100020": {"vr": "LO", "Value": ["X"]},
                            "0008103e": {"vr": "LO", "Value": ["d"]},
                            "00404025": {"vr": "SQ", "Value": [{"00080104": {"vr": "LO", "Value": ["m"]},
                                                                "00080100": {"vr": "SH", "Value": ["c"]}}]},
                            "00080005": {"vr": "CS", "Value": ["ISO_IR 192"]}})
    assert list(ds) == ["00080005", "0008103E", "00100020", "00404025"]
    assert list(ds["00404025"]["Value"][0]) == ["00080100", "00080104"]
