"""export / score / recommend on a tiny real run: raw reviews -> features -> SWING ->
2-rank gloo training, then a 1-process export whose scores equal the trainer's."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
import torch
from dist_helpers import run_ranks

sys.path.insert(0, str(Path(__file__).parents[1] / "e2e"))
sys.path.insert(0, str(Path(__file__).parents[1] / "trainer"))
from synthetic import train_runs  # noqa: E402
from test_e2e_elastic import write_raw_reviews  # noqa: E402

from features.config import FeaturesConfig  # noqa: E402
from launch.cli import main as cli  # noqa: E402
from serve.model import gather_bags  # noqa: E402
from trainer.metrics import summarize  # noqa: E402

TRAIN = {"epochs": 3, "batch_size": 64, "eval_batch_size": 256, "patience": 3, "log_every": 0,
         "tensorboard": False, "progress_bar": False}  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Two trained runs: plain, and with history bags, rating statistics and cold-start
    rows (id dropout)."""
    from features.main import run as build_features
    from similarity.config import SwingConfig
    from similarity.main import run as swing

    tmp = tmp_path_factory.mktemp("serve")
    raw = write_raw_reviews(tmp / "raw")
    plain, cold = tmp / "plain", tmp / "cold"
    build_features(FeaturesConfig(run_dir=str(plain), raw_dir=str(raw), seed=1))
    build_features(
        FeaturesConfig(
            run_dir=str(cold), raw_dir=str(raw), seed=1, history_bags=True, rating_stats=True
        )
    )
    for run in (plain, cold):
        swing(SwingConfig(run_dir=str(run), top_k=10))
    run_ranks(train_runs, 2, [(str(plain), TRAIN), (str(cold), {**TRAIN, "id_dropout": 0.2})])
    return {"plain": plain, "cold": cold, "raw": raw}


@pytest.fixture(scope="module")
def bag_content_run(tmp_path_factory) -> Path:
    """A run whose history bags are model inputs only as content: no bag tables
    (`history_tables=none`), both user bags read through the item tower
    (`history_content`), narrow towers lifted by `tower_map` (`tower_dim` < D)."""
    from features.main import run as build_features
    from similarity.config import SwingConfig
    from similarity.main import run as swing

    tmp = tmp_path_factory.mktemp("serve_bags")
    run = tmp / "run"
    raw = write_raw_reviews(tmp / "raw")
    build_features(FeaturesConfig(run_dir=str(run), raw_dir=str(raw), seed=1, history_bags=True))
    swing(SwingConfig(run_dir=str(run), top_k=10))
    opts = {**TRAIN, "history_tables": "none", "tower_dim": 16,
            "history_content": ["user_pos_items", "user_neg_items"]}  # fmt: skip
    run_ranks(train_runs, 2, [(str(run), opts)])
    return run


def source_pairs(run: Path, split: str) -> pa.Table:
    t = pq.read_table(
        run / "features" / "examples" / split, columns=["user_id", "item_id", "label"]
    )
    users = pq.read_table(run / "features" / "entities" / "users.parquet", columns=["user"]).column(
        0
    )
    items = pq.read_table(run / "features" / "entities" / "items.parquet", columns=["item"]).column(
        0
    )
    return pa.table(
        {"user": users.take(t["user_id"]), "item": items.take(t["item_id"]), "label": t["label"]}
    )



def score_test_pairs(run: Path, tmp_path: Path) -> pa.Table:
    """Writes the test split's source-id pairs to tmp_path/pairs.parquet and scores them
    into tmp_path/out.parquet through the CLI; returns the pairs."""
    pairs = source_pairs(run, "test")
    pq.write_table(pairs, tmp_path / "pairs.parquet")
    out = tmp_path / "out.parquet"
    assert cli(["score", f"run_dir={run}", f"input={tmp_path / 'pairs.parquet'}", f"output={out}"]) == 0
    return pairs

def export(run: Path, *extra: str) -> int:
    return cli(["export", f"run_dir={run}", *extra])


@pytest.mark.slow
def test_export_then_score_reproduces_the_trainers_test_predictions(runs, tmp_path: Path):
    run = runs["plain"]
    assert export(run) == 0
    manifest = json.loads((run / "export" / "_meta.json").read_text())
    assert manifest["needs_torchrec"] is False and manifest["format"] == "torchscript"
    report = json.loads((run / "train" / "report.json").read_text())
    assert manifest["train_fingerprint"] == report["fingerprint"] and report["world_size"] == 2
    pairs = score_test_pairs(run, tmp_path)
    out = pq.read_table(tmp_path / "out.parquet")
    assert out.column_names == ["user", "item", "label", "score"]
    trainer = pq.read_table(run / "train" / "test_predictions.parquet")
    np.testing.assert_allclose(
        out["score"].to_numpy(), trainer["prob"].to_numpy(), rtol=0, atol=1e-5
    )
    ours = summarize(out["label"].to_numpy(), out["score"].to_numpy().astype(np.float32))
    assert abs(ours.auc() - report["test"]["auc"]) < 1e-4
    # CSV in and out, ids read as strings: the same scores
    pcsv.write_csv(pairs.slice(0, 50), tmp_path / "pairs.csv")
    assert (
        cli(
            [
                "score",
                f"run_dir={run}",
                f"input={tmp_path / 'pairs.csv'}",
                f"output={tmp_path / 'out.csv'}",
            ]
        )
        == 0
    )
    csv = pcsv.read_csv(tmp_path / "out.csv")
    np.testing.assert_allclose(csv["score"].to_numpy(), out["score"].to_numpy()[:50], atol=1e-6)
    # the artifact alone: torch.jit.load, no repository code, equals the CLI's scores
    model = torch.jit.load(str(run / "export" / "model.pt"))
    t = pq.read_table(run / "features" / "examples" / "test", columns=["user_id", "item_id"])
    with torch.no_grad():
        logits = model(
            torch.from_numpy(t["user_id"].to_numpy()), torch.from_numpy(t["item_id"].to_numpy())
        )
    np.testing.assert_allclose(torch.sigmoid(logits).numpy(), out["score"].to_numpy(), atol=1e-6)


@pytest.mark.slow
def test_export_is_reused_and_refuses_a_foreign_run(runs, tmp_path: Path, capsys):
    run = runs["plain"]
    assert export(run) == 0
    before = (run / "export" / "model.pt").stat().st_mtime
    assert export(run) == 0 and (run / "export" / "model.pt").stat().st_mtime == before
    # a finished run stays exportable after the trainer's code changes (its train
    # fingerprint, which hashes the trainer's sources, no longer recomputes)
    edited = tmp_path / "edited"
    shutil.copytree(run, edited, ignore=shutil.ignore_patterns("export"))
    report = json.loads((edited / "train" / "report.json").read_text())
    report["fingerprint"] = "e" * 64
    (edited / "train" / "report.json").write_text(json.dumps(report))
    assert export(edited) == 0 and (edited / "export" / "model.pt").is_file()
    # a run dir whose train/ was made from other features: refused by fingerprint
    other = tmp_path / "other"
    shutil.copytree(run, other, ignore=shutil.ignore_patterns("export"))
    meta = json.loads((other / "features" / "_meta.json").read_text())
    (other / "features" / "_meta.json").write_text(json.dumps({**meta, "fingerprint": "f" * 64}))
    with pytest.raises(SystemExit) as e:
        export(other)
    assert e.value.code == 2
    assert "fingerprint mismatch" in capsys.readouterr().err


@pytest.mark.slow
def test_score_refuses_bad_input_with_one_line(runs, tmp_path: Path, capsys):
    run = runs["plain"]
    export(run)
    capsys.readouterr()
    pairs = source_pairs(run, "test").slice(0, 5)
    cases = {
        "nouser.parquet": (pairs.drop_columns(["user"]), "missing column 'user'"),
        "unknown.parquet": (
            pa.table({"user": ["nobody"], "item": [pairs["item"][0].as_py()]}),
            "unknown user id 'nobody'",
        ),
        "badtype.txt": (pairs, "expected a .parquet or .csv file"),
    }
    for name, (table, message) in cases.items():
        pq.write_table(table, tmp_path / name)
        with pytest.raises(SystemExit) as e:
            cli(
                [
                    "score",
                    f"run_dir={run}",
                    f"input={tmp_path / name}",
                    f"output={tmp_path / 'o.parquet'}",
                ]
            )
        err = capsys.readouterr().err
        assert e.value.code == 2 and message in err and err.count("\n") == 1, err
        assert not (tmp_path / "o.parquet").exists()  # no partial artifact
    # an export from another features fingerprint than run_dir/features
    meta_path = run / "features" / "_meta.json"
    meta = meta_path.read_text()
    try:
        meta_path.write_text(json.dumps({**json.loads(meta), "fingerprint": "0" * 64}))
        pq.write_table(pairs, tmp_path / "ok.parquet")
        with pytest.raises(SystemExit) as e:
            cli(
                [
                    "score",
                    f"run_dir={run}",
                    f"input={tmp_path / 'ok.parquet'}",
                    f"output={tmp_path / 'o.parquet'}",
                ]
            )
        assert e.value.code == 2 and "rerun `dlrrec export" in capsys.readouterr().err
    finally:
        meta_path.write_text(meta)


@pytest.mark.slow
def test_recommend_ranks_the_catalogue_without_seen_items(runs, capsys):
    run = runs["plain"]
    export(run)
    capsys.readouterr()
    user = "u3"
    assert cli(["recommend", f"run_dir={run}", f"user={user}", "top=5"]) == 0
    lines = [x.split("\t") for x in capsys.readouterr().out.strip().splitlines()]
    assert [int(x[0]) for x in lines] == [1, 2, 3, 4, 5]
    titles = dict(
        zip(
            *(
                pq.read_table(runs["raw"] / "items.parquet", columns=["item", "title"])
                .to_pydict()
                .values()
            )
        )
    )
    assert all(x[3] == titles[x[1]] for x in lines)
    # the same ranking by the independent route: score every unseen item with `score`
    train = source_pairs(run, "train")
    seen = {i for u, i in zip(train["user"].to_pylist(), train["item"].to_pylist()) if u == user}
    items = [x for x in titles if x not in seen]
    from serve.artifact import read_export

    exp = read_export(run)
    rows = exp.rows("item", pa.array(items), "error", "")
    u = np.full(rows.size, exp.rows("user", pa.array([user]), "error", "")[0])
    probs = 1 / (1 + np.exp(-exp.logits(u, rows, 1024).astype(np.float64)))
    best = sorted(zip(-probs, rows, items))[:5]
    assert [x[1] for x in lines] == [b[2] for b in best]
    np.testing.assert_allclose([float(x[2]) for x in lines], [-b[0] for b in best], atol=1e-6)
    assert not seen & {x[1] for x in lines}
    # with seen items: the top can include them; unknown user: one line, exit 2
    assert cli(["recommend", f"run_dir={run}", f"user={user}", "top=3", "exclude_seen=false"]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        cli(["recommend", f"run_dir={run}", "user=nobody"])
    assert e.value.code == 2 and "unknown user id 'nobody'" in capsys.readouterr().err


@pytest.mark.slow
def test_history_statistics_and_cold_start_rows(runs, tmp_path: Path, capsys):
    """Bags and statistics from all training rows, unseen ids on the cold row: the trainer's
    test scores; unknown ids go through the cold row with unknown=cold."""
    run = runs["cold"]
    meta = json.loads((run / "features" / "_meta.json").read_text())
    assert "user_pos_items" in meta["sparse_features"] and "user_hist_n" in meta["dense_features"]
    assert export(run) == 0
    pairs = score_test_pairs(run, tmp_path)
    trainer = pq.read_table(run / "train" / "test_predictions.parquet")
    # the trainer maps ids absent from training to the cold row; so does the export
    np.testing.assert_allclose(
        pq.read_table(tmp_path / "out.parquet")["score"].to_numpy(),
        trainer["prob"].to_numpy(),
        atol=1e-5,
    )
    capsys.readouterr()
    assert cli(["recommend", f"run_dir={run}", "user=nobody", "top=3", "unknown=cold"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3
    new = pa.table({"user": ["nobody", "nobody"], "item": [pairs["item"][0].as_py(), "new-item"]})
    pq.write_table(new, tmp_path / "new.parquet")
    assert (
        cli(
            [
                "score",
                f"run_dir={run}",
                f"input={tmp_path / 'new.parquet'}",
                f"output={tmp_path / 'n.parquet'}",
                "unknown=cold",
            ]
        )
        == 0
    )
    assert np.isfinite(pq.read_table(tmp_path / "n.parquet")["score"].to_numpy()).all()


@pytest.mark.slow
def test_history_content_slots_reproduce_the_trainers_test_predictions(
    bag_content_run, tmp_path: Path
):
    """Each user's bags, mean item vector through the item tower, as extra tower slots
    of the user: the trainer's test scores and AUC; the manifest names the slots."""
    run = bag_content_run
    assert export(run) == 0
    recipe = json.loads((run / "export" / "_meta.json").read_text())["recipe"]
    meta = json.loads((run / "features" / "_meta.json").read_text())
    bags = {n for n, s in meta["sparse_features"].items() if "ids_of" in s}
    assert {"user_pos_items", "user_neg_items"} <= bags
    assert not bags & {s["name"] for s in recipe["sparse"]}  # history_tables=none: no tables
    assert recipe["towers"] == [
        {"entity": "user", "column": "user_text"},
        {"entity": "item", "column": "item_text"},
        {"entity": "user", "column": "user_pos_items", "projected_by": "item_text"},
        {"entity": "user", "column": "user_neg_items", "projected_by": "item_text"},
    ]
    model = torch.jit.load(str(run / "export" / "model.pt"))
    n_vec = 1 + len(recipe["sparse"]) + 4  # dense, sparse, 2 towers, 2 slots
    assert model.pairs.numel() == n_vec * (n_vec - 1) // 2
    # the unknown user (row n) has empty bags: the item tower of the zero vector
    n = int(meta["n_users"])
    zero = model.project(1, torch.zeros(1, int(meta["content_dim"])))
    np.testing.assert_allclose(
        model.users.tower_out[n, 1:].numpy(), zero.expand(2, -1).numpy(), rtol=0, atol=1e-6
    )
    score_test_pairs(run, tmp_path)
    out = pq.read_table(tmp_path / "out.parquet")
    trainer = pq.read_table(run / "train" / "test_predictions.parquet")
    np.testing.assert_allclose(
        out["score"].to_numpy(), trainer["prob"].to_numpy(), rtol=0, atol=1e-5
    )
    report = json.loads((run / "train" / "report.json").read_text())
    ours = summarize(out["label"].to_numpy(), out["score"].to_numpy().astype(np.float32))
    assert abs(ours.auc() - report["test"]["auc"]) < 1e-4
    users = pq.read_table(run / "export" / "embeddings" / "users.parquet")
    assert users.column_names[-2:] == ["user_pos_items_tower", "user_neg_items_tower"]


def test_bag_means_in_chunks_are_the_trainers_pooled_bags():
    """Chunked per-owner means equal `trainer.data.pooled_bag` of the same bags bit for
    bit, whatever the chunk bounds (empty bags: zero)."""
    from serve.recipe import bag_means, row_chunks
    from trainer.data import SplitArrays, pooled_bag

    rng = np.random.default_rng(0)
    table = rng.normal(size=(20, 8)).astype(np.float16)

    class Store:  # the one method and field of a VectorStore that the means read
        dim = 8

        def read(self, ids: np.ndarray) -> np.ndarray:
            return table[ids]

    lengths = rng.integers(0, 6, 40)
    lengths[[0, 7]] = 0
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    values = rng.integers(0, 20, int(offsets[-1]))
    none = np.zeros(0, np.int64)
    split = SplitArrays(40, none, none, none, np.zeros((40, 0)), {}, {"b": (offsets, values)}, {})
    want = pooled_bag(Store(), split, "b", np.arange(40))
    for rows, members in ((40, 1000), (7, 1000), (40, 9), (3, 1)):
        chunks = list(row_chunks(offsets, rows, members))
        bounds = [0] + [hi for _, hi in chunks]
        assert chunks == list(zip(bounds[:-1], bounds[1:])) and bounds[-1] == 40
        for lo, hi in chunks:
            assert hi - lo <= rows and (hi - lo == 1 or offsets[hi] - offsets[lo] <= members)
        got = np.concatenate([bag_means(offsets, values, lo, hi, Store()) for lo, hi in chunks])
        np.testing.assert_array_equal(got, want)
    assert not want[0].any() and want.dtype == np.float16


@pytest.mark.slow
def test_retrieval_embeddings_are_the_models_own_rows(runs):
    run = runs["plain"]
    export(run)
    emb = pq.read_table(run / "export" / "embeddings" / "items.parquet")
    assert emb.column_names == ["item", "row", "id_embedding", "item_text_tower"]
    model = torch.jit.load(str(run / "export" / "model.pt"))
    recipe = json.loads((run / "export" / "_meta.json").read_text())["recipe"]
    table = list(dict.fromkeys(s["table"] for s in recipe["sparse"])).index("item_id")
    ids = np.stack(emb["id_embedding"].to_numpy(zero_copy_only=False))
    np.testing.assert_array_equal(
        ids, model.state_dict()[f"tables.{table}.weight"].numpy()[: emb.num_rows]
    )
    # the tower output equals the exported towers applied to the entity table's vector
    vec = pq.read_table(run / "features" / "entities" / "items.parquet", columns=["item_text"])[
        "item_text"
    ]
    x = torch.from_numpy(np.stack(vec.to_numpy(zero_copy_only=False)).astype(np.float32))
    tower = recipe["towers"].index({"entity": "item", "column": "item_text"})
    with torch.no_grad():
        want = model.project(tower, x).numpy()
    np.testing.assert_allclose(
        np.stack(emb["item_text_tower"].to_numpy(zero_copy_only=False)), want, atol=1e-5
    )


def test_gather_bags_matches_a_loop():
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 4, 30)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    values = rng.integers(0, 100, int(offsets[-1]))
    rows = rng.integers(0, 30, 50)
    got_v, got_o = gather_bags(
        torch.from_numpy(offsets), torch.from_numpy(values), torch.from_numpy(rows)
    )
    want = [values[offsets[r] : offsets[r + 1]] for r in rows]
    assert got_v.tolist() == np.concatenate(want).tolist()
    assert got_o.tolist() == np.concatenate([[0], np.cumsum([len(w) for w in want])[:-1]]).tolist()


def test_recipe_refuses_a_feature_of_the_pair_by_name():
    from dlrrec.config import DataError
    from serve.recipe import owner_of

    assert owner_of("user_pos_items", "m") == "user" and owner_of("item_hist_n", "m") == "item"
    with pytest.raises(DataError, match="'review_vec'.*not a function of the user or the item"):
        owner_of("review_vec", "features/_meta.json")


@pytest.mark.slow
def test_derived_values_equal_every_test_rows_bags_and_statistics(runs):
    """The pseudo-row values of each test row's owner equal what the features stage wrote
    for that test row (an independent check of `derived_values`, without the model)."""
    from serve.recipe import DERIVED, derived_values

    features = runs["cold"] / "features"
    meta = json.loads((features / "_meta.json").read_text())
    names = [x for x in [*meta["sparse_features"], *meta["dense_features"]] if x in DERIVED]
    assert len(names) == 10
    got = derived_values(features, meta, names)
    test = pq.read_table(features / "examples" / "test")
    for x in names:
        owner = test[f"{DERIVED[x]}_id"].to_numpy()
        if x in meta["dense_features"]:
            np.testing.assert_array_equal(got[x][0][owner], test[x].to_numpy(), err_msg=x)
        else:
            offsets, values = got[x]
            want = test[x].to_pylist()
            assert [values[offsets[o] : offsets[o + 1]].tolist() for o in owner] == want, x


@pytest.mark.slow
@pytest.mark.redis
def test_export_writes_the_embeddings_to_redis_as_a_switched_version(runs, tmp_path: Path):
    from services import start_redis

    from similarity.redis_embeddings import read_embedding
    from similarity.redis_store import connect

    run = runs["plain"]
    proc, port = start_redis(tmp_path)
    try:
        url = f"redis://127.0.0.1:{port}/0"
        assert export(run, f"redis_url={url}", "redis_prefix=t") == 0
        client = connect(url)
        items = pq.read_table(run / "export" / "embeddings" / "items.parquet")
        for r in (0, items.num_rows - 1):
            got = read_embedding(client, "t", "item", items["item"][r].as_py())
            assert got is not None and set(got) == {"id_embedding", "item_text_tower"}
            np.testing.assert_array_equal(
                got["id_embedding"], np.asarray(items["id_embedding"][r].as_py(), np.float32)
            )
        assert read_embedding(client, "t", "item", "no-such-item") is None
        version = client.get("t:emb:current")
        assert (
            client.hget(b"t:emb:" + version + b":_meta", "rows_item")
            == str(items.num_rows).encode()
        )
        # the same export again: nothing rewritten, same version; SWING's keys untouched
        assert export(run, f"redis_url={url}", "redis_prefix=t") == 0
        assert client.get("t:emb:current") == version and client.get("t:current") is None
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.slow
def test_export_serves_keyed_review_content(tmp_path: Path):
    """llm (offline) + images (tiny BLIP-2) content, keyed per (entity, slot): the export
    serves each entity's last slot, which is what every test row read, so its scores
    equal the trainer's test predictions."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "features"))
    from review_source import image_names, review_records, write_source
    from tiny_blip2 import save_tiny_blip2, write_images

    from features.captions import ImagesConfig
    from features.llm import LLMConfig
    from features.main import run as build_features
    from similarity.config import SwingConfig
    from similarity.main import run as swing

    reviews, meta = review_records(seed=5, n_users=30, n_items=5)
    write_images(tmp_path / "images", image_names(reviews))
    run = tmp_path / "run"
    built = build_features(FeaturesConfig(
        run_dir=str(run), raw_dir=str(write_source(tmp_path / "raw", reviews, meta)),
        source="google_local", seed=1, llm=LLMConfig(folds=3),
        images=ImagesConfig(blip2_path=str(save_tiny_blip2(tmp_path / "blip2")),
                            image_dir=str(tmp_path / "images"), cache_dir="", max_new_tokens=5),
    ))  # fmt: skip
    assert set(built["keyed_content"]) == {"user_text", "item_text", "user_image", "item_image"}
    swing(SwingConfig(run_dir=str(run), top_k=10))
    opts = {**TRAIN, "batch_size": 16, "modalities": ["text", "image"]}
    run_ranks(train_runs, 2, [(str(run), opts)])
    assert export(run) == 0
    score_test_pairs(run, tmp_path)
    out = pq.read_table(tmp_path / "out.parquet")
    trainer = pq.read_table(run / "train" / "test_predictions.parquet")
    assert out.num_rows == trainer.num_rows > 5
    np.testing.assert_allclose(
        out["score"].to_numpy(), trainer["prob"].to_numpy(), rtol=0, atol=1e-5
    )
