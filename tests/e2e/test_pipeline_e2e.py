"""`dlrrec pipeline` as a user runs it: TorchX local_cwd launches (2 ranks), a Redis
export at the end, and a second run that reuses every stage."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from services import start_redis
from test_e2e_elastic import write_raw_reviews

from launch.pipeline import run as run_pipeline

pytestmark = [pytest.mark.slow, pytest.mark.redis]


def test_pipeline_torchx_redis_and_reuse(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    proc, port = start_redis(tmp_path)
    try:
        raw = write_raw_reviews(tmp_path / "raw")
        cfg = tmp_path / "c.yaml"
        cfg.write_text(
            f"# dlrrec pipeline --config c.yaml\nrun_dir: {tmp_path / 'run'}\nseed: 0\ndataset: tiny\n"
            f"features:\n  raw_dir: {raw}\n"
            f"similarity:\n  top_k: 10\n  redis_url: redis://127.0.0.1:{port}/0\n  redis_prefix: e2e\n"
            "train:\n  epochs: 2\n  batch_size: 64\n  eval_batch_size: 256\n"
            "pipeline:\n  nproc_per_node: 2\n  export_redis: true\n"
        )
        report = run_pipeline(str(cfg), [])
        out = capsys.readouterr().out
        assert report["world_size"] == 2
        assert "=== report ===" in out and "test" in out and "world_size 2" in out
        assert "export SWING pairs to Redis" in out

        import redis

        from similarity.redis_read import read_neighbors

        client = redis.Redis(host="127.0.0.1", port=port)
        first = json.loads((tmp_path / "run" / "similarity" / "_meta.json").read_text())
        assert first["item_item"]["pairs"] > 0
        from similarity.tables import read_pairs

        pairs = read_pairs(tmp_path / "run" / "similarity", "item_item").to_pydict()
        a = pairs["anchor"][0]
        expected = [n for n, x in zip(pairs["neighbor"], pairs["anchor"]) if x == a]
        # Redis names items by the source's ids ("i7"), not the tables' dense indexes.
        import pyarrow.parquet as pq

        ent = pq.read_table(tmp_path / "run" / "features" / "entities" / "items.parquet").to_pydict()
        name = dict(zip(ent["item_id"], ent["item"]))
        got = read_neighbors(client, "e2e", "item", name[a])
        assert [n for n, _ in got] == [name[n] for n in expected]

        # a second run with the same config reuses every stage's output
        mtimes = {p: p.stat().st_mtime for p in (tmp_path / "run").glob("*/_meta.json")}
        report_mtime = (tmp_path / "run" / "train" / "report.json").stat().st_mtime
        again = run_pipeline(str(cfg), [])
        assert again["test"] == report["test"]
        assert {p: p.stat().st_mtime for p in mtimes} == mtimes
        assert (tmp_path / "run" / "train" / "report.json").stat().st_mtime == report_mtime
    finally:
        proc.terminate()
        proc.wait(timeout=10)
