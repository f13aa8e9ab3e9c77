"""The DIMSE adapter (PS3.4 Annex CC over pynetdicom): datasets in, UPS core calls, statuses out."""
