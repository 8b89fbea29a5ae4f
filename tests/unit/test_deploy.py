"""docker-compose.yml cannot run here (no Docker engine): check it agrees with the code instead."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import yaml

from comfymesh.config import Settings

REPO = Path(__file__).resolve().parents[2]
ROLES = {"gateway", "orchestrator", "imaging", "diffusion"}


def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_one_service_per_role_with_a_runnable_module() -> None:
    services = compose()["services"]
    assert set(services) == ROLES
    for name, service in services.items():
        command = service["command"]
        assert command[:3] == ["python", "-m", f"comfymesh.{name}"]
        assert importlib.util.find_spec(f"comfymesh.{name}.__main__") is not None, name
        dockerfile = REPO / service["build"]["dockerfile"]
        text = dockerfile.read_text()
        assert f"'.[{name}]'" in text, f"{dockerfile} must install the {name} extra only"
        assert f'"comfymesh.{name}"' in text, f"{dockerfile}'s CMD must run comfymesh.{name}"


def test_addresses_match_the_ports_services_listen_on() -> None:
    services = compose()["services"]
    env = services["gateway"]["environment"]
    listen = {name: option(s["command"], "--listen").rsplit(":", 1)[1]
              for name, s in services.items() if "--listen" in s["command"]}
    assert env["COMFYMESH_ORCHESTRATOR"] == f"orchestrator:{listen['orchestrator']}"
    assert env["COMFYMESH_IMAGING_REPLICAS"] == f"imaging:{listen['imaging']}"
    assert env["COMFYMESH_DIFFUSION_REPLICAS"] == f"diffusion:{listen['diffusion']}"
    gateway_port = option(services["gateway"]["command"], "--port")
    assert gateway_port == str(Settings().port) == "8080"
    assert services["gateway"]["ports"] == [f"127.0.0.1:8080:{gateway_port}"]
    # the code's own defaults use the same ports
    defaults = Settings()
    assert defaults.orchestrator.endswith(f":{listen['orchestrator']}")
    assert defaults.imaging_replicas.endswith(f":{listen['imaging']}")
    assert defaults.diffusion_replicas.endswith(f":{listen['diffusion']}")


def test_every_service_shares_the_data_volume() -> None:
    spec = compose()
    assert "data" in spec["volumes"]
    for service in spec["services"].values():
        assert "data:/data" in service["volumes"]
        assert service["environment"]["COMFYMESH_HOME"] == "/data"
