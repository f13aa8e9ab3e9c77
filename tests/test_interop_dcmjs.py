"""Interoperability tier: an independent DIMSE implementation (dcmjs-dimse on Node.js, not
pynetdicom) drives N-CREATE, N-GET, N-ACTION claim and C-FIND against a gateway process.

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
