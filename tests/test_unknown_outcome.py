"""No answer says "not done" for a change that was committed (issue 16, Restarts).

Redis stalls (SIGSTOP) while a create's commit is on its way: the commit is applied when Redis
resumes. The gateway must not answer "try again" meanwhile: it waits for the outcome
(``ups.commit_wait_seconds``; DIMSE: ``dimse.request_timeout``) and then says the outcome is
unknown — REST 504 with a Warning, DIMSE 0x0110 with an Error Comment saying so. The client's
retry of the identical create is then answered as done, with a warning, on both protocols."""

from __future__ import annotations

import json
import os
import signal

import aiohttp
from pynetdicom.dimse_primitives import N_CREATE

import tests.dimse_util as d
from tests.helpers import GatewayProcess, RedisServer, element, new_uid, workitem

JSON = {"Content-Type": "application/dicom+json"}


class Stalled:
    """Redis frozen (SIGSTOP) inside the ``with``, resumed (SIGCONT) after, whatever happens."""

    def __init__(self, server: RedisServer):
        self.pid = server.proc.pid

    def __enter__(self):
        os.kill(self.pid, signal.SIGSTOP)
        return self

    def __exit__(self, *exc):
        os.kill(self.pid, signal.SIGCONT)


async def _post(http, proc, uid, ds) -> tuple[int, dict]:
    async with http.post(f"{proc.base}/workitems?workitem={uid}", data=json.dumps(ds),
                         headers=JSON, timeout=aiohttp.ClientTimeout(total=60)) as r:
        await r.read()
        return r.status, dict(r.headers)


async def test_create_in_flight_during_a_stall_is_unknown_then_a_retry_converges(tmp_path, http):
    with RedisServer(tmp_path / "redis") as server:
        # REST meets the core's wait (1.5 s); DIMSE meets its own deadline first (0.5 s)
        proc = GatewayProcess(tmp_path, redis_url=server.url, extra={
            "ups": {"commit_wait_seconds": 1.5}, "dimse": {"request_timeout": 0.5}}).start()
        try:
            with d.association(proc) as assoc:
                warm = new_uid()  # connections open, scripts loaded, subscriptions read
                assert (await _post(http, proc, warm, workitem(warm)))[0] == 201
                assert d.status_of(d.n_create(assoc, workitem(), new_uid())[0]) == 0x0000

                rest_uid, dimse_uid = new_uid(), new_uid()
                with Stalled(server):
                    status, headers = await _post(http, proc, rest_uid, workitem(rest_uid))
                    assert status == 504, (status, headers)
                    assert "Outcome unknown: the change may have been applied" in \
                        headers["Warning"]
                    reply, _ = d.n_create(assoc, workitem(), dimse_uid)
                    assert d.status_of(reply) == 0x0110
                    assert d.comment_of(reply).startswith("Outcome unknown")

                # both commits were applied when Redis resumed: "not done" would have been false
                async with http.get(f"{proc.base}/workitems/{rest_uid}") as r:
                    assert r.status == 200
                reply, ds = d.n_get(assoc, dimse_uid)
                assert d.status_of(reply) == 0x0000 and ds.SOPInstanceUID == dimse_uid

                # the clients retry the identical request: done, with a warning
                status, headers = await _post(http, proc, rest_uid, workitem(rest_uid))
                assert status == 201, (status, headers)
                assert headers["Location"].endswith(f"/workitems/{rest_uid}")
                assert "already existed with this content" in headers["Warning"]
                reply, _ = d.n_create(assoc, workitem(), dimse_uid)
                assert d.status_of(reply) == 0xB300
                assert "already existed with this content" in d.comment_of(reply)

                # a different workitem under the same UID is still a duplicate
                other = {**workitem(rest_uid), "00741204": element("LO", "something else")}
                assert (await _post(http, proc, rest_uid, other))[0] == 409
                assert d.status_of(d.n_create(assoc, {**workitem(), "00741204": element(
                    "LO", "something else")}, dimse_uid)[0]) == 0x0111
            assert [r["uid"] for r in proc.records("commit not confirmed in time: outcome "
                                                   "unknown")] == [rest_uid]
        finally:
            proc.stop()


async def test_rest_deadline_during_a_stall_says_unknown_or_try_again(tmp_path, http):
    """``rest.request_timeout`` bounds every request (event channels aside): cut short while
    its commit is in flight → 504 "Outcome unknown"; before any commit (a read) → 503 "try
    again". Nothing hangs while Redis is stalled."""
    with RedisServer(tmp_path / "redis") as server:
        proc = GatewayProcess(tmp_path, redis_url=server.url, dimse=False, extra={
            "ups": {"commit_wait_seconds": 60.0}, "rest": {"request_timeout": 0.5}}).start()
        try:
            warm = new_uid()
            assert (await _post(http, proc, warm, workitem(warm)))[0] == 201
            uid = new_uid()
            with Stalled(server):
                status, headers = await _post(http, proc, uid, workitem(uid))
                assert status == 504, (status, headers)
                assert "Outcome unknown" in headers["Warning"]
                assert "within 0.5 s" in headers["Warning"]
                async with http.get(f"{proc.base}/workitems/{warm}",
                                    timeout=aiohttp.ClientTimeout(total=60)) as r:
                    assert r.status == 503
                    assert "did not answer within 0.5 s; try again" in r.headers["Warning"]
            status, headers = await _post(http, proc, uid, workitem(uid))
            assert status == 201 and "already existed" in headers["Warning"]
            assert proc.records("request timed out with its commit in flight: outcome unknown",
                                uid=uid)
        finally:
            proc.stop()


async def test_an_assigned_uid_comes_with_the_unknown_outcome_so_a_retry_converges(tmp_path,
                                                                                  http):
    """A create without a UID gets one assigned: the unknown-outcome answer carries it (REST
    Content-Location, DIMSE Affected SOP Instance UID), and a retry that names it converges."""
    with RedisServer(tmp_path / "redis") as server:
        proc = GatewayProcess(tmp_path, redis_url=server.url, extra={
            "ups": {"commit_wait_seconds": 0.5}}).start()
        try:
            with d.association(proc) as assoc:
                warm = new_uid()
                assert (await _post(http, proc, warm, workitem(warm)))[0] == 201
                with Stalled(server):
                    async with http.post(f"{proc.base}/workitems", data=json.dumps(workitem()),
                                         headers=JSON) as r:
                        assert r.status == 504
                        rest_uid = r.headers["Content-Location"].rsplit("/", 1)[1]
                    req = N_CREATE()
                    req.MessageID = 7
                    req.AffectedSOPClassUID = d.PUSH
                    req.AttributeList = d.encoded(d.dataset(workitem()))
                    rsp = d.raw_request(assoc, req, d.PUSH)  # (to see the whole response)
                    assert rsp.Status == 0x0110
                    assert str(rsp.ErrorComment).startswith("Outcome unknown")
                    dimse_uid = str(rsp.AffectedSOPInstanceUID)
                assert rest_uid and dimse_uid and rest_uid != dimse_uid
                status, headers = await _post(http, proc, rest_uid, workitem())
                assert status == 201 and "already existed" in headers["Warning"]
                reply, _ = d.n_create(assoc, workitem(), dimse_uid)
                assert d.status_of(reply) == 0xB300
        finally:
            proc.stop()
