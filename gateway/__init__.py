"""ups-gateway: one DICOM UPS worklist served over DIMSE and UPS-RS, stored in Redis."""

__version__ = "0.1.0"
