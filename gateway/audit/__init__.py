"""The audit trail (IHE ATNA): DICOM audit messages (PS3.15 A.5) to a file and to syslog
(RFC 5424 framing over UDP, TCP or TLS per RFC 5425), from a bounded buffer that never blocks a
request."""
