"""The container files, checked as files (Docker cannot run here): the Dockerfile is multi-stage
with no compiler in the image that runs, runs ``ups-gateway`` (the console script pyproject.toml
installs) as an unprivileged user and checks ``/health``; compose.yaml runs Redis with AOF on a
volume and two gateway replicas on that Redis, each on its own published ports, with
healthchecks, starting once Redis is healthy."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from gateway.config import Config

ROOT = Path(__file__).resolve().parent.parent
COMPILERS = re.compile(r"\b(build-essential|gcc|g\+\+|clang|make|cc)\b")


def instructions(text: str) -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (KEYWORD, arguments), continuation lines joined."""
    joined = re.sub(r"\\\n", " ", text)
    found = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, args = line.partition(" ")
            found.append((keyword.upper(), args.strip()))
    return found


def stages(text: str) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for keyword, args in instructions(text):
        if keyword == "FROM":
            result.append([])
        result[-1].append((keyword, args))
    return result


@pytest.fixture(scope="module")
def final_stage() -> list[tuple[str, str]]:
    all_stages = stages((ROOT / "Dockerfile").read_text())
    assert len(all_stages) >= 2, "the Dockerfile is multi-stage"
    return all_stages[-1]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def last(stage, keyword: str) -> str:
    values = [args for k, args in stage if k == keyword]
    assert values, f"no {keyword} in the final stage"
    return values[-1]


def exec_form(args: str) -> list[str]:
    return json.loads(args)


def test_the_final_stage_has_no_compiler_and_installs_only_built_wheels(final_stage):
    for keyword, args in final_stage:
        if keyword == "RUN":
            assert not COMPILERS.search(args), args
            assert "apt-get install" not in args, args
    assert any(k == "COPY" and args.startswith("--from=") for k, args in final_stage)
    first_stage = stages((ROOT / "Dockerfile").read_text())[0]
    assert any(k == "RUN" and "pip wheel" in args for k, args in first_stage)


def test_the_image_runs_ups_gateway_as_an_unprivileged_user(final_stage):
    user = last(final_stage, "USER").split(":")[0]
    assert user not in ("root", "0") and user
    entrypoint = exec_form(last(final_stage, "ENTRYPOINT"))
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint == ["ups-gateway"] and scripts["ups-gateway"] == "gateway.cli:main"
    command = exec_form(last(final_stage, "CMD"))
    config = command[command.index("--config") + 1]
    assert any(k == "COPY" and args.split()[-1] == config and args.split()[0] == "config.yaml"
               for k, args in final_stage)
    # The user is created before it is used, and the data directory is its home.
    assert any(k == "RUN" and "useradd" in args and user in args for k, args in final_stage)
    assert "UPSGW_DATA_DIR=/var/lib/ups-gateway" in last(final_stage, "ENV")
    assert last(final_stage, "WORKDIR") == "/var/lib/ups-gateway"


def test_the_image_exposes_the_default_ports_and_checks_health(final_stage):
    defaults = Config()
    assert set(last(final_stage, "EXPOSE").split()) == {str(defaults.rest.port),
                                                       str(defaults.dimse.port)}
    check = last(final_stage, "HEALTHCHECK")
    assert "CMD" in check and "/health" in check and "--interval=" in check


def test_every_file_the_dockerfile_copies_exists():
    for keyword, args in instructions((ROOT / "Dockerfile").read_text()):
        if keyword == "COPY" and not args.startswith("--from="):
            *sources, _ = args.split()
            for source in sources:
                assert (ROOT / source).exists(), source


def test_compose_redis_keeps_an_aof_on_a_volume(compose):
    redis = compose["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    [volume] = redis["volumes"]
    name, target = volume.split(":")[:2]
    assert target == "/data" and name in compose["volumes"]
    assert "redis-cli" in redis["healthcheck"]["test"]


def test_compose_runs_two_gateway_replicas_on_that_redis(compose):
    gateways = {name: s for name, s in compose["services"].items() if name != "redis"}
    assert len(gateways) >= 2
    published = []
    for name, service in gateways.items():
        assert service["build"] == "."
        assert service["environment"]["UPSGW_REDIS__URL"].startswith("redis://redis:")
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        # room for the bounded graceful stop (GOING DOWN, queued events) before SIGKILL
        assert service["stop_grace_period"] == "30s"
        assert "/health" in " ".join(service["healthcheck"]["test"])
        assert "user" not in service or service["user"] not in ("root", "0")
        container_ports = set()
        for mapping in service["ports"]:
            host, container = mapping.split(":")
            published.append(host)
            container_ports.add(int(container))
        assert container_ports == {Config().rest.port, Config().dimse.port}, name
        port = re.search(r"127\.0\.0\.1:(\d+)/health", " ".join(service["healthcheck"]["test"]))
        assert port and int(port.group(1)) == Config().rest.port
        assert service["environment"]["UPSGW_REST__PUBLIC_URL"].endswith(
            ":" + next(m.split(":")[0] for m in service["ports"] if m.endswith(":8080")))
    assert len(published) == len(set(published)), "each replica on its own published ports"
