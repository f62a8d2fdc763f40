"""deploy/grafana/inferd.json only queries metrics that inferd really exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import FakeFactory, open_store

DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "inferd.json"


def queried_metrics() -> set[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert exprs, "the dashboard has no queries"
    return {m for e in exprs for m in re.findall(r"\binferd_[a-z0-9_]+", e)}


def test_dashboard_panels_are_laid_out_without_overlap() -> None:
    dash = json.loads(DASHBOARD.read_text())
    cells: set[tuple[int, int]] = set()
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & mine, p["title"]
        cells |= mine
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])


async def test_every_queried_metric_is_exported(fake_app: FakeFactory, tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'inferd.db'}", tmp_path / "spool.jsonl")
    await store.start()
    try:
        async with fake_app(store=store) as h:
            chat = {
                "model": "fake",
                "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": 3,
            }
            assert (await h.client.post("/v1/chat/completions", json=chat)).status_code == 200
            text = (await h.client.get("/metrics")).text
    finally:
        await store.close()
    exported = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    missing = sorted(queried_metrics() - exported)
    assert not missing, f"the dashboard queries metrics inferd does not export: {missing}"
