"""Keys, limits and hardening on real `inferd serve` processes: the keys CLI and the store,
the Ollama listener, refusing to serve exposed without auth, TLS with the official openai
client, limits shared by two servers through a real Redis, a stream holding its slot, and
uvicorn-level body and header limits."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import LiveServer, free_port

CHAT = {"model": "smollm2", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 4}


def inferd(*args: str, data_dir: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "inferd", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=check,
    )


def create_key(data_dir: Path, *flags: str) -> tuple[str, str]:
    out = inferd("keys", "create", "--name", "test", *flags, "--json", data_dir=data_dir)
    doc = json.loads(out.stdout)
    return doc["id"], doc["key"]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def serve(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> LiveServer:
    return LiveServer.started(*args, env={"INFERD_DATA_DIR": str(data_dir), **(env or {})})


# ---- the keys CLI ------------------------------------------------------------------------------


def test_keys_cli_create_list_revoke(data_dir: Path) -> None:
    key_id, key = create_key(
        data_dir, "--admin", "--models", "a,b", "--rpm", "5", "--tpm", "900", "--max-parallel", "2"
    )
    assert key_id.startswith("key_") and key.startswith("inferd-")
    plain = inferd("keys", "create", "--name", "second", data_dir=data_dir)
    assert plain.stdout.strip().startswith("inferd-") and "shown only this once" in plain.stderr
    listed = json.loads(inferd("keys", "list", "--json", data_dir=data_dir).stdout)
    assert [k["name"] for k in listed] == ["test", "second"]
    first = listed[0]
    assert first["id"] == key_id and first["admin"] is True and first["models"] == ["a", "b"]
    assert (first["rpm"], first["tpm"], first["max_parallel"]) == (5, 900, 2)
    assert first["revoked_at"] is None
    db_bytes = b"".join(p.read_bytes() for p in data_dir.iterdir() if p.is_file())
    assert key.encode() not in db_bytes  # only the hash is stored
    table = inferd("keys", "list", data_dir=data_dir).stdout
    assert key_id in table and key not in table
    inferd("keys", "revoke", key_id, data_dir=data_dir)
    listed = json.loads(inferd("keys", "list", "--json", data_dir=data_dir).stdout)
    assert listed[0]["revoked_at"] is not None
    missing = inferd("keys", "revoke", "key_nope", data_dir=data_dir, check=False)
    assert missing.returncode == 2 and "no key with id key_nope" in missing.stderr
    bad = inferd("keys", "create", "--name", "x", "--rpm", "0", data_dir=data_dir, check=False)
    assert bad.returncode == 2


# ---- serving beyond loopback -------------------------------------------------------------------


def test_exposed_without_auth_refuses_to_start(data_dir: Path) -> None:
    port = str(free_port())
    out = subprocess.run(
        [sys.executable, "-m", "inferd", "serve", "--host", "0.0.0.0", "--port", port],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "INFERD_DATA_DIR": str(data_dir)},
    )
    assert out.returncode == 2
    assert "refusing to serve on 0.0.0.0 without authentication" in out.stderr
    assert "--insecure" in out.stderr


def test_exposed_with_require_auth_starts_and_wants_a_key(data_dir: Path) -> None:
    server = LiveServer(
        "--host", "0.0.0.0", env={"INFERD_DATA_DIR": str(data_dir), "INFERD_REQUIRE_AUTH": "1"}
    )
    try:
        server.wait_ready()
        assert httpx.get(f"{server.url}/v1/models", timeout=10).status_code == 401
        assert httpx.get(f"{server.url}/metrics", timeout=10).status_code == 401  # not loopback
        # bound beyond loopback: any Host may reach it, none skips auth
        r = httpx.get(f"{server.url}/v1/models", headers={"Host": "localhost"}, timeout=10)
        assert r.status_code == 401
    finally:
        server.stop()


# ---- body and header limits through uvicorn ----------------------------------------------------


def test_huge_bodies_and_headers_through_the_server(live_server: LiveServer) -> None:
    url = live_server.url
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", live_server.port), timeout=10) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n{}" % (100 << 20)
        )
        head = s.recv(65536).decode()  # answered without waiting for the 100 MB
    assert head.startswith("HTTP/1.1 413 ")

    def chunks() -> Iterator[bytes]:
        for _ in range(100):
            yield b" " * (1 << 20)

    try:
        r = httpx.post(f"{url}/v1/completions", content=chunks(), timeout=20)
        assert r.status_code == 413
    except httpx.HTTPError:
        pass  # the server may close the connection while the client still sends
    assert time.monotonic() - started < 10
    r = httpx.get(f"{url}/v1/models", headers={"x-junk": "a" * 17000}, timeout=10)
    assert r.status_code == 431
    try:  # beyond uvicorn's own parser limit: refused there, or the connection closed
        r = httpx.get(f"{url}/v1/models", headers={"x-junk": "a" * 200_000}, timeout=10)
        assert r.status_code in (400, 431)
    except httpx.HTTPError:
        pass
    r = httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=60)
    assert r.status_code == 200


# ---- TLS ---------------------------------------------------------------------------------------


def self_signed(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_openai_client_over_https_with_a_self_signed_certificate(
    data_dir: Path, tmp_path: Path
) -> None:
    cert, key_file = self_signed(tmp_path)
    _, key = create_key(data_dir)
    server = LiveServer(
        "--ssl-certfile",
        str(cert),
        "--ssl-keyfile",
        str(key_file),
        env={"INFERD_DATA_DIR": str(data_dir)},
    )
    https = f"https://127.0.0.1:{server.port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.proc.poll() is None, server.output()
            try:
                if httpx.get(
                    f"{https}/health/ready",
                    verify=ssl.create_default_context(cafile=str(cert)),
                    timeout=1,
                ).is_success:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the HTTPS server did not become ready"
            time.sleep(0.2)
        with httpx.Client(verify=ssl.create_default_context(cafile=str(cert))) as http:
            client = openai.OpenAI(base_url=f"{https}/v1", api_key=key, http_client=http)
            chat = client.chat.completions.create(
                model="smollm2", messages=[{"role": "user", "content": "Hi"}], max_tokens=4
            )
            assert chat.choices[0].message.content is not None
            assert chat.usage is not None and chat.usage.completion_tokens >= 1
            stream = client.chat.completions.create(
                model="smollm2",
                messages=[{"role": "user", "content": "Hi"}],
                max_tokens=4,
                stream=True,
            )
            assert sum(1 for _ in stream) >= 1
            bad = openai.OpenAI(
                base_url=f"{https}/v1", api_key="inferd-wrong", http_client=http, max_retries=0
            )
            with pytest.raises(openai.AuthenticationError):
                bad.models.list()
        with pytest.raises(httpx.ConnectError):  # not trusted without the certificate
            httpx.get(f"{https}/health", timeout=5)
        with pytest.raises(httpx.HTTPError):  # no plain HTTP on the TLS port
            httpx.get(f"http://127.0.0.1:{server.port}/health", timeout=5)
    finally:
        server.stop()


def test_tls_needs_both_files(data_dir: Path, tmp_path: Path) -> None:
    cert, _ = self_signed(tmp_path)
    out = subprocess.run(
        [sys.executable, "-m", "inferd", "serve", "--ssl-certfile", str(cert)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "INFERD_DATA_DIR": str(data_dir)},
    )
    assert out.returncode == 2 and "both --ssl-certfile and --ssl-keyfile" in out.stderr


# ---- a store's keys, and limits two servers share through Redis --------------------------------


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real redis-server (Debian's package) on a free port, no persistence."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="inferd-redis-")
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", workdir],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import redis

        client = redis.Redis(port=port)
        deadline = time.monotonic() + 20
        while True:
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def test_two_servers_share_the_stores_keys_and_one_limit_through_redis(
    data_dir: Path, redis_url: str
) -> None:
    """Two servers on one data directory and one Redis: server A (an Ollama listener beside
    its own, keys cached for 0.5 s) takes the store's keys on both listeners; between A and B
    a requests-per-minute window and a parallel slot are one."""
    key_id, key = create_key(data_dir, "--max-parallel", "1")
    _, rpm_key = create_key(data_dir, "--rpm", "6")
    ollama_port = free_port()
    env = {"INFERD_RATE_LIMIT_STORAGE": redis_url, "INFERD_KEY_CACHE_SECONDS": "0.5"}
    a = serve(data_dir, "--ollama-port", str(ollama_port), env=env)
    try:
        b = serve(data_dir, env=env)
        try:
            _keys_on_both_listeners(data_dir, a.url, ollama_port, key_id, key)
            _share_rpm(a.url, b.url, rpm_key)
            _share_parallel(data_dir, a.url, b.url)
        finally:
            b.stop()
    finally:
        a.stop()
    assert key not in a.output() + b.output()


def _keys_on_both_listeners(
    data_dir: Path, url: str, ollama_port: int, key_id: str, key: str
) -> None:
    """The store's key (at most one request at a time) on the main and the Ollama listener,
    tokens per minute, and a revocation from the CLI while the server runs."""
    for base in (url, f"http://127.0.0.1:{ollama_port}"):
        assert httpx.get(f"{base}/health", timeout=10).status_code == 200
        r = httpx.post(f"{base}/api/chat", json={**CHAT, "stream": False}, timeout=60)
        assert r.status_code == 401 and isinstance(r.json()["error"], str)
        r = httpx.post(
            f"{base}/api/chat", json={**CHAT, "stream": False}, headers=bearer(key), timeout=60
        )
        assert r.status_code == 200, r.text
        r = httpx.post(
            f"{base}/v1/chat/completions", json=CHAT, headers={"x-api-key": key}, timeout=60
        )
        assert r.status_code == 200, r.text

    # a stream holds the key's only parallel slot until it ends
    body = {"prompt": "Once upon a time", "max_tokens": 40, "stream": True}
    with httpx.stream(
        "POST", f"{url}/v1/completions", json=body, headers=bearer(key), timeout=60
    ) as stream:
        assert stream.status_code == 200
        lines = stream.iter_lines()
        next(lines)
        r = httpx.post(f"{url}/v1/chat/completions", json=CHAT, headers=bearer(key), timeout=60)
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert "[DONE]" in "".join(lines)
    r = httpx.post(f"{url}/v1/chat/completions", json=CHAT, headers=bearer(key), timeout=60)
    assert r.status_code == 200

    # tokens per minute on the real engine: reserve prompt + max_tokens, settle to usage
    _, tpm_key = create_key(data_dir, "--tpm", "400")
    body = {**CHAT, "max_tokens": 150}
    r = httpx.post(f"{url}/v1/chat/completions", json=body, headers=bearer(tpm_key), timeout=60)
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    reserved = usage["prompt_tokens"] + 150
    assert r.headers["x-ratelimit-remaining-tokens"] == str(400 - reserved)
    r = httpx.get(f"{url}/v1/models", headers=bearer(tpm_key), timeout=10)
    assert r.headers["x-ratelimit-remaining-tokens"] == str(400 - usage["total_tokens"])
    r = httpx.post(
        f"{url}/v1/chat/completions",
        json={**CHAT, "max_tokens": 400},
        headers=bearer(tpm_key),
        timeout=60,
    )
    assert r.status_code == 429 and r.json()["error"]["param"] == "max_tokens"

    # revoked from the CLI while the server runs: refused within the cache age
    inferd("keys", "revoke", key_id, data_dir=data_dir)
    time.sleep(0.7)
    r = httpx.get(f"{url}/v1/models", headers=bearer(key), timeout=10)
    assert r.status_code == 401


def _share_rpm(a: str, b: str, key: str) -> None:
    def call(i: int) -> httpx.Response:
        base = a if i % 2 else b
        return httpx.post(
            f"{base}/v1/chat/completions",
            json={**CHAT, "max_tokens": 1},
            headers=bearer(key),
            timeout=60,
        )

    rs = [call(i) for i in range(9)]  # alternating between the two servers
    assert [r.status_code for r in rs] == [200] * 6 + [429] * 3
    # one window: each answer, from either server, counts down the same remainder
    assert [r.headers["x-ratelimit-remaining-requests"] for r in rs] == [
        *"543210",
        *"000",
    ]
    assert all(r.headers["x-ratelimit-limit-requests"] == "6" for r in rs)
    with ThreadPoolExecutor(8) as pool:  # and under concurrency nothing more gets through
        assert {r.status_code for r in pool.map(call, range(8))} == {429}


def _share_parallel(data_dir: Path, a: str, b: str) -> None:
    _, key = create_key(data_dir, "--max-parallel", "1")
    body: dict[str, Any] = {"prompt": "Once upon a time", "max_tokens": 40, "stream": True}
    time.sleep(0.6)  # past the key cache's age (an unknown key refreshes it at once anyway)
    with httpx.stream(
        "POST", f"{a}/v1/completions", json=body, headers=bearer(key), timeout=60
    ) as stream:
        assert stream.status_code == 200, stream.read()
        lines = stream.iter_lines()
        next(lines)
        r = httpx.post(f"{b}/v1/chat/completions", json=CHAT, headers=bearer(key), timeout=60)
        assert r.status_code == 429  # the slot is held on the other server
        "".join(lines)
    r = httpx.post(f"{b}/v1/chat/completions", json=CHAT, headers=bearer(key), timeout=60)
    assert r.status_code == 200
