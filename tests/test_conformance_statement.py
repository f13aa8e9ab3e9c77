"""docs/conformance-statement.md (the PS3.2 layout, issue 19) checked against the code: the SOP
classes the DIMSE listener accepts, the transfer syntaxes it accepts and proposes, every UPS-RS
route (kind, method, path, transaction name, scope) and the MWL-RS / MPPS-RS routes, the
implementation identity, the status codes, the configuration defaults it quotes, and the links
between the statement, the decisions record (docs/conformance.md) and the README."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import gateway
from gateway.config import Config
from gateway.dimse import access, decoding, handlers, negotiation, requestor
from gateway.dimse.mpps import MppsScp
from gateway.dimse.mwl import MwlFind
from gateway.rest import capabilities, paths
from gateway.rest import mpps as rest_mpps
from gateway.rest import mwl as rest_mwl
from gateway.rest.app import ROUTES, SCOPES
from gateway.ups import status as st
from gateway.ups.uids import UPS_EVENT

ROOT = Path(__file__).resolve().parent.parent
STATEMENT = ROOT / "docs" / "conformance-statement.md"
TEXT = STATEMENT.read_text()
UID = re.compile(r"`([0-9]+(?:\.[0-9]+)+)`")
CODE = re.compile(r"`([^`]+)`")


def section(title: str) -> str:
    """The text under the heading ``title`` (any level) up to the next heading of the same or a
    higher level."""
    lines = TEXT.splitlines()
    for at, line in enumerate(lines):
        match = re.match(r"^(#+)\s+(.*)$", line)
        if match and match.group(2).strip() == title:
            level = len(match.group(1))
            body = []
            for following in lines[at + 1:]:
                heading = re.match(r"^(#+)\s", following)
                if heading and len(heading.group(1)) <= level:
                    break
                body.append(following)
            return "\n".join(body)
    raise AssertionError(f"no section {title!r} in {STATEMENT.name}")


def table_after(text: str, caption: str) -> list[list[str]]:
    """The rows (cells, header and separator dropped) of the first table after ``caption``."""
    start = text.index(caption)
    rows, started = [], False
    for line in text[start:].splitlines()[1:]:
        if line.startswith("|"):
            started = True
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif started:
            break
    return [row for row in rows[1:] if not set("".join(row)) <= set("-: ")]


def accepted_sop_classes() -> list[str]:
    """What the listener accepts with the Modality Worklist and MPPS extensions on."""
    policy = negotiation.Policy(max_pdu=0, extra_sop_classes=(MwlFind.sop_class,
                                                              MppsScp.sop_class))
    return [str(cx.abstract_syntax) for cx in policy.supported()]


# ---- DIMSE ---------------------------------------------------------------------------------------

def test_the_sop_class_table_lists_exactly_the_sop_classes_the_listener_accepts():
    rows = table_after(section("4.2.1.1 SOP Classes"), "Table 4.2-1")
    listed = {}
    for name, uid, scu, scp, _ in rows:
        (value,) = UID.findall(uid)
        listed[value] = (name, scu, scp)
    assert set(listed) == set(accepted_sop_classes())
    assert all(scp == "Yes" for _, _, scp in listed.values())
    overview = table_after(section("1. Overview"), "Table 1-1")
    named = {row[0] for row in overview if not row[0].startswith("*")}
    assert {name for name, _, _ in listed.values()} == named


def test_the_accepted_presentation_contexts_are_those_of_the_listener():
    text = section("4.2.1.4 Association Acceptance Policy")
    contexts = table_after(text, "Table 4.2-8")
    assert [UID.findall(row[0])[0] for row in contexts] == accepted_sop_classes()
    syntaxes = table_after(text, "Transfer syntaxes, for every abstract syntax above")
    assert [UID.findall(row[1])[0] for row in syntaxes] == list(negotiation.TRANSFER_SYNTAXES)


def test_the_proposed_presentation_context_is_what_the_event_sender_proposes():
    (row,) = table_after(section("4.2.1.3 Association Initiation Policy"), "Table 4.2-6")
    assert UID.findall(row[0]) == [UPS_EVENT]
    assert UID.findall(row[1]) == list(requestor.TRANSFER_SYNTAXES)  # in proposal order
    assert row[2].startswith("SCP")


def test_the_implementation_identity_is_the_one_sent():
    text = section("Implementation Identifying Information")
    for where in (text, TEXT.split("## 1. Overview")[0]):  # Table 4.2-5 and the title block
        assert f"| Implementation Class UID | `{negotiation.IMPLEMENTATION_CLASS_UID}` |" in where
        assert f"| Implementation Version Name | `{negotiation.IMPLEMENTATION_VERSION_NAME}`" \
            in where
    assert f"| Product version | {gateway.__version__} " in TEXT
    assert f"| Application Context Name | `{negotiation.APPLICATION_CONTEXT}` |" in \
        section("General")


def _known_codes() -> set[int]:
    """Every status the code defines: the core's, the DIMSE adapter's own, access control's."""
    known = {value for name, value in vars(st).items() if name.isupper() and isinstance(value, int)}
    known |= {decoding.UNRECOGNIZED_OPERATION, handlers.SOP_CLASS_NOT_SUPPORTED,
              decoding.INVALID_OBJECT_INSTANCE, handlers.IDENTIFIER_DOES_NOT_MATCH,
              handlers.OUT_OF_RESOURCES}
    return known | {access.NOT_AUTHORIZED}


def test_every_documented_status_code_is_one_the_code_knows():
    text = section("4.2.1.4 Association Acceptance Policy")
    documented = {int(code, 16) for code in re.findall(r"\b0x([0-9A-F]{4})\b", text)}
    unknown = documented - _known_codes() - {0x0107}  # 0x0107: said never to be sent
    assert not unknown, f"status codes the code does not define: {sorted(map(hex, unknown))}"


def test_every_status_of_the_core_is_documented_or_said_never_to_be_returned():
    text = section("4.2.1.4 Association Acceptance Policy")
    tables = table_after(text, "Table 4.2-9") + table_after(text, "Table 4.2-10")  # UPS, MPPS
    in_table = {int(row[0], 16) for row in tables}
    never = text.split("**never returned**")[1]
    never = {int(code, 16) for code in re.findall(r"\b0x([0-9A-F]{4})\b", never.split("\n\n")[0])}
    for name, value in vars(st).items():
        if name.isupper() and isinstance(value, int):
            assert value in in_table or value in never, f"{name} (0x{value:04X}) not documented"
    assert not in_table & never


# ---- web services --------------------------------------------------------------------------------

def _resource_rows() -> list[tuple[str, list[str], str, str]]:
    """Table 4.3-1 as (transaction, methods, first resource path, scope)."""
    rows = []
    for row in table_after(section("4.3 Web Services"), "Table 4.3-1"):
        transaction, methods, resource, _, _, scope = row
        names = [m.split()[0] for m in re.sub(r"\(.*?\)", "", methods).split(",")]
        rows.append((transaction, names, CODE.findall(resource)[0], scope.strip("`")))
    return rows


@pytest.mark.parametrize("kind,method", [(k, m) for k, ms in ROUTES.items() for m in ms])
def test_every_ups_rs_route_is_in_the_web_services_table(kind, method):
    templates = {"{base_path}" + template for template in paths.TEMPLATES[kind]}
    matches = [row for row in _resource_rows() if row[2] in templates and method in row[1]]
    assert matches, f"{method} {paths.TEMPLATES[kind][0]} ({kind}) is not in Table 4.3-1"
    name = capabilities.TRANSACTIONS.get((kind, method))
    if name is not None:
        assert any(row[0].startswith(name) for row in matches), (kind, method, name)
    assert all(row[3] == SCOPES[kind][method] for row in matches), (kind, method)


@pytest.mark.parametrize("kind,resource", [("mwl", f"/{rest_mwl.RESOURCE}"),
                                           ("mpps", f"/{rest_mpps.RESOURCE}/{{uid}}")])
def test_the_modality_worklist_and_mpps_routes_are_in_the_web_services_table(kind, resource):
    rows = [row for row in _resource_rows() if row[2] == "{base_path}" + resource]
    assert {m for row in rows for m in row[1]} == set(SCOPES[kind])
    for _, methods, _, scope in rows:
        assert all(scope == SCOPES[kind][m] for m in methods)


def test_every_row_of_the_web_services_table_is_served():
    served = {"{base_path}" + t for kind in ROUTES for t in paths.TEMPLATES[kind]}
    served |= {f"{{base_path}}/{rest_mwl.RESOURCE}", f"{{base_path}}/{rest_mpps.RESOURCE}/{{uid}}"}
    for transaction, methods, resource, _ in _resource_rows():
        assert resource in served, f"{transaction}: {resource} is no route"


def test_each_transaction_has_its_resource_and_status_table():
    titles = re.findall(r"^#### (4\.3\.[0-9]+ .*)$", TEXT, re.M)
    names = " ".join(titles)
    for transaction in ("Create Workitem", "Retrieve Workitem", "Update Workitem",
                        "Change Workitem State", "Request Cancellation", "Search Workitems",
                        "Subscribe", "Unsubscribe", "Suspend Global Subscription",
                        "Event channel", "Modality Worklist", "Modality Performed Procedure Step"):
        assert transaction in names, transaction
    for title in titles:
        text = section(title)
        assert re.search(r"^\| (Resource|Resources)", text, re.M), title
        assert re.search(r"^\| [1-5][0-9]{2}\b", text, re.M), title


def test_the_warning_texts_are_the_ones_sent():
    from gateway.rest import messages, workitems
    for text in (workitems.CREATED_WITH_MODIFICATIONS, workitems.UPDATED_WITH_MODIFICATIONS,
                 messages.STATE_CONFLICT, messages.UPDATE_CONFLICT, messages.NOT_CLAIMED):
        assert text in TEXT, text


# ---- configuration and links ---------------------------------------------------------------------

def _default(key: str):
    value = Config()
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _shown(value) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else str(value)


def test_the_configuration_defaults_quoted_are_the_defaults():
    local = section("4.5.1 AE title / presentation address mapping")
    assert f"`{_default('ae_title')}`" in local
    assert f"| {_default('dimse.port')} |" in local
    assert f"{_default('rest.port')}, under `{_default('rest.base_path')}`" in local
    for parameter, keys, defaults in table_after(section("4.5.2 Parameters"), "| Parameter |"):
        for key in CODE.findall(keys):
            assert _shown(_default(key)) in defaults, (parameter, key, _default(key))


def test_the_statement_the_record_and_the_readme_link_each_other():
    assert "docs/conformance.md" in TEXT
    assert "docs/conformance-statement.md" in (ROOT / "docs" / "conformance.md").read_text()
    assert "`docs/conformance-statement.md`" in (ROOT / "README.md").read_text()


def test_the_sections_cited_exist_in_the_decisions_record():
    record = (ROOT / "docs" / "conformance.md").read_text()
    numbers = set(re.findall(r"^## ([0-9]+[a-z]?)\. ", record, re.M))
    cited = set(re.findall(r"§([0-9]+[a-z]?)\b(?![.\d])", TEXT))
    cited -= {n for n in cited if not n[0].isdigit()}
    # §8.10, §11.4 … are PS3.18's (written with a dot); bare §N are the record's
    assert cited <= numbers, sorted(cited - numbers)
