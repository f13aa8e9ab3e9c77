"""gateway.dimse.responses writes command sets itself (the listener's responses, the requestor's
N-EVENT-REPORT-RQ) and gateway.dimse.messages fragments them into P-DATA-TF PDUs; the bytes on
the wire must be exactly what pynetdicom's own primitive_to_message + encode_msg produce for the
same message, fragmentation included."""

from __future__ import annotations

from io import BytesIO

import pytest
from pynetdicom import dimse_primitives as dp
from pynetdicom.dimse import _RSP_TO_MESSAGE
from pynetdicom.dimse_messages import N_EVENT_REPORT_RQ

from gateway.dimse import messages, responses
from tests.dimse_util import PULL, PUSH, wire

ECHO = "1.2.840.10008.1.1"
LONG_UID = "2.25." + "1" * 59  # 64 characters: the longest a UID may be
ODD_UID = "2.25.123"           # odd length: padded with NUL

# Request Command Field of each response primitive class, and its dataset attribute.
FIELDS = {dp.N_CREATE: (0x0140, "AttributeList"), dp.N_SET: (0x0120, "AttributeList"),
          dp.N_GET: (0x0110, "AttributeList"), dp.N_ACTION: (0x0130, "ActionReply"),
          dp.N_EVENT_REPORT: (0x0100, "EventReply"), dp.C_ECHO: (0x0030, None),
          dp.C_FIND: (0x0020, "Identifier")}


def stock(primitive, context_id: int, max_pdu: int) -> bytes:
    message = _RSP_TO_MESSAGE[type(primitive)]()
    message.primitive_to_message(primitive)
    return wire(message, context_id, max_pdu)


def ours(primitive, context_id: int, max_pdu: int) -> bytes:
    command_field, dataset_name = FIELDS[type(primitive)]
    stream = getattr(primitive, dataset_name) if dataset_name else None
    dataset = stream.getvalue() if stream is not None else None
    command = responses.response(
        command_field, primitive.MessageIDBeingRespondedTo, primitive.Status,
        primitive.AffectedSOPClassUID,
        sop_instance=getattr(primitive, "AffectedSOPInstanceUID", None),
        comment=getattr(primitive, "ErrorComment", None), has_dataset=bool(dataset),
        action_type=getattr(primitive, "ActionTypeID", None),
        event_type=getattr(primitive, "EventTypeID", None),
        offending=getattr(primitive, "OffendingElement", None))
    return messages.p_data(context_id, command, dataset, max_pdu)


def response(cls, **fields):
    primitive = cls()
    primitive.MessageIDBeingRespondedTo = fields.pop("msg_id", 1)
    for name, value in fields.items():
        setattr(primitive, name, value)
    return primitive


DATASET = b"\x10\x00\x10\x00\x08\x00\x00\x00Doe^Jane" * 400  # spans several PDUs when small

CASES = {
    "n-create success, uid": response(dp.N_CREATE, AffectedSOPClassUID=PUSH,
                                      AffectedSOPInstanceUID=ODD_UID, Status=0x0000),
    "n-create assigned uid, long": response(dp.N_CREATE, msg_id=65535, AffectedSOPClassUID=PUSH,
                                            AffectedSOPInstanceUID=LONG_UID, Status=0x0000),
    "n-create warning + comment": response(dp.N_CREATE, AffectedSOPClassUID=PUSH,
                                           AffectedSOPInstanceUID=ODD_UID, Status=0xB300,
                                           ErrorComment="Worklist Label set to 'DEFAULT'"),
    "n-create failure, odd comment": response(dp.N_CREATE, AffectedSOPClassUID=PUSH,
                                              Status=0x0111, ErrorComment="odd"),
    "n-set": response(dp.N_SET, AffectedSOPClassUID=PUSH, AffectedSOPInstanceUID=ODD_UID,
                      Status=0xC310, ErrorComment="The Transaction UID is missing"),
    "n-get with dataset": response(dp.N_GET, AffectedSOPClassUID=PUSH,
                                   AffectedSOPInstanceUID=ODD_UID, Status=0,
                                   AttributeList=BytesIO(DATASET)),
    "n-get failure": response(dp.N_GET, AffectedSOPClassUID=PUSH, AffectedSOPInstanceUID=ODD_UID,
                              Status=0xC307, ErrorComment="no such workitem"),
    "n-action": response(dp.N_ACTION, AffectedSOPClassUID=PUSH, AffectedSOPInstanceUID=ODD_UID,
                         Status=0, ActionTypeID=1),
    "n-action refused": response(dp.N_ACTION, AffectedSOPClassUID=PULL, Status=0xC302,
                                 ErrorComment="already IN PROGRESS", ActionTypeID=1),
    "n-event-report": response(dp.N_EVENT_REPORT, AffectedSOPClassUID=PUSH,
                               AffectedSOPInstanceUID=ODD_UID, Status=0x0211, EventTypeID=5,
                               ErrorComment="This gateway sends UPS event reports"),
    "c-echo": response(dp.C_ECHO, AffectedSOPClassUID=ECHO, Status=0),
    "c-echo comment": response(dp.C_ECHO, AffectedSOPClassUID=ECHO, Status=0x0122,
                               ErrorComment="no"),
    "c-find pending": response(dp.C_FIND, AffectedSOPClassUID=PULL, Status=0xFF00,
                               Identifier=BytesIO(DATASET[:200])),
    "c-find pending, large": response(dp.C_FIND, AffectedSOPClassUID=PULL, Status=0xFF00,
                                      Identifier=BytesIO(DATASET)),
    "c-find final": response(dp.C_FIND, AffectedSOPClassUID=PULL, Status=0),
    "c-find cancel": response(dp.C_FIND, AffectedSOPClassUID=PULL, Status=0xFE00),
    "c-find failure": response(dp.C_FIND, AffectedSOPClassUID=PULL, Status=0xA900,
                               OffendingElement=[0x00100010, 0x00741000],
                               ErrorComment="PatientName is not a UPS matching key"),
    "c-find one offending": response(dp.C_FIND, AffectedSOPClassUID=PULL, Status=0xA900,
                                     OffendingElement=0x00100010),
}


@pytest.mark.parametrize("max_pdu", [0, 262144, 16384, 64])
@pytest.mark.parametrize("name", list(CASES))
def test_written_exactly_as_pynetdicom_writes_it(name, max_pdu):
    primitive = CASES[name]
    assert ours(primitive, 5, max_pdu) == stock(primitive, 5, max_pdu)


@pytest.mark.parametrize("max_pdu", [0, 16384, 64])
@pytest.mark.parametrize("msg_id, uid, dataset", [(1, ODD_UID, DATASET), (65535, LONG_UID, None)])
def test_an_event_report_request_is_written_as_pynetdicom_writes_it(max_pdu, msg_id, uid,
                                                                    dataset):
    primitive = dp.N_EVENT_REPORT()
    primitive.MessageID = msg_id
    primitive.AffectedSOPClassUID = PUSH
    primitive.AffectedSOPInstanceUID = uid
    primitive.EventTypeID = 5
    if dataset is not None:
        primitive.EventInformation = BytesIO(dataset)
    message = N_EVENT_REPORT_RQ()
    message.primitive_to_message(primitive)
    command = responses.request(0x0100, msg_id, PUSH, sop_instance=uid, event_type=5,
                                has_dataset=dataset is not None)
    assert messages.p_data(3, command, dataset, max_pdu) == wire(message, 3, max_pdu)


def test_the_reassembler_reads_back_what_was_fragmented():
    command = responses.response(0x0110, 7, 0, PUSH, sop_instance=ODD_UID, has_dataset=True)
    wire = messages.p_data(3, command, DATASET, 64)
    assembler, done = messages.Assembler(), []
    from pynetdicom.pdu import P_DATA_TF

    pos = 0
    while pos < len(wire):
        length = int.from_bytes(wire[pos + 2:pos + 6], "big")
        assert length <= 64, "a PDU longer than the peer's maximum"
        pdu = P_DATA_TF()
        pdu.decode(wire[pos:pos + 6 + length])
        pos += 6 + length
        for item in pdu.presentation_data_value_items:
            message = assembler.feed(item.presentation_context_id, item.presentation_data_value)
            if message is not None:
                done.append(message)
    assert len(done) == 1
    message = done[0]
    assert message.context_id == 3 and message.dataset == DATASET
    assert message.command_field == 0x8110 and message.us(messages.RESPONDED_TO) == 7
    assert message.sop_class == PUSH and message.sop_instance == ODD_UID


@pytest.mark.parametrize("limits, what", [((16, None), "command set"), ((None, 100), "dataset")])
def test_the_reassembler_bounds_what_a_message_makes_it_hold(limits, what):
    command = responses.response(0x0100, 7, 0, PUSH, sop_instance=ODD_UID, has_dataset=True)
    assembler = messages.Assembler(*limits)
    with pytest.raises(messages.ProtocolError, match=f"{what} exceeds"):
        assembler.feed(1, b"\x03" + command)
        for _ in range(200):  # empty fragments count too
            assembler.feed(1, b"\x00")


@pytest.mark.parametrize("value", ["Müller is not ASCII", "a\\b"])
def test_text_that_is_not_plain_ascii_is_replaced_not_refused(value):
    command = responses.response(0x0140, 1, 0x0110, PUSH, comment=value)
    parsed = messages.parse_command(command[12:])
    text = parsed[0x0902].decode("ascii").rstrip()
    assert "\\" not in text and len(text) == len(value)
