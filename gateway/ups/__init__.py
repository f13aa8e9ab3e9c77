"""The protocol-agnostic UPS core: model, rules, state machine, matching and service API.

Nothing in this package knows about HTTP or DIMSE: adapters translate their wire formats into the
canonical workitem form (a DICOM JSON object, see ``dataset``) and map ``UPSError`` statuses back.
"""
