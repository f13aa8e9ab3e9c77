"""Shared test helpers: real gateway processes, free ports, and workitem builders."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from gateway import testing
from gateway.testing import free_port, merge

PUSH = "1.2.840.10008.5.1.4.34.6.1"


def new_uid() -> str:
    return "2.25." + str(uuid.uuid4().int)


class GatewayProcess(testing.GatewayProcess):
    """A gateway started exactly as the README starts it, on loopback ports; several may share
    one ``workdir`` (their files are named by their REST port)."""

    def __init__(self, workdir: Path, *, redis_url: str | None = None,
                 data_dir: Path | None = None, ae_title: str = "UPS_GATEWAY",
                 extra: dict[str, Any] | None = None, dimse: bool = True):
        rest_port, dimse_port = free_port(), free_port()
        data_dir = Path(data_dir or Path(workdir) / "data")
        config = merge({
            "ae_title": ae_title,
            "data_dir": str(data_dir),
            "rest": {"host": "127.0.0.1", "port": rest_port},
            "dimse": {"host": "127.0.0.1", "port": dimse_port, "enabled": dimse},
            "redis": {"url": redis_url},
            "log": {"level": "INFO", "format": "json"},
        }, extra)
        super().__init__(workdir, config, rest_port=rest_port, dimse_port=dimse_port,
                         data_dir=data_dir, file_stem=f"gateway-{rest_port}")


def element(vr: str, *values: Any) -> dict:
    return {"vr": vr, "Value": list(values)} if values else {"vr": vr}


def code(value: str, scheme: str = "99LOCAL", meaning: str | None = None) -> dict:
    return {"00080100": element("SH", value), "00080102": element("SH", scheme),
            "00080104": element("LO", meaning or value)}


def workitem(uid: str | None = None, *, label: str = "AI", station: str = "STATION1",
             start: str = "20261125100000", patient_id: str = "PID1",
             patient_name: str = "Doe^John", accession: str | None = None,
             study_uid: str | None = None, priority: str = "MEDIUM",
             **extra: dict) -> dict:
    """A valid Create Workitem payload (DICOM JSON) with the common worklist attributes."""
    ds = {
        "00741000": element("CS", "SCHEDULED"),
        "00741200": element("CS", priority),
        "00741204": element("LO", "AI analysis"),
        "00741202": element("LO", label),
        "00404005": element("DT", start),
        "00404041": element("CS", "READY"),
        "00100010": element("PN", {"Alphabetic": patient_name}),
        "00100020": element("LO", patient_id),
        "00404025": element("SQ", code(station)),
        "00404018": element("SQ", code("AI-CT", "99LOCAL", "AI CT analysis")),
        "00081195": element("UI"),
    }
    if uid:
        ds["00080018"] = element("UI", uid)
    if accession or study_uid:
        request = {"00080050": element("SH", accession or ""),
                   "0020000D": element("UI", study_uid or new_uid())}
        ds["0040A370"] = element("SQ", request)
    if study_uid:
        ds["0020000D"] = element("UI", study_uid)
    ds.update(extra)
    return ds


def state_payload(state: str, tx: str | None = None) -> dict:
    ds = {"00741000": element("CS", state)}
    if tx:
        ds["00081195"] = element("UI", tx)
    return ds


def completion_payload() -> dict:
    """Update payload that satisfies the COMPLETED final-state requirements."""
    return {"00741216": element("SQ", {
        "00404028": element("SQ", code("STATION1")),
        "00404019": element("SQ", code("AI-CT", "99LOCAL", "AI CT analysis")),
        "00404050": element("DT", "20261125100000"),
        "00404051": element("DT", "20261125101000"),
        "00404033": element("SQ"),
    })}


def dumps(obj: Any) -> str:
    return json.dumps(obj)
