"""The UPS-RS adapter (PS3.18 chapter 11): HTTP in, UPS core calls, HTTP out."""
