"""One rule per VR (``gateway.ups.vr``): what each accepts, what it says when it refuses, and that
``normalize`` keeps exactly the canonical elements as sent.

The expectations are written out from PS3.5 6.2 here, value by value, so that the rules are
checked against the standard rather than against themselves.
"""

from __future__ import annotations

import random

import pytest

from gateway.ups import dataset
from gateway.ups.errors import InvalidDataset
from gateway.ups.vr import RULES, Refused

OK = None  # accepted


def verdict(vr: str, value):
    try:
        RULES[vr](value)
    except Refused as refused:
        return str(refused)
    return OK


CASES = {
    "AE": [("STORESCP", OK), ("x" * 16, OK), ("x" * 17, "longer than the 16"), ("A\\B", "backslash"),
           ("A\nB", "control characters"), ("", OK)],
    "CS": [("SCHEDULED", OK), ("IN PROGRESS", OK), ("ISO_IR 192", OK), ("scheduled", "not a valid CS"),
           ("A-B", "not a valid CS"), ("x" * 17, "longer than the 16"), ("A\\B", "not a valid CS")],
    "LO": [("Ward 3", OK), ("Müller", OK), ("\u4e2d", OK), ("x" * 64, OK), ("x" * 65, "longer than"),
           ("a\\b", "backslash"), ("a\tb", "control characters"), ("\ud800", "not valid Unicode"),
           (1, "must be strings")],
    "SH": [("x" * 16, OK), ("x" * 17, "longer than the 16")],
    "LT": [("line 1\r\nline 2\tx\\y", OK), ("x" * 10240, OK), ("x" * 10241, "longer than"),
           ("a\x00b", "control characters"), ("\x0b", "control characters")],
    "ST": [("x" * 1024, OK), ("x" * 1025, "longer than")],
    "UT": [("x" * 20000, OK), ("a\\b\n", OK), ("\x1f", "control characters")],
    "UR": [("http://h/p?a=b\\c", OK), ("http://h/\n", "control characters")],
    "UI": [("1.2.840.10008.5.1.4.34.6.1", OK), ("0", OK), ("", OK), ("1.02", "not a valid UID"),
           ("1..2", "not a valid UID"), (".1", "not a valid UID"), ("1.2.", "not a valid UID"),
           ("1." + "2" * 62, OK), ("1." + "2" * 63, "longer than the 64"), ("1.2\n", "not a valid UID")],
    "DA": [("20261125", OK), ("", OK), ("20260230", "not a valid DA"), ("20261301", "not a valid DA"),
           ("2026112", "not a valid DA"), ("20261125\n", "longer than the 8"), ("2026112\n", "not a valid DA"),
           ("\u0662\u0660\u0662\u0666\u0661\u0661\u0662\u0665", "not a valid DA")],
    "DT": [("2026", OK), ("20261125120000", OK), ("20261125120000.123456+0100", OK),
           ("20261125120000-1200", OK), ("20261125120000+1400", OK), ("20261125120000-1400", "not a valid DT"), ("20261125120000.1234567", "not a valid DT"),
           ("20261125240000", "not a valid DT"), ("202611251", "not a valid DT")],
    "TM": [("", OK), ("23", OK), ("2359", OK), ("235960", OK), ("120000.123456", OK),
           ("24", "not a valid TM"), ("2360", "not a valid TM"), ("235961", "not a valid TM"),
           ("120000.1234567", "not a valid TM"), ("1200001", "not a valid TM"), ("12:00", "not a valid TM")],
    "AS": [("045Y", OK), ("12345", "longer than the 4")],
    "US": [(0, OK), (65535, OK), (65536, "out of the range"), (-1, "out of the range"), (3.0, OK),
           (1.5, "must be integers"), (True, "must be JSON numbers"), ("1", "must be JSON numbers")],
    "SS": [(-2**15, OK), (-2**15 - 1, "out of the range")],
    "UL": [(2**32 - 1, OK), (2**32, "out of the range")],
    "SV": [(-2**63, OK), (2**63, "out of the range")],
    "UV": [(2**64 - 1, OK), (2**64, "out of the range")],
    "FD": [(1.5, OK), (2**53, OK), (2**53 + 1, "too large"), (float("nan"), "not a finite"),
           (float("inf"), "not a finite"), (False, "must be JSON numbers")],
    "IS": [(12, OK), (" 12 ", OK), ("+3", OK), ("1.5", "not a valid IS"), (2**31, "out of the range"),
           (True, "number or numeric string")],
    "DS": [(72.5, OK), ("72.5", OK), ("1e3", OK), (".5", OK), ("1,5", "not a valid DS"),
           ("nan", "not a valid DS"), (float("inf"), "not a finite")],
    "AT": [("00100010", OK), ("0010ab10", OK), ("0010", "8 hexadecimal digits"), (1, "8 hexadecimal")],
    "PN": [({"Alphabetic": "Doe^Jane"}, OK), ("Doe^Jane", OK), ({"Alphabetic": "x" * 65}, "at most 64"),
           ({"alphabetic": "A"}, "must be objects"), ({"Alphabetic": 1}, "must be strings"),
           ({"Alphabetic": "A\\B"}, "backslash"), ({"Alphabetic": "A\nB"}, "control characters")],
    "OB": [("AAAA", "InlineBinary")],
}


@pytest.mark.parametrize("vr", sorted(CASES))
def test_each_vr_accepts_and_refuses_as_the_standard_says(vr):
    wrong = [(value, expected, got) for value, expected in CASES[vr]
             if (got := verdict(vr, value)) is not expected
             and (expected is OK or got is OK or expected not in got)]
    assert not wrong, wrong


def test_every_vr_has_a_rule_and_cases():
    assert set(RULES) == dataset.ALL_VRS - {"SQ"}
    assert set(CASES) | {"UC", "OD", "OF", "OL", "OV", "OW", "UN", "SL", "FL"} >= set(RULES)


ALPHABET = ("A", "Z", "a", "0", "9", " ", "_", ".", "-", "+", "^", "\\", "\n", "\t", "\x00",
            "\x7f", "é", "\u4e2d", "\ud800")


@pytest.mark.parametrize("vr", sorted(dataset.STRING_VRS))
def test_a_refusal_always_says_why_and_an_acceptance_keeps_the_value(vr):
    """Whatever a string rule is given, it either returns the very value or refuses with one of
    its messages — never a generic one for a value it would accept."""
    rng = random.Random(vr)
    for _ in range(3000):
        value = "".join(rng.choice(ALPHABET) for _ in range(rng.choice((0, 1, 2, 8, 16, 17, 64, 65))))
        try:
            assert RULES[vr](value) is value
        except Refused as refused:
            assert str(refused), value
            assert not RULES[vr].accepts(value), value


def test_canonical_elements_are_kept_as_sent_and_others_rebuilt():
    kept = {"vr": "LO", "Value": ["Ward 3", "Bed 2"]}
    numbers = {"vr": "US", "Value": [1, 2]}
    assert dataset.normalize({"00102000": kept})["00102000"] is kept
    assert dataset.normalize({"00280010": numbers})["00280010"] is numbers
    converted = dataset.normalize({"00101030": {"vr": "DS", "Value": ["72.5"]},
                                   "00100010": {"vr": "PN", "Value": ["Doe^Jane", {"Alphabetic": "A", "Phonetic": ""}]},
                                   "00280010": {"vr": "US", "Value": [3.0]}})
    assert converted["00101030"] == {"vr": "DS", "Value": [72.5]}
    assert converted["00100010"]["Value"] == [{"Alphabetic": "Doe^Jane"}, {"Alphabetic": "A"}]
    assert converted["00280010"]["Value"] == [3] and type(converted["00280010"]["Value"][0]) is int


def test_elements_come_out_with_vr_first():
    ds = dataset.normalize({"00100020": {"Value": ["X"], "vr": "LO"}, "00380050": {"vr": "LO"}})
    assert [list(elem) for elem in ds.values()] == [["vr", "Value"], ["vr"]]


def test_a_refused_value_is_named_with_its_attribute_path():
    with pytest.raises(InvalidDataset, match=r"PatientID \(0010,0020\): backslash"):
        dataset.normalize({"00100020": {"vr": "LO", "Value": ["A\\B"]}})
    with pytest.raises(InvalidDataset, match=r"ScheduledStationNameCodeSequence \(0040,4025\)\[0\] > "
                                             r"CodeValue \(0008,0100\): value longer"):
        dataset.normalize({"00404025": {"vr": "SQ", "Value": [{"00080100": {"vr": "SH", "Value": ["x" * 17]}}]}})
    with pytest.raises(InvalidDataset, match="VR SH is wrong"):
        dataset.normalize({"00100020": {"vr": "SH", "Value": ["X"]}})
    with pytest.raises(InvalidDataset, match="missing or unknown VR"):
        dataset.normalize({"00100020": {"vr": "XX", "Value": ["X"]}})


def test_keys_come_out_upper_case_and_in_tag_order():
    ds = dataset.normalize({"00100020": {"vr": "LO", "Value": ["X"]},
                            "0008103e": {"vr": "LO", "Value": ["d"]},
                            "00404025": {"vr": "SQ", "Value": [{"00080104": {"vr": "LO", "Value": ["m"]},
                                                                "00080100": {"vr": "SH", "Value": ["c"]}}]},
                            "00080005": {"vr": "CS", "Value": ["ISO_IR 192"]}})
    assert list(ds) == ["00080005", "0008103E", "00100020", "00404025"]
    assert list(ds["00404025"]["Value"][0]) == ["00080100", "00080104"]
