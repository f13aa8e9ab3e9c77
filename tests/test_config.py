"""Starting and stopping the gateway as an operator does: ``python -m gateway --config PATH``.
A bad configuration stops it quickly with one line naming the key; signals stop it cleanly."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.helpers import GatewayProcess, free_port

ROOT = Path(__file__).resolve().parent.parent


def _env(**overrides) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UPSGW_")}
    env.update(overrides)
    return env


def run_config(tmp_path: Path, config: dict, timeout: float = 30.0, **env) -> tuple[int, str, float]:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "gateway", "--config", str(path)],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env=_env(**env))
    return proc.returncode, proc.stderr, time.monotonic() - started


def base_config(tmp_path: Path) -> dict:
    return {"data_dir": str(tmp_path / "data"),
            "rest": {"host": "127.0.0.1", "port": free_port()},
            "dimse": {"host": "127.0.0.1", "port": free_port(), "enabled": False}}


def assert_one_line_naming(stderr: str, key: str) -> None:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert key in lines[0], stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize("change,key", [
    ({"rest": {"prot": 8080}}, "rest.prot"),
    ({"nonsense": 1}, "nonsense"),
    ({"ups": {"search_default_limit": "many"}}, "ups.search_default_limit"),
    ({"rest": {"port": "http"}}, "rest.port"),
    ({"rest": {"port": 70000}}, "rest.port"),
    ({"dimse": {"enabled": "yes"}}, "dimse.enabled"),
    ({"rest": {"max_body_bytes": 1.5}}, "rest.max_body_bytes"),
    ({"ae_title": "THIS_AE_TITLE_IS_WAY_TOO_LONG"}, "ae_title"),
    ({"redis": {"url": "http://localhost:6379"}}, "redis.url"),
    ({"ups": {"timezone_offset": "CET"}}, "ups.timezone_offset"),
    ({"event_loop": "trio"}, "event_loop"),
    ({"peers": {"MODALITY": {"host": "x"}}}, "peers.MODALITY"),
    ({"rest": "not a mapping"}, "rest"),
    ({"mwl": {"rules": [{"NoSuchKeyword": "CT"}]}}, "mwl.rules[0]"),
    ({"mwl": {"rules": [{"ScheduledProcedureStepStartDateTime": "yesterday"}]}}, "mwl.rules[0]"),
    ({"mwl": {"rules": "CT"}}, "mwl.rules"),
    ({"mwl": {"default_modality": ""}}, "mwl.default_modality"),
    ({"mpps": {"open_retention_hours": 0}}, "mpps.open_retention_hours"),
    ({"instance_name": "two words"}, "instance_name"),
    ({"instance_name": ""}, "instance_name"),
])
def test_bad_configuration_is_one_line_naming_the_key(tmp_path, change, key):
    config = base_config(tmp_path)
    for section, value in change.items():
        if isinstance(value, dict) and isinstance(config.get(section), dict):
            config[section].update(value)
        else:
            config[section] = value
    code, stderr, took = run_config(tmp_path, config)
    assert code != 0
    assert took < 10
    assert_one_line_naming(stderr, key)


def test_not_yaml_and_missing_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("rest: [unclosed\n")
    for target in (path, tmp_path / "missing.yaml"):
        proc = subprocess.run([sys.executable, "-m", "gateway", "--config", str(target)],
                              capture_output=True, text=True, timeout=30, cwd=ROOT, env=_env())
        assert proc.returncode != 0
        assert_one_line_naming(proc.stderr, str(target))


def test_rest_port_in_use(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        config = base_config(tmp_path)
        config["rest"]["port"] = busy.getsockname()[1]
        code, stderr, took = run_config(tmp_path, config)
    assert code != 0
    assert took < 15
    assert_one_line_naming(stderr, "rest.port")
    assert str(config["rest"]["port"]) in stderr


def test_dimse_port_in_use(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        config = base_config(tmp_path)
        config["dimse"].update(enabled=True, port=busy.getsockname()[1])
        code, stderr, took = run_config(tmp_path, config)
    assert code != 0
    assert took < 15
    assert_one_line_naming(stderr, "dimse.port")


def test_unreachable_redis(tmp_path):
    config = base_config(tmp_path)
    config["redis"] = {"url": f"redis://127.0.0.1:{free_port()}/0"}
    code, stderr, took = run_config(tmp_path, config)
    assert code != 0
    assert took < 15
    assert_one_line_naming(stderr, "redis.url")


def test_redis_url_password_is_not_printed(tmp_path):
    config = base_config(tmp_path)
    config["redis"] = {"url": f"redis://user:s3cret-pw@127.0.0.1:{free_port()}/0"}
    code, stderr, _ = run_config(tmp_path, config)
    assert code != 0
    assert_one_line_naming(stderr, "redis.url")
    assert "s3cret-pw" not in stderr


def test_environment_variable_with_a_bad_value_names_the_key(tmp_path):
    code, stderr, _ = run_config(tmp_path, base_config(tmp_path), UPSGW_REST__PORT="eighty")
    assert code != 0
    assert_one_line_naming(stderr, "rest.port")
    code, stderr, _ = run_config(tmp_path, base_config(tmp_path), UPSGW_REST__NO_SUCH_KEY="1")
    assert code != 0
    assert_one_line_naming(stderr, "rest.no_such_key")


def _wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"gateway exited with {proc.returncode}: "
                                 f"{proc.stderr.read() if proc.stderr else ''}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                return json.loads(r.read())
        except OSError:
            time.sleep(0.1)
    raise AssertionError("gateway did not become healthy")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_environment_override_and_clean_exit_on_signal(tmp_path, sig):
    config = base_config(tmp_path)
    file_port, env_port = config["rest"]["port"], free_port()
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "--config", str(path)], cwd=ROOT,
                            env=_env(UPSGW_REST__PORT=str(env_port)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        health = _wait_healthy(env_port, proc)
        assert health["status"] == "ok"
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{file_port}/health", timeout=1)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=20)
        assert proc.returncode == 0, stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # a normal run logs its start and stop (JSON lines)
    messages = [json.loads(line)["msg"] for line in stderr.splitlines() if line.startswith("{")]
    assert "gateway started" in messages and "gateway stopped" in messages


def test_health_reports_its_components(tmp_path):
    proc = GatewayProcess(tmp_path, dimse=True).start()
    try:
        with urllib.request.urlopen(f"{proc.url}/health", timeout=5) as r:
            assert r.status == 200
            assert r.headers.get_content_type() == "application/json"
            body = json.loads(r.read())
        assert body["status"] == "ok"
        assert body["ae_title"] == "UPS_GATEWAY"
        components = body["components"]
        assert {"rest", "redis", "dimse"} <= set(components)
        assert all(state == "up" for state in components.values()), components
    finally:
        assert proc.stop() == 0


def test_health_without_dimse(tmp_path):
    proc = GatewayProcess(tmp_path, dimse=False).start()
    try:
        with urllib.request.urlopen(f"{proc.url}/health", timeout=5) as r:
            body = json.loads(r.read())
        assert "dimse" not in body["components"]
        assert body["components"]["redis"] == "up"
    finally:
        proc.stop()


# ---- the limits (docs/operations.md, "Limits") ---------------------------------------------------

LIMITS = {"dimse": ["association_rq_timeout", "max_message_bytes", "max_message_fragments",
                    "message_deadline_seconds", "max_pending_requests"],
          "rest": ["header_timeout_seconds", "max_header_bytes", "body_timeout_seconds",
                   "keepalive_seconds", "max_connections"],
          "events": ["max_subscriber_aes"]}


def test_every_limit_is_in_config_yaml_with_its_default_and_documented():
    from gateway import config as cfg

    listed = yaml.safe_load((ROOT / "config.yaml").read_text())
    defaults = cfg.Config()
    operations = (ROOT / "docs" / "operations.md").read_text()
    for section, keys in LIMITS.items():
        for key in keys:
            assert listed[section][key] == getattr(getattr(defaults, section), key), key
            assert f"`{key}`" in operations, f"{section}.{key} is not in docs/operations.md"


@pytest.mark.parametrize("section,key,value", [
    ("dimse", "max_message_bytes", 100), ("dimse", "max_message_fragments", 0),
    ("dimse", "max_pending_requests", 0), ("dimse", "message_deadline_seconds", 0),
    ("dimse", "association_rq_timeout", -1), ("rest", "max_connections", 0),
    ("rest", "header_timeout_seconds", 0), ("rest", "body_timeout_seconds", 0),
    ("rest", "keepalive_seconds", 0), ("rest", "max_header_bytes", 10),
    ("events", "max_subscriber_aes", 0)])
def test_a_limit_out_of_range_is_refused_naming_it(section, key, value):
    from gateway.config import ConfigError, load

    with pytest.raises(ConfigError, match=f"{section}.{key}"):
        load(None, {f"UPSGW_{section.upper()}__{key.upper()}": str(value)})


def test_a_sentinel_url_and_the_sentinel_keys_say_the_same():
    from gateway.config import SentinelTarget, load, sentinel_target

    from_url = load(None, {"UPSGW_REDIS__URL":
                           "redis+sentinel://:p%40ss@s1:26379,[::1]:26380/ups/3"
                           "?sentinel_password=sp"})
    assert sentinel_target(from_url.redis) == SentinelTarget(
        "ups", [("s1", 26379), ("::1", 26380)], "p@ss", 3, "sp")
    from_keys = load(None, {"UPSGW_REDIS__SENTINEL__MASTER": "ups",
                            "UPSGW_REDIS__SENTINEL__HOSTS": "[s1:26379]",
                            "UPSGW_REDIS__SENTINEL__PASSWORD": "pw"})
    assert sentinel_target(from_keys.redis) == SentinelTarget("ups", [("s1", 26379)], "pw")
    assert sentinel_target(load(None, {}).redis) is None


@pytest.mark.parametrize("name,secret", [
    ("password", True), ("sentinel_password", True), ("auth_token", True), ("api_key", True),
    ("client_secret", True), ("credentials", True), ("key", True),
    ("key_prefix", False), ("backlog", False), ("hosts", False), ("master", False),
])
def test_which_keys_hold_secrets(name, secret):
    from gateway.config import is_secret

    assert is_secret(name) is secret


@pytest.mark.parametrize("url,shown", [
    ("redis://admin:pw@db:6379/0", "redis://admin:***@db:6379/0"),
    ("redis://:pw@db:6379/0", "redis://:***@db:6379/0"),
    ("rediss://db:6380/0", "rediss://db:6380/0"),
    ("redis+sentinel://:a@s1:1,s2:2/m?sentinel_password=b",
     "redis+sentinel://:***@s1:1,s2:2/m?sentinel_password=***"),
    ("unix:///run/redis.sock", "unix:///run/redis.sock"),
])
def test_urls_are_shown_without_their_passwords(url, shown):
    from gateway.config import mask_url

    assert mask_url(url) == shown
