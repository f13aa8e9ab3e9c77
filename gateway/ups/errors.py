"""Typed UPS errors: each carries the DIMSE status that an adapter maps to its own wire form."""

from __future__ import annotations

from gateway.ups import status as st


class UPSError(Exception):
    """A refused UPS request. ``status`` is the DIMSE status; ``message`` says why, for humans."""

    def __init__(self, status: int, message: str, *, reason: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        # Finer cause where one status covers several (e.g. "missing" vs "incorrect" Transaction UID).
        self.reason = reason

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"UPSError(0x{self.status:04X}, {self.message!r})"


class InvalidDataset(UPSError):
    """The payload is not a valid DICOM JSON dataset, or breaks an attribute rule."""

    def __init__(self, message: str, status: int = st.INVALID_ATTRIBUTE_VALUE):
        super().__init__(status, message)


class NoSuchWorkitem(UPSError):
    def __init__(self, uid: str):
        super().__init__(st.NO_SUCH_UPS, f"No workitem with UID {uid}")


class WorkitemGone(UPSError):
    """Known but purged after its retention period (UPS-RS answers 410)."""

    def __init__(self, uid: str):
        super().__init__(st.NO_SUCH_UPS, f"Workitem {uid} was deleted after its retention period",
                         reason="gone")


class InvalidQuery(UPSError):
    def __init__(self, message: str):
        super().__init__(st.INVALID_ATTRIBUTE_VALUE, message)


class Contention(UPSError):
    """Every decision of an operation was overtaken by other writers (``until_committed``)."""

    def __init__(self, uid: str):
        super().__init__(st.PROCESSING_FAILURE, f"Workitem {uid} is changing too fast; try again")


class OutcomeUnknown(UPSError):
    """A commit was sent and its answer did not come (the store stalled past the wait, or the
    connection broke): it may or may not have been applied. Never "not done": the client is
    told to read the workitem before retrying (a repeated identical create succeeds anyway)."""

    def __init__(self, uid: str, why: str = "the store did not confirm it"):
        super().__init__(st.PROCESSING_FAILURE,
                         "Outcome unknown: the change may have been applied; read the workitem "
                         f"before retrying ({why}; workitem {uid})", reason="outcome unknown")
        self.uid = uid
