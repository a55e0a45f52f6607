"""Source adapters on their hand-written fixtures (tests/fixtures/<source>/) and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from dlrrec.config import ConfigError, build_dataclass, load_raw, section_values
from features.config import FeaturesConfig
from features.main import fingerprint_config, main
from features.sources import read_source

ROOT = Path(__file__).parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
SOURCES = ("yelp", "google_local", "amazon2023", "movielens_udata", "generic")
GENERIC_FILES = {"reviews": "reviews.csv", "items": "products.jsonl"}
GENERIC_COLUMNS = {
    "user": "customer", "item": "product", "rating": "stars", "timestamp": "reviewed_at",
    "text": "body", "title": "name", "categories": "tags",
}  # fmt: skip


def items_by_id(source: str, **kw: object) -> dict[str, dict]:
    raw = read_source(source, FIXTURES / source, **kw)  # type: ignore[arg-type]
    return {r["item"]: r for r in raw.items.to_pylist()}


def test_yelp_fixture() -> None:
    raw = read_source("yelp", FIXTURES / "yelp")
    assert raw.interactions.num_rows == 12 and raw.users.num_rows == 5
    first = raw.interactions.to_pylist()[0]
    assert first["review_id"] == "r001" and first["text"].startswith("Great crust")
    assert first["timestamp"] == 1549886460  # 2019-02-11 12:01:00 UTC
    items = items_by_id("yelp")
    assert items["b_pizza"]["categories"] == ["Pizza", "Italian", "Restaurants"]
    assert [items[b]["price_tier"] for b in ("b_pizza", "b_sushi", "b_taco", "b_dentist")] == [
        2,
        4,
        None,
        None,
    ]
    assert items["b_pizza"]["captions"] == [
        "Margherita pizza with basil"
    ]  # the blank caption is dropped
    assert items["b_dentist"]["captions"] is None and items["b_dentist"]["categories"] is None


def test_google_local_fixture() -> None:
    raw = read_source("google_local", FIXTURES / "google_local")
    rows = raw.interactions.to_pylist()
    assert len(rows) == 12 and rows[0]["timestamp"] == 1560086400
    assert rows[4]["text"] is None  # a rating without text is kept
    assert rows[3]["image_urls"][0].startswith("https://lh5.googleusercontent.com/")
    items = items_by_id("google_local")
    assert [v["price_tier"] for v in items.values()] == [2, 4, None]
    assert items["0x88c2e4:0x2b"]["categories"] == ["Sushi restaurant"]


def test_amazon2023_fixture() -> None:
    raw = read_source("amazon2023", FIXTURES / "amazon2023")
    rows = raw.interactions.to_pylist()
    assert rows[0]["text"] == "Love it. Great crust and fresh basil, a bit pricey for the size."
    assert rows[4]["image_urls"] == ["https://m.media-amazon.com/images/I/5.jpg"]
    items = items_by_id("amazon2023")
    assert items["B00PIZZA01"]["price"] == pytest.approx(12.99)
    assert items["B00SUSHI02"]["price"] is None  # "None" in the dump
    assert items["B00SUSHI02"]["categories"] == ["Grocery"]  # main_category when the list is empty
    assert items["B00TACO003"]["image_urls"] == ["https://m.media-amazon.com/images/I/t1.jpg"]


@pytest.mark.parametrize("name", ["u.data", "ratings.dat"])
def test_movielens_udata_fixture(name: str) -> None:
    raw = read_source("movielens_udata", FIXTURES / "movielens_udata", files={"ratings": name})
    rows = raw.interactions.to_pylist()
    assert len(rows) == 12 and rows[0]["user"] == "1" and rows[0]["rating"] == 5.0
    assert rows[0]["review_id"] == "1_1"
    assert sorted(raw.items["item"].to_pylist()) == ["1", "2", "3"]


def test_generic_fixture() -> None:
    raw = read_source("generic", FIXTURES / "generic", GENERIC_FILES, GENERIC_COLUMNS)
    rows = raw.interactions.to_pylist()
    assert rows[0]["user"] == "u_alice" and rows[0]["timestamp"] == 1619863200
    assert rows[0]["review_id"] == "0"  # no review-id column: the row number
    items = items_by_id("generic", files=GENERIC_FILES, columns=GENERIC_COLUMNS)
    assert (
        items["b_pizza"]["categories"] == ["Pizza", "Italian"] and items["b_sushi"]["price"] == 4.0
    )


@pytest.mark.parametrize("source", SOURCES)
def test_shipped_fixture_config_builds(
    source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = ROOT / "configs" / f"{source}-fixture.yaml"
    assert (
        config.read_text().splitlines()[0]
        == f"# dlrrec features build --config configs/{source}-fixture.yaml"
    )
    monkeypatch.chdir(ROOT)  # the config's raw_dir is relative to the repository root
    assert main(["--config", str(config), f"run_dir={tmp_path}"]) == 0
    meta = json.loads((tmp_path / "features" / "_meta.json").read_text())
    assert meta["config"]["source"] == source and sum(meta["rows"].values()) == 12
    assert pq.read_table(
        tmp_path / "features" / "examples" / "train" / "part-00000.parquet"
    ).num_rows


def test_raw_fingerprint_unchanged_by_source_keys() -> None:
    keys = fingerprint_config(FeaturesConfig(run_dir="r"))
    assert not {"source", "files", "columns", "rating_range"} & set(keys)
    assert fingerprint_config(FeaturesConfig(run_dir="r", source="yelp"))["source"] == "yelp"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"source": "yelp", "files": {"revews": "x.json"}},
            "features.files.revews: unknown file role for source yelp",
        ),
        (
            {"source": "yelp", "columns": {"user": "u"}},
            "features.columns: only for source: generic",
        ),
        ({"files": {"reviews": "x"}}, "features.files/columns: only for a review source"),
        ({"source": "generic", "columns": {"usr": "u"}}, "features.columns.usr: unknown column"),
        ({"rating_range": [5, 1]}, "features.rating_range: expected [min, max]"),
    ],
)
def test_bad_source_config(values: dict, message: str) -> None:
    raw = load_raw(None, [], None)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(".", r"\.")):
        build_dataclass(
            FeaturesConfig,
            {**section_values(raw, "features"), "run_dir": "r", **values},
            "features",
        )


def _edit_jsonl(path: Path, row: int, **changes: object) -> None:
    lines = path.read_text().splitlines()
    rec = json.loads(lines[row])
    for k, v in changes.items():
        if v is _DROP:
            rec.pop(k)
        else:
            rec[k] = v
    lines[row] = json.dumps(rec)
    path.write_text("\n".join(lines) + "\n")


_DROP = object()


def _yelp_copy(tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIXTURES / "yelp", tmp_path / "yelp"))


def _break_missing_column(d: Path) -> None:
    lines = (d / "review.json").read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    for r in recs:
        r.pop("stars")
    (d / "review.json").write_text("".join(json.dumps(r) + "\n" for r in recs))


BAD_YELP = [
    (
        lambda d: (d / "business.json").unlink(),
        "business.json: no such file; source yelp reads its business from raw_dir/business.json (rename it with files.business=NAME)",
    ),
    (lambda d: (d / "review.json").write_text(""), "review.json: the file is empty (no records)"),
    (
        lambda d: (d / "review.json").write_text(
            (d / "review.json").read_text().replace('"r003",', '"r003"', 1)
        ),
        "review.json: line 3 is not valid JSON (Expecting ',' delimiter)",
    ),
    (
        _break_missing_column,
        "review.json: missing column 'stars' (first record has: review_id, user_id, business_id, useful, funny, cool, text, date)",
    ),
    (
        lambda d: _edit_jsonl(d / "review.json", 2, stars="five"),
        "review.json: column 'stars' row 2 (line 3): expected a finite number, got 'five'",
    ),
    (
        lambda d: _edit_jsonl(d / "review.json", 3, stars=6),
        "review.json: column 'stars' row 3 (line 4): expected a rating in [1, 5], got 6.0",
    ),
    (
        lambda d: _edit_jsonl(d / "review.json", 1, stars=None),
        "review.json: column 'stars' row 1 (line 2): must be set, got None",
    ),
    (
        lambda d: _edit_jsonl(d / "review.json", 4, text="  "),
        "review.json: column 'text' row 4 (line 5): is empty; drop the field or set it to null, got '  '",
    ),
    (
        lambda d: _edit_jsonl(d / "review.json", 5, review_id="r002"),
        "review.json: column 'review_id' row 5 (line 6): repeats the id 'r002' of row 1 (line 2); ids must be unique",
    ),
    (
        lambda d: _edit_jsonl(d / "review.json", 6, date="yesterday"),
        "review.json: column 'date' row 6 (line 7): expected a date like 2016-03-09 00:44:35, got 'yesterday'",
    ),
    (
        lambda d: _edit_jsonl(d / "review.json", 7, business_id="b_gone"),
        "review.json: column 'business_id' row 7 (line 8): names 'b_gone', which is not in",
    ),
    (
        lambda d: _edit_jsonl(d / "business.json", 2, business_id="b_sushi"),
        "business.json: column 'business_id' row 2 (line 3): repeats the id 'b_sushi' of row 1 (line 2); ids must be unique",
    ),
    (
        lambda d: _edit_jsonl(d / "business.json", 0, categories=["Pizza"]),
        "business.json: column 'categories' row 0 (line 1): expected a string, got ['Pizza']",
    ),
]


@pytest.mark.parametrize(
    ("breaks", "message"),
    BAD_YELP,
    ids=[m.split(":")[0] + str(i) for i, (_, m) in enumerate(BAD_YELP)],
)
def test_bad_yelp_input(
    breaks, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = _yelp_copy(tmp_path)
    breaks(d)
    with pytest.raises(SystemExit) as exc:
        main([f"run_dir={tmp_path / 'run'}", f"raw_dir={d}", "source=yelp"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"dlrrec features build: error: {d}/")
    assert message in err
    assert not (tmp_path / "run" / "features").exists()


def test_bad_udata_line(tmp_path: Path) -> None:
    d = Path(shutil.copytree(FIXTURES / "movielens_udata", tmp_path / "ml"))
    (d / "u.data").write_text((d / "u.data").read_text() + "7\t1\t4\n")
    from dlrrec.config import DataError

    with pytest.raises(DataError, match=r"u\.data: line 13: expected 4 fields separated by '\\t'"):
        read_source("movielens_udata", d)
    (d / "u.data").write_text("1\t1\t9\t881250949\n")
    with pytest.raises(
        DataError,
        match=r"column 'rating' row 0 \(line 1\): expected a rating in \[0\.5, 5\], got 9\.0",
    ):
        read_source("movielens_udata", d)


def test_bad_generic_csv(tmp_path: Path) -> None:
    from dlrrec.config import DataError

    d = Path(shutil.copytree(FIXTURES / "generic", tmp_path / "g"))
    (d / "reviews.csv").write_text("")
    with pytest.raises(DataError, match=r"reviews\.csv: the file is empty"):
        read_source("generic", d, GENERIC_FILES, GENERIC_COLUMNS)
    (d / "reviews.csv").write_text(
        "customer,product,stars,reviewed_at\nu1,b_pizza,4,2021-01-01\nu2,b_pizza,x,2021-01-02\n"
    )
    with pytest.raises(
        DataError, match=r"column 'stars' row 1 \(line 3\): expected a finite number, got 'x'"
    ):
        read_source("generic", d, GENERIC_FILES, GENERIC_COLUMNS)
