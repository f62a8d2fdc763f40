"""Hugging Face checkpoints built by the tests from what is on disk: never downloaded.

- `build_smollm2`: the bundled SmolLM2 GGUF, dequantized by transformers' GGUF loader and
  saved as a safetensors checkpoint with its tokenizer (~25 s). transformers refuses
  `save_pretrained` on a GGUF-loaded model, so a fresh model built from its config takes the
  state dict and is saved instead.
- `build_tiny_moe`: a Mixture-of-Experts checkpoint, Mixtral or Qwen2-MoE (4 experts, top-2,
  small dims, random weights from a fixed seed) with the SmolLM2 tokenizer.
- `build_tiny_llama`: a dense llama of the same small dims, random weights, SmolLM2's tokenizer.

Both write into a temporary folder and rename it into place, so a folder that exists is whole;
`cached` keys a folder by what it was built from, so a later session reuses it, and builds it
under a lock, so parallel workers (pytest-xdist) build it once.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from inferd.config import ModelConfig
from inferd.engine.client import AsyncEngine
from inferd.engine.types import GenerateRequest, SamplingParams
from inferd.models.loading import llamacpp_loader, transformers_load
from inferd.models.spec import ModelSpec, bundled_model_path
from tests.locks import build_lock

SEED = 1234


def cached(root: Path, name: str, key: str, build: Callable[[Path], None]) -> Path:
    """`root/name-<hash of key>`, built by `build(folder)` unless an earlier session did."""
    pytest.importorskip("transformers", reason="needs the hf extra: pip install 'inferd[hf]'")
    stamp = f"{key}|transformers {importlib.metadata.version('transformers')}"
    digest = hashlib.sha256(stamp.encode()).hexdigest()
    final = root / f"{name}-{digest[:16]}"
    if final.is_dir():
        return final
    with build_lock(root / f".{name}.lock"):  # an xdist worker building it: wait for its
        if final.is_dir():
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
        try:
            build(tmp)
            tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def build_smollm2(gguf: Path, out: Path) -> None:
    """The GGUF's weights, dequantized, as `model.safetensors`, with config and tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    fresh = AutoModelForCausalLM.from_config(loaded.config)
    fresh.load_state_dict(loaded.state_dict())
    fresh.generation_config = loaded.generation_config
    # a plain float checkpoint: not "quantized with gguf", as the loaded config says
    del fresh.config.quantization_config
    fresh.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)


def _widen(model: Any) -> None:
    """Weights wider than the default init, so greedy picks are rarely near-ties."""
    import torch

    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 2 / p.shape[-1] ** 0.5)


def build_tiny_llama(tokenizer_dir: Path, out: Path) -> None:
    """A random dense llama (2 layers, 4 heads over 2 KV heads, 64 wide) with the tokenizer
    found in `tokenizer_dir`."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config)
    _widen(model)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def build_tiny_moe(kind: str, tokenizer_dir: Path, out: Path) -> None:
    """A random Mixture-of-Experts model, `kind` "mixtral" or "qwen2moe" (4 experts, top-2,
    Qwen's with its shared expert), with the tokenizer found in `tokenizer_dir`."""
    import torch
    from transformers import (
        AutoTokenizer,
        MixtralConfig,
        MixtralForCausalLM,
        PreTrainedModel,
        Qwen2MoeConfig,
        Qwen2MoeForCausalLM,
    )

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_experts_per_tok=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(SEED)
    model: PreTrainedModel
    if kind == "mixtral":
        model = MixtralForCausalLM(MixtralConfig(num_local_experts=4, **common))
    else:
        config = Qwen2MoeConfig(
            num_experts=4,
            moe_intermediate_size=64,
            shared_expert_intermediate_size=128,
            norm_topk_prob=False,
            **common,
        )
        model = Qwen2MoeForCausalLM(config)
    _widen(model)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


# ---- checkpoints of zeros, for what reads only headers ----------------------------------

CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}


def safetensors_bytes(tensors: dict[str, tuple[str, list[int]]], *, cut: int = 0) -> bytes:
    """A safetensors file of zeros with the given (dtype, shape) tensors; `cut` bytes short."""
    width = {"F32": 4, "F16": 2, "BF16": 2}
    header: dict[str, object] = {}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        size = width[dtype]
        for d in shape:
            size *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    data = struct.pack("<Q", len(raw)) + raw + bytes(offset)
    return data[: len(data) - cut]


def make(folder: Path, *, config: object = CONFIG, weights: bytes | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    tensors = {"embed.weight": ("F16", [8, 4]), "norm.weight": ("F32", [4])}
    (folder / "model.safetensors").write_bytes(weights or safetensors_bytes(tensors))
    (folder / "tokenizer.json").write_text("{}")
    (folder / "tokenizer_config.json").write_text("{}")
    return folder


# ---- fixtures and helpers for the tests that use them ------------------------------------


@pytest.fixture(scope="session")
def checkpoint_root(request: pytest.FixtureRequest) -> Path:
    """Built checkpoints live in the pytest cache (else the temp dir), reused by later sessions."""
    cache = getattr(request.config, "cache", None)
    if cache is None:  # -p no:cacheprovider
        return Path(tempfile.gettempdir()) / "inferd-test-checkpoints"
    return Path(cache.mkdir("inferd-checkpoints"))


@pytest.fixture(scope="session")
def smollm2_dir(checkpoint_root: Path) -> Path:
    gguf = bundled_model_path()
    st = gguf.stat()
    key = f"{gguf}|{st.st_size}|{st.st_mtime_ns}"
    return cached(checkpoint_root, "smollm2", key, lambda out: build_smollm2(gguf, out))


@pytest.fixture(scope="session", params=["mixtral", "qwen2moe"])
def moe_dir(request: pytest.FixtureRequest, checkpoint_root: Path, smollm2_dir: Path) -> Path:
    kind = request.param
    key = f"{kind}|{smollm2_dir.name}|seed {SEED}|v1"
    return cached(checkpoint_root, kind, key, lambda out: build_tiny_moe(kind, smollm2_dir, out))


@pytest.fixture(scope="session")
def mixtral_dir(checkpoint_root: Path, smollm2_dir: Path) -> Path:
    key = f"mixtral|{smollm2_dir.name}|seed {SEED}|v1"
    return cached(
        checkpoint_root, "mixtral", key, lambda out: build_tiny_moe("mixtral", smollm2_dir, out)
    )


@pytest.fixture(scope="session")
def tiny_llama_dir(checkpoint_root: Path, smollm2_dir: Path) -> Path:
    key = f"llama|{smollm2_dir.name}|seed {SEED}|v1"
    return cached(checkpoint_root, "llama", key, lambda out: build_tiny_llama(smollm2_dir, out))


# a gap below this is a near-tie that rounding may flip (a tiny random Mixtral's answer
# parted from transformers' at a router margin of 0.001, and at no larger one)
NEAR_TIE = 0.01


@dataclass(frozen=True)
class Greedy:
    """transformers' greedy answer to one prompt: its tokens (EOS dropped), and at each step how
    decided it was: the gap between the best and the second-best logit, or, if smaller, the
    margin of a Mixture-of-Experts router between the last expert it picked and the next."""

    tokens: list[int]
    gaps: list[float]

    def decided(self, tolerance: float = NEAR_TIE) -> list[int]:
        """The tokens before the first near-tie: where float rounding (f16 vs f32, another
        summation order) may pick the runner-up token or expert, two correct engines part ways."""
        n = next((i for i, g in enumerate(self.gaps) if g < tolerance), len(self.gaps))
        return self.tokens[:n]


def hf_greedy(folder: Path, prompts: list[list[int]], n: int) -> list[Greedy]:
    """transformers' own greedy continuation of each prompt (up to n tokens), in a child
    process: torch's worker threads must not compete with the engine's afterwards. Kept beside
    the folder (a cached one, named for what it was built from) under a name made from the
    prompts, n, this script and torch's version, so a later session reads it back."""
    stamp = json.dumps([prompts, n, _HF_GREEDY, importlib.metadata.version("torch")])
    digest = hashlib.sha256(stamp.encode()).hexdigest()[:16]
    memo = folder.with_name(f"greedy-{folder.name}-{digest}.json")
    if not memo.is_file():
        out = subprocess.run(
            [sys.executable, "-c", _HF_GREEDY, str(folder), json.dumps(prompts), str(n)],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
        )
        assert out.returncode == 0, out.stderr[-3000:]
        partial = memo.with_name(f".{memo.name}.{os.getpid()}")
        partial.write_text(out.stdout.splitlines()[-1])
        partial.replace(memo)  # whole or absent
    return [Greedy(t, g) for t, g in json.loads(memo.read_text())]


# float32 against float32 (the transformers backend against `generate`): only the order of
# sums differs, so a much smaller gap is a tie
FLOAT32_TIE = 1e-4


def assert_agrees(
    got: list[list[int]], expected: list[Greedy], at_least: int, tolerance: float = NEAR_TIE
) -> None:
    """The engine's greedy tokens equal transformers' up to each answer's first near-tie (and
    at least `at_least` tokens of each are compared, so the check cannot pass vacuously)."""
    for answer, reference in zip(got, expected, strict=True):
        decided = reference.decided(tolerance)
        assert len(decided) >= min(at_least, len(reference.tokens)), reference
        assert answer[: len(decided)] == decided
        if len(decided) == len(reference.tokens):  # no near-tie: the whole answer
            assert answer == reference.tokens


_HF_GREEDY = """
import json, math, sys
import torch
from transformers import AutoModelForCausalLM

folder, prompts, n = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
eos = model.generation_config.eos_token_id
stops = set(eos if isinstance(eos, list) else [eos])
# a MoE router's margin at each forward pass: its k-th best expert logit over the (k+1)-th
margins = []
def new_pass(module, args, kwargs):
    margins.append(math.inf)
def router(module, args, out):
    top = torch.topk(out[0].float(), module.top_k + 1, dim=-1).values
    margin = (top[..., module.top_k - 1] - top[..., module.top_k]).min()
    margins[-1] = min(margins[-1], float(margin))
model.register_forward_pre_hook(new_pass, with_kwargs=True)
for module in model.modules():
    if hasattr(module, "top_k") and hasattr(module, "num_experts") and hasattr(module, "weight"):
        module.register_forward_hook(router)
answers = []
with torch.no_grad():
    for prompt in prompts:
        margins.clear()
        ids = torch.tensor([prompt])
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
            output_scores=True, return_dict_in_generate=True,
        )
        tokens, gaps = [], []
        steps = zip(out.sequences[0, len(prompt):].tolist(), out.scores, margins)
        for token, scores, margin in steps:
            if token in stops:
                break
            top = torch.topk(scores[0].float(), 2).values
            tokens.append(token)
            gaps.append(min(float(top[0] - top[1]), margin))
        answers.append([tokens, gaps])
print(json.dumps(answers))
"""


@contextlib.asynccontextmanager
async def serving(path: Path, **config: object) -> AsyncIterator[AsyncEngine]:
    """The real engine on the GGUF at `path`, through inferd's own loader. One thread: on a
    busy shared machine two threads that wait for each other are ten times slower."""
    cfg = ModelConfig(**{"path": path, "n_ctx": 512, "n_threads": 1, **config})
    engine = AsyncEngine(llamacpp_loader()(ModelSpec(path.stem, path, cfg)))
    engine.start()
    try:
        yield engine
    finally:
        await engine.stop()


def transformers_spec(folder: Path, **config: object) -> ModelSpec:
    """A checkpoint served by the transformers backend (one thread, float32, a small window)."""
    settings = {"path": folder, "n_ctx": 512, "n_threads": 1, "backend": "transformers"}
    cfg = ModelConfig(**{**settings, **config})  # type: ignore[arg-type]
    return ModelSpec(folder.name, folder, cfg)


@contextlib.asynccontextmanager
async def serving_torch(folder: Path, **config: object) -> AsyncIterator[AsyncEngine]:
    """inferd's engine over the transformers backend on the checkpoint in `folder`."""
    engine = AsyncEngine(transformers_load(transformers_spec(folder, **config)))
    engine.start()
    try:
        yield engine
    finally:
        await engine.stop()


async def engine_greedy(
    engine: AsyncEngine, prompt: list[int], n: int, rid: str = "r"
) -> list[int]:
    """The engine's greedy continuation (up to n tokens, the EOS that ends it dropped)."""
    req = GenerateRequest(rid, tuple(prompt), SamplingParams(max_tokens=n, temperature=0.0))
    outs = [o async for o in engine.generate(req)]
    tokens = [t for o in outs for t in o.token_ids]
    return tokens[:-1] if outs[-1].finish_reason == "stop" else tokens
