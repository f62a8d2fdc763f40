"""`inferd bench`: throughput and latency of any OpenAI-compatible server."""

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.console import Console
from rich.progress import Progress, TaskID

from inferd.bench.ceiling import CeilingResult, measure_ceiling
from inferd.bench.load import LevelResult, RequestResult, run_level
from inferd.bench.report import plot, table
from inferd.bench.workload import Workload

# the report's width when it goes to a file or a pipe (rich would assume 80 columns)
REPORT_WIDTH = 120


def _ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected numbers separated by commas, got {text!r}") from None
    if not values or min(values) < 1:
        raise typer.BadParameter("expected positive numbers")
    return values


@contextlib.contextmanager
def _own_server(args: list[str], console: Console) -> Iterator[str]:
    """Start `inferd serve` on a free 127.0.0.1 port for the run."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "inferd", "serve", "--port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen([*cmd, *args])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"inferd serve exited with status {proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health/ready", timeout=1).status_code == 200:
                    break
            time.sleep(0.2)
        else:
            raise SystemExit("inferd serve did not become ready in 120 s")
        console.print(f"started inferd on {url}", style="dim")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def bench(
    url: Annotated[
        str | None,
        typer.Option(help="Base URL of an OpenAI-compatible server; default: start inferd"),
    ] = None,
    model: Annotated[str | None, typer.Option(help="Model name to send")] = None,
    concurrency: Annotated[
        str, typer.Option("--concurrency", "-c", help="Concurrency levels, e.g. 1,4,8,16")
    ] = "1,4,8,16",
    requests: Annotated[
        int | None, typer.Option(help="Requests per level (default: 2 x concurrency, at least 4)")
    ] = None,
    prompt_words: Annotated[int, typer.Option(help="Words of random text per prompt")] = 32,
    max_tokens: Annotated[int, typer.Option(help="Tokens to generate per request")] = 128,
    shared_prefixes: Annotated[
        int, typer.Option(help="Interleave this many shared prefixes (0: none)")
    ] = 0,
    prefix_words: Annotated[int, typer.Option(help="Words per shared prefix")] = 600,
    rate: Annotated[
        float | None,
        typer.Option(help="Open loop: Poisson arrivals at this many requests/s per level"),
    ] = None,
    ignore_eos: Annotated[
        bool, typer.Option(help="Ask for exactly max_tokens tokens (ignore_eos extension)")
    ] = True,
    ceiling: Annotated[
        bool, typer.Option(help="Also measure in-process llama.cpp batched decode (the ceiling)")
    ] = False,
    model_path: Annotated[
        Path | None,
        typer.Option(help="GGUF for --ceiling and --tune (default: the bundled model)"),
    ] = None,
    kv_split: Annotated[
        bool | None,
        typer.Option(
            help="The ceiling with a KV stream per sequence, or one unified cache (compare a "
            "server run with the same flag; default: the layout a server picks itself)",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")] = False,
    plot_file: Annotated[
        Path | None, typer.Option("--plot", help="Draw throughput and TTFT to this PNG")
    ] = None,
    serve_arg: Annotated[
        list[str] | None,
        typer.Option("--serve-arg", help="Extra argument for the inferd it starts (repeatable)"),
    ] = None,
    tune: Annotated[
        bool,
        typer.Option(
            "--tune",
            help="Instead: measure flash attention off and on on this machine for --model-path "
            "(default: the served model), print the table and the pick, store it for serve",
        ),
    ] = False,
) -> None:
    """Load a server at each concurrency level; report throughput, TTFT, TPOT and ITL."""
    levels_c = _ints(concurrency)
    console = Console(stderr=as_json)
    if tune:
        from inferd.cli.tune import tune_report

        tune_report(model_path, console, as_json=as_json)
        return
    if not console.is_terminal:  # piped or redirected: wide enough that no column folds
        console.width = max(console.width, REPORT_WIDTH)
    workload = Workload(
        prompt_words=prompt_words,
        max_tokens=max_tokens,
        shared_prefixes=shared_prefixes,
        prefix_words=prefix_words,
    )
    ceilings: dict[int, CeilingResult] = {}
    if ceiling:
        from inferd.models.spec import bundled_model_path

        with console.status("measuring the in-process ceiling"):
            for measured in measure_ceiling(
                model_path or bundled_model_path(), levels_c, max_tokens, kv_split=kv_split
            ):
                ceilings[measured.batch] = measured
    with contextlib.ExitStack() as stack:
        base = url or stack.enter_context(_own_server(list(serve_arg or []), console))
        results: list[LevelResult] = []
        with Progress(console=console, transient=True) as progress:
            for c in levels_c:
                n = requests or max(4, 2 * c)
                task = progress.add_task(f"concurrency {c}", total=n)

                def advance(_result: RequestResult, task: TaskID = task) -> None:
                    progress.advance(task)

                results.append(
                    asyncio.run(
                        run_level(
                            base,
                            model,
                            workload.prompts(n),
                            max_tokens,
                            concurrency=c,
                            rate=rate,
                            ignore_eos=ignore_eos,
                            on_done=advance,
                        )
                    )
                )
    if as_json:
        doc = {
            "url": url or "inferd (started by bench)",
            "workload": workload.__dict__,
            "levels": [r.as_dict() for r in results],
            "ceiling": {
                str(b): {"tokens_per_s": round(m.tokens_per_s, 2), "tokens": m.tokens}
                for b, m in ceilings.items()
            },
        }
        print(json.dumps(doc, indent=2))
    else:
        console.print(table(results, ceilings, f"inferd bench: {url or 'inferd'}"))
    if plot_file:
        plot(results, ceilings, plot_file)
        console.print(f"plot written to {plot_file}")
    if any(r.errors for r in results):
        raise typer.Exit(1)
