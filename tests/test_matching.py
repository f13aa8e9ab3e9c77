"""Search matching (digest §5, decisions.md "Search"): the query built from UPS-RS parameters or a
C-FIND identifier, matched against workitems; and paging through the service on a real Redis, both
for index-exact plans and for filtered ones."""

from __future__ import annotations

import random

import pytest

from gateway.store import indexes
from gateway.rest.query import search_query
from gateway.ups import matching
from gateway.ups.dataset import normalize
from gateway.ups.dicomtime import parse_offset
from gateway.ups.errors import InvalidQuery
from tests.helpers import code, element, new_uid, workitem


def q(**params) -> matching.Query:
    return search_query(list(params.items()))


def qp(pairs: list[tuple[str, str]]) -> matching.Query:
    return search_query(pairs)


def item(**kw) -> dict:
    return normalize(workitem(new_uid(), **kw))


def with_requests(*requests: tuple[str, str]) -> dict:
    ds = workitem(new_uid())
    ds["0040A370"] = element("SQ", *[{"00080050": element("SH", acc),
                                      "0020000D": element("UI", study)}
                                     for acc, study in requests])
    return normalize(ds)


# ---- single values, wildcards, names ----------------------------------------------------

def test_single_value_is_exact_and_case_sensitive():
    ds = item(patient_id="ABC123", label="AI")
    assert q(PatientID="ABC123").matches(ds)
    assert not q(PatientID="abc123").matches(ds)
    assert not q(PatientID="ABC12").matches(ds)
    assert q(WorklistLabel="AI").matches(ds)
    assert not q(WorklistLabel="ai").matches(ds)
    assert q(ProcedureStepState="SCHEDULED").matches(ds)
    assert not q(ProcedureStepState="COMPLETED").matches(ds)


def test_single_value_does_not_match_an_absent_or_empty_attribute():
    ds = item()
    ds["00100020"] = {"vr": "LO"}
    assert not q(PatientID="X").matches(ds)
    assert not q(AdmissionID="X").matches(ds)


@pytest.mark.parametrize("pattern,hit", [("ABC*", True), ("*123", True), ("A*3", True),
                                         ("ABC???", True), ("ABC??", False), ("?BC123", True),
                                         ("*", True), ("X*", False), ("abc*", False),
                                         ("*B*", True)])
def test_wildcards(pattern, hit):
    """``*`` any run, ``?`` one character; case-sensitive on a non-PN attribute."""
    assert q(PatientID=pattern).matches(item(patient_id="ABC123")) is hit


def test_wildcard_characters_are_literal_in_regex_terms():
    ds = item(patient_id="A.C+(1)")
    assert q(PatientID="A.C+(1)").matches(ds)
    assert q(PatientID="A.C*").matches(ds)
    assert not q(PatientID="A.C+(2)*").matches(ds)
    assert not q(PatientID="ABC*").matches(item(patient_id="A.C"))
    assert not q(PatientID="A.C").matches(item(patient_id="ABC"))


def test_person_name_matching_ignores_case():
    ds = item(patient_name="Doe^John")
    assert q(PatientName="doe^john").matches(ds)
    assert q(PatientName="DOE^JOHN").matches(ds)
    assert q(PatientName="doe*").matches(ds)
    assert q(PatientName="D?E^J*").matches(ds)
    assert not q(PatientName="doe").matches(ds)  # single value matching is not a prefix
    assert not q(PatientName="Smith*").matches(ds)


@pytest.mark.parametrize("value,hit", [("muller", True), ("MULLER", True), ("Mül", True),
                                       ("jurg", True), ("müller^jürgen", True),
                                       ("ller", False), ("urgen", False), ("schmidt", False)])
def test_fuzzy_matching_is_an_accent_and_case_insensitive_prefix(value, hit):
    ds = item(patient_name="Müller^Jürgen")
    assert q(PatientName=value, fuzzymatching="true").matches(ds) is hit


def test_without_fuzzy_matching_accents_count():
    ds = item(patient_name="Müller^Jürgen")
    assert not q(PatientName="muller^jurgen").matches(ds)
    assert not q(PatientName="muller").matches(ds)
    assert q(PatientName="müller^jürgen").matches(ds)
    assert not q(PatientName="muller", fuzzymatching="false").matches(ds)


# ---- UIDs ------------------------------------------------------------------------------

def test_uid_list_in_rest_parameters_is_comma_separated():
    a, b, c = item(), item(), item()
    uid_a, uid_b = a["00080018"]["Value"][0], b["00080018"]["Value"][0]
    query = q(SOPInstanceUID=f"{uid_a},{uid_b}")
    assert [query.matches(x) for x in (a, b, c)] == [True, True, False]
    assert q(SOPInstanceUID=uid_a).matches(a) and not q(SOPInstanceUID=uid_a).matches(b)


def test_uid_list_in_an_identifier_is_multi_valued():
    a, b, c = item(), item(), item()
    uid_a, uid_b = a["00080018"]["Value"][0], b["00080018"]["Value"][0]
    query = matching.from_identifier({"00080018": element("UI", uid_a, uid_b),
                                      "00100010": element("PN")})
    assert [query.matches(x) for x in (a, b, c)] == [True, True, False]
    # the backslash-joined form of the same list
    joined = matching.leaf_key("00080018", "UI", f"{uid_a}\\{uid_b}", parse_offset(None))
    assert joined.uids == {uid_a, uid_b}


def test_uid_is_matched_exactly_not_as_a_prefix():
    ds = item(study_uid="1.2.3.45")
    assert q(StudyInstanceUID="1.2.3.45").matches(ds)
    assert not q(StudyInstanceUID="1.2.3.4").matches(ds)
    with pytest.raises(InvalidQuery):
        q(StudyInstanceUID="1.2.3.*")


# ---- date/time ranges --------------------------------------------------------------------

AT = {"early": "20261124235959", "start": "20261125000000", "mid": "20261125120000",
      "last": "20261125235959.999999", "next": "20261126000000"}


def _dt(value: str) -> dict:
    return item(start=value)


@pytest.mark.parametrize("query,expected", [
    ("20261125100000-20261125130000", {"mid"}),
    ("20261125-20261125", {"start", "mid", "last"}),        # a date-only range is whole days
    ("20261125", {"start", "mid", "last"}),                 # a single date covers the day
    ("-20261125", {"early", "start", "mid", "last"}),       # open lower end
    ("20261125-", {"start", "mid", "last", "next"}),        # open upper end
    ("-20261124", {"early"}),
    ("20261126-", {"next"}),
    ("20261125120000", {"mid"}),
    ("202611251200-202611251200", {"mid"}),                 # the whole minute
    ("20261124235959-20261125000000", {"early", "start"}),  # both ends inclusive
    ("2026-", set(AT)),
    ("-", set(AT)),
])
def test_dt_ranges(query, expected):
    key = q(ScheduledProcedureStepStartDateTime=query)
    assert {name for name, value in AT.items() if key.matches(_dt(value))} == expected


def test_dt_range_with_utc_offsets():
    ds = _dt("20261125100000")  # stored without an offset: read as UTC (the default)
    assert q(ScheduledProcedureStepStartDateTime="20261125110000+0100").matches(ds)
    assert not q(ScheduledProcedureStepStartDateTime="20261125100000+0100").matches(ds)
    assert q(ScheduledProcedureStepStartDateTime="20261125103000+0100-20261125120000+0100"
             ).matches(ds)
    assert q(ScheduledProcedureStepStartDateTime="20261125050000-0500").matches(ds)
    # the identifier's Timezone Offset From UTC applies to values without one
    assert qp([("TimezoneOffsetFromUTC", "+0200"),
               ("ScheduledProcedureStepStartDateTime", "20261125120000")]).matches(ds)


def test_stored_dt_with_offset_compares_as_an_instant():
    ds = _dt("20261125100000+0200")  # 08:00 UTC
    assert q(ScheduledProcedureStepStartDateTime="20261125080000-20261125080000").matches(ds)
    assert not q(ScheduledProcedureStepStartDateTime="20261125100000-20261125100000").matches(ds)


def test_other_dt_attributes_have_ranges_too():
    ds = item()
    ds["00404011"] = element("DT", "20261126090000")
    ds["00100030"] = element("DA", "19700315")
    assert q(ExpectedCompletionDateTime="20261126-").matches(ds)
    assert not q(ExpectedCompletionDateTime="-20261125").matches(ds)
    assert q(PatientBirthDate="19700101-19701231").matches(ds)
    assert q(PatientBirthDate="19700315").matches(ds)
    assert not q(PatientBirthDate="-19691231").matches(ds)


# ---- sequences -----------------------------------------------------------------------------

@pytest.mark.parametrize("acc_key,study_key", [
    ("ReferencedRequestSequence.AccessionNumber", "ReferencedRequestSequence.StudyInstanceUID"),
    ("0040A370.00080050", "0040A370.0020000D"),
    ("0040a370.00080050", "ReferencedRequestSequence.0020000D"),
])
def test_sequence_keys_must_match_in_the_same_item(acc_key, study_key):
    ds = with_requests(("ACC1", "1.2.3.1"), ("ACC2", "1.2.3.2"))
    assert qp([(acc_key, "ACC1")]).matches(ds)
    assert qp([(acc_key, "ACC2")]).matches(ds)
    assert not qp([(acc_key, "ACC3")]).matches(ds)
    assert qp([(acc_key, "ACC1"), (study_key, "1.2.3.1")]).matches(ds)
    assert qp([(acc_key, "ACC2"), (study_key, "1.2.3.2")]).matches(ds)
    assert not qp([(acc_key, "ACC1"), (study_key, "1.2.3.2")]).matches(ds)


def test_code_sequence_matching():
    ds = item(station="CT-AI-1")
    assert q(**{"ScheduledStationNameCodeSequence.CodeValue": "CT-AI-1"}).matches(ds)
    assert q(**{"00404025.00080100": "CT-AI-*"}).matches(ds)
    assert not q(**{"ScheduledStationNameCodeSequence.CodeValue": "CT-AI-2"}).matches(ds)
    assert not q(**{"ScheduledStationClassCodeSequence.CodeValue": "X"}).matches(ds)


def test_an_empty_sequence_key_is_universal():
    ds = item()
    assert q(ReferencedRequestSequence="").matches(ds)
    with pytest.raises(InvalidQuery):
        q(ReferencedRequestSequence="ACC1")


def test_sequence_matching_from_an_identifier():
    ds = with_requests(("ACC1", "1.2.3.1"), ("ACC2", "1.2.3.2"))
    same = {"0040A370": element("SQ", {"00080050": element("SH", "ACC2"),
                                       "0020000D": element("UI", "1.2.3.2")})}
    crossed = {"0040A370": element("SQ", {"00080050": element("SH", "ACC2"),
                                          "0020000D": element("UI", "1.2.3.1")})}
    assert matching.from_identifier(same).matches(ds)
    assert not matching.from_identifier(crossed).matches(ds)


def test_a_nested_key_on_a_non_sequence_is_invalid():
    with pytest.raises(InvalidQuery) as caught:
        q(**{"PatientID.CodeValue": "x"})
    assert "PatientID" in caught.value.message


# ---- universal matching, includefield, return keys --------------------------------------

def test_universal_matching_matches_everything_and_returns_the_key():
    ds = item()
    ds["00404011"] = element("DT", "20261126090000")
    no_expected = item()
    for query in (q(ExpectedCompletionDateTime=""), q(PatientName="*"), q(PatientID="")):
        assert query.matches(ds) and query.matches(no_expected)
    assert "00404011" in q(ExpectedCompletionDateTime="").project(ds)
    assert "00404011" not in q().project(ds)


def test_includefield_named_and_all():
    ds = item()
    ds["00404011"] = element("DT", "20261126090000")
    ds["00400400"] = element("LT", "a comment")
    default = q().project(ds)
    assert "00404011" not in default and "00400400" not in default
    assert "00741000" in default and "00080018" in default and "00100010" in default
    named = qp([("includefield", "ExpectedCompletionDateTime"), ("includefield", "00400400")])
    assert {"00404011", "00400400"} <= set(named.project(ds))
    comma = q(includefield="ExpectedCompletionDateTime,CommentsOnTheScheduledProcedureStep")
    assert {"00404011", "00400400"} <= set(comma.project(ds))
    assert q(includefield="all").project(ds) == {k: ds[k] for k in sorted(ds) if k != "00081195"}


def test_transaction_uid_is_never_returned():
    ds = item()
    ds["00081195"] = element("UI", "1.2.3.4")  # even if it were in the dataset
    for query in (q(), q(includefield="all"), q(includefield="TransactionUID"),
                  qp([("includefield", "all"), ("includefield", "00081195")])):
        assert "00081195" not in query.project(ds)
    with pytest.raises(InvalidQuery):
        q(TransactionUID="1.2.3.4")


def test_unknown_keywords_and_parameters_are_ignored():
    query = qp([("NoSuchKeyword", "x"), ("foo", "bar"), ("PatientID", "PID1"),
                ("accept", "application/dicom+json"), ("charset", "utf-8")])
    assert set(query.keys) == {"00100020"}
    assert query.matches(item(patient_id="PID1"))


@pytest.mark.parametrize("name,value,word", [
    ("Modality", "CT", "Modality"),                    # a known keyword but no UPS key
    ("00080060", "CT", "Modality"),
    ("TransactionUID", "1.2.3", "TransactionUID"),
    ("includefield", "NoSuchAttribute", "NoSuchAttribute"),
])
def test_known_but_unsupported_keys_are_invalid(name, value, word):
    with pytest.raises(InvalidQuery) as caught:
        qp([(name, value)])
    assert word in caught.value.message


@pytest.mark.parametrize("name,value", [
    ("ScheduledProcedureStepStartDateTime", "2026-11-25"),
    ("ScheduledProcedureStepStartDateTime", "20261340"),
    ("ScheduledProcedureStepStartDateTime", "20261126-20261125"),
    ("ScheduledProcedureStepStartDateTime", "tomorrow"),
    ("PatientBirthDate", "1970-01-01"),
    ("SOPInstanceUID", "1.2.abc"),
    ("limit", "-1"),
    ("limit", "ten"),
    ("offset", "-5"),
    ("offset", "1.5"),
    ("fuzzymatching", "maybe"),
    ("fuzzymatching", "1"),
    ("emptyvaluematching", "sometimes"),
    ("TimezoneOffsetFromUTC", "CET"),
])
def test_invalid_values_are_invalid_queries(name, value):
    with pytest.raises(InvalidQuery) as caught:
        qp([(name, value)])
    assert caught.value.message


def test_the_same_attribute_twice_is_invalid():
    with pytest.raises(InvalidQuery):
        qp([("PatientID", "A"), ("PatientID", "B")])
    with pytest.raises(InvalidQuery):
        qp([("PatientID", "A"), ("00100020", "B")])


def test_limit_and_offset_parameters():
    query = search_query([("limit", "5"), ("offset", "10")], default_limit=100,
                                 max_limit=50)
    assert (query.limit, query.offset) == (5, 10)
    assert search_query([], default_limit=100).limit == 100
    assert search_query([("limit", "5000")], max_limit=50).limit == 50


# ---- through the service: paging and index plans --------------------------------------

STARTS = ["20261125080000", "20261125090000", "20261125090000", "20261125093000",
          "20261125100000", "20261124230000", "20261126010000", "20261125100000+0200",
          "20261125", "2026112512"]


async def _populate(service, n: int = 30, seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    created = []
    for i in range(n):
        uid = f"1.2.826.0.1.3680043.10.{rng.randrange(1, 10**6)}.{i}"
        ds = workitem(uid, start=STARTS[i % len(STARTS)] if i < 20 else rng.choice(STARTS),
                      label="AI" if i % 3 else "QA",
                      patient_name="Doe^Jane" if i % 2 else "Roe^Richard",
                      patient_id=f"P{i % 4}")
        await service.create(normalize(ds))
        created.append(normalize(ds))
    return created


def _order(datasets: list[dict]) -> list[str]:
    from gateway.ups.dicomtime import dt_period
    keyed = [(dt_period(d["00404005"]["Value"][0])[0], d["00080018"]["Value"][0])
             for d in datasets]
    return [uid for _, uid in sorted(keyed)]


async def _page_through(service, params: list[tuple[str, str]], limit: int) -> tuple[list, set]:
    seen, totals, offset = [], set(), 0
    while True:
        query = search_query(params + [("offset", str(offset)), ("limit", str(limit))])
        result = await service.search(query)
        totals.add(result.total)
        if not result.items:
            break
        assert len(result.items) <= limit
        assert result.remaining == max(0, result.total - offset - len(result.items))
        seen += [ds["00080018"]["Value"][0] for ds in result.items]
        offset += limit
    return seen, totals


@pytest.mark.parametrize("params,predicate,exact", [
    ([], lambda d: True, True),
    # index-exact: state + worklist label (+ a range on the start)
    ([("ProcedureStepState", "SCHEDULED"), ("WorklistLabel", "AI")],
     lambda d: d["00741202"]["Value"] == ["AI"], True),
    ([("ProcedureStepState", "SCHEDULED"), ("WorklistLabel", "AI"),
      ("ScheduledProcedureStepStartDateTime", "20261125-20261125")],
     lambda d: d["00741202"]["Value"] == ["AI"] and
     d["00404005"]["Value"][0] not in ("20261124230000", "20261126010000"), True),
    ([("PatientID", "P1")], lambda d: d["00100020"]["Value"] == ["P1"], True),
    # filtered: a wildcard on the patient name
    ([("PatientName", "doe*")], lambda d: d["00100010"]["Value"][0]["Alphabetic"] == "Doe^Jane",
     False),
    ([("PatientName", "doe*"), ("WorklistLabel", "QA")],
     lambda d: d["00100010"]["Value"][0]["Alphabetic"] == "Doe^Jane" and
     d["00741202"]["Value"] == ["QA"], False),
    ([("ScheduledStationNameCodeSequence.CodeValue", "STATION1"), ("PatientID", "P*"),
      ("ScheduledProcedureStepStartDateTime", "20261125-")],
     lambda d: d["00404005"]["Value"][0] != "20261124230000", False),
])
@pytest.mark.parametrize("limit", [7, 30])
async def test_paging_returns_the_stable_order_without_duplicates(service, params, predicate,
                                                                  exact, limit):
    # both ways of answering a search are exercised: straight from one index, or filtered
    assert indexes.plan(search_query(params)).exact is exact
    created = await _populate(service)
    expected = _order([d for d in created if predicate(d)])
    assert expected  # the query is meant to match something
    seen, totals = await _page_through(service, params, limit)
    assert totals == {len(expected)}
    assert len(seen) == len(set(seen))
    assert seen == expected


async def test_offset_past_the_end_gives_no_items_but_the_total(service):
    await _populate(service, n=5)
    result = await service.search(search_query([("offset", "50")]))
    assert result.items == [] and result.total == 5 and result.remaining == 0
    result = await service.search(search_query([("PatientName", "*e*"),
                                                        ("offset", "50")]))
    assert result.items == [] and result.total == 5


async def test_search_results_follow_state_changes(service):
    """The state indexes move with the workitem: a claimed item leaves SCHEDULED searches."""
    created = await _populate(service, n=6)
    uid = created[0]["00080018"]["Value"][0]
    await service.change_state(uid, "IN PROGRESS", "1.2.3.9")
    scheduled = await service.search(q(ProcedureStepState="SCHEDULED"))
    in_progress = await service.search(q(ProcedureStepState="IN PROGRESS"))
    assert uid not in [d["00080018"]["Value"][0] for d in scheduled.items]
    assert [d["00080018"]["Value"][0] for d in in_progress.items] == [uid]
    assert scheduled.total == 5 and in_progress.total == 1
    [found] = (await service.search(q(SOPInstanceUID=uid, includefield="all"))).items
    assert "00081195" not in found


async def test_search_by_uid_list_and_by_sequence_through_the_service(service):
    a, b = new_uid(), new_uid()
    for uid, acc, study in ((a, "ACC-A", "1.2.3.51"), (b, "ACC-B", "1.2.3.52")):
        await service.create(normalize(workitem(uid, accession=acc, study_uid=study)))
    await service.create(normalize(workitem(new_uid())))
    found = await service.search(q(SOPInstanceUID=f"{a},{b}"))
    assert {d["00080018"]["Value"][0] for d in found.items} == {a, b} and found.total == 2
    by_acc = await service.search(q(**{"ReferencedRequestSequence.AccessionNumber": "ACC-B"}))
    assert [d["00080018"]["Value"][0] for d in by_acc.items] == [b]
    crossed = await service.search(qp([("ReferencedRequestSequence.AccessionNumber", "ACC-B"),
                                       ("ReferencedRequestSequence.StudyInstanceUID", "1.2.3.51")]))
    assert crossed.items == [] and crossed.total == 0
    by_code = await service.search(q(**{"ScheduledStationNameCodeSequence.CodeValue": "STATION1",
                                        "ProcedureStepState": "SCHEDULED"}))
    assert by_code.total == 3


async def test_wildcard_on_an_indexed_attribute_is_case_sensitive_through_the_service(service):
    await service.create(normalize(workitem(new_uid(), patient_id="abc-1")))
    await service.create(normalize(workitem(new_uid(), patient_id="ABC-2")))
    result = await service.search(q(PatientID="ABC*"))
    assert [d["00100020"]["Value"] for d in result.items] == [["ABC-2"]]


async def test_a_far_future_start_date_is_stored_and_found(service):
    uid = new_uid()
    await service.create(normalize(workitem(uid, start="99991231")))
    result = await service.search(q(ScheduledProcedureStepStartDateTime="99991231"))
    assert [d["00080018"]["Value"][0] for d in result.items] == [uid]


async def test_code_value_of_the_class_and_location_sequences(service):
    uid = new_uid()
    ds = workitem(uid)
    ds["00404026"] = element("SQ", code("CLASS1"))
    ds["00404027"] = element("SQ", code("ROOM7"))
    await service.create(normalize(ds))
    await service.create(normalize(workitem(new_uid())))
    for key, value in (("ScheduledStationClassCodeSequence.CodeValue", "CLASS1"),
                       ("ScheduledStationGeographicLocationCodeSequence.CodeValue", "ROOM7")):
        result = await service.search(q(**{key: value}))
        assert [d["00080018"]["Value"][0] for d in result.items] == [uid], key


async def test_search_results_follow_a_rescheduled_start_and_a_relabelled_worklist(service):
    """An update that moves the start time re-scores every index the workitem is in; one that
    changes the worklist label moves it between label indexes and leaves the others alone."""
    created = await _populate(service, n=4)
    uid = created[0]["00080018"]["Value"][0]
    day = "ScheduledProcedureStepStartDateTime"
    before = await service.search(q(**{day: "20261201-20261201"}))
    assert uid not in [d["00080018"]["Value"][0] for d in before.items]
    await service.update(uid, normalize({"00404005": element("DT", "20261201120000"),
                                         "00741202": element("LO", "MOVED")}))
    moved = await service.search(q(**{day: "20261201-20261201"}))
    assert [d["00080018"]["Value"][0] for d in moved.items] == [uid]
    assert [d["00080018"]["Value"][0] for d in
            (await service.search(q(WorklistLabel="MOVED"))).items] == [uid]
    for label in ("AI", "QA"):
        assert uid not in [d["00080018"]["Value"][0] for d in
                           (await service.search(q(WorklistLabel=label))).items]
    everything = [d["00080018"]["Value"][0] for d in (await service.search(q())).items]
    assert everything[-1] == uid and len(everything) == 4  # last in the search order now
    await service.update(uid, normalize({"00741202": element("LO", "AGAIN")}))  # same start
    assert [d["00080018"]["Value"][0] for d in (await service.search(q())).items] == everything
    assert [d["00080018"]["Value"][0] for d in
            (await service.search(q(WorklistLabel="AGAIN", **{day: "20261201-"}))).items] == [uid]


# ---- C-FIND identifiers through the service (both store tiers agree) ------------------------

async def _stream(service, identifier: dict) -> list[dict]:
    return [ds async for ds in service.search_stream(matching.from_identifier(identifier))]


async def test_identifier_queries_shape_their_results_on_both_tiers(service):
    both, other, empty = new_uid(), new_uid(), new_uid()
    stations = element("SQ", code("CT1", meaning="one"), code("CT2", meaning="two"))
    await service.create(normalize(workitem(both, label="IDQ", **{"00404025": stations})))
    await service.create(normalize(workitem(other, label="IDQ", station="MR1")))
    await service.create(normalize(workitem(empty, label="IDQ", **{"00404025": element("SQ")})))
    template = {"00741202": element("LO", "IDQ"),
                "00404025": element("SQ", {"00080100": element("SH", "CT2"),
                                           "00080104": element("LO")})}
    [found] = await _stream(service, template)
    assert found["00080018"]["Value"] == [both]
    assert found["00404025"] == element("SQ", {"00080100": element("SH", "CT2"),
                                               "00080104": element("LO", "two")})
    assert set(found) == {"00080016", "00080018", "00404025", "00741202"}
    # An item of empty keys is universal: the workitem with an empty sequence is found too.
    universal = {"00741202": element("LO", "IDQ"),
                 "00404025": element("SQ", {"00080100": element("SH")})}
    found = await _stream(service, universal)
    assert sorted(d["00080018"]["Value"][0] for d in found) == sorted([both, other, empty])
    by_uid = {d["00080018"]["Value"][0]: d for d in found}
    assert by_uid[empty]["00404025"] == element("SQ")
    assert by_uid[other]["00404025"] == element("SQ", {"00080100": element("SH", "MR1")})


def test_a_sequence_key_of_only_empty_keys_is_universal():
    query = matching.from_identifier({"00404034": element("SQ", {
        "00404009": element("SQ", {"00080100": element("SH")}), "00404037": element("PN")})})
    assert query.keys["00404034"].kind == "universal"
    assert query.matches(item())  # no Scheduled Human Performers Sequence at all
    assert indexes.plan(query).exact


# ---- issue 16: DT ranges with offsets, the workitem's own offset, person names -------------

@pytest.mark.parametrize("query,hit", [
    ("20261125050000-0500-20261125060000-0500", True),   # 10:00-11:00 UTC, both ends offset
    ("20261125060000-0500-20261125070000-0500", False),  # 11:00-12:00 UTC
    ("20261125110000+0100-20261125060000-0500", True),   # mixed offsets
    ("-20261125060000-0500", True),                      # open low end, offset high end
    ("-20261125040000-0500", False),
    ("20261125050000-0500-", True),                      # offset low end, open high end
    ("20261125060000-0500-", False),
    ("20261125100000-0500", False),                      # one value: 15:00 UTC
    ("20261125050000-0500", True),                       # one value: 10:00 UTC
    ("2026-2027", True),                                 # year-only range, not -2027
    ("2025-2025", False),
    ("2026-20261125", True),
    ("202611-202611", True),
    ("20261126-20261130", False),
])
def test_dt_ranges_with_offsets_on_either_end(query, hit):
    assert q(ScheduledProcedureStepStartDateTime=query).matches(_dt("20261125100000")) is hit


@pytest.mark.parametrize("query", ["20261125-1500", "2027-2026", "20261125100000-0500-2025"])
def test_dt_ranges_that_end_before_they_start_are_refused(query):
    with pytest.raises(InvalidQuery):
        q(ScheduledProcedureStepStartDateTime=query)


def test_the_workitems_own_timezone_offset_governs_its_dt_values():
    local = _dt("20261125100000")
    local["00080201"] = element("SH", "+0200")  # 10:00 there is 08:00 UTC
    assert q(ScheduledProcedureStepStartDateTime="20261125080000").matches(local)
    assert not q(ScheduledProcedureStepStartDateTime="20261125100000").matches(local)
    explicit = _dt("20261125100000+0000")
    explicit["00080201"] = element("SH", "+0200")  # an explicit offset wins
    assert q(ScheduledProcedureStepStartDateTime="20261125100000").matches(explicit)
    # the configured offset only for values that have neither
    tz = parse_offset("-0100")
    plain = matching.Query(store_tz=tz)
    matching.add_term(plain, ["00404005"], "20261125110000", matching.UTC, "x")
    assert plain.matches(_dt("20261125100000")) and not plain.matches(local)
    assert matching.search_order(local) == matching.search_order(_dt("20261125080000"))


async def test_workitem_offsets_agree_between_index_plans_and_matching(service):
    label = f"TZ-{new_uid()[-6:]}"
    east, plain = new_uid(), new_uid()
    east_ds = workitem(east, label=label, start="20261125100000")
    east_ds["00080201"] = element("SH", "+0200")  # 08:00 UTC
    await service.create(normalize(east_ds))
    await service.create(normalize(workitem(plain, label=label, start="20261125090000")))
    everything = await service.search(q(WorklistLabel=label))
    assert [d["00080018"]["Value"][0] for d in everything.items] == [east, plain]  # order
    for params in ([("WorklistLabel", label)], [("ProcedureStepState", "SCHEDULED"),
                                                 ("WorklistLabel", label)],
                   [("WorklistLabel", label), ("PatientID", "PID1")]):
        window = qp(params + [("ScheduledProcedureStepStartDateTime",
                               "20261125075900-20261125081000")])
        found = await service.search(window)
        assert [d["00080018"]["Value"][0] for d in found.items] == [east], params
        streamed = [d async for d in service.search_stream(window)]
        assert [d["00080018"]["Value"][0] for d in streamed] == [east]


@pytest.mark.parametrize("value,hit", [
    ("DOE^JOHN^^^", True), ("doe^john", True), ("Doe^John^", True),
    ("*^JOHN", True), ("D*^J?HN", True), ("DOE*", True), ("D?E^J*", True),
    ("*N", False),        # a wildcard stays within its component: the family name is DOE
    ("DOE", False), ("DOE^JOHN^M", False), ("*^JOHN^X*", False),
])
def test_person_names_component_by_component(value, hit):
    stored = item(patient_name="Doe^John^^^")  # as some modalities send it
    assert q(PatientName=value).matches(stored) is hit
    assert q(PatientName=value).matches(item(patient_name="Doe^John")) is hit


@pytest.mark.parametrize("value,hit", [
    ("Yamada^Tarou=山田^太郎", True), ("yamada^tarou=山田^太郎=", True),
    ("Yamada^Tarou=山田^次郎", False), ("=山田^太郎", True), ("=山田*", True),
    ("山田^太郎", True),  # one group: any group of the name
    ("Yamada*=やまだ*", False),
])
def test_person_names_with_several_component_groups(value, hit):
    ds = item()
    ds["00100010"] = element("PN", {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎"})
    assert q(PatientName=value).matches(ds) is hit
    identifier = {"00100010": element("PN", dict(zip(
        ("Alphabetic", "Ideographic", "Phonetic"), value.split("="))))}
    identifier["00100010"]["Value"][0] = {g: v for g, v in
                                          identifier["00100010"]["Value"][0].items() if v}
    assert matching.from_identifier(identifier).matches(ds) is hit


@pytest.mark.parametrize("offset,valid", [("+1245", True), ("+1400", True), ("-1200", True),
                                          ("-0930", True), ("+1401", False), ("-1230", False),
                                          ("+0060", False), ("-1300", False)])
def test_utc_offsets_are_read_within_their_range(offset, valid):
    if valid:
        assert parse_offset(offset) is not None
    else:
        with pytest.raises(ValueError):
            parse_offset(offset)
