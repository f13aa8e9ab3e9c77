"""The operator's command line, run as an operator runs it (``python -m gateway …`` in a child
process) against a real gateway and its Redis: ``--version``, ``check-config`` (secrets masked,
exit 2 naming the bad key, ``--connect``), and the admin commands, which act through the UPS
core — so what they do is seen by UPS-RS clients and subscribers as any other client's
change."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from gateway import __version__
from gateway.testing import PACKAGE_ROOT, child_env, free_port
from tests.event_receiver import GLOBAL, STATE_REPORT, Ups, WsListener, frame_value
from tests.helpers import GatewayProcess, new_uid, workitem

PROCEDURE_STEP_STATE = "00741000"


def cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=PACKAGE_ROOT, env=child_env())


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    proc = GatewayProcess(tmp_path_factory.mktemp("cli")).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def config_path(gw) -> str:
    """The running gateway's own configuration file: the commands find its embedded Redis."""
    return str(gw.config_path)


@pytest.fixture
def ups(gw, http) -> Ups:
    return Ups(http, gw.base)


def run_json(config_path: str, *args: str):
    result = cli(*args, "--config", config_path, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def state_of(ds: dict) -> str:
    return ds[PROCEDURE_STEP_STATE]["Value"][0]


# ---- version and check-config ------------------------------------------------------------------

def test_version():
    result = cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"ups-gateway {__version__}"


def test_check_config_prints_every_key_with_secrets_masked(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({
        "redis": {"url": "redis://admin:hunter2-secret@db.example:6379/0",
                  "min_replicas_ack": 1}}))
    result = cli("check-config", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert "hunter2-secret" not in result.stdout
    shown = yaml.safe_load(result.stdout)
    assert shown["redis"]["url"] == "redis://admin:***@db.example:6379/0"
    assert shown["redis"]["min_replicas_ack"] == 1
    # every key of config.yaml is shown, with its effective value
    documented = yaml.safe_load((Path(PACKAGE_ROOT) / "config.yaml").read_text())
    assert set(shown) == set(documented)
    for section, values in documented.items():
        if isinstance(values, dict) and values:
            assert set(shown[section]) == set(values), section


def test_check_config_masks_the_sentinel_password_and_a_sentinel_url(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"redis": {"sentinel": {
        "master": "ups", "hosts": ["s1:26379", "s2:26379"], "password": "server-pw",
        "sentinel_password": "sentinel-pw"}}}))
    result = cli("check-config", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert "server-pw" not in result.stdout and "sentinel-pw" not in result.stdout
    sentinel = yaml.safe_load(result.stdout)["redis"]["sentinel"]
    assert sentinel["password"] == sentinel["sentinel_password"] == "***"
    assert sentinel["hosts"] == ["s1:26379", "s2:26379"]
    path.write_text(yaml.safe_dump({"redis": {
        "url": "redis+sentinel://:url-pw@s1:26379,s2:26379/ups/2?sentinel_password=s-pw"}}))
    result = cli("check-config", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert "url-pw" not in result.stdout and "s-pw" not in result.stdout
    assert yaml.safe_load(result.stdout)["redis"]["url"] == \
        "redis+sentinel://:***@s1:26379,s2:26379/ups/2?sentinel_password=***"


@pytest.mark.parametrize("config,key", [
    ({"rest": {"prot": 1}}, "rest.prot"),
    ({"redis": {"sentinel": {"master": "ups"}}}, "redis.sentinel.hosts"),
    ({"redis": {"sentinel": {"master": "ups", "hosts": ["nohost"]}}}, "redis.sentinel.hosts[0]"),
    ({"redis": {"url": "redis+sentinel://s1:26379"}}, "redis.url"),
    ({"redis": {"url": "redis+sentinel://s1:26379/m?password=x"}}, "redis.url"),
    ({"redis": {"min_replicas_ack": 1}}, "redis.min_replicas_ack"),
    ({"redis": {"url": "redis://x:1/0", "sentinel": {"master": "m", "hosts": ["s:1"]}}},
     "redis.sentinel.master"),
])
def test_check_config_bad_key_exits_2_naming_it(tmp_path, config, key):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    result = cli("check-config", "--config", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert key in line and "Traceback" not in result.stderr


def test_check_config_connect_names_an_unreachable_redis(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"redis": {"url": f"redis://u:pw1@127.0.0.1:{free_port()}/0",
                                              "connect_timeout": 1.0}}))
    assert cli("check-config", "--config", str(path)).returncode == 0  # no --connect: not tried
    result = cli("check-config", "--config", str(path), "--connect")
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert "redis.url" in line and "pw1" not in line


def test_check_config_connect_reaches_the_running_gateways_redis(config_path):
    result = cli("check-config", "--config", config_path, "--connect")
    assert result.returncode == 0, result.stderr
    assert "reached" in result.stderr and "role master" in result.stderr


def test_check_config_connect_refuses_more_replica_acks_than_replicas(gw, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"redis": {"url": gw.redis_url, "min_replicas_ack": 1}}))
    result = cli("check-config", "--config", str(path), "--connect")
    assert result.returncode == 2
    assert "redis.min_replicas_ack" in result.stderr and "has 0" in result.stderr


@pytest.mark.parametrize("args,text", [
    (["workitems", "list", "--limit", "0"], "--limit: '0' must be more than 0"),
    (["workitems", "purge", "--retention-hours", "-1"], "'-1' must be 0 or more"),
    (["workitems", "frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_bad_arguments_exit_2_saying_which(args, text):
    result = cli(*args)
    assert result.returncode == 2 and text in result.stderr and "Traceback" not in result.stderr


def test_admin_commands_without_a_running_gateway_say_so(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "nothing")}))
    result = cli("workitems", "list", "--config", str(path))
    assert result.returncode == 2
    assert "data_dir" in result.stderr and "start the gateway" in result.stderr


# ---- workitems ---------------------------------------------------------------------------------

async def test_workitems_list_and_show(ups, config_path):
    label = f"CLI{new_uid()[-8:]}"
    uids = [await ups.create(workitem(label=label, start=f"2026112510{i}000")) for i in range(3)]
    found = run_json(config_path, "workitems", "list", "--label", label)
    assert [ds["00080018"]["Value"][0] for ds in found] == uids  # search order
    assert all(ds["00741202"]["Value"] == [label] for ds in found)
    assert all(ds["00404025"]["vr"] == "SQ" for ds in found)  # whole workitems, DICOM JSON
    assert len(run_json(config_path, "workitems", "list", "--label", label, "--limit", "2")) == 2
    assert run_json(config_path, "workitems", "list", "--label", label, "--state",
                    "IN PROGRESS") == []

    table = cli("workitems", "list", "--label", label, "--config", config_path)
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split()[:3] == ["UID", "STATE", "LABEL"]
    assert [row.split()[:3] for row in rows] == [[uid, "SCHEDULED", label] for uid in uids]

    [shown] = run_json(config_path, "workitems", "show", uids[0])
    assert shown["00080018"]["Value"] == [uids[0]]
    assert "00081195" not in shown  # never the Transaction UID, as N-GET and Retrieve


def test_show_or_cancel_an_unknown_workitem_is_refused_with_the_status(config_path):
    for action in ("show", "cancel"):
        result = cli("workitems", action, "1.2.3.404", "--config", config_path)
        assert result.returncode == 1
        assert "0xC307" in result.stderr and "1.2.3.404" in result.stderr


async def test_cancel_is_a_ups_cancel_that_subscribers_hear(ups, gw, http, config_path):
    uid = await ups.create(workitem(label="CLICANCEL"))
    ae = f"CLIW{new_uid()[-6:]}"
    listener = await WsListener.open(http, ups.ws_url(ae))
    try:
        await ups.subscribe(uid, ae)
        await listener.wait(1, uid=uid)  # the initial State Report
        [ds] = run_json(config_path, "workitems", "cancel", uid, "--reason", "wrong patient")
        assert state_of(ds) == "CANCELED"
        progress = ds["00741002"]["Value"][0]
        assert progress["00741238"]["Value"] == ["wrong patient"]
        frames = await listener.wait(3, uid=uid, event_type=STATE_REPORT)
        assert [frame_value(f, PROCEDURE_STEP_STATE) for f in frames[1:]] == \
            ["IN PROGRESS", "CANCELED"]
    finally:
        await listener.close()
    async with http.get(f"{gw.base}/workitems/{uid}") as r:
        assert r.status == 200
        assert state_of((await r.json())[0]) == "CANCELED"


async def test_a_change_from_the_command_line_is_logged(ups, config_path):
    uid = await ups.create(workitem(label="CLILOG"))
    result = cli("workitems", "cancel", uid, "--config", config_path)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stderr.splitlines()]
    assert {"msg": "admin command", "command": "workitems cancel", "uid": uid,
            "ae": "UPS_GATEWAY"}.items() <= records[0].items()
    assert any(r["msg"] == "scheduled workitem canceled on request" and r["uid"] == uid
               for r in records)
    listing = cli("workitems", "list", "--config", config_path)
    assert listing.returncode == 0 and listing.stderr == ""  # reads log nothing


async def test_cancel_of_a_claimed_workitem_asks_its_performer(ups, config_path):
    uid = await ups.create(workitem())
    await ups.claim(uid)
    ae = f"CLIP{new_uid()[-6:]}"
    await ups.subscribe(uid, ae)  # someone to tell
    result = cli("workitems", "cancel", uid, "--config", config_path)
    assert result.returncode == 0, result.stderr
    assert "IN PROGRESS" in result.stdout and "requested" in result.stdout
    [backlog] = [e for e in run_json(config_path, "events", "backlog") if e["ae"] == ae]
    assert backlog["queued"] == 2  # its initial State Report and the cancel request


async def test_purge_runs_the_retention_purge_through_the_core(ups, gw, http, config_path):
    uid = await ups.create(workitem(label="CLIPURGE"))
    await ups.cancel_request(uid)
    kept = await ups.create(workitem(label="CLIPURGE"))
    assert uid not in run_json(config_path, "workitems", "purge")  # within its retention
    purged = run_json(config_path, "workitems", "purge", "--retention-hours", "0")
    assert uid in purged and kept not in purged
    async with http.get(f"{gw.base}/workitems/{uid}") as r:
        assert r.status == 410  # purged: "gone", as after the retention purge
    async with http.get(f"{gw.base}/workitems/{kept}") as r:
        assert r.status == 200


# ---- subscriptions and event backlogs ----------------------------------------------------------

async def test_subscriptions_list(ups, config_path):
    worklist_ae, filtered_ae, instance_ae = (f"{p}{new_uid()[-6:]}" for p in ("CG", "CF", "CI"))
    uid = await ups.create(workitem(label="CLISUBS"))
    await ups.subscribe(GLOBAL, worklist_ae, lock=True)
    await ups.subscribe("1.2.840.10008.5.1.4.34.5.1", filtered_ae,
                        query="filter=WorklistLabel=CLISUBS")
    await ups.subscribe(uid, instance_ae)
    try:
        found = {e["ae"]: e for e in run_json(config_path, "subscriptions", "list")}
        assert found[worklist_ae]["worklist"] == "global"
        assert found[worklist_ae]["deletion_lock"] is True
        assert found[worklist_ae]["workitems"] >= 1  # every existing workitem, by the lock
        assert found[filtered_ae]["worklist"] == "filtered"
        assert found[filtered_ae]["filter"] == [["00741202", "CLISUBS"]]
        assert found[instance_ae] == {"ae": instance_ae, "worklist": None,
                                      "deletion_lock": None, "filter": None, "workitems": 1,
                                      "channel_open": False}
        table = cli("subscriptions", "list", "--config", config_path)
        assert table.returncode == 0, table.stderr
        assert any(line.split()[:3] == [worklist_ae, "global", "yes"]
                   for line in table.stdout.splitlines())
    finally:
        for ae in (worklist_ae, filtered_ae):
            await ups.unsubscribe(GLOBAL, ae, expect=None)


async def test_events_backlog_counts_what_waits_per_subscriber(ups, http, config_path):
    ae = f"CLIB{new_uid()[-6:]}"
    uid = await ups.create(workitem(label="CLIBACKLOG"))
    await ups.subscribe(uid, ae)
    tx = await ups.claim(uid)
    await ups.progress(uid, tx, 50)
    [entry] = [e for e in run_json(config_path, "events", "backlog") if e["ae"] == ae]
    assert entry["queued"] == 3 and entry["latest"] == 3  # State Reports and a Progress Report
    assert "ws" not in entry  # no transport has delivered to it yet
    listener = await WsListener.open(http, ups.ws_url(ae))
    try:
        await listener.wait(3, uid=uid)
        # delivered and acknowledged: nothing pending any more on the WebSocket transport
        deadline = time.monotonic() + 30  # the acknowledgement follows the send
        while time.monotonic() < deadline:
            [entry] = [e for e in run_json(config_path, "events", "backlog") if e["ae"] == ae]
            if entry.get("ws", {}).get("pending") == 0:
                break
        assert entry["ws"] == {"delivered": 3, "pending": 0, "lost": 0, "delivering": True}
    finally:
        await listener.close()
    table = cli("events", "backlog", "--config", config_path)
    assert table.returncode == 0
    assert any(line.split()[0] == ae for line in table.stdout.splitlines()[1:])
