"""docker-compose.yml, checked by reading: the build machines have no Docker engine."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = compose.get("services")
    assert isinstance(found, dict)
    return found


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):  # the KEY=value list form
        return dict(item.split("=", 1) for item in env)
    return {str(k): v for k, v in env.items()}


def test_the_three_services_are_present(services: dict[str, dict[str, Any]]) -> None:
    assert {"kafka", "clickhouse", "worker"} <= set(services)


def test_every_image_is_pinned_to_a_version(services: dict[str, dict[str, Any]]) -> None:
    images = {name: s["image"] for name, s in services.items() if "image" in s}
    assert set(images) >= {"kafka", "clickhouse"}
    for name, image in images.items():
        reference = image.partition("@")[0]  # a digest may follow the tag, not replace it
        _, colon, tag = reference.rpartition(":")
        assert colon and "/" not in tag, f"{name}: image {image!r} has no tag"
        assert tag != "latest", f"{name}: image {image!r} is not pinned"
        assert re.search(r"[0-9]", tag), f"{name}: tag {tag!r} is not a version"


def test_every_published_port_is_bound_to_localhost(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for port in service.get("ports", []):
            if isinstance(port, dict):  # long syntax
                assert port.get("host_ip") == "127.0.0.1", f"{name}: {port}"
            else:
                assert str(port).startswith("127.0.0.1:"), f"{name}: port {port!r} is public"


@pytest.mark.parametrize("name", ["kafka", "clickhouse"])
def test_kafka_and_clickhouse_have_healthchecks(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    check = services[name].get("healthcheck")
    assert isinstance(check, dict)
    assert check.get("test"), f"{name}: healthcheck without a test"
    assert not check.get("disable", False)


def test_the_worker_is_wired_to_the_services(services: dict[str, dict[str, Any]]) -> None:
    env = _environment(services["worker"])
    assert re.fullmatch(r"http://[^@/\s]+@clickhouse:8123/?", env["CLICKHOUSE_URL"])
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"


def test_kafka_does_not_create_topics_on_demand(services: dict[str, dict[str, Any]]) -> None:
    assert _environment(services["kafka"])["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def test_the_worker_waits_for_healthy_services(services: dict[str, dict[str, Any]]) -> None:
    depends = services["worker"].get("depends_on")
    assert isinstance(depends, dict), "depends_on must use the long form with conditions"
    for name in ("kafka", "clickhouse"):
        assert depends[name]["condition"] == "service_healthy"


def test_the_server_gets_the_local_servers_reporter(services: dict[str, dict[str, Any]]) -> None:
    from store.local_server.config import render_server_reporter_xml

    clickhouse = services["clickhouse"]
    mounts = [str(volume) for volume in clickhouse.get("volumes", [])]
    source = "./infra/clickhouse/users.d/govmeter-reporter.xml"
    assert f"{source}:/etc/clickhouse-server/users.d/govmeter-reporter.xml:ro" in mounts
    committed = (COMPOSE.parent / source).read_text(encoding="utf-8")
    assert (
        committed == render_server_reporter_xml()
    )  # regenerate: python -m store.local_server reporter-xml
    assert "CLICKHOUSE_REPORTER_PASSWORD" in _environment(clickhouse)


def test_two_writer_replicas_each_with_a_host_port(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]
    replicas = int(worker["deploy"]["replicas"])
    assert replicas == 2
    (mapping,) = worker["ports"]
    host, container = str(mapping).rsplit(":", 1)
    first, last = (int(port) for port in host.split(":")[-1].split("-"))
    assert (last - first + 1, container) == (replicas, "9464")
