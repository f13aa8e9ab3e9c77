"""Realistic UPS workitems for the benchmarks.

``Workload`` builds Create Workitem payloads (DICOM JSON) as a hospital or an AI platform would send
them: about 40 top-level attributes, a dozen of them sequences (patient identity with issuers and
other IDs, admission, the referenced request with its codes, input instances with series and SOP
references, scheduled station name/class/location codes, human performers and processing
parameters). Generation is deterministic for a seed, so every run stores the same kind of data.

The search scenario's distribution: ``labels`` worklist labels, ``stations`` station names, ``days``
consecutive days starting at ``first_day``, scheduled between 07:00 and 19:00; every patient has two
workitems. States are mixed by ``state_for`` (60 % SCHEDULED, 20 % IN PROGRESS, 10 % COMPLETED,
10 % CANCELED).
"""

from __future__ import annotations

import json
import random
import uuid
from datetime import date, timedelta
from typing import Any

FAMILY = ["Smith", "Müller", "García", "Rossi", "Nguyen", "Kowalski", "Dubois", "Jensen", "Silva",
          "Okafor", "Tanaka", "Novak", "Andersson", "O'Brien", "Schmidt", "Martin", "Bernard",
          "Ivanova", "Hansen", "Costa", "Yilmaz", "Papadopoulos", "Horváth", "Kim", "Lefèvre"]
GIVEN = ["Anna", "John", "Maria", "Lars", "Sofia", "Ahmed", "Chen", "Eva", "Luca", "Zoë", "Olga",
         "Pedro", "Jean", "Ingrid", "Kofi", "Yuki", "Mateo", "Nora", "Piotr", "Léa"]
PROCEDURES = [("CTHEAD", "CT head without contrast"), ("CTCHEST", "CT chest with contrast"),
              ("MRBRAIN", "MR brain"), ("MRKNEE", "MR knee left"), ("XRCHEST", "XR chest PA/LAT"),
              ("USABD", "US abdomen complete"), ("MAMMO", "Mammography screening bilateral"),
              ("PETCT", "PET-CT whole body"), ("CTANGIO", "CT angiography head and neck")]
WORKITEMS = [("AI-TRIAGE", "AI triage"), ("AI-NODULE", "Lung nodule detection"),
             ("RECON", "Image reconstruction"), ("QC", "Quality control"),
             ("REPORT", "Radiology reporting"), ("POSTPROC", "3D post-processing"),
             ("CAD", "Computer aided detection"), ("ROUTE", "Forward to archive")]
DIAGNOSES = [("R51", "Headache"), ("R07.4", "Chest pain, unspecified"),
             ("S83.2", "Tear of meniscus"),
             ("C34.9", "Malignant neoplasm of lung"), ("I63.9", "Cerebral infarction"),
             ("R10.4", "Other and unspecified abdominal pain"), ("Z12.31", "Screening mammogram")]
CLASSES = [("CT", "Computed tomography"), ("MR", "Magnetic resonance"), ("CR", "Radiography"),
           ("US", "Ultrasound"), ("MG", "Mammography"), ("PT", "PET"), ("AI", "AI node"),
           ("WS", "Workstation"), ("REC", "Reconstruction server"), ("ARC", "Archive")]
PRIORITIES = ["LOW", "MEDIUM", "MEDIUM", "MEDIUM", "HIGH"]
ALERTS = ["", "Contrast allergy", "Pacemaker", "Claustrophobia", "Diabetes", "Renal insufficiency"]

ROOT = "2.25."

STATE_MIX = (("SCHEDULED", 0.60), ("IN PROGRESS", 0.20), ("COMPLETED", 0.10), ("CANCELED", 0.10))


def el(vr: str, *values: Any) -> dict:
    return {"vr": vr, "Value": list(values)} if values else {"vr": vr}


def code(value: str, scheme: str, meaning: str) -> dict:
    return {"00080100": el("SH", value), "00080102": el("SH", scheme),
            "00080104": el("LO", meaning)}


def new_uid() -> str:
    return ROOT + str(uuid.uuid4().int)


class Workload:
    def __init__(self, seed: int = 1, *, labels: int = 50, stations: int = 200, days: int = 30,
                 first_day: date = date(2026, 11, 1)):
        self.seed = seed
        self.labels = [f"WL{i:02d}" for i in range(labels)]
        self.stations = [f"ST{i:03d}" for i in range(stations)]
        self.days = [first_day + timedelta(days=d) for d in range(days)]
        self.locations = [f"LOC{i:02d}" for i in range(20)]

    # ---- one workitem ------------------------------------------------------------------------

    def workitem(self, i: int, uid: str | None = None, *, label: str | None = None) -> dict:
        """The ``i``-th workitem of this workload (DICOM JSON, a valid Create Workitem payload)."""
        rng = random.Random(self.seed * 1_000_003 + i)
        patient = i // 2
        prng = random.Random(self.seed * 7_000_001 + patient)  # same patient data for both
        family, given = prng.choice(FAMILY), prng.choice(GIVEN)
        pid = f"PID{patient:07d}"
        birth = date(1930, 1, 1) + timedelta(days=prng.randrange(90 * 365))
        sex = prng.choice("MFO")
        day = rng.choice(self.days)
        start = f"{day:%Y%m%d}{rng.randrange(7, 19):02d}{rng.randrange(0, 60, 5):02d}00"
        end_day = day + timedelta(days=1)
        proc_code, proc_text = rng.choice(PROCEDURES)
        wi_code, wi_text = rng.choice(WORKITEMS)
        dx_code, dx_text = rng.choice(DIAGNOSES)
        cls_code, cls_text = rng.choice(CLASSES)
        station = rng.choice(self.stations)
        location = rng.choice(self.locations)
        study = ROOT + str(rng.getrandbits(120))
        accession = f"ACC{self.seed:02d}{i:09d}"
        performer_family, performer_given = rng.choice(FAMILY), rng.choice(GIVEN)
        series = [ROOT + str(rng.getrandbits(120)) for _ in range(2)]
        ds = {
            "00080005": el("CS", "ISO_IR 192"),
            "00080018": el("UI", uid or ROOT + str(uuid.UUID(int=rng.getrandbits(128)).int)),
            "00081080": el("LO", dx_text),
            "00081084": el("SQ", code(dx_code, "I10", dx_text)),
            "00081195": el("UI"),
            "00100010": el("PN", {"Alphabetic": f"{family}^{given}"}),
            "00100020": el("LO", pid),
            "00100021": el("LO", "HOSP_A"),
            "00100024": el("SQ", {"00400032": el("UT", "1.2.826.0.1.3680043.10.543"),
                                  "00400033": el("CS", "ISO")}),
            "00100030": el("DA", f"{birth:%Y%m%d}"),
            "00100040": el("CS", sex),
            "00101002": el("SQ", {"00100020": el("LO", f"NHS{patient:010d}"),
                                  "00100021": el("LO", "NHS"),
                                  "00100022": el("CS", "TEXT")}),
            "00101020": el("DS", round(prng.uniform(1.45, 1.98), 2)),
            "00101030": el("DS", round(prng.uniform(45, 120), 1)),
            "00102000": el("LO", prng.choice(ALERTS)) if prng.random() < 0.3 else el("LO"),
            "001021C0": el("US", 4),
            "00380010": el("LO", f"ADM{rng.randrange(10**8):08d}"),
            "00380014": el("SQ", {"00400031": el("UT", "HOSP_A_ADT")}),
            "00380050": el("LO"),
            "0020000D": el("UI", study),
            "00400400": el("LT", f"{proc_text}: {wi_text.lower()} requested by the reading room."),
            "00404005": el("DT", start),
            "00404008": el("DT", f"{end_day:%Y%m%d}235959"),
            "00404011": el("DT", f"{day:%Y%m%d}235959"),
            "00404018": el("SQ", code(wi_code, "99LOCAL", wi_text)),
            "00404021": el("SQ", {
                "0020000D": el("UI", study),
                "0020000E": el("UI", series[0]),
                "00081199": el("SQ", *({"00081150": el("UI", "1.2.840.10008.5.1.4.1.1.2"),
                                         "00081155": el("UI", f"{series[0]}.{k}")}
                                        for k in range(1, 4))),
                "0040E020": el("CS", "DICOM"),
                "0040E021": el("SQ", {"00080054": el("AE", "PACS_MAIN")}),
            }),
            "00404025": el("SQ", code(station, "99LOCAL", f"Station {station}")),
            "00404026": el("SQ", code(cls_code, "99LOCAL", cls_text)),
            "00404027": el("SQ", code(location, "99LOCAL", f"Building {location[-2:]}")),
            "00404034": el("SQ", {
                "00404009": el("SQ", code(f"U{rng.randrange(1000):04d}", "99LOCAL",
                                          f"{performer_family} {performer_given}")),
                "00404036": el("LO", "Radiology Department"),
                "00404037": el("PN", {"Alphabetic": f"{performer_family}^{performer_given}"}),
            }),
            "00404041": el("CS", "READY" if rng.random() < 0.9 else "INCOMPLETE"),
            "0040A370": el("SQ", {
                "00080050": el("SH", accession),
                "00080051": el("SQ", {"00400031": el("UT", "HOSP_A_RIS")}),
                "0020000D": el("UI", study),
                "00321032": el("PN", {"Alphabetic":
                                      f"{rng.choice(FAMILY)}^{rng.choice(GIVEN)}^^Dr"}),
                "00321060": el("LO", proc_text),
                "00321064": el("SQ", code(proc_code, "99LOCAL", proc_text)),
                "00401001": el("SH", f"RP{i:010d}"),
                "00401002": el("LO", dx_text),
            }),
            "00741000": el("CS", "SCHEDULED"),
            "00741002": el("SQ"),
            "00741200": el("CS", rng.choice(PRIORITIES)),
            "00741202": el("LO", label or rng.choice(self.labels)),
            "00741204": el("LO", f"{wi_text} for {proc_text}"),
            "00741210": el("SQ", {
                "0040A040": el("CS", "TEXT"),
                "0040A043": el("SQ", code("ALGO", "99LOCAL", "Algorithm")),
                "0040A160": el("UT", f"{wi_code.lower()}-model "
                                     f"v{rng.randrange(1, 5)}.{rng.randrange(10)}"),
            }, {
                "0040A040": el("CS", "TEXT"),
                "0040A043": el("SQ", code("SERIES", "99LOCAL", "Input series")),
                "0040A160": el("UT", series[1]),
            }),
            "00741216": el("SQ"),
        }
        return canonical_order(ds)

    def state_for(self, i: int) -> str:
        x = random.Random(self.seed * 3_000_017 + i).random()
        acc = 0.0
        for state, share in STATE_MIX:
            acc += share
            if x < acc:
                return state
        return STATE_MIX[-1][0]

    # ---- queries ---------------------------------------------------------------------------

    def performer_query(self, rng: random.Random, limit: int = 50) -> str:
        day = rng.choice(self.days)
        return (f"ProcedureStepState=SCHEDULED&WorklistLabel={rng.choice(self.labels)}"
                f"&ScheduledProcedureStepStartDateTime={day:%Y%m%d}-{day:%Y%m%d}&limit={limit}")

    def page_query(self, rng: random.Random, limit: int = 50) -> str:
        """SCHEDULED workitems of any worklist in a three-day window, one page: a full page of
        ``limit`` at every store size from 1k on, so answers of equal size can be compared."""
        start = rng.randrange(len(self.days) - 2)
        first, last = self.days[start], self.days[start + 2]
        return (f"ProcedureStepState=SCHEDULED"
                f"&ScheduledProcedureStepStartDateTime={first:%Y%m%d}-{last:%Y%m%d}&limit={limit}")

    @staticmethod
    def patient_query(rng: random.Random, stored: int) -> str:
        patient = rng.randrange(max(1, stored // 2))
        return f"PatientID=PID{patient:07d}"


def canonical_order(ds: dict) -> dict:
    """Keys sorted at every level, as ``gateway.ups.dataset.normalize`` orders them."""
    out = {}
    for key in sorted(ds):
        elem = ds[key]
        if elem.get("vr") == "SQ" and elem.get("Value"):
            elem = {"vr": "SQ", "Value": [canonical_order(item) for item in elem["Value"]]}
        out[key] = elem
    return out


def template(ds: dict) -> bytes:
    """JSON bytes with the SOP Instance UID replaced by a marker (``fill`` puts a fresh UID in)."""
    ds = dict(ds)
    ds["00080018"] = el("UI", "@UID@")
    return json.dumps(ds, ensure_ascii=False, separators=(",", ":")).encode()


def fill(tpl: bytes, uid: str) -> bytes:
    return tpl.replace(b"@UID@", uid.encode(), 1)


def completion_payload(station: str = "ST000") -> dict:
    """Update payload that satisfies the COMPLETED final-state requirements."""
    return {"00741216": el("SQ", {
        "00404028": el("SQ", code(station, "99LOCAL", f"Station {station}")),
        "00404019": el("SQ", code("AI-TRIAGE", "99LOCAL", "AI triage")),
        "00404050": el("DT", "20261125100000"),
        "00404051": el("DT", "20261125101000"),
        "00404033": el("SQ"),
    })}
