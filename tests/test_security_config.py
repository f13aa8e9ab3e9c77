"""The security sections of the configuration: checked at start, one line naming the key."""

from __future__ import annotations

import pytest
import yaml

from gateway.config import Config, ConfigError, load
from tests.test_config import assert_one_line_naming, base_config, run_config

KEY = "a-key-of-sixteen-or-more"


def _load(tmp_path, data: dict) -> Config:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return load(path, environ={})


def test_config_yaml_holds_exactly_the_defaults():
    loaded = load("config.yaml", environ={})
    default = Config()
    default.source = loaded.source
    assert loaded == default
    assert default.auth.enabled is False and default.rest.tls.cert_file is None
    assert default.audit.file is None and default.audit.syslog is None


@pytest.mark.parametrize("data,key", [
    ({"auth": {"api_keys": [{"key": "short"}]}}, "auth.api_keys[0].key"),
    ({"auth": {"api_keys": [{"key": KEY, "scopes": ["ups.admin"]}]}}, "auth.api_keys[0].scopes"),
    ({"auth": {"api_keys": [{"scopes": ["ups.read"]}]}}, "key"),
    ({"auth": {"jwt": {"jwks_file": "a", "public_key_file": "b"}}}, "auth.jwt"),
    ({"auth": {"jwt": {"algorithms": ["HS256"]}}}, "auth.jwt.algorithms"),
    ({"auth": {"jwt": {"algorithms": ["none"]}}}, "auth.jwt.algorithms"),
    ({"auth": {"ticket_ttl_seconds": 0}}, "auth.ticket_ttl_seconds"),
    ({"dimse": {"ae_scopes": {"X": ["ups.everything"]}}}, "dimse.ae_scopes.X"),
    ({"dimse": {"max_associations_per_ae": 0}}, "dimse.max_associations_per_ae"),
    ({"dimse": {"tls": {"cert_file": "c"}}}, "dimse.tls"),
    ({"dimse": {"tls": {"require_client_cert": True}}}, "dimse.tls.require_client_cert"),
    ({"rest": {"tls": {"key_file": "k"}}}, "rest.tls"),
    ({"rest": {"cors_allow_origins": ["https://a.example/"]}}, "rest.cors_allow_origins"),
    ({"peers": {"P": {"host": "h", "port": 1, "cert_file": "c"}}}, "peers.P"),
    ({"audit": {"syslog": {"host": "h", "transport": "smtp"}}}, "audit.syslog.transport"),
    ({"audit": {"buffer": 0}}, "audit.buffer"),
])
def test_bad_security_settings_name_the_key(tmp_path, data, key):
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, data)
    assert key in str(info.value)


@pytest.mark.parametrize("change,key", [
    ({"rest": {"tls": {"cert_file": "/nonexistent.crt", "key_file": "/nonexistent.key"}}},
     "rest.tls"),
    ({"auth": {"jwt": {"jwks_file": "/nonexistent.json"}}}, "auth.jwt"),
])
def test_unreadable_security_files_stop_the_start(tmp_path, change, key):
    config = base_config(tmp_path)
    for section, value in change.items():
        config.setdefault(section, {}).update(value)
    code, stderr, _ = run_config(tmp_path, config)
    assert code != 0
    assert_one_line_naming(stderr, key)
