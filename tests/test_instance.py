"""The process identity (gateway/instance.py): configured, or made once and kept in data_dir per
pair of ports; and two live processes given one identity are told of it."""

from __future__ import annotations

import asyncio
import time

from gateway.config import Config, Dimse, Rest
from gateway.instance import identity, identity_file
from tests.helpers import GatewayProcess


def _config(data_dir, rest=8080, dimse=11112, name=None) -> Config:
    return Config(data_dir=str(data_dir), instance_name=name, rest=Rest(port=rest),
                  dimse=Dimse(port=dimse))


def test_identity_is_made_once_and_kept_per_data_dir_and_ports(tmp_path):
    first = identity(_config(tmp_path / "data"))
    assert identity(_config(tmp_path / "data")) == first  # the same data_dir and ports
    assert identity_file(_config(tmp_path / "data")).read_text().strip() == first
    assert identity(_config(tmp_path / "data", rest=8081)) != first  # another process's
    assert identity(_config(tmp_path / "other")) != first


def test_configured_instance_name_wins(tmp_path):
    assert identity(_config(tmp_path / "data", name="gw-east-1")) == "gw-east-1"
    assert not identity_file(_config(tmp_path / "data")).exists()


def test_unwritable_data_dir_gives_an_identity_for_this_run(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    one = identity(_config(blocker / "data"))
    assert one and identity(_config(blocker / "data")) != one


def test_ports_chosen_by_the_os_give_an_identity_for_this_run(tmp_path):
    one = identity(_config(tmp_path / "data", rest=0))
    assert identity(_config(tmp_path / "data", rest=0)) != one
    assert not identity_file(_config(tmp_path / "data", rest=0)).exists()


async def test_two_live_processes_with_one_identity_say_so_in_health(tmp_path, http):
    store = GatewayProcess(tmp_path / "store", dimse=False).start()
    a = b = None
    try:
        same = {"instance_name": "twin"}
        a = GatewayProcess(tmp_path / "a", redis_url=store.redis_url, dimse=False,
                           extra=same).start()
        b = GatewayProcess(tmp_path / "b", redis_url=store.redis_url, dimse=False,
                           extra=same).start()
        deadline = time.monotonic() + 60  # a heartbeat (5 s) finds the other's stamp
        while True:
            async with http.get(f"{a.url}/health") as r:
                body = await r.json()
            if r.status == 503:
                break
            assert time.monotonic() < deadline, body
            await asyncio.sleep(0.2)
        assert body["components"]["instance"] == "down"
        assert "twin" in body["errors"]["instance"]
        assert a.records("another live gateway process uses this instance identity: events "
                         "may be delivered twice; give each process its own instance_name",
                         instance="twin")
    finally:
        for proc in (b, a):
            if proc:
                proc.stop()
        store.stop()
