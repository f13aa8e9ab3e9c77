"""gateway.dimse.responses writes response command sets itself; they must be byte for byte what
pynetdicom's own primitive_to_message + encode_msg produce, P-DATA fragmentation included, and
anything it cannot write must be left to pynetdicom (None)."""

from __future__ import annotations

from io import BytesIO

import pytest
from pynetdicom import dimse_primitives as dp
from pynetdicom.dimse import _RSP_TO_MESSAGE

from gateway.dimse import responses
from tests.dimse_util import PULL, PUSH

ECHO = "1.2.840.10008.1.1"
LONG_UID = "2.25." + "1" * 59  # 64 characters: the longest a UID may be
ODD_UID = "2.25.123"           # odd length: padded with NUL


def stock(primitive, context_id: int, max_pdu: int) -> list:
    message = _RSP_TO_MESSAGE[type(primitive)]()
    message.primitive_to_message(primitive)
    return [p.presentation_data_value_list for p in message.encode_msg(context_id, max_pdu)]


def ours(primitive, context_id: int, max_pdu: int) -> list | None:
    pdus = responses.response_pdus(primitive, context_id, max_pdu)
    return None if pdus is None else [p.presentation_data_value_list for p in pdus]


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
    "n-create error id": response(dp.N_CREATE, AffectedSOPClassUID=PUSH, Status=0x0110,
                                  ErrorID=7),
    "n-set": response(dp.N_SET, AffectedSOPClassUID=PUSH, AffectedSOPInstanceUID=ODD_UID,
                      Status=0xC310, ErrorComment="The Transaction UID is missing"),
    "n-set attribute list": response(dp.N_SET, AffectedSOPClassUID=PUSH, Status=0,
                                     AttributeList=BytesIO(DATASET[:16])),
    "n-get with dataset": response(dp.N_GET, AffectedSOPClassUID=PUSH,
                                   AffectedSOPInstanceUID=ODD_UID, Status=0,
                                   AttributeList=BytesIO(DATASET)),
    "n-get empty dataset": response(dp.N_GET, AffectedSOPClassUID=PUSH, Status=0,
                                    AttributeList=BytesIO()),
    "n-get identifier list": response(dp.N_GET, AffectedSOPClassUID=PUSH, Status=0x0107,
                                      AttributeIdentifierList=[0x00741000, 0x00100010]),
    "n-action": response(dp.N_ACTION, AffectedSOPClassUID=PUSH, AffectedSOPInstanceUID=ODD_UID,
                         Status=0, ActionTypeID=1),
    "n-action refused": response(dp.N_ACTION, AffectedSOPClassUID=PULL, Status=0xC302,
                                 ErrorComment="already IN PROGRESS", ActionTypeID=1),
    "n-event-report": response(dp.N_EVENT_REPORT, AffectedSOPClassUID=PUSH,
                               AffectedSOPInstanceUID=ODD_UID, Status=0, EventTypeID=5),
    "c-echo": response(dp.C_ECHO, AffectedSOPClassUID=ECHO, Status=0),
    "c-echo comment": response(dp.C_ECHO, AffectedSOPClassUID=ECHO, Status=0x0122,
                               ErrorComment="no"),
    "c-find pending": response(dp.C_FIND, AffectedSOPClassUID=PULL, Status=0xFF00,
                               Identifier=BytesIO(DATASET[:200])),
    "c-find final": response(dp.C_FIND, AffectedSOPClassUID=PULL, Status=0),
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
    expected = stock(primitive, 5, max_pdu)
    assert ours(primitive, 5, max_pdu) == expected


@pytest.mark.parametrize("field, value", [("ErrorComment", "Müller is not ASCII"),
                                          ("ErrorComment", "a\\b")])
def test_text_it_cannot_write_plainly_is_left_to_pynetdicom(field, value):
    primitive = response(dp.N_CREATE, AffectedSOPClassUID=PUSH, Status=0x0110, **{field: value})
    assert responses.response_pdus(primitive, 1, 0) is None

