"""Configuration: config.yaml, overridden by environment variables, checked strictly.

Every key has a default (see config.yaml at the repository root, which lists them all with
comments). An unknown key or a value of the wrong type stops the start with a one-line error that
names the key. Environment variables override keys: ``UPSGW_`` + the key path in upper case with
``__`` between levels, e.g. ``UPSGW_REST__PORT=8081``, ``UPSGW_REDIS__URL=redis://db:6379/0``;
values are read as YAML scalars (``null``, ``true``, numbers, strings).
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

import yaml

ENV_PREFIX = "UPSGW_"
_ORIGIN = re.compile(r"^https?://[^/\s:]+(:\d{1,5})?$")  # a serialized origin
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 9110 token (a subprotocol name)


class ConfigError(Exception):
    """A bad configuration; the message names the key."""


ALL_SCOPES = ["ups.read", "ups.write", "ups.perform", "ups.watch"]


@dataclass
class DimseTls:
    cert_file: str | None = None  # PEM certificate chain: the listener serves only TLS when set
    key_file: str | None = None
    ca_file: str | None = None  # CAs that client certificates are verified against
    require_client_cert: bool = False


@dataclass
class Dimse:
    enabled: bool = True
    host: str = "0.0.0.0"
    port: int = 11112
    allowed_calling_aes: list[str] = field(default_factory=list)  # empty: accept any
    max_associations: int = 64
    acse_timeout: float = 30.0
    dimse_timeout: float = 30.0
    network_timeout: float = 60.0
    max_pdu: int = 262144
    request_timeout: float = 20.0  # how long a DIMSE request may wait for the UPS core
    # Limits a peer cannot grow past (docs/operations.md, "Limits").
    association_rq_timeout: float = 10.0  # seconds a new connection has to send A-ASSOCIATE-RQ
    max_message_bytes: int = 1048576  # one message's dataset (deflated: once inflated)
    max_message_fragments: int = 4096  # PDVs (fragments) one message may take
    message_deadline_seconds: float = 120.0  # from a message's first fragment to its last
    max_pending_requests: int = 4  # received requests waiting to be served; more: reading pauses
    tls: DimseTls = field(default_factory=DimseTls)
    called_ae_check: bool = True  # refuse associations whose Called AE is not ae_title
    require_identity: bool = False  # with auth.enabled: no User Identity, no association
    # Calling AE → scopes granted without a User Identity (with auth.enabled); "*": any other.
    ae_scopes: dict[str, list[str]] = field(default_factory=lambda: {"*": list(ALL_SCOPES)})
    max_associations_per_ae: int = 16


@dataclass
class RestTls:
    cert_file: str | None = None  # PEM certificate chain: HTTPS/WSS only when set
    key_file: str | None = None
    client_ca_file: str | None = None  # set: clients must present a certificate from these CAs


@dataclass
class Rest:
    host: str = "0.0.0.0"
    port: int = 8080
    base_path: str = "/dicom-web"
    max_body_bytes: int = 1048576
    public_url: str | None = None  # advertised origin, e.g. https://ups.example.org; null: from Host
    # Limits a client cannot grow past (docs/operations.md, "Limits").
    header_timeout_seconds: float = 10.0  # from connection (or the previous response) to headers
    max_header_bytes: int = 16384  # request line or one header field; more: 400 / 431
    body_timeout_seconds: float = 30.0  # to receive the whole request body
    keepalive_seconds: float = 15.0  # an idle keep-alive connection is closed after this
    max_connections: int = 1024  # open HTTP/WebSocket connections; more: 503 and closed
    # Origins (scheme://host[:port]) whose pages may call UPS-RS (CORS: gateway/rest/cors.py),
    # change state or open event channels; a request with any other Origin header is refused
    # (403). "*": any.
    cors_allow_origins: list[str] = field(default_factory=list)
    default_requester: str = "UPSRS_CLIENT"  # Requesting AE of a cancel request naming none
    tls: RestTls = field(default_factory=RestTls)
    request_timeout: float = 20.0  # seconds a request may take once its body is in (not channels)


@dataclass
class Sentinel:
    master: str | None = None  # the monitored master's name; null: no Sentinel
    hosts: list[str] = field(default_factory=list)  # "host:port" of the Sentinels
    password: str | None = None  # of the Redis servers (master and replicas)
    sentinel_password: str | None = None  # of the Sentinels themselves; null: they need none


@dataclass
class Redis:
    url: str | None = None  # null: start the embedded redis-server under data_dir
    key_prefix: str = "ups:"
    connect_timeout: float = 5.0
    sentinel: Sentinel = field(default_factory=Sentinel)
    min_replicas_ack: int = 0  # N > 0: a change is acknowledged once N replicas have it (WAIT)
    replica_ack_timeout: float = 1.0  # seconds a change waits for those replicas


@dataclass
class Peer:
    host: str
    port: int
    tls: bool = False  # N-EVENT-REPORT associations to this peer over TLS
    ca_file: str | None = None  # CAs the peer's certificate is verified against (null: system)
    cert_file: str | None = None  # the gateway's client certificate for this peer
    key_file: str | None = None


@dataclass
class ApiKey:
    key: str
    scopes: list[str] = field(default_factory=list)
    ae_titles: list[str] = field(default_factory=list)  # "*": any AE
    name: str | None = None  # who it is, in the logs and as the DIMSE User Identity username


@dataclass
class Jwt:
    jwks_url: str | None = None
    jwks_file: str | None = None
    public_key_file: str | None = None  # PEM
    issuer: str | None = None
    audience: str | None = None
    leeway_seconds: int = 30
    scope_claim: str = "scope"
    ae_claim: str = "ae_titles"
    algorithms: list[str] = field(default_factory=lambda: ["RS256", "ES256"])


@dataclass
class Auth:
    enabled: bool = False
    ticket_ttl_seconds: int = 30
    realm: str = "ups-gateway"
    api_keys: list[ApiKey] = field(default_factory=list)
    jwt: Jwt = field(default_factory=Jwt)


@dataclass
class Ups:
    default_worklist_label: str = "DEFAULT"
    timezone_offset: str = "+0000"  # how DT values without an offset are read
    search_default_limit: int = 100
    search_max_limit: int = 1000
    search_cache_mb: float = 32.0  # rendered search results kept per process (0: none)
    commit_wait_seconds: float = 10.0  # a change's wait for Redis to confirm it; then "unknown"
    retention_hours: float = 24.0
    purge_interval_seconds: float = 60.0


@dataclass
class Events:
    backlog: int = 1000  # events kept per subscriber AE while it is away
    delivery_expiry_seconds: float = 86400.0
    retry_initial_seconds: float = 0.5
    retry_max_seconds: float = 60.0
    send_timeout: float = 5.0
    association_idle_seconds: float = 30.0
    # WebSocket event channels (docs/conformance.md §7)
    websocket_subprotocols: list[str] = field(default_factory=lambda: ["dicom+json", "json"])
    max_channels_per_ae: int = 8  # open channels of one subscriber AE in one process
    max_channels: int = 1000  # open channels in one process
    channel_send_buffer_bytes: int = 1048576  # sent to a channel, not yet confirmed by its pong
    channel_ack_timeout_seconds: float = 30.0  # a channel whose client confirms nothing is closed
    max_subscriber_aes: int = 256  # distinct AEs holding subscriptions; one more: refused


@dataclass
class MetricsConfig:
    enabled: bool = True  # serve /metrics (Prometheus text format) at the origin root
    require_auth: bool = False  # /metrics only for authenticated callers


@dataclass
class Mwl:
    enabled: bool = True  # Modality Worklist Information Model - FIND on the DIMSE listener
    default_modality: str = "OT"  # Modality when no Scheduled Station Class code is a modality
    # SCHEDULED workitems for modalities: those matching any rule ({UPS attribute path: value});
    # empty: every SCHEDULED workitem.
    rules: list[dict[str, str]] = field(default_factory=list)


@dataclass
class Mpps:
    enabled: bool = True  # Modality Performed Procedure Step SOP Class on the DIMSE listener
    # An MPPS never COMPLETED or DISCONTINUED is dropped this long after its last change (a
    # COMPLETED/DISCONTINUED one after ups.retention_hours).
    open_retention_hours: float = 168.0


@dataclass
class Log:
    level: str = "INFO"
    format: str = "json"  # json | text


@dataclass
class Syslog:
    host: str
    port: int = 514
    transport: str = "udp"  # udp | tcp | tls (RFC 5425)
    ca_file: str | None = None  # tls: CAs the collector is verified against (null: system)
    cert_file: str | None = None  # tls: the gateway's client certificate
    key_file: str | None = None


@dataclass
class Audit:
    file: str | None = None  # one DICOM audit message (XML) per line
    syslog: Syslog | None = None
    buffer: int = 10000  # messages held per sink while it is unavailable; more are dropped
    source_id: str | None = None  # AuditSourceID; null: the ae_title


@dataclass
class Config:
    ae_title: str = "UPS_GATEWAY"
    data_dir: str = "./data"
    instance_name: str | None = None  # this process's identity; null: kept in data_dir per ports
    event_loop: str = "uvloop"  # uvloop | asyncio (the standard library's loop)
    dimse: Dimse = field(default_factory=Dimse)
    rest: Rest = field(default_factory=Rest)
    redis: Redis = field(default_factory=Redis)
    peers: dict[str, Peer] = field(default_factory=dict)
    ups: Ups = field(default_factory=Ups)
    events: Events = field(default_factory=Events)
    mwl: Mwl = field(default_factory=Mwl)
    mpps: Mpps = field(default_factory=Mpps)
    log: Log = field(default_factory=Log)
    auth: Auth = field(default_factory=Auth)
    audit: Audit = field(default_factory=Audit)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    source: str = field(default="", repr=False, metadata={"internal": True})


def load(path: str | os.PathLike | None, environ: dict[str, str] | None = None) -> Config:
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    if path is not None:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"config file {path}: {exc.strerror}") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path}: not valid YAML ({exc.__class__.__name__})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path}: the top level must be a mapping")
    for name, raw in environ.items():
        if name.startswith(ENV_PREFIX):
            _set_path(data, name[len(ENV_PREFIX):].lower().split("__"), raw, name)
    config = _build(Config, data, "")
    config.source = str(path or "")
    _check(config)
    return config


def _set_path(data: dict, parts: list[str], raw: str, env_name: str) -> None:
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    if parts[0] == "peers" and len(parts) > 1:
        parts[1] = parts[1].upper()  # AE titles are upper case by convention
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{env_name}: {'.'.join(parts)} is not inside a section")
    node[parts[-1]] = value


def _build(cls, data: Any, path: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {_kind(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    for name in data:
        if name not in fields:
            raise ConfigError(f"{path}{name}: unknown key")
    kwargs = {}
    for name in fields:
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], f"{path}{name}")
    try:
        return cls(**kwargs)
    except TypeError as exc:
        missing = str(exc).rsplit(":", 1)[-1].strip().strip("'")
        raise ConfigError(f"{path}{missing}: required key is missing") from None


def _convert(hint, value: Any, path: str):
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        hint = next(o for o in options if o is not type(None))
        origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, f"{path}.")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {_kind(value)}")
        (item,) = typing.get_args(hint)
        return [_convert(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {_kind(value)}")
        _, item = typing.get_args(hint)
        return {str(k): _convert(item, v, f"{path}.{k}") for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {_kind(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {_kind(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {_kind(value)}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {_kind(value)}")
        return value
    raise ConfigError(f"{path}: unsupported type")  # pragma: no cover


def _kind(value: Any) -> str:
    return "null" if value is None else f"{type(value).__name__} {value!r}"[:60]


def _check(config: Config) -> None:
    def ae(name: str, value: str) -> None:
        if not value or len(value) > 16 or "\\" in value or value != value.strip():
            raise ConfigError(f"{name}: {value!r} is not a valid AE title (1-16 characters)")

    ae("ae_title", config.ae_title)
    name = config.instance_name
    if name is not None and not (0 < len(name) <= 64 and name.isascii() and name.isprintable()
                                 and " " not in name):
        raise ConfigError(f"instance_name: {name[:70]!r} must be 1-64 printable ASCII characters "
                          "without spaces")
    ae("rest.default_requester", config.rest.default_requester)
    for title, peer in config.peers.items():
        ae(f"peers.{title}", title)
        _port(f"peers.{title}.port", peer.port)
    _port("dimse.port", config.dimse.port)
    _port("rest.port", config.rest.port)
    for title in config.dimse.allowed_calling_aes:
        ae("dimse.allowed_calling_aes", title)
    if not config.rest.base_path.startswith("/"):
        raise ConfigError(f"rest.base_path: {config.rest.base_path!r} must start with /")
    config.rest.base_path = config.rest.base_path.rstrip("/")
    _check_redis(config.redis)
    if config.log.format not in ("json", "text"):
        raise ConfigError(f"log.format: {config.log.format!r} must be json or text")
    if config.event_loop not in ("uvloop", "asyncio"):
        raise ConfigError(f"event_loop: {config.event_loop!r} must be uvloop or asyncio")
    if config.log.level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"log.level: {config.log.level!r} must be DEBUG, INFO, WARNING or ERROR")
    from gateway.ups.dicomtime import parse_offset
    try:
        parse_offset(config.ups.timezone_offset)
    except ValueError:
        raise ConfigError(f"ups.timezone_offset: {config.ups.timezone_offset!r} must be +HHMM "
                          "or -HHMM") from None
    for name in ("search_default_limit", "search_max_limit"):
        if getattr(config.ups, name) < 1:
            raise ConfigError(f"ups.{name}: must be at least 1")
    if config.rest.request_timeout <= 0:
        raise ConfigError("rest.request_timeout: must be more than 0")
    if config.ups.commit_wait_seconds <= 0:
        raise ConfigError("ups.commit_wait_seconds: must be more than 0")
    if config.ups.search_cache_mb < 0:
        raise ConfigError("ups.search_cache_mb: must be 0 or more")
    if config.metrics.require_auth and not config.auth.enabled:
        # Nothing would authenticate the scrapers: /metrics would be open while said protected.
        raise ConfigError("metrics.require_auth: needs auth.enabled (credentials to require); "
                          "set one of them")
    if config.mpps.open_retention_hours <= 0:
        raise ConfigError("mpps.open_retention_hours: must be more than 0")
    if not config.mwl.default_modality or len(config.mwl.default_modality) > 16:
        raise ConfigError(f"mwl.default_modality: {config.mwl.default_modality!r} is not a "
                          "Modality (CS, 1-16 characters)")
    from gateway.ups.errors import InvalidQuery
    from gateway.ups.mwl import compile_rules
    for i, rule in enumerate(config.mwl.rules):
        try:
            compile_rules([rule], parse_offset(config.ups.timezone_offset))
        except KeyError as exc:
            raise ConfigError(f"mwl.rules[{i}]: {exc.args[0]!r} is not a DICOM attribute "
                              "keyword or tag") from None
        except InvalidQuery as exc:
            raise ConfigError(f"mwl.rules[{i}]: {exc}") from None
    events = config.events
    for name in ("max_channels_per_ae", "max_channels"):
        if getattr(events, name) < 1:
            raise ConfigError(f"events.{name}: must be at least 1")
    if events.channel_send_buffer_bytes < 4096:
        raise ConfigError("events.channel_send_buffer_bytes: must be at least 4096")
    if events.channel_ack_timeout_seconds <= 0:
        raise ConfigError("events.channel_ack_timeout_seconds: must be more than 0")
    for protocol in events.websocket_subprotocols:
        if not protocol or not _TOKEN.match(protocol):
            raise ConfigError(f"events.websocket_subprotocols: {protocol!r} is not an HTTP token")
    for origin in config.rest.cors_allow_origins:
        if origin != "*" and not _ORIGIN.match(origin):
            raise ConfigError(f"rest.cors_allow_origins: {origin!r} is not an origin "
                              "(scheme://host[:port], no path) or \"*\"")
    if config.rest.max_body_bytes < 1024:
        raise ConfigError("rest.max_body_bytes: must be at least 1024")
    _at_least("rest.max_header_bytes", config.rest.max_header_bytes, 1024)
    _at_least("dimse.max_message_bytes", config.dimse.max_message_bytes, 1024)
    for name in ("dimse.max_message_fragments", "dimse.max_pending_requests",
                 "rest.max_connections", "events.max_subscriber_aes"):
        section, key = name.split(".")
        _at_least(name, getattr(getattr(config, section), key), 1)
    for name in ("dimse.association_rq_timeout", "dimse.message_deadline_seconds",
                 "rest.header_timeout_seconds", "rest.body_timeout_seconds",
                 "rest.keepalive_seconds"):
        section, key = name.split(".")
        if getattr(getattr(config, section), key) <= 0:
            raise ConfigError(f"{name}: must be more than 0")
    _check_security(config)


def _at_least(name: str, value: int, minimum: int) -> None:
    if value < minimum:
        raise ConfigError(f"{name}: must be at least {minimum}")


def _check_security(config: Config) -> None:
    auth = config.auth
    for i, key in enumerate(auth.api_keys):
        if len(key.key) < 16:
            raise ConfigError(f"auth.api_keys[{i}].key: at least 16 characters")
        _scopes(f"auth.api_keys[{i}].scopes", key.scopes)
    for title, scopes in config.dimse.ae_scopes.items():
        _scopes(f"dimse.ae_scopes.{title}", scopes)
    jwt = auth.jwt
    sources = [s for s in (jwt.jwks_url, jwt.jwks_file, jwt.public_key_file) if s]
    if len(sources) > 1:
        raise ConfigError("auth.jwt: set one of jwks_url, jwks_file, public_key_file")
    for alg in jwt.algorithms:
        if alg not in ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256"):
            raise ConfigError(f"auth.jwt.algorithms: {alg!r} is not an asymmetric signature "
                              "algorithm this gateway accepts (RS256, ES256, ...)")
    if auth.ticket_ttl_seconds < 1:
        raise ConfigError("auth.ticket_ttl_seconds: must be at least 1")
    if config.dimse.max_associations_per_ae < 1:
        raise ConfigError("dimse.max_associations_per_ae: must be at least 1")
    for name, tls in (("rest.tls", config.rest.tls), ("dimse.tls", config.dimse.tls)):
        if bool(tls.cert_file) != bool(tls.key_file):
            raise ConfigError(f"{name}: cert_file and key_file go together")
    if config.dimse.tls.require_client_cert and not config.dimse.tls.ca_file:
        raise ConfigError("dimse.tls.require_client_cert: needs dimse.tls.ca_file")
    for title, peer in config.peers.items():
        if bool(peer.cert_file) != bool(peer.key_file):
            raise ConfigError(f"peers.{title}: cert_file and key_file go together")


    syslog = config.audit.syslog
    if syslog is not None:
        if syslog.transport not in ("udp", "tcp", "tls"):
            raise ConfigError(f"audit.syslog.transport: {syslog.transport!r} must be udp, tcp "
                              "or tls")
        _port("audit.syslog.port", syslog.port)
    if config.audit.buffer < 1:
        raise ConfigError("audit.buffer: must be at least 1")


def _scopes(name: str, scopes: list[str]) -> None:
    for scope in scopes:
        if scope not in ALL_SCOPES:
            raise ConfigError(f"{name}: {scope!r} is not a scope ({', '.join(ALL_SCOPES)})")


SENTINEL_SCHEME = "redis+sentinel://"


def _check_redis(redis: Redis) -> None:
    url, sentinel = redis.url, redis.sentinel
    if url is not None and not url.startswith(("redis://", "rediss://", "unix://",
                                               SENTINEL_SCHEME)):
        raise ConfigError(f"redis.url: {mask_url(url)!r} must start with redis://, rediss://, "
                          f"unix:// or {SENTINEL_SCHEME}")
    if url is not None and url.startswith(SENTINEL_SCHEME):
        try:
            parse_sentinel_url(url)
        except ValueError as exc:
            raise ConfigError(f"redis.url: {exc}") from None
    if sentinel.master is not None:
        if url is not None:
            raise ConfigError("redis.sentinel.master: give either redis.url or redis.sentinel, "
                              "not both")
        if not sentinel.master:
            raise ConfigError("redis.sentinel.master: must name the monitored master")
        if not sentinel.hosts:
            raise ConfigError("redis.sentinel.hosts: list at least one Sentinel as host:port")
        for i, host in enumerate(sentinel.hosts):
            try:
                _host_port(host)
            except ValueError as exc:
                raise ConfigError(f"redis.sentinel.hosts[{i}]: {exc}") from None
    elif sentinel.hosts:
        raise ConfigError("redis.sentinel.master: required when redis.sentinel.hosts is given")
    if redis.min_replicas_ack < 0:
        raise ConfigError("redis.min_replicas_ack: must be 0 or more")
    if redis.min_replicas_ack and url is None and sentinel.master is None:
        raise ConfigError("redis.min_replicas_ack: the embedded Redis has no replicas; "
                          "set redis.url or redis.sentinel, or 0")
    if redis.replica_ack_timeout <= 0:
        raise ConfigError("redis.replica_ack_timeout: must be more than 0")


@dataclass
class SentinelTarget:
    """Where a Sentinel-managed Redis is: the master's name, the Sentinels, the servers' and the
    Sentinels' passwords, the database."""

    master: str
    hosts: list[tuple[str, int]]
    password: str | None = None
    db: int = 0
    sentinel_password: str | None = None


def sentinel_target(redis: Redis) -> SentinelTarget | None:
    """The Sentinel set-up of ``redis`` (from ``redis.sentinel`` or a redis+sentinel:// URL), or
    None when the Redis is reached directly."""
    if redis.url is not None and redis.url.startswith(SENTINEL_SCHEME):
        return parse_sentinel_url(redis.url)
    if redis.sentinel.master is not None:
        return SentinelTarget(redis.sentinel.master,
                              [_host_port(h) for h in redis.sentinel.hosts],
                              redis.sentinel.password,
                              sentinel_password=redis.sentinel.sentinel_password)
    return None


def parse_sentinel_url(url: str) -> SentinelTarget:
    """``redis+sentinel://[:password@]host:port[,host:port…]/master[/db][?sentinel_password=…]``
    (``password``: the servers'; ``sentinel_password``: the Sentinels')."""
    rest, _, query = url[len(SENTINEL_SCHEME):].partition("?")
    options = parse_qs(query, keep_blank_values=True)
    unknown = sorted(set(options) - {"sentinel_password"})
    if unknown:
        raise ValueError(f"unknown option {unknown[0]!r} (only sentinel_password)")
    sentinel_password = options.get("sentinel_password", [None])[-1] or None
    password = None
    if "@" in rest:
        credentials, rest = rest.rsplit("@", 1)
        password = unquote(credentials.split(":", 1)[-1]) or None
    hosts_part, _, path = rest.partition("/")
    parts = [p for p in path.split("/") if p]
    if not parts:
        raise ValueError("a redis+sentinel:// URL names the master after the hosts: "
                         "redis+sentinel://host:26379,host2:26379/mymaster/0")
    if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise ValueError(f"{'/'.join(parts)!r} must be master or master/db")
    hosts = [_host_port(h) for h in hosts_part.split(",") if h]
    if not hosts:
        raise ValueError("a redis+sentinel:// URL lists at least one Sentinel as host:port")
    return SentinelTarget(unquote(parts[0]), hosts, password,
                          int(parts[1]) if len(parts) == 2 else 0, sentinel_password)


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError(f"{text!r} is not host:port")
    return host.strip("[]"), int(port)


SECRET_NAMES = ("password", "passwd", "secret", "token", "credential", "api_key", "private_key")


def is_secret(name: str) -> bool:
    """Whether a configuration key holds a secret (password, key, token, credentials)."""
    lower = name.lower()
    return any(word in lower for word in SECRET_NAMES) or lower == "key" or lower.endswith("_key")


def mask_url(url: str) -> str:
    """``url`` with the password of its credentials (``user:password@``) masked."""
    url = re.sub(r"([?&][^=&]*password=)[^&]*", r"\1***", url)
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, host = rest.rsplit("@", 1)
    user, colon, _ = credentials.partition(":")
    return f"{scheme}://{user + ':' if colon else ''}***@{host}"


def effective(config: Config) -> dict[str, Any]:
    """The configuration as a mapping of every key, secrets masked (``check-config``)."""

    def shown(name: str, value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: shown(f.name, getattr(value, f.name))
                    for f in dataclasses.fields(value) if not f.metadata.get("internal")}
        if isinstance(value, dict):
            return {k: shown(k, v) for k, v in value.items()}
        if isinstance(value, list):
            return [shown(name, v) for v in value]
        if value is not None and is_secret(name):
            return "***"
        if isinstance(value, str) and "://" in value:
            return mask_url(value)
        return value

    return shown("", config)


def _port(name: str, port: int) -> None:
    if not 0 <= port <= 65535:
        raise ConfigError(f"{name}: {port} is not a TCP port")
