"""The DIMSE adapter (PS3.4 Annex CC): the gateway's own upper layer on its event loop, datasets
in, UPS core calls, statuses out. pynetdicom is used for its PDU codecs and as the requestor."""
