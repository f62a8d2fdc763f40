"""lm-evaluation-harness against a live inferd: its `local-completions` model runs a small
loglikelihood (multiple-choice) task written here, with local data and a tokenizer saved
from the bundled GGUF (nothing downloaded). lm_eval sends token ids with `echo: true`,
`logprobs: 1` and `max_tokens: 1`, and reads the continuation's prompt log probabilities."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests import checkpoints
from tests.conftest import LiveServer

lm_eval = pytest.importorskip("lm_eval", reason="needs the dev extra (lm_eval)")
checkpoint_root, smollm2_dir = checkpoints.checkpoint_root, checkpoints.smollm2_dir

# Questions a 135M model answers by likelihood, with one clearly right choice each.
ITEMS = [
    ("Monday, Tuesday, Wednesday,", [" Thursday", " banana", " seven"], 0),
    ("One, two, three, four,", [" purple", " five", " river"], 1),
    ("The capital of France is", [" Paris", " a spoon", " blue"], 0),
    ("January, February, March,", [" table", " April", " running"], 1),
    ("The sun rises in the", [" east", " spoon", " fridge"], 0),
    ("Cats and", [" democracy", " dogs", " seventeen"], 1),
    ("Red, green and", [" blue", " walked", " tomorrow"], 0),
    ("A, B, C,", [" Z", " D", " kitchen"], 1),
    ("Water boils at 100 degrees", [" Celsius", " banana", " quickly"], 0),
    ("Thank you very", [" much", " table", " green"], 0),
]


@pytest.fixture
def task_dir(tmp_path: Path) -> Path:
    data = tmp_path / "items.jsonl"
    data.write_text(
        "".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in ITEMS)
    )
    (tmp_path / "inferd_tiny.yaml").write_text(
        "task: inferd_tiny\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\n'
        'doc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{answer}}"\n'
        "target_delimiter: ''\n"
        "metric_list:\n  - metric: acc\n"
    )
    return tmp_path


def test_lm_eval_loglikelihood_task(
    live_server: LiveServer,
    task_dir: Path,
    smollm2_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The tokenizer files saved from the bundled GGUF with the checkpoint the session
    builds once (tests/checkpoints.py)."""
    tokenizer = {"tokenizer_backend": "huggingface", "tokenizer": str(smollm2_dir)}
    run_task(live_server, task_dir, tokenizer, monkeypatch)


def test_lm_eval_with_the_servers_tokenizer(
    live_server: LiveServer, task_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`tokenizer_backend=remote`: lm_eval reads /tokenizer_info and tokenizes through
    /tokenize (vLLM's routes), so no tokenizer files are needed."""
    run_task(live_server, task_dir, {"tokenizer_backend": "remote"}, monkeypatch)


def run_task(
    live_server: LiveServer,
    task_dir: Path,
    tokenizer: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    results = simple_evaluate(
        model="local-completions",
        model_args={
            "model": "smollm2:135m",
            "base_url": f"{live_server.url}/v1/completions",
            **tokenizer,
            "num_concurrent": 4,
            "max_retries": 1,
        },
        tasks=["inferd_tiny"],
        task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
        log_samples=True,
    )
    assert results is not None
    metrics = results["results"]["inferd_tiny"]
    # chance is 1/3; the model gets almost all of these
    assert metrics["acc,none"] >= 0.8, metrics
    samples = results["samples"]["inferd_tiny"]
    assert len(samples) == len(ITEMS)
    for sample in samples:  # real log-likelihoods: finite and negative
        for (loglikelihood, _greedy), *_ in sample["resps"]:
            assert -100.0 < float(loglikelihood) < 0.0
