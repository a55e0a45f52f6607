"""The streaming build's parts against plain in-memory references, and the whole build
cut into many chunks and buckets against the same build in one chunk and one bucket."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tiny_reviews import write_raw

from dlrrec.config import DataError
from features import build, io, rowindex
from features.bad_rows import repeated_rows
from features.order_stats import values_at_ranks
from features.rowindex import repeated_review_rows, string_hashes
from features.spill import SeqJoin, Spill, bucket_of, owner_ranges, write_results


def _stream(values: np.ndarray, size: int) -> Callable[[], Any]:
    return lambda: (values[a : a + size] for a in range(0, len(values), size))


@pytest.mark.parametrize("cap", [3, 1 << 22])
def test_values_at_ranks_equal_a_full_sort(cap: int) -> None:
    rng = np.random.default_rng(0)
    ties = rng.integers(-5, 5, 5000).astype(np.int64) * 10**12  # few values, many ties
    stamps = rng.integers(10**9, 10**9 + 100, 5000).astype(np.int64)
    keys = rng.integers(0, 2**63, 5000, dtype=np.uint64) * np.uint64(2)
    for values, signed in ((ties, True), (stamps, True), (keys, False)):
        ranks = [0, 1, 2499, 4000, 4999]
        got = values_at_ranks(_stream(values, 777), len(values), ranks, signed, cap=cap)
        assert got == [int(v) for v in np.sort(values)[ranks]]


def test_owner_ranges_cover_every_owner_once_at_near_equal_rows() -> None:
    rows = np.random.default_rng(1).zipf(1.5, 1000).clip(max=500)
    edges = owner_ranges(rows, 2000)
    assert edges[0] == 0 and edges[-1] == 1000 and np.all(np.diff(edges) > 0)
    per_bucket = np.add.reduceat(rows, edges[:-1])
    assert per_bucket.sum() == rows.sum() and per_bucket.max() <= 2000 + rows.max()
    assert np.array_equal(
        bucket_of(np.arange(1000), edges), np.repeat(np.arange(len(edges) - 1), np.diff(edges))
    )
    assert list(owner_ranges(np.zeros(0, np.int64), 10)) == [0]  # no owners: still well formed


def test_spill_keeps_input_order_and_seqjoin_restores_it(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    n, k = 5000, 7
    owner = rng.integers(0, k, n)
    spill = Spill(tmp_path / "s", k)
    for a in range(0, n, 600):
        spill.add(
            pa.table({"seq": np.arange(a, min(n, a + 600)), "owner": owner[a : a + 600]}),
            owner[a : a + 600],
        )
    spill.close()
    paths = []
    for b in range(k):
        t = spill.read(b)
        assert (
            t is not None
            and np.all(np.diff(t["seq"].to_numpy()) > 0)
            and set(t["owner"].to_pylist()) == {b}
        )
        seq = t["seq"].to_numpy()
        write_results(tmp_path / f"r{b}.parquet", seq, {"twice": seq * 2})
        paths.append(tmp_path / f"r{b}.parquet")
    join = SeqJoin(paths)
    got = np.concatenate(
        [join.take(a, min(n, a + 999))["twice"].to_numpy() for a in range(0, n, 999)]
    )
    assert np.array_equal(got, np.arange(n) * 2)


def test_examples_writer_cuts_parts_and_row_groups_like_one_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(io, "PART_ROWS", 4 * io.ROW_GROUP_ROWS)
    n = 9 * io.ROW_GROUP_ROWS + 123
    table = pa.table({"x": np.arange(n)})
    writer = io.ExamplesWriter(tmp_path, "train", table.schema)
    for a in range(0, n, 5000):  # chunks that never line up with a row group
        writer.write(table.slice(a, 5000))
    assert writer.close() == 3
    parts = sorted((tmp_path / "examples" / "train").glob("part-*.parquet"))
    sizes = [pq.ParquetFile(p).metadata.num_rows for p in parts]
    groups = [
        pq.ParquetFile(p).metadata.row_group(g).num_rows
        for p in parts
        for g in range(pq.ParquetFile(p).num_row_groups)
    ]
    assert sizes == [4 * io.ROW_GROUP_ROWS, 4 * io.ROW_GROUP_ROWS, io.ROW_GROUP_ROWS + 123]
    assert groups == [io.ROW_GROUP_ROWS] * 9 + [123]
    assert pa.concat_tables(pq.read_table(p) for p in parts)["x"].to_numpy().tolist() == list(
        range(n)
    )


@pytest.mark.parametrize("bucket_rows", [1 << 22, 10])  # 64 buckets; 101 (more rows)
def test_repeated_review_ids_found_across_hash_buckets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bucket_rows: int
) -> None:
    monkeypatch.setattr(rowindex, "SEQ_BUCKET_ROWS", bucket_rows)
    ids = [f"r{(i * 37) % 700}" for i in range(1000)] + ["x"] * 3
    values = pa.array(ids)
    assert len(np.unique(string_hashes(values) % np.uint64(64))) > 32  # the ids spread out
    table = pa.table({"user": ["u"] * len(ids), "item": ["i"] * len(ids), "rating": [4.0] * len(ids),
                      "timestamp": list(range(len(ids))), "review_id": ids})  # fmt: skip
    path = tmp_path / "interactions.parquet"
    pq.write_table(table, path)
    rows, n = repeated_review_rows(path, None, "skip", tmp_path / "work")
    assert np.array_equal(rows, np.flatnonzero(repeated_rows(values))) and n == 302
    assert len(list((tmp_path / "work" / "review-ids").iterdir())) == max(64, -(-1003 // bucket_rows))
    with pytest.raises(DataError, match=r"row 700: repeats the id 'r0' of row 0; ids must be"):
        repeated_review_rows(path, None, "error", tmp_path / "work2")


def test_repeated_ids_spill_few_row_groups_of_tiny_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tiny chunks of ids are spilled SEQ_CHUNK_ROWS at a time (a batch has a fixed
    cost), with the positions of one whole chunk."""
    monkeypatch.setattr(rowindex, "SEQ_CHUNK_ROWS", 100)
    ids = pa.array([f"r{(i * 37) % 700}" for i in range(1003)])
    chunks = [ids.slice(at, 3) for at in range(0, 1003, 3)]
    whole = rowindex.repeated_ids([ids], 1003, tmp_path / "whole")
    tiny = rowindex.repeated_ids(chunks, 1003, tmp_path / "tiny")
    assert np.array_equal(tiny[0], whole[0]) and tiny[1] == whole[1] == (700, 0, "r0")
    batches = [_batches(f) for f in (tmp_path / "tiny").iterdir()]
    assert max(batches) <= -(-1003 // 102)  # 10 spills of 102 ids and a last one


def _batches(path: Path) -> int:
    with pa.ipc.open_stream(pa.memory_map(str(path))) as reader:
        return sum(1 for _ in reader)


def test_spill_memory_does_not_grow_with_its_batches(tmp_path: Path) -> None:
    """32k tiny batches in 64 buckets: the open spill holds nothing per batch. (As
    Parquet, every writer kept each row group's metadata until it closed: +55 MiB.)"""

    def rss_mib() -> float:
        status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
        return int(status["VmRSS"].split()[0]) / 1024

    spill = Spill(tmp_path / "s", 64)
    table = pa.table({"seq": pa.array(np.arange(64), pa.int64()), "id": pa.array(np.arange(64) * 7)})
    spill.add(table, np.arange(64))
    before = rss_mib()
    for _ in range(500):
        spill.add(table, np.arange(64))
    grown = rss_mib() - before
    spill.close()
    assert grown < 16, f"the open spill grew by {grown:.0f} MiB over 32,000 batches"
    assert spill.read(5)["id"].to_pylist() == [35] * 501


def _outputs(run_dir: Path) -> dict[str, pa.Table]:
    """Every output table; the profile table's parts (one per user bucket) as one table."""
    features = run_dir / "features"
    out = {
        str(p.relative_to(features)): pq.read_table(p) for p in sorted(features.rglob("*.parquet"))
    }
    parts = sorted(k for k in out if k.startswith("entities/user_profiles/"))
    if parts:
        out["profiles"] = pa.concat_tables(out.pop(k) for k in parts)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("split", ["random", "temporal"])
def test_many_chunks_and_buckets_give_the_one_chunk_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_tables: dict[str, pa.Table], split: str
) -> None:
    """Every per-row and per-entity output, bit for bit, whatever the chunk and bucket sizes
    (stats and bags on both owners, profiles, vocabularies, dense statistics)."""
    from features.config import FeaturesConfig
    from features.main import run

    raw = write_raw(tmp_path / "raw", tiny_tables)
    config = dict(raw_dir=str(raw), split=split, rating_stats=True, history_bags=True, workers=1)
    config |= {"rating_recent": 3, "rating_bias": True} if split == "temporal" else {}
    run(FeaturesConfig(run_dir=str(tmp_path / "one"), **config))
    monkeypatch.setattr(rowindex, "CHUNK_ROWS", 7)
    monkeypatch.setattr(build, "BUCKET_ROWS", 5)
    run(FeaturesConfig(run_dir=str(tmp_path / "many"), **(config | {"workers": 2})))  # + processes
    one, many = _outputs(tmp_path / "one"), _outputs(tmp_path / "many")
    assert one.keys() == many.keys()
    for name, table in one.items():
        assert table.equals(many[name]), name


def _meta(run_dir: Path) -> dict[str, Any]:
    """`_meta.json` without what differs between two runs of one build (time, workers)."""
    meta = json.loads((run_dir / "features" / "_meta.json").read_text())
    return {k: v for k, v in meta.items() if k not in ("seconds", "config", "fingerprint")}


def _tiny_content_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of 7 rows, buckets of 5, content partitions of 3 reviews or captions, and
    embedding runs merged 2 texts at a time; the interactions are never read whole."""
    from features import captions, embed_runs, sources, summaries
    from features.sources import tables

    monkeypatch.setattr(rowindex, "CHUNK_ROWS", 7)
    monkeypatch.setattr(build, "BUCKET_ROWS", 5)
    monkeypatch.setattr(summaries, "PARTITION_ROWS", 3)
    monkeypatch.setattr(captions, "PARTITION_CAPTIONS", 3)
    monkeypatch.setattr(embed_runs, "MERGE_BLOCK", 2)
    monkeypatch.setattr(embed_runs, "RUN_BATCH", 2)

    def whole(*_: Any, **__: Any) -> None:
        raise AssertionError("the build read the interactions whole")

    monkeypatch.setattr(tables.StagedReviews, "reviews", whole)
    for module, name in ((io, "read_raw_reviews"), (sources, "read_raw_reviews"),
                         (sources, "read_source"), (build, "read_source"),
                         (rowindex.RowIndex, "column")):  # fmt: skip
        monkeypatch.setattr(module, name, whole, raising=False)  # (whole-table reads)
    scan_table = io.scan_table

    def scan_entities(path: Path, *args: Any, **kwargs: Any) -> Any:
        if path.name == "interactions.parquet":
            whole()
        return scan_table(path, *args, **kwargs)

    monkeypatch.setattr(build, "scan_table", scan_entities)
    chunks = build.content_chunks

    def bounded(*args: Any) -> Any:
        for c in chunks(*args):
            assert c.raw is None or c.raw.num_rows <= 7
            yield c

    monkeypatch.setattr(build, "content_chunks", bounded)


@pytest.mark.slow
@pytest.mark.parametrize("split,source", [("random", "google_local"), ("temporal", "google_local"),
                                          ("random", "raw")])  # fmt: skip
def test_review_content_in_many_chunks_and_partitions_gives_the_one_chunk_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, split: str, source: str
) -> None:
    """The llm (offline) and images (tiny BLIP-2) sections streamed in many chunks and
    entity partitions: the keyed summary and caption tables, the key columns, per-key
    price and types, the entity tables and `_meta.json`, bit for bit."""
    from review_source import image_names, review_records, write_source
    from tiny_blip2 import save_tiny_blip2, write_images

    from features.captions import ImagesConfig
    from features.config import FeaturesConfig
    from features.llm import LLMConfig
    from features.main import run
    from features.sources import read_source

    reviews, meta = review_records(seed=4)
    write_images(tmp_path / "images", image_names(reviews))
    raw = write_source(tmp_path / "source", reviews, meta)
    if source == "raw":  # the same reviews as a raw folder (texts and photo references)
        tables = read_source("google_local", raw)
        raw = tmp_path / "raw"
        raw.mkdir()
        for name in ("interactions", "items", "users"):
            pq.write_table(getattr(tables, name), raw / f"{name}.parquet")
    blip2 = str(save_tiny_blip2(tmp_path / "blip2"))

    def config(run: str) -> FeaturesConfig:  # caches of its own: equal usage counts
        return FeaturesConfig(
            run_dir=str(tmp_path / run), raw_dir=str(raw), source=source, split=split,
            workers=1 if run == "one" else 2,  # (+ worker processes)
            llm=LLMConfig(cache_dir=str(tmp_path / run / "llm"), folds=3),
            images=ImagesConfig(blip2_path=blip2, image_dir=str(tmp_path / "images"),
                                cache_dir=str(tmp_path / run / "captions"), max_new_tokens=5),
        )  # fmt: skip

    run(config("one"))
    _tiny_content_limits(monkeypatch)
    run(config("many"))
    one, many = _outputs(tmp_path / "one"), _outputs(tmp_path / "many")
    assert {"entities/user_summaries/part-00000.parquet", "entities/item_images/part-00000.parquet"} <= set(one)
    assert one.keys() == many.keys()
    for name, table in one.items():
        assert table.equals(many[name]), name
    assert _meta(tmp_path / "one") == _meta(tmp_path / "many")


FIXTURES = Path(__file__).parents[1] / "fixtures"


def _yelp_repeating(tmp_path: Path, bad_stars: bool) -> Path:
    """The Yelp fixture with review 9 repeating review 2's id (and review 3 out of range)."""
    d = Path(shutil.copytree(FIXTURES / "yelp", tmp_path / "yelp"))
    recs = [json.loads(x) for x in (d / "review.json").read_text().splitlines()]
    recs[9]["review_id"] = recs[2]["review_id"]
    if bad_stars:
        recs[3]["stars"] = 6
    (d / "review.json").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return d


@pytest.mark.slow
@pytest.mark.parametrize("source", ["yelp", "amazon2023", "movielens_udata"])
def test_review_source_staged_in_tiny_chunks_gives_the_one_chunk_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    """A review source is staged chunk by chunk and streamed like `source: raw`, never
    read whole; every output is bit for bit the one-chunk build's (Yelp: with a bad row
    skipped and a repeated id dropped across chunks; MovieLens: items from the reviews)."""
    from features.config import FeaturesConfig
    from features.main import run
    from features.sources import records, tables

    raw = _yelp_repeating(tmp_path, True) if source == "yelp" else FIXTURES / source
    config = dict(raw_dir=str(raw), source=source, on_bad_rows="skip", rating_stats=True,
                  history_bags=True, workers=1)  # fmt: skip
    run(FeaturesConfig(run_dir=str(tmp_path / "one"), **config))  # type: ignore[arg-type]

    def whole(*_: Any) -> None:
        raise AssertionError("the build read a review source whole")

    monkeypatch.setattr(tables.StagedReviews, "reviews", whole)
    monkeypatch.setattr(records, "CHUNK_ROWS", 2)
    monkeypatch.setattr(rowindex, "CHUNK_ROWS", 5)
    monkeypatch.setattr(build, "BUCKET_ROWS", 5)
    meta = run(FeaturesConfig(run_dir=str(tmp_path / "many"), **config))  # type: ignore[arg-type]
    if source == "yelp":
        assert meta["skipped_rows"] == {"policy": "skip", "rating_out_of_range": 1,
                                        "empty_text": 0, "duplicate_review_id": 1}  # fmt: skip
    one, many = _outputs(tmp_path / "one"), _outputs(tmp_path / "many")
    assert one.keys() == many.keys()
    for name, table in one.items():
        assert table.equals(many[name]), name
    assert not (tmp_path / "many" / "features" / "_work").exists()  # the staged file went


def test_repeated_id_of_a_staged_source_names_its_file_and_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found across staged chunks, but named by the source file's rows and lines."""
    from tiny_reviews import fails

    from features.sources import records

    monkeypatch.setattr(records, "CHUNK_ROWS", 2)
    d = _yelp_repeating(tmp_path, False)
    err = fails([f"run_dir={tmp_path / 'run'}", f"raw_dir={d}", "source=yelp"], capsys)
    assert err.endswith(
        f"{d}/review.json: column 'review_id' row 9 (line 10): repeats the id 'r003' of row 2 "
        "(line 3); ids must be unique"
    )
    assert not (tmp_path / "run" / "features").exists()


@pytest.mark.parametrize("kind", ["random", "temporal"])
def test_streamed_split_equals_the_in_memory_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """`cut_split` over a chunked index gives `split.random_split` / `temporal_split`'s
    codes and `profiles.time_blocks`' blocks, row for row."""
    from features import profiles
    from features import split as splits
    from features.config import FeaturesConfig
    from features.workers import Workers

    rng = np.random.default_rng(3)
    n = 5000
    users, items = pa.array([f"u{i}" for i in range(300)]), pa.array([f"i{i}" for i in range(40)])
    row_user, row_item = rng.integers(0, 300, n), rng.integers(0, 40, n)
    ts = rng.integers(0, 50, n).astype(np.int64)  # heavy ties
    batch = pa.RecordBatch.from_pydict({"user": users.take(pa.array(row_user)), "item": items.take(pa.array(row_item)),
                                        "timestamp": ts, "rating": np.full(n, 4.0)})  # fmt: skip
    monkeypatch.setattr(rowindex, "CHUNK_ROWS", 333)
    named = {k: tmp_path / k for k in ("interactions", "users", "items")}
    index = rowindex.build_index(
        iter([batch]), (users, items), 0, tmp_path / "index.parquet", named, Workers(1)
    )
    cfg = FeaturesConfig(run_dir=str(tmp_path), split=kind, seed=7, profile_blocks=6)  # type: ignore[arg-type]
    sp = build.cut_split(cfg, index, [0.8, 0.1, 0.1])
    codes = np.concatenate([sp.codes(c) for _, c in index.chunks()])
    if kind == "random":
        assert np.array_equal(codes, splits.random_split(row_user, row_item, [0.8, 0.1, 0.1], 7))
    else:
        assert np.array_equal(codes, splits.temporal_split(ts, [0.8, 0.1, 0.1])[0])
        blocks = np.searchsorted(np.asarray(sp.block_cuts), ts, side="right")
        assert np.array_equal(blocks, profiles.time_blocks(ts, 6))
