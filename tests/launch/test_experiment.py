import math
from pathlib import Path

import pytest

from launch.experiment import GridConfig, format_markdown, mean_std, paired_difference, summarise


def _rows():
    rows = []
    for v, shift in (("v0_bce", 0.0), ("cotrained_bce", 0.01), ("cotrained_contrastive", 0.011)):
        for d in (0.1, 0.3):
            for s in range(4):
                val = 0.7 + shift + (0.002 if d == 0.3 else 0) + 0.001 * s
                rows.append({"variant": v, "dropout": d, "seed": s, "val_auc": val,
                             "test_auc": val - 0.005, "test_accuracy": 0.7, "test_fpr": 0.3 - shift})  # fmt: skip
    return rows


def test_mean_std_and_paired_se():
    m, s = mean_std([1.0, 2.0, 3.0])
    assert m == 2.0 and math.isclose(s, 1.0)
    d = paired_difference({0: 1.0, 1: 2.0, 2: 3.0}, {0: 0.5, 1: 1.5, 2: 2.6})
    assert math.isclose(d["mean"], 0.4666666, rel_tol=1e-5) and d["n"] == 3 and d["significant_2se"]


def test_selection_uses_val_only_and_table_says_so():
    rows = _rows()
    # make test prefer dropout 0.1 while val prefers 0.3: selection must follow val
    for r in rows:
        if r["dropout"] == 0.1:
            r["test_auc"] += 0.05
    summary = summarise(rows, ["v0_bce", "cotrained_bce", "cotrained_contrastive"])
    assert all(r["dropout"] == 0.3 for sel in summary["selected"].values() for r in sel.values())
    cmp_ = summary["comparisons"]["co-trained vs V0 (both BCE)"]["test_auc"]
    assert math.isclose(cmp_["mean"], 0.01, abs_tol=1e-9) and cmp_["significant_2se"]
    md = format_markdown(summary, GridConfig(base="b", out_dir="o", variants={"x": {}}, seeds=[0, 1, 2, 3]),
                         {"dataset": "d", "split": "random"})  # fmt: skip
    assert "| cotrained_contrastive |" in md and "larger than 2 standard errors" in md


def _finished_grid(tmp_path, body: str, reports: dict[str, dict], split: str = "random"):
    """A grid (`body`: its lines after base and out_dir) whose runs' report.json files are
    `reports` (run name -> report), over a run root whose features are `split`."""
    import json

    root = tmp_path / "root"
    (root / "features").mkdir(parents=True)
    (root / "features" / "_meta.json").write_text(json.dumps({"dataset": "d", "split": split}))
    base = tmp_path / "base.yaml"
    base.write_text(f"run_dir: {root}\n")
    grid = tmp_path / "grid.yaml"
    out = tmp_path / "out"
    grid.write_text(f"base: {base}\nout_dir: {out}\n{body}")
    for name, report in reports.items():
        p = out / "runs" / name / "train"
        p.mkdir(parents=True)
        (p / "report.json").write_text(json.dumps(report))
    return str(grid), out


def test_collect_summarises_finished_runs_and_lists_missing(tmp_path):
    from launch.experiment import collect

    m = {"auc": 0.8, "accuracy": 0.7, "fpr": 0.3}
    grid, out = _finished_grid(
        tmp_path,
        "variants:\n  a: {}\n  b: {contrastive: false}\ndropouts: [0.1]\nseeds: [0, 1]\n",
        {name: {"val": m, "test": m, "best_epoch": 1} for name in ("a-d0.1-s0", "a-d0.1-s1", "b-d0.1-s0")},
    )
    summary = collect(grid, [])
    assert set(summary["variants"]) == {"a", "b"}
    md = (out / "table1.md").read_text()
    assert "Incomplete grid" in md and "b-d0.1-s1" in md
    assert (out / "table1.csv").read_text().count("\n") == 4 and (out / "table1.png").is_file()


def test_variant_seeds_override_the_grid_seeds(tmp_path):
    import pytest

    from dlrrec.config import ConfigError, build_dataclass
    from launch.experiment import collect

    aucs = {"full-d0.1-s0": 0.8, "full-d0.1-s1": 0.82, "full-d0.1-s2": 0.84, "dlrm_content-d0.1-s0": 0.7}
    reports = {}
    for name, auc in aucs.items():
        m = {"auc": auc, "accuracy": 0.7, "fpr": 0.3}
        reports[name] = {"val": m, "test": m, "best_epoch": 1}
    grid, out = _finished_grid(
        tmp_path,
        "variants:\n  full: {}\n  dlrm_content: {variant: dlrm_content}\n"
        "dropouts: [0.1]\nseeds: [0]\nvariant_seeds:\n  full: [0, 1, 2]\n",
        reports,
        split="temporal",
    )
    summary = collect(grid, [], score_test=True)
    assert summary["variants"]["full"]["seeds"] == 3
    assert math.isclose(summary["variants"]["full"]["val_auc"][0], 0.82)
    assert summary["variants"]["dlrm_content"]["seeds"] == 1
    assert "Incomplete grid" not in (out / "table1.md").read_text()
    assert "| full | 0.8200 ± 0.0200 |" in (out / "table1.md").read_text()
    c = summary["comparisons"]["+ SWING InfoNCE vs DLRM + content"]["test_auc"]
    assert c["n"] == 1 and math.isclose(c["mean"], 0.1)
    with pytest.raises(ConfigError, match="grid.variant_seeds"):
        build_dataclass(
            GridConfig,
            {"base": "b", "out_dir": "o", "variants": {"a": {}}, "variant_seeds": {"b": [0]}},
            "grid",
        )


def test_tuning_tables_are_sealed_and_score_test_reads_the_chosen_runs_only(tmp_path):
    """Finished runs whose reports hold test figures: without --score-test none is read;
    with it, only each seed's val-chosen run's (here dropout 0.3, though test prefers 0.1)."""
    import csv

    from launch.experiment import collect

    def report(val: float, test: float) -> dict:
        return {"val": {"auc": val}, "test": {"auc": test, "accuracy": 0.7, "fpr": 0.3}, "best_epoch": 0}

    grid, out = _finished_grid(tmp_path, "variants:\n  a: {}\ndropouts: [0.1, 0.3]\nseeds: [0, 1]\n", {
        "a-d0.1-s0": report(0.70, 0.99), "a-d0.3-s0": report(0.75, 0.80),
        "a-d0.1-s1": report(0.71, 0.98), "a-d0.3-s1": report(0.76, 0.82),
    })  # fmt: skip
    sealed = collect(grid, [])
    assert "test_auc" not in sealed["variants"]["a"] and sealed["variants"]["a"]["seeds"] == 2
    assert all(set(c) == {"val_auc", "n"} for c in sealed["cells"].values())
    text = (out / "table1.md").read_text() + (out / "table1.csv").read_text()
    assert "0.99" not in text and "0.8" not in text and "sealed" in text

    scored = collect(grid, [], score_test=True)
    assert math.isclose(scored["variants"]["a"]["test_auc"][0], 0.81)
    rows = list(csv.DictReader(open(out / "table1.csv")))
    assert {r["run_dir"].split("/")[-1]: r["test_auc"] for r in rows} == {
        "a-d0.1-s0": "", "a-d0.3-s0": "0.8", "a-d0.1-s1": "", "a-d0.3-s1": "0.82",
    }  # fmt: skip
    assert "0.99" not in (out / "table1.md").read_text()


def test_score_test_flag_reaches_the_grid(tmp_path, monkeypatch):
    import launch.experiment as ex

    seen = {}
    monkeypatch.setattr(ex, "collect", lambda grid, extra, score_test: seen.update(score_test=score_test))
    assert ex.main(["--grid", "g.yaml", "--collect", "--score-test"]) == 0 and seen == {"score_test": True}
    assert ex.main(["--grid", "g.yaml", "--collect"]) == 0 and seen == {"score_test": False}


def _experiment(rank: int, grid: str, score_test: bool) -> dict:
    from launch.experiment import run

    return run(grid, [], score_test)


@pytest.mark.slow  # two tiny trainings and one test scoring in a spawned rank: ~60 s on the loaded machine
def test_grid_trains_sealed_then_score_test_scores_only_the_chosen_run(tmp_path):
    import json
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "trainer"))
    from dist_helpers import run_ranks
    from synthetic import make_run

    root = make_run(tmp_path / "root")
    base = tmp_path / "base.yaml"
    base.write_text(f"run_dir: {root}\n")
    grid = tmp_path / "grid.yaml"
    out = tmp_path / "out"
    grid.write_text(
        f"base: {base}\nout_dir: {out}\nvariants:\n  a: {{contrastive: false}}\ndropouts: [0.1, 0.3]\n"
        "seeds: [0]\noverrides: {epochs: 1, batch_size: 256, max_steps_per_epoch: 2, tensorboard: false}\n"
    )
    reports = lambda: {p.parent.parent.name: json.loads(p.read_text()) for p in out.glob("runs/*/train/report.json")}  # noqa: E731
    (sealed,) = run_ranks(_experiment, 1, str(grid), False)
    assert "test_auc" not in sealed["variants"]["a"]
    assert [r["test"] for r in reports().values()] == [None, None]
    (scored,) = run_ranks(_experiment, 1, str(grid), True)
    chosen = scored["selected"]["a"][0]["run_dir"].split("/")[-1]
    vals = {name: r["val"]["auc"] for name, r in reports().items()}
    assert chosen == max(vals, key=vals.get)
    tests = {name: r["test"] for name, r in reports().items()}
    assert tests[chosen]["auc"] == scored["variants"]["a"]["test_auc"][0]
    assert [t for name, t in tests.items() if name != chosen] == [None]
    assert {name: r["steps"] for name, r in reports().items()} == {n: 2 for n in vals}


def test_full_model_is_paired_with_plain_dlrm_on_auc_and_gauc(tmp_path):
    import json

    from launch.experiment import collect

    root = tmp_path / "root"
    (root / "features").mkdir(parents=True)
    (root / "features" / "_meta.json").write_text(json.dumps({"dataset": "d", "split": "random"}))
    base = tmp_path / "base.yaml"
    base.write_text(f"run_dir: {root}\n")
    grid, out = tmp_path / "grid.yaml", tmp_path / "out"
    grid.write_text(
        f"base: {base}\nout_dir: {out}\nvariants:\n  full: {{}}\n  dlrm: {{variant: dlrm}}\n"
        "dropouts: [0.1]\nseeds: [0, 1, 2]\n"
    )
    for name, seed_aucs in (("full", (0.80, 0.82, 0.81)), ("dlrm", (0.79, 0.80, 0.80))):
        for s, auc in enumerate(seed_aucs):
            p = out / "runs" / f"{name}-d0.1-s{s}" / "train"
            p.mkdir(parents=True)
            m = {"auc": auc, "gauc": auc - 0.1, "accuracy": 0.7, "fpr": 0.3}
            (p / "report.json").write_text(json.dumps({"val": m, "test": m, "best_epoch": 1}))
    c = collect(str(grid), [], score_test=True)["comparisons"]["full model vs plain DLRM"]
    # differences 0.01, 0.02, 0.01: mean 0.01333, std 0.00577, SE 0.00333
    for k in ("test_auc", "test_gauc"):
        assert c[k]["n"] == 3 and math.isclose(c[k]["mean"], 0.04 / 3)
        assert math.isclose(c[k]["se"], math.sqrt(1 / 3) / 100 / math.sqrt(3))
    assert "full model vs plain DLRM, test_gauc" in (out / "table1.md").read_text()
