"""Prometheus metrics (issue 19, Observability): /metrics of real gateway processes, read by
prometheus-client's own text parser, after real REST, WebSocket and DIMSE traffic; the
worklist's figures counted by the commit in a real Redis; the Grafana dashboard's queries checked
against what a gateway exposes."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydicom import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import UnifiedProcedureStepPull, UnifiedProcedureStepPush, Verification

from gateway.config import ConfigError, load
from gateway.metrics import Metrics, Sample
from gateway.store.stats import WorklistStats
from gateway.ups.uids import GLOBAL_SUBSCRIPTION
from tests.event_receiver import EventReceiver, Ups, WsListener, unassigned
from tests.helpers import GatewayProcess, completion_payload, new_uid, workitem
from gateway.testing_peers import NODELAY_HANDLER, guard_responses

DASHBOARD = Path(__file__).resolve().parent.parent / "docs" / "grafana-dashboard.json"
HANG_GUARD = 30.0

# What the issue names, at least (as the text format writes counters: with ``_total``).
REQUIRED = ("upsgw_requests_total", "upsgw_request_duration_seconds_bucket",
            "upsgw_transitions_total", "upsgw_workitems", "upsgw_events_delivered_total",
            "upsgw_events_queued_total", "upsgw_events_backlog", "upsgw_events_failed_total",
            "upsgw_events_expired_total", "upsgw_dimse_associations",
            "upsgw_dimse_associations_accepted_total", "upsgw_websocket_channels",
            "upsgw_redis_roundtrip_seconds", "upsgw_redis_up", "process_resident_memory_bytes",
            "process_cpu_seconds_total")


class Scrape(dict):
    """Every sample of ``/metrics``: (name, sorted labels) → value; ``exposed``: every series
    name a query may use, also of the families that have no sample yet (a labelled counter
    before its first increment)."""

    exposed: set[str]


_SERIES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"),
           "summary": ("_count", "_sum")}


async def scrape(http, gw) -> Scrape:
    async with http.get(f"{gw.url}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    samples = Scrape()
    samples.exposed = set()
    for family in text_string_to_metric_families(text):
        samples.exposed.update(family.name + suffix
                               for suffix in _SERIES.get(family.type, ("",)))
        for sample in family.samples:
            samples.exposed.add(sample.name)
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def names(samples: Scrape) -> set[str]:
    return samples.exposed


async def until(condition, what: str):
    """Poll ``condition`` (async, returns a value or None) until it holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HANG_GUARD
    while (result := await condition()) is None:
        assert loop.time() < deadline, f"never: {what}"
        await asyncio.sleep(0.05)
    return result


@pytest.fixture(scope="module")
def receiver():
    with EventReceiver("METRICS_RCV") as r:
        yield r


@pytest.fixture(scope="module")
def gw(tmp_path_factory, receiver):
    proc = GatewayProcess(tmp_path_factory.mktemp("metrics"), extra={
        "peers": {"METRICS_RCV": receiver.peer()},
        "dimse": {"allowed_calling_aes": ["METRICS_SCU", "ECHOSCU"]}}).start()
    yield proc
    proc.stop()


# ---- the endpoint ------------------------------------------------------------------------------

async def test_metrics_at_the_origin_root_name_what_the_issue_asks(gw, http):
    samples = await scrape(http, gw)
    missing = [name for name in REQUIRED if name not in names(samples)]
    assert not missing, missing
    assert value(samples, "upsgw_redis_up") == 1
    assert value(samples, "upsgw_redis_roundtrip_seconds") > 0
    # Not a UPS-RS resource, not counted as a request, no Warning: plain Prometheus text.
    async with http.get(f"{gw.base}/metrics") as response:
        assert response.status == 404


async def test_rest_requests_are_counted_and_timed_by_transaction_and_outcome(gw, http):
    ups = Ups(http, gw.base)
    before = await scrape(http, gw)
    uid = await ups.create(workitem(label=f"REST{new_uid()[-6:]}"))
    async with http.get(f"{gw.base}/workitems/{new_uid()}") as response:
        assert response.status == 404
    await ups.retrieve(uid)
    after = await scrape(http, gw)

    def grew(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("upsgw_requests_total", protocol="rest", operation="create",
                outcome="success") == 1
    assert grew("upsgw_requests_total", protocol="rest", operation="retrieve",
                outcome="failure") == 1
    assert grew("upsgw_requests_total", protocol="rest", operation="retrieve",
                outcome="success") == 1
    assert grew("upsgw_request_duration_seconds_count", protocol="rest",
                operation="retrieve") == 2
    assert grew("upsgw_request_duration_seconds_bucket", protocol="rest", operation="create",
                le="+Inf") == 1


async def test_workitems_by_state_and_label_and_transitions_follow_the_lifecycle(gw, http):
    ups = Ups(http, gw.base)
    label = f"LIFE{new_uid()[-8:]}"
    before = await scrape(http, gw)
    uid = await ups.create(workitem(label=label))
    other = await ups.create(workitem(label=label))
    samples = await scrape(http, gw)
    assert value(samples, "upsgw_workitems", state="SCHEDULED", worklist_label=label) == 2
    tx = await ups.claim(uid)
    await ups.update(uid, completion_payload(), tx)
    await ups.complete(uid, tx)
    await ups.cancel_request(other)  # a SCHEDULED one: the gateway cancels it itself
    after = await scrape(http, gw)
    for state, count in (("SCHEDULED", 0), ("IN PROGRESS", 0), ("COMPLETED", 1),
                         ("CANCELED", 1)):
        assert value(after, "upsgw_workitems", state=state, worklist_label=label) == count

    def moved(source, target):
        return (value(after, "upsgw_transitions_total", **{"from": source, "to": target})
                - value(before, "upsgw_transitions_total", **{"from": source, "to": target}))

    assert moved("none", "SCHEDULED") == 2
    assert moved("SCHEDULED", "IN PROGRESS") == 1
    assert moved("IN PROGRESS", "COMPLETED") == 1
    assert moved("SCHEDULED", "CANCELED") == 1
    # An Update is no transition.
    assert moved("IN PROGRESS", "IN PROGRESS") == 0


async def test_events_queued_backlog_delivered_and_channels(gw, http):
    ups = Ups(http, gw.base)
    ae = f"MWS{new_uid()[-8:]}"
    await ups.subscribe(GLOBAL_SUBSCRIPTION, ae)
    uid = await ups.create(unassigned())  # one State Report
    samples = await scrape(http, gw)
    assert value(samples, "upsgw_events_queued_total", subscriber=ae) == 1
    assert value(samples, "upsgw_events_backlog", subscriber=ae, transport="ws") == 1
    channels = value(samples, "upsgw_websocket_channels")
    delivered = value(samples, "upsgw_events_delivered_total", transport="ws")

    listener = await WsListener.open(http, ups.ws_url(ae))
    try:
        await listener.wait(1, uid=uid)

        async def acknowledged():
            now = await scrape(http, gw)
            backlog = value(now, "upsgw_events_backlog", subscriber=ae, transport="ws")
            return now if backlog == 0 else None

        now = await until(acknowledged, "the channel's cursor reaches the queue's end")
        assert value(now, "upsgw_websocket_channels") == channels + 1
        assert value(now, "upsgw_events_delivered_total", transport="ws") >= delivered + 1
    finally:
        await listener.close()
    await ups.unsubscribe(GLOBAL_SUBSCRIPTION, ae)


async def test_dimse_events_delivered_to_a_peer_are_counted(gw, http, receiver):
    ups = Ups(http, gw.base)
    before = await scrape(http, gw)
    await ups.subscribe(GLOBAL_SUBSCRIPTION, "METRICS_RCV")
    try:
        uid = await ups.create(workitem())
        await receiver.wait(1, uid=uid)

        async def counted():
            now = await scrape(http, gw)
            if value(now, "upsgw_events_backlog", subscriber="METRICS_RCV",
                     transport="dimse") == 0:
                return now
            return None

        after = await until(counted, "the DIMSE sender's cursor reaches the queue's end")
        assert (value(after, "upsgw_events_delivered_total", transport="dimse")
                - value(before, "upsgw_events_delivered_total", transport="dimse")) >= 1
        assert value(after, "upsgw_events_queued_total", subscriber="METRICS_RCV") >= 1
    finally:
        await ups.unsubscribe(GLOBAL_SUBSCRIPTION, "METRICS_RCV")


async def test_dimse_requests_and_associations(gw, http):
    before = await scrape(http, gw)

    def associate(calling: str):
        ae = AE(ae_title=calling)
        ae.add_requested_context(UnifiedProcedureStepPush)
        ae.add_requested_context(UnifiedProcedureStepPull)
        ae.add_requested_context(Verification)
        return ae.associate("127.0.0.1", gw.dimse_port, ae_title="UPS_GATEWAY",
                            evt_handlers=[NODELAY_HANDLER])

    def traffic():
        assoc = associate("METRICS_SCU")
        assert assoc.is_established
        guard_responses(assoc)
        ds = Dataset()
        ds.ProcedureStepState, ds.ScheduledProcedureStepPriority = "SCHEDULED", "HIGH"
        ds.InputReadinessState, ds.ProcedureStepLabel = "READY", "metrics"
        ds.ScheduledProcedureStepStartDateTime = "20261125110000"
        ds.WorklistLabel = "DIMSEMETRICS"
        uid = new_uid()
        status, _ = assoc.send_n_create(ds, UnifiedProcedureStepPush, uid)
        assert status.Status == 0x0000
        claim = Dataset()
        claim.ProcedureStepState, claim.TransactionUID = "IN PROGRESS", new_uid()
        status, _ = assoc.send_n_action(claim, 1, UnifiedProcedureStepPush, uid,
                                        meta_uid=UnifiedProcedureStepPull)
        assert status.Status == 0x0000
        status, _ = assoc.send_n_action(claim, 1, UnifiedProcedureStepPush, uid,
                                        meta_uid=UnifiedProcedureStepPull)
        assert status.Status == 0xC302  # claimed already: a failure
        open_while = asyncio.run_coroutine_threadsafe(scrape(http, gw), loop).result(HANG_GUARD)
        assoc.release()
        refused = associate("STRANGER")
        assert not refused.is_established
        return open_while

    loop = asyncio.get_running_loop()
    during = await asyncio.to_thread(traffic)
    after = await scrape(http, gw)

    def grew(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert value(during, "upsgw_dimse_associations") >= 1
    assert grew("upsgw_requests_total", protocol="dimse", operation="create",
                outcome="success") == 1
    assert grew("upsgw_requests_total", protocol="dimse", operation="change_state",
                outcome="success") == 1
    assert grew("upsgw_requests_total", protocol="dimse", operation="change_state",
                outcome="failure") == 1
    assert grew("upsgw_request_duration_seconds_count", protocol="dimse",
                operation="change_state") == 2
    assert grew("upsgw_dimse_associations_accepted_total") == 1
    assert grew("upsgw_dimse_associations_rejected_total",
                reason="calling AE title not recognised") == 1
    assert value(after, "upsgw_workitems", state="IN PROGRESS",
                 worklist_label="DIMSEMETRICS") >= 1


# ---- the dashboard -----------------------------------------------------------------------------

def _dashboard_metrics(board: dict) -> set[str]:
    exprs = [target["expr"] for panel in board["panels"] for target in panel.get("targets", [])]
    assert exprs, "the dashboard has no queries"
    found = set()
    for expr in exprs:
        found.update(re.findall(r"\b((?:upsgw|process|python)_[a-z_]+)\b", expr))
    return found


async def test_every_metric_the_dashboard_uses_is_exposed(gw, http):
    samples = await scrape(http, gw)
    used = _dashboard_metrics(json.loads(DASHBOARD.read_text()))
    assert {"upsgw_requests_total", "upsgw_workitems", "upsgw_events_backlog"} <= used
    missing = sorted(name for name in used if name not in names(samples))
    assert not missing, f"the dashboard queries metrics no gateway exposes: {missing}"


def test_the_dashboard_check_sees_an_unknown_metric():
    """Not vacuous: a query naming a metric that does not exist is found."""
    board = {"panels": [{"targets": [{"expr": "sum(rate(upsgw_no_such_thing_total[5m]))"}]}]}
    assert _dashboard_metrics(board) == {"upsgw_no_such_thing_total"}


# ---- configuration and failure -----------------------------------------------------------------

def test_require_auth_without_authentication_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("metrics: {require_auth: true}\n")
    with pytest.raises(ConfigError, match="metrics.require_auth: needs auth.enabled"):
        load(path, environ={})


@pytest.mark.parametrize("require_auth", [False, True])
async def test_metrics_open_or_behind_the_credentials_as_configured(tmp_path, http,
                                                                    require_auth):
    key = "metrics-scraper-key-0123456789"
    extra = {"auth": {"enabled": True, "api_keys": [{"key": key, "scopes": [], "name": "prom"}]},
             "metrics": {"require_auth": require_auth}}
    with GatewayProcess(tmp_path, extra=extra, dimse=False) as proc:
        async with http.get(f"{proc.url}/metrics") as response:
            assert response.status == (401 if require_auth else 200)
            if require_auth:
                assert "WWW-Authenticate" in response.headers
        async with http.get(f"{proc.url}/metrics",
                            headers={"Authorization": f"ApiKey {key}"}) as response:
            assert response.status == 200
            assert "upsgw_requests_total" in await response.text()
        async with http.get(f"{proc.base}/workitems") as response:
            assert response.status == 401  # the worklist itself stays protected


async def test_metrics_disabled_serves_no_endpoint(tmp_path, http):
    with GatewayProcess(tmp_path, extra={"metrics": {"enabled": False}}, dimse=False) as proc:
        async with http.get(f"{proc.url}/metrics") as response:
            assert response.status == 404


async def test_a_scrape_answers_when_redis_does_not():
    """The shared figures are left out and ``upsgw_redis_up`` says 0; the process's own
    metrics are still served."""
    metrics = Metrics(process=False)

    async def unreachable():
        raise ConnectionError("redis is down")

    metrics.ping_with(unreachable)
    metrics.request("rest", "create", "success", 0.001)
    text = (await metrics.render()).decode()
    assert "upsgw_redis_up 0.0" in text
    assert 'upsgw_requests_total{operation="create",outcome="success",protocol="rest"} 1.0' in text
    assert "upsgw_workitems{" not in text


async def test_shared_samples_are_rendered_as_their_families():
    metrics = Metrics(process=False)

    async def figures():
        return [Sample("upsgw_workitems", ("SCHEDULED", "AI"), 3),
                Sample("upsgw_transitions", ("none", "SCHEDULED"), 7)]

    metrics.source(figures)
    text = (await metrics.render()).decode()
    assert 'upsgw_workitems{state="SCHEDULED",worklist_label="AI"} 3.0' in text
    assert 'upsgw_transitions_total{from="none",to="SCHEDULED"} 7.0' in text
    assert "# TYPE upsgw_transitions_total counter" in text


# ---- the figures in Redis ----------------------------------------------------------------------

async def test_counts_are_kept_by_the_commit_and_the_purge(redis_service, redis_client, keys):
    service = redis_service
    stats = WorklistStats(redis_client, keys)
    uid = new_uid()
    await service.create(_core_workitem("PURGED"), uid)
    figures = await stats.read()
    assert figures.workitems[("SCHEDULED", "PURGED")] == 1
    assert figures.transitions[("none", "SCHEDULED")] == 1
    tx = new_uid()
    await service.change_state(uid, "IN PROGRESS", tx)
    await service.change_state(uid, "CANCELED", tx)
    figures = await stats.read()
    assert figures.workitems[("CANCELED", "PURGED")] == 1
    assert figures.transitions[("IN PROGRESS", "CANCELED")] == 1
    await service.purge_expired(-3600)  # everything final is past its retention
    figures = await stats.read()
    assert ("CANCELED", "PURGED") not in figures.workitems  # the label is forgotten
    assert not await redis_client.sismember(keys.labels(), "PURGED")


async def test_labels_of_workitems_stored_before_are_found_once(redis_service, redis_client,
                                                                 keys):
    await redis_service.create(_core_workitem("OLDER"), new_uid())
    await redis_client.delete(keys.labels())  # as stored by a version without the label set
    stats = WorklistStats(redis_client, keys)
    assert ("SCHEDULED", "OLDER") not in (await stats.read()).workitems
    await stats.seed_labels()
    assert (await stats.read()).workitems[("SCHEDULED", "OLDER")] == 1


def _core_workitem(label: str) -> dict:
    from gateway.ups.dataset import normalize
    ds = workitem(label=label)
    return normalize(ds)


# ---- log fields (docs/observability.md) --------------------------------------------------------

async def test_a_rest_refusal_is_logged_with_request_operation_uid_and_outcome(gw, http):
    uid = new_uid()
    async with http.put(f"{gw.base}/workitems/{uid}/state/LOGGED_AE",
                        json={"00741000": {"vr": "CS", "Value": ["IN PROGRESS"]},
                              "00081195": {"vr": "UI", "Value": [new_uid()]}},
                        headers={"Content-Type": "application/dicom+json"}) as response:
        assert response.status == 404
        warning = response.headers["Warning"]
    record = await gw.wait_for_log("request", uid=uid)
    assert record["level"] == "INFO"
    assert record["operation"] == "change_state" and record["outcome"] == "failure"
    assert record["status"] == 404 and record["warning"] == warning
    assert record["ae"] == "LOGGED_AE" and record["request"].startswith("r")


async def test_a_dimse_refusal_is_logged_with_both_ae_titles_uid_and_outcome(gw):
    uid = new_uid()

    def get_unknown():
        ae = AE(ae_title="METRICS_SCU")
        ae.add_requested_context(UnifiedProcedureStepPush)
        assoc = ae.associate("127.0.0.1", gw.dimse_port, ae_title="UPS_GATEWAY",
                             evt_handlers=[NODELAY_HANDLER])
        guard_responses(assoc)
        try:
            status, _ = assoc.send_n_get([0x00741000], UnifiedProcedureStepPush, uid)
            return status.Status
        finally:
            assoc.release()

    assert await asyncio.to_thread(get_unknown) == 0xC307

    async def logged():
        found = [r for r in gw.records(uid=uid) if r["msg"].startswith("N-GET 0xC307")]
        return found[0] if found else None

    record = await until(logged, "the N-GET's log record")
    assert record["level"] == "INFO"
    assert record["ae"] == "METRICS_SCU" and record["called_ae"] == "UPS_GATEWAY"
    assert record["operation"] == "retrieve" and record["outcome"] == "failure"
    assert record["status"] == "0xC307" and record["request"].startswith("METRICS_SCU#")


# ---- events that do not get through -------------------------------------------------------------

async def test_failed_expired_and_dropped_events_are_counted(tmp_path, http):
    """A peer that never listens: its N-EVENT-REPORTs fail (retried) until they expire; a
    WebSocket subscriber away longer than the backlog bound loses the oldest events."""
    from gateway.testing import free_port
    extra = {"peers": {"DEADPEER": {"host": "127.0.0.1", "port": free_port()}},
             "events": {"backlog": 2, "delivery_expiry_seconds": 1.0,
                        "retry_initial_seconds": 0.2, "retry_max_seconds": 0.4,
                        "send_timeout": 1.0}}
    with GatewayProcess(tmp_path, extra=extra, dimse=False) as proc:
        ups = Ups(http, proc.base)
        await ups.subscribe(GLOBAL_SUBSCRIPTION, "DEADPEER")
        await ups.subscribe(GLOBAL_SUBSCRIPTION, "AWAY")
        for _ in range(5):
            await ups.create(unassigned())
        samples = await scrape(http, proc)
        assert value(samples, "upsgw_events_queued_total", subscriber="AWAY") == 5
        assert value(samples, "upsgw_events_backlog", subscriber="AWAY", transport="ws") == 2

        async def expired():
            now = await scrape(http, proc)
            return now if value(now, "upsgw_events_expired_total", transport="dimse") >= 1 \
                else None

        now = await until(expired, "an undeliverable event expires")
        assert value(now, "upsgw_events_failed_total", transport="dimse") >= 1
        assert value(now, "upsgw_events_delivered_total", transport="dimse") == 0

        listener = await WsListener.open(http, ups.ws_url("AWAY"))
        try:
            await listener.wait(2)

            async def dropped():
                now = await scrape(http, proc)
                return now if value(now, "upsgw_events_dropped_total", transport="ws",
                                    reason="backlog") == 3 else None

            await until(dropped, "the three events the backlog bound dropped are counted")
        finally:
            await listener.close()


async def test_modality_worklist_requests_have_their_own_operation_names(gw, http):
    """An MWL query is no UPS search: ``mwl_search`` on both protocols."""
    from pynetdicom.sop_class import ModalityWorklistInformationFind
    before = await scrape(http, gw)
    async with http.get(f"{gw.base}/modality-scheduled-procedure-steps",
                        params={"PatientID": new_uid()}) as response:
        assert response.status == 204

    def find():
        ae = AE(ae_title="METRICS_SCU")
        ae.add_requested_context(ModalityWorklistInformationFind)
        assoc = ae.associate("127.0.0.1", gw.dimse_port, ae_title="UPS_GATEWAY",
                             evt_handlers=[NODELAY_HANDLER])
        guard_responses(assoc)
        identifier = Dataset()
        identifier.PatientID = "NOBODY-METRICS"
        try:
            return [status.Status for status, _ in
                    assoc.send_c_find(identifier, ModalityWorklistInformationFind)]
        finally:
            assoc.release()

    assert await asyncio.to_thread(find) == [0x0000]
    after = await scrape(http, gw)
    for protocol in ("rest", "dimse"):
        assert (value(after, "upsgw_requests_total", protocol=protocol, operation="mwl_search",
                      outcome="success")
                - value(before, "upsgw_requests_total", protocol=protocol,
                        operation="mwl_search", outcome="success")) == 1, protocol
    assert value(after, "upsgw_requests_total", protocol="rest", operation="search",
                 outcome="success") == value(before, "upsgw_requests_total", protocol="rest",
                                             operation="search", outcome="success")


async def test_identity_refusals_share_one_bounded_reason(tmp_path, http):
    """The refusal's text names the credential; the metric's label does not."""
    extra = {"auth": {"enabled": True, "api_keys": [
                 {"key": "modality-key-0123456789", "name": "modality",
                  "scopes": ["ups.read"], "ae_titles": ["MODALITY"]}]},
             "dimse": {"require_identity": True}}
    with GatewayProcess(tmp_path, extra=extra) as proc:
        def refused(calling: str) -> bool:
            ae = AE(ae_title=calling)
            ae.add_requested_context(Verification)
            assoc = ae.associate("127.0.0.1", proc.dimse_port, ae_title="UPS_GATEWAY",
                                 evt_handlers=[NODELAY_HANDLER])
            return not assoc.is_established  # (rejected: the gateway's count says so)

        assert await asyncio.to_thread(refused, "NO_IDENTITY_1")
        assert await asyncio.to_thread(refused, "NO_IDENTITY_2")
        async with http.get(f"{proc.url}/metrics") as response:
            text = await response.text()
        rejected = [line for line in text.splitlines()
                    if line.startswith("upsgw_dimse_associations_rejected_total{")]
        assert rejected == ['upsgw_dimse_associations_rejected_total{reason="user identity '
                            'refused"} 2.0'], rejected
