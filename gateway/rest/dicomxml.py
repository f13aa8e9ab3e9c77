"""The XML media types for the Modality Worklist and MPPS services (PS3.18 §8.7.3.2), on the
same negotiation (``media``) and the same Native DICOM Model writer (``native_xml``) as UPS-RS:
one dataset may be a bare ``application/dicom+xml`` document when that is what was asked; a list
of results is ``multipart/related; type="application/dicom+xml"``, one part per dataset.
"""

from __future__ import annotations

from aiohttp import web

from gateway.rest import media
from gateway.rest.messages import datasets_response
from gateway.ups.dataset import Dataset

JSON, XML, MULTIPART_XML = "json", "xml", "multipart-xml"
DICOM_XML = media.DICOM_XML


def negotiate(request: web.Request) -> str:
    """JSON, XML (a bare document) or MULTIPART_XML, as ``media.negotiate`` chooses."""
    choice = media.negotiate(request)
    return JSON if not choice.xml else MULTIPART_XML if choice.multipart else XML


def response(datasets: list[Dataset], media_: str, headers: dict[str, str], *,
             single: bool = False, status: int = 200) -> web.Response:
    """``datasets`` as XML: one document (``single``) or a multipart/related list."""
    choice = media.XML_DOCUMENT if single else media.XML_PARTS
    return datasets_response(choice, datasets, status, headers)
