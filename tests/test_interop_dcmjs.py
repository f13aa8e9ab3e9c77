"""Interoperability tier: an independent DIMSE implementation (dcmjs-dimse on Node.js, not
pynetdicom) drives N-CREATE, N-GET, N-ACTION claim and C-FIND against a gateway process, and
plays a modality: Modality Worklist C-FIND, MPPS N-CREATE / N-SET / N-GET.

``.ci/run`` installs tests/interop/package.json; when the packages are missing here the test
installs them itself. Skipped only when Node.js is not on the machine."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

INTEROP = Path(__file__).parent / "interop"
SCRIPT = INTEROP / "ups_interop.js"

PUSH = "1.2.840.10008.5.1.4.34.6.1"


@pytest.fixture(scope="module")
def node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed")
    if not (INTEROP / "node_modules" / "dcmjs-dimse").is_dir():
        npm = shutil.which("npm")
        assert npm, "dcmjs-dimse is not installed and npm is missing: run npm install in tests/interop"
        subprocess.run([npm, "install", "--no-audit", "--no-fund", "--silent"], cwd=INTEROP,
                       check=True, timeout=300)
    return node


def test_dcmjs_dimse_create_get_claim_find(node, gateway):
    run = subprocess.run([node, str(SCRIPT), "127.0.0.1", str(gateway.dimse_port), "UPS_GATEWAY",
                          "DCMJS_SCU"], capture_output=True, text=True, timeout=90)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["error"] is None, report
    steps = {r["step"]: r for r in report["results"]}
    assert list(steps) == ["n-create", "n-create-assign", "n-get", "n-action-claim",
                           "n-action-claim-again", "c-find-pull", "c-find-query",
                           "c-find-wrong-identifier", "n-get-unknown"], report
    uid, label = report["uid"], report["label"]

    assert steps["n-create"]["status"] == 0x0000
    assert steps["n-create-assign"]["status"] == 0x0000
    assert steps["n-create-assign"]["uid"].startswith("2.25.")  # assigned, in the response

    get = steps["n-get"]
    assert get["status"] == 0x0000
    assert get["dataset"]["ProcedureStepState"] == "SCHEDULED"
    assert get["dataset"]["WorklistLabel"] == label
    assert "TransactionUID" not in get["dataset"]

    assert steps["n-action-claim"]["status"] == 0x0000
    assert steps["n-action-claim"]["actionTypeId"] == 1
    again = steps["n-action-claim-again"]
    assert again["status"] == 0xC302 and "IN PROGRESS" in again["comment"]

    for step in ("c-find-pull", "c-find-query"):
        find = steps[step]
        assert find["status"] == 0x0000, find
        [match] = find["matches"]
        assert match["SOPInstanceUID"] == uid
        assert match["SOPClassUID"] == PUSH
        assert match["ProcedureStepState"] == "IN PROGRESS"
        assert match["WorklistLabel"] == label
        assert "TransactionUID" not in match

    wrong = steps["c-find-wrong-identifier"]
    assert wrong["status"] == 0xA900 and "QueryRetrieveLevel" in wrong["comment"]
    assert not wrong["matches"]
    assert steps["n-get-unknown"]["status"] == 0xC307


async def test_dcmjs_dimse_modality_worklist_and_mpps(node, gateway, http):
    """dcmjs-dimse as a modality: MWL C-FIND, MPPS N-CREATE / N-SET COMPLETED / N-GET."""
    import asyncio

    from gateway.ups import mwl
    from tests.helpers import code, element, new_uid, workitem

    station = f"DJ{new_uid()[-10:]}"
    uid = new_uid()
    ds = workitem(station=station, start="20261125100000", accession="ACC-DJ",
                  study_uid=new_uid())
    ds["00404026"] = element("SQ", code("CT", "DCM", "Computed Tomography"))
    async with http.post(f"{gateway.base}/workitems?workitem={uid}", json=ds,
                         headers={"Content-Type": "application/dicom+json"}) as r:
        assert r.status == 201, await r.text()
    mpps_uid = new_uid()
    run = await asyncio.to_thread(
        subprocess.run, [node, str(INTEROP / "modality_interop.js"), "127.0.0.1",
                         str(gateway.dimse_port), "UPS_GATEWAY", station, station,
                         mwl.step_id(uid), mpps_uid], capture_output=True, text=True, timeout=90)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["error"] is None, report
    steps = {r["step"]: r for r in report["results"]}
    assert list(steps) == ["mwl-find", "mpps-create", "mpps-completed", "mpps-get"], report
    find = steps["mwl-find"]
    assert find["status"] == 0x0000 and len(find["matches"]) == 1
    [step] = find["matches"][0]["ScheduledProcedureStepSequence"]
    assert step["ScheduledProcedureStepID"] == mwl.step_id(uid)
    assert step["Modality"] == "CT"
    assert steps["mpps-create"]["status"] == steps["mpps-completed"]["status"] == 0x0000
    assert steps["mpps-get"]["dataset"]["PerformedProcedureStepStatus"] == "COMPLETED"
    async with http.get(f"{gateway.base}/workitems/{uid}") as r:
        assert (await r.json())[0]["00741000"]["Value"] == ["COMPLETED"]
