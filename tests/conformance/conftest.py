"""Servers more than one conformance module uses, started once a session."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from inferd.models.spec import BUNDLED_NAME, bundled_model_path
from tests.live import LiveServer
from tests.tool_templates import HERMES_CHATML


@pytest.fixture(scope="session")
def tool_server() -> Iterator[LiveServer]:
    """The bundled model with a tool-capable chat template (per-model settings in a TOML
    file), for the tool-calling clients: test_tool_clients.py and test_agent_clients.py."""
    with tempfile.TemporaryDirectory() as d:
        config = Path(d) / "inferd.toml"
        config.write_text(
            "[[models]]\n"
            f"path = {json.dumps(str(bundled_model_path()))}\n"
            f"name = {json.dumps(BUNDLED_NAME)}\n"
            f"chat_template = {json.dumps(HERMES_CHATML)}\n"
        )
        live = LiveServer.started("--config", str(config), timeout=120)
        try:
            yield live
        finally:
            live.stop()
