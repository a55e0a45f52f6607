"""Redis export and read API against a real `redis-server` on a free loopback port.

Needs the `redis-server` binary (Debian: `apt-get install -y redis-server`; CI installs
it); the tests skip only when it is missing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
from dist_helpers import free_port
from services import start_redis

from launch.cli import main as cli_main
from similarity.config import SwingConfig
from similarity.main import run as swing_run
from similarity.redis_export import export, run
from similarity.redis_read import current_version, read_neighbors
from similarity.redis_store import connect
from similarity.tables import read_pairs

pytestmark = pytest.mark.redis

start_server = start_redis


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    proc, port = start_server(tmp_path)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[str]:
    proc, port = start_server(tmp_path, "--requirepass", "s3cret")
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=10)


def make_tables(run_dir: Path, seed: int, top_k: int = 10, n: int = 3000) -> Path:
    rng = np.random.default_rng(seed)
    path = run_dir / "interactions.parquet"
    run_dir.mkdir(parents=True, exist_ok=True)
    user = rng.integers(0, 200, n)
    item = np.minimum(rng.zipf(1.3, n) - 1, 149)
    pq.write_table(pa.table({"user": user, "item": item}), path)
    swing_run(SwingConfig(run_dir=str(run_dir), input=str(path), top_k=top_k, seed=seed))
    return run_dir / "similarity"


def expected(stage: Path, kind: str) -> dict[str, list[tuple[str, float]]]:
    t = read_pairs(stage, kind)
    out: dict[str, list[tuple[str, float]]] = {}
    for a, n, s in zip(t["anchor"].to_pylist(), t["neighbor"].to_pylist(), t["score"].to_pylist()):
        out.setdefault(str(a), []).append((str(n), s))
    return out


def test_export_read_roundtrip_and_idempotent(server: str, tmp_path: Path) -> None:
    stage = make_tables(tmp_path / "a", seed=1)
    client = connect(server)
    first = export(client, "t", stage, grace_s=60)
    assert first["status"] == "exported" and first["previous"] is None
    assert current_version(client, "t") == first["version"]
    for kind, short in (("item_item", "item"), ("user_user", "user")):
        want = expected(stage, kind)
        assert want
        for anchor, rows in want.items():
            got = read_neighbors(client, "t", short, anchor)
            assert [n for n, _ in got] == [n for n, _ in rows]
            assert np.array_equal(np.float32([s for _, s in got]), np.float32([s for _, s in rows]))
        assert (
            read_neighbors(client, "t", short, next(iter(want)), top=2)
            == read_neighbors(client, "t", short, next(iter(want)))[:2]
        )
    n_keys = client.dbsize()
    # Same tables again: same version, nothing written, nothing new.
    again = export(client, "t", stage, grace_s=60)
    assert again["version"] == first["version"] and again["status"] == "already current"
    assert client.dbsize() == n_keys
    assert client.ttl(f"t:{first['version']}:_meta") == -1


def test_switch_expires_old_version(server: str, tmp_path: Path) -> None:
    old_stage = make_tables(tmp_path / "a", seed=1, top_k=5)
    new_stage = make_tables(tmp_path / "b", seed=2, top_k=8)
    client = connect(server)
    old = export(client, "t", old_stage, grace_s=100)["version"]
    new = export(client, "t", new_stage, grace_s=100)
    assert new["previous"] == old and current_version(client, "t") == new["version"]
    old_keys = list(client.scan_iter(match=f"t:{old}:*"))
    assert old_keys and all(0 < client.ttl(k) <= 100 for k in old_keys)
    assert all(client.ttl(k) == -1 for k in client.scan_iter(match=f"t:{new['version']}:*"))
    # Back to the old tables within the grace period: rewritten, persistent again.
    back = export(client, "t", old_stage, grace_s=100)
    assert back["version"] == old and back["status"] == "exported"
    assert all(client.ttl(k) == -1 for k in client.scan_iter(match=f"t:{old}:*"))


def test_concurrent_reader_never_sees_partial_list(server: str, tmp_path: Path) -> None:
    old_stage = make_tables(tmp_path / "a", seed=1, top_k=4)
    new_stage = make_tables(tmp_path / "b", seed=3, top_k=12)
    old_rows, new_rows = expected(old_stage, "item_item"), expected(new_stage, "item_item")
    anchors = sorted(set(old_rows) & set(new_rows), key=int)[:40]
    assert any(old_rows[a] != new_rows[a] for a in anchors)
    client = connect(server)
    export(client, "t", old_stage, grace_s=60)
    stop = threading.Event()
    seen = {"old": 0, "new": 0}
    bad: list[str] = []

    def reader() -> None:
        c = connect(server)
        k = 0
        while not stop.is_set():
            a = anchors[k % len(anchors)]
            got = [n for n, _ in read_neighbors(c, "t", "item", a)]
            if got == [n for n, _ in old_rows[a]]:
                seen["old"] += 1
            elif got == [n for n, _ in new_rows[a]]:
                seen["new"] += 1
            else:
                bad.append(f"anchor {a}: {got}")
            k += 1

    thread = threading.Thread(target=reader)
    thread.start()
    time.sleep(0.2)
    # Small batches: many transactions, so the reader interleaves with the writes.
    export(client, "t", new_stage, grace_s=60, batch_pairs=50)
    time.sleep(0.2)
    stop.set()
    thread.join(timeout=30)
    assert not bad, bad[:3]
    assert seen["old"] > 0 and seen["new"] > 0


def test_cli_export_and_neighbors(
    server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stage = make_tables(tmp_path / "a", seed=1)
    capsys.readouterr()
    args = [f"run_dir={tmp_path / 'a'}", f"redis_url={server}", "redis_prefix=cli"]
    assert cli_main(["similarity", "export-redis", *args]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["status"] == "exported" and report["pairs"] > 0
    anchor, rows = next(iter(expected(stage, "user_user").items()))
    assert cli_main(["similarity", "neighbors", "user", anchor, "--top", "3", *args[1:]]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[1] for line in lines] == [n for n, _ in rows[:3]]
    assert [line.split("\t")[0] for line in lines] == ["0", "1", "2"][: len(lines)]


def one_line_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        cli_main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_errors(
    secured: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    make_tables(tmp_path / "a", seed=1, n=800)
    base = ["similarity", "export-redis", f"run_dir={tmp_path / 'a'}"]
    dead = f"redis://127.0.0.1:{free_port()}/0"
    assert "cannot connect" in one_line_exit_2([*base, f"redis_url={dead}"], capsys)
    monkeypatch.delenv("REDIS_PASSWORD", raising=False)
    assert "REDIS_PASSWORD" in one_line_exit_2([*base, f"redis_url={secured}"], capsys)
    monkeypatch.setenv("REDIS_PASSWORD", "wrong")
    assert "REDIS_PASSWORD" in one_line_exit_2([*base, f"redis_url={secured}"], capsys)
    err = one_line_exit_2([*base, "redis_url=redis://:s3cret@127.0.0.1:1/0"], capsys)
    assert "must not contain a password" in err and "s3cret" not in err
    assert "redis_url" in one_line_exit_2(base, capsys)
    nothing = ["similarity", "export-redis", f"run_dir={tmp_path / 'none'}", f"redis_url={secured}"]
    assert "dlrrec similarity swing" in one_line_exit_2(nothing, capsys)
    # The right password, from the environment only, works.
    monkeypatch.setenv("REDIS_PASSWORD", "s3cret")
    assert run(SwingConfig(run_dir=str(tmp_path / "a"), redis_url=secured))["pairs"] > 0
    assert "nothing exported" in one_line_exit_2(
        ["similarity", "neighbors", "item", "1", f"redis_url={secured}", "redis_prefix=other"],
        capsys,
    )
    assert "invalid choice" in one_line_exit_2(
        ["similarity", "neighbors", "shop", "1", f"redis_url={secured}"], capsys
    )


def test_rediss_tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl not installed")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    tls_port = free_port()
    proc, _ = start_server(
        tmp_path,
        "--tls-port", str(tls_port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
        "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no",
    )  # fmt: skip
    try:
        stage = make_tables(tmp_path / "a", seed=1, n=800)
        url = f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={cert}"
        client = connect(url)
        report = export(client, "tls", stage, grace_s=10)
        anchor, rows = next(iter(expected(stage, "item_item").items()))
        assert [n for n, _ in read_neighbors(client, "tls", "item", anchor)] == [n for n, _ in rows]
        assert report["pairs"] > 0
        # Plain redis:// against the TLS port fails with one clear message.
        with pytest.raises(Exception, match="cannot connect"):
            connect(f"redis://127.0.0.1:{tls_port}/0", timeout_s=1)
    except redis.RedisError:
        raise
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_packed_transaction_matches_redis_py_and_raises_on_error_replies(server: str):
    """The hand-packed DEL + ZADD commands store what redis-py's ZADD stores (scores
    to the bit, non-ASCII members), and an error reply inside MULTI/EXEC raises without
    poisoning the connection."""
    from similarity.redis_export import _Transaction, _zadd_commands

    client = connect(server)
    scores = [0.1, 1 / 3, 2.5e-7, 7.0]
    members = ["a", "b:c", "é€", "42"]
    client.zadd("ref", dict(zip(members, scores)))
    client.set("dst", "stale value of another type")  # DEL must clear it first
    tx = _Transaction(client)
    tx.add(_zadd_commands(b"dst", scores, [m.encode() for m in members]), 2)
    tx.execute()
    assert client.zrange("dst", 0, -1, withscores=True) == client.zrange(
        "ref", 0, -1, withscores=True
    )
    client.set("plain", "x")
    bad = b"*4\r\n$4\r\nZADD\r\n$5\r\nplain\r\n$1\r\n1\r\n$1\r\nm\r\n"  # WRONGTYPE
    tx.add(bad, 1)
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        tx.execute()
    assert client.ping() and client.get("plain") == b"x"
