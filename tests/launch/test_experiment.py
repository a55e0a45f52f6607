import math

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


def test_collect_summarises_finished_runs_and_lists_missing(tmp_path):
    import json

    from launch.experiment import collect

    root = tmp_path / "root"
    (root / "features").mkdir(parents=True)
    (root / "features" / "_meta.json").write_text(json.dumps({"dataset": "d", "split": "random"}))
    base = tmp_path / "base.yaml"
    base.write_text(f"run_dir: {root}\n")
    grid = tmp_path / "grid.yaml"
    out = tmp_path / "out"
    grid.write_text(
        f"base: {base}\nout_dir: {out}\nvariants:\n  a: {{}}\n  b: {{contrastive: false}}\n"
        "dropouts: [0.1]\nseeds: [0, 1]\n"
    )
    m = {"auc": 0.8, "accuracy": 0.7, "fpr": 0.3}
    for name in ("a-d0.1-s0", "a-d0.1-s1", "b-d0.1-s0"):
        p = out / "runs" / name / "train"
        p.mkdir(parents=True)
        (p / "report.json").write_text(json.dumps({"val": m, "test": m, "best_epoch": 1}))
    summary = collect(str(grid), [])
    assert set(summary["variants"]) == {"a", "b"}
    md = (out / "table1.md").read_text()
    assert "Incomplete grid" in md and "b-d0.1-s1" in md
    assert (out / "table1.csv").read_text().count("\n") == 4 and (out / "table1.png").is_file()


def test_variant_seeds_override_the_grid_seeds(tmp_path):
    import json

    import pytest

    from launch.config import ConfigError, build_dataclass
    from launch.experiment import collect

    root = tmp_path / "root"
    (root / "features").mkdir(parents=True)
    (root / "features" / "_meta.json").write_text(json.dumps({"dataset": "d", "split": "temporal"}))
    base = tmp_path / "base.yaml"
    base.write_text(f"run_dir: {root}\n")
    grid = tmp_path / "grid.yaml"
    out = tmp_path / "out"
    grid.write_text(
        f"base: {base}\nout_dir: {out}\nvariants:\n  full: {{}}\n  dlrm_content: {{variant: dlrm_content}}\n"
        "dropouts: [0.1]\nseeds: [0]\nvariant_seeds:\n  full: [0, 1, 2]\n"
    )
    for name, auc in (
        ("full-d0.1-s0", 0.8),
        ("full-d0.1-s1", 0.82),
        ("full-d0.1-s2", 0.84),
        ("dlrm_content-d0.1-s0", 0.7),
    ):
        p = out / "runs" / name / "train"
        p.mkdir(parents=True)
        m = {"auc": auc, "accuracy": 0.7, "fpr": 0.3}
        (p / "report.json").write_text(json.dumps({"val": m, "test": m, "best_epoch": 1}))
    summary = collect(str(grid), [])
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
