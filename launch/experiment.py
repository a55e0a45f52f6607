"""The paper's comparisons on real data: `dlrrec experiment --grid configs/table1-movielens-100k.yaml`.

Runs every variant x dropout x seed as a training run on one shared features/SWING
run root, selects on validation only, and writes `table1.csv`, `table1.md` and
`table1.png` with mean ± std over seeds, plus paired comparisons (co-trained vs V0,
contrastive vs BCE-only) with their standard errors.
The test split is sealed while tuning (`train.score_test=false`): no test figure is
computed. `--score-test` (grid key `score_test`) then scores test once, for each
(variant, seed)'s val-chosen run only, from its best checkpoint (no retraining). The
threshold is the val-chosen one of each run.
"""

from __future__ import annotations

import csv
import json
import math
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

from dlrrec.config import ConfigError, build_dataclass, load_raw, read_yaml, section_values
from dlrrec.entry import ArgParser, user_errors
from dlrrec.meta import FeaturesMeta, read_train_report
from trainer.config import TrainConfig
from trainer.main import run as train


@dataclass
class GridConfig:
    """An experiment grid (a YAML of its own, see configs/table1-movielens-100k.yaml).

    Args:
        base: the pipeline config whose run root provides features and SWING tables.
        out_dir: where runs and tables go.
        variants: name -> train-section overrides (e.g. projection, contrastive, modalities).
        dropouts: the dropout values of the grid.
        seeds: training seeds (the data split stays the base config's).
        overrides: train-section overrides applied to every run (e.g. epochs).
        variant_seeds: name -> seeds for that variant instead of `seeds` (e.g. 5 seeds
            for the full model, 3 for the baselines).
        score_test: score test for the val-chosen runs (`--score-test`); false (the
            default) keeps every run sealed.
    """

    base: str
    out_dir: str
    variants: dict[str, dict[str, Any]]
    dropouts: list[float] = field(default_factory=lambda: [0.1, 0.3, 0.5])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    overrides: dict[str, Any] = field(default_factory=dict)
    variant_seeds: dict[str, list[int]] = field(default_factory=dict)
    score_test: bool = False

    def validate(self) -> None:
        if not self.variants:
            raise ConfigError("grid.variants: at least one variant")
        if not self.dropouts or not self.seeds:
            raise ConfigError("grid.dropouts/seeds: must not be empty")
        unknown = sorted(set(self.variant_seeds) - set(self.variants))
        if unknown:
            raise ConfigError(f"grid.variant_seeds: {unknown[0]!r} is not one of the grid's variants")
        if any(not s for s in self.variant_seeds.values()):
            raise ConfigError("grid.variant_seeds: a variant's seeds must not be empty")

    def seeds_of(self, variant: str) -> list[int]:
        return self.variant_seeds.get(variant, self.seeds)


def mean_std(xs: list[float]) -> tuple[float, float]:
    n = len(xs)
    if n == 0:
        return float("nan"), float("nan")
    m = sum(xs) / n
    s = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0
    return m, s


def paired_difference(a: dict[int, float], b: dict[int, float]) -> dict[str, float]:
    """Mean and standard error of a - b over the seeds both have."""
    seeds = sorted(set(a) & set(b))
    d = [a[s] - b[s] for s in seeds]
    m, s = mean_std(d)
    se = s / math.sqrt(len(d)) if len(d) > 1 else float("nan")
    return {"mean": m, "std": s, "se": se, "n": len(d), "significant_2se": bool(len(d) > 1 and abs(m) > 2 * se)}


def select_per_seed(rows: list[dict[str, Any]], variant: str) -> dict[int, dict[str, Any]]:
    """For each seed, the run of `variant` with the best val AUC over dropouts."""
    best: dict[int, dict[str, Any]] = {}
    for r in rows:
        if r["variant"] != variant:
            continue
        cur = best.get(r["seed"])
        if cur is None or r["val_auc"] > cur["val_auc"]:
            best[r["seed"]] = r
    return best


# the figures of a run's row; test ones are None while it is sealed
TEST_KEYS = ("test_auc", "test_gauc", "test_accuracy", "test_fpr")
METRICS = ("val_auc", "val_gauc", *TEST_KEYS)


def stats(rows: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """Mean and std of each metric every row has (sealed test metrics, and gAUC of runs
    older than it, are left out)."""
    return {k: mean_std([r[k] for r in rows]) for k in METRICS if rows and all(r.get(k) is not None for r in rows)}


def summarise(rows: list[dict[str, Any]], variants: list[str]) -> dict[str, Any]:
    per_cell: dict[tuple[str, float], dict[str, Any]] = {}
    for v in variants:
        for d in sorted({r["dropout"] for r in rows if r["variant"] == v}):
            cell = [r for r in rows if r["variant"] == v and r["dropout"] == d]
            per_cell[(v, d)] = {**stats(cell), "n": len(cell)}
    selected = {v: select_per_seed(rows, v) for v in variants}
    per_variant = {v: {**stats(list(sel.values())), "seeds": len(sel)} for v, sel in selected.items()}
    comparisons = {}
    pairs = [
        ("cotrained_bce", "v0_bce", "co-trained vs V0 (both BCE)"),
        ("cotrained_contrastive", "cotrained_bce", "contrastive vs BCE-only (co-trained)"),
        # the baselines grids (train.variant)
        ("dlrm_content", "dlrm", "DLRM + content vs plain DLRM"),
        ("full", "dlrm_content", "+ SWING InfoNCE vs DLRM + content"),
        ("full", "biased_mf", "full model vs biased MF"),
        ("full", "dlrm", "full model vs plain DLRM"),
    ]
    for a, b, label in pairs:
        if a in selected and b in selected:
            both = list(selected[a].values()) + list(selected[b].values())
            comparisons[label] = {
                k: paired_difference(
                    {s: r[k] for s, r in selected[a].items()}, {s: r[k] for s, r in selected[b].items()}
                )
                for k in METRICS
                if all(r.get(k) is not None for r in both)
            }
    return {"cells": per_cell, "variants": per_variant, "comparisons": comparisons, "selected": selected}


def seal_unchosen(rows: list[dict[str, Any]], variants: list[str]) -> list[dict[str, Any]]:
    """The rows with test figures only for each (variant, seed)'s val-chosen run."""
    chosen = {id(r) for v in variants for r in select_per_seed(rows, v).values()}
    return [r if id(r) in chosen else {**r, **dict.fromkeys(TEST_KEYS)} for r in rows]


def _pm(m: dict[str, Any], key: str, digits: int = 4) -> str:
    """`mean ± std` of `key`, or `sealed` when its test figures were never computed."""
    if key not in m:
        return "sealed" if key.startswith("test") and "test_auc" not in m else "n/a"
    return f"{m[key][0]:.{digits}f} ± {m[key][1]:.{digits}f}"


def format_markdown(summary: dict[str, Any], grid: GridConfig, meta: FeaturesMeta) -> str:
    lines = [
        f"# Table 1 on {meta['dataset']} ({meta['split']} split"
        + (f", {meta['temporal_history']} history)" if meta.get("temporal_history") else ")"),
        "",
        "Mean ± std over training seeds (one data split; `n` in the cell table counts the runs). "
        "Every run selects its best epoch and threshold on val. Test is sealed while tuning and "
        "scored once, for each (variant, seed)'s val-chosen run (`--score-test`); `sealed` = not scored.",
        "",
        "## Per variant (dropout chosen per seed by val AUC)",
        "",
        "| variant | val AUC | val gAUC | test AUC | test gAUC | test accuracy | test FPR | seeds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v, m in summary["variants"].items():
        lines.append(
            f"| {v} | {_pm(m, 'val_auc')} | {_pm(m, 'val_gauc')} | {_pm(m, 'test_auc')} | {_pm(m, 'test_gauc')} "
            f"| {_pm(m, 'test_accuracy')} | {_pm(m, 'test_fpr')} | {m['seeds']} |"
        )
    lines += ["", "## Every cell", "", "| variant | dropout | val AUC | test AUC | test accuracy | test FPR | runs |", "|---|---|---|---|---|---|---|"]
    for (v, d), m in summary["cells"].items():
        lines.append(
            f"| {v} | {d} | {_pm(m, 'val_auc')} | {_pm(m, 'test_auc')} | {_pm(m, 'test_accuracy')} | {_pm(m, 'test_fpr')} | {m['n']} |"
        )
    lines += ["", "## Paired comparisons (same seeds)", ""]
    for label, ks in summary["comparisons"].items():
        for k, c in ks.items():
            verdict = "larger than 2 standard errors" if c["significant_2se"] else "NOT larger than 2 standard errors"
            lines.append(f"- {label}, {k}: {c['mean']:+.4f} (SE {c['se']:.4f}, n={c['n']}): {verdict}")
    lines += [
        "",
        "Modalities: MovieLens has no images, so the paper's image-only and text+image rows "
        "cannot be reproduced on it (`n/a`).",
        "",
        "The paper reports accuracy 99.7% and FPR 0.15% for text+image BCE+contrastive on Google "
        "restaurant reviews, with model selection on the test set. Those numbers are not comparable "
        "to these and are not reproduced here; compare the paired differences instead.",
    ]
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    variants = sorted({v for v, _ in summary["cells"]})
    dropouts = sorted({d for _, d in summary["cells"]})
    width = 0.8 / max(len(variants), 1)
    # every cell's test AUC exists only when nothing was sealed; else val AUC
    key = "test_auc" if all("test_auc" in c for c in summary["cells"].values()) else "val_auc"
    for i, v in enumerate(variants):
        xs, ms, ss = [], [], []
        for j, d in enumerate(dropouts):
            if (v, d) in summary["cells"]:
                m, s = summary["cells"][(v, d)][key]
                xs.append(j + i * width)
                ms.append(m)
                ss.append(s)
        ax.bar(xs, ms, width, yerr=ss, capsize=3, label=v)
    ax.set_xticks([j + width * (len(variants) - 1) / 2 for j in range(len(dropouts))])
    ax.set_xticklabels([f"dropout {d}" for d in dropouts])
    lo = min(m[key][0] for m in summary["cells"].values())
    ax.set_ylim(lo - 0.02, None)
    ax.set_ylabel(f"{key.replace('_auc', '')} AUC (mean ± std over seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(grid_path: str, extra: list[str], score_test: bool = False) -> dict[str, Any]:
    raw_grid = read_yaml(grid_path)
    grid = build_dataclass(GridConfig, raw_grid, "grid")
    grid.score_test = grid.score_test or score_test
    raw = load_raw(grid.base, extra, None)
    base_train = section_values(raw, "train")
    root = Path(section_values(raw, "pipeline")["run_dir"])
    for stage in ("features", "similarity"):
        if not (root / stage / "_meta.json").is_file():
            raise ConfigError(
                f"grid.base: {root / stage} is missing; run `dlrrec pipeline --config {grid.base}` first"
            )
    out = Path(grid.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    cfgs: dict[str, TrainConfig] = {}
    total = sum(len(grid.dropouts) * len(grid.seeds_of(v)) for v in grid.variants)
    k = 0
    t0 = time.time()
    for name, variant in grid.variants.items():
        for dropout in grid.dropouts:
            for seed in grid.seeds_of(name):
                k += 1
                run_dir = out / "runs" / f"{name}-d{dropout}-s{seed}"
                for stage in ("features", "similarity"):
                    link = run_dir / stage
                    if not link.exists():
                        run_dir.mkdir(parents=True, exist_ok=True)
                        link.symlink_to((root / stage).resolve())
                values = {**base_train, **grid.overrides, **variant, "dropout": dropout, "seed": seed,
                          "run_dir": str(run_dir), "score_test": False}  # fmt: skip
                cfg = cfgs[str(run_dir)] = build_dataclass(TrainConfig, values, f"grid.variants.{name}")
                print(f"[{k}/{total}] {name} dropout={dropout} seed={seed}", flush=True)
                rows.append(row_of(name, dropout, seed, run_dir, train(cfg)))
    if grid.score_test:  # once, for the val-chosen runs only: their best checkpoints
        chosen = {id(r) for v in grid.variants for r in select_per_seed(rows, v).values()}
        for i, r in enumerate(rows):
            if id(r) in chosen:
                print(f"scoring test: {r['run_dir']} (chosen on val)", flush=True)
                report = train(replace(cfgs[r["run_dir"]], score_test=True))
                rows[i] = row_of(r["variant"], r["dropout"], r["seed"], Path(r["run_dir"]), report)
    write_tables(rows, grid, root, out)
    print(f"experiment: {total} runs in {time.time() - t0:.0f} s -> {out}", flush=True)
    return summarise(rows, list(grid.variants))


def row_of(name: str, dropout: float, seed: int, run_dir: Path, report: Mapping[str, Any]) -> dict[str, Any]:
    """A run's row; its test figures are None when the report's test is sealed."""
    test = report.get("test") or {}
    return {
        "variant": name, "dropout": dropout, "seed": seed,
        "val_auc": report["val"]["auc"], "val_gauc": report["val"].get("gauc"),
        "test_auc": test.get("auc"), "test_gauc": test.get("gauc"),
        "test_accuracy": test.get("accuracy"), "test_fpr": test.get("fpr"),
        "best_epoch": report["best_epoch"], "run_dir": str(run_dir),
    }  # fmt: skip


def collect(grid_path: str, extra: list[str], score_test: bool = False) -> dict[str, Any]:
    """Tables from the grid's finished runs only (no training); missing runs are listed.

    Test figures are read only with `score_test`, and then only those of the val-chosen runs.
    """
    grid = build_dataclass(GridConfig, read_yaml(grid_path), "grid")
    grid.score_test = grid.score_test or score_test
    root = Path(section_values(load_raw(grid.base, extra, None), "pipeline")["run_dir"])
    out = Path(grid.out_dir)
    rows, missing = [], []
    for name in grid.variants:
        for dropout in grid.dropouts:
            for seed in grid.seeds_of(name):
                run_dir = out / "runs" / f"{name}-d{dropout}-s{seed}"
                p = run_dir / "train" / "report.json"
                if p.is_file():
                    report = read_train_report(p)
                    if not grid.score_test:
                        report["test"] = None
                    rows.append(row_of(name, dropout, seed, run_dir, report))
                else:
                    missing.append(run_dir.name)
    if not rows:
        raise ConfigError(f"grid.out_dir: no finished runs under {out / 'runs'}")
    if grid.score_test:
        rows = seal_unchosen(rows, list(grid.variants))
    write_tables(rows, grid, root, out, missing)
    return summarise(rows, [v for v in grid.variants if any(r["variant"] == v for r in rows)])


def write_tables(
    rows: list[dict[str, Any]], grid: GridConfig, root: Path, out: Path, missing: list[str] | None = None
) -> None:
    with open(out / "table1.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    summary = summarise(rows, [v for v in grid.variants if any(r["variant"] == v for r in rows)])
    # as written, unchecked: a grid summary needs only the split and dataset names
    meta = cast(FeaturesMeta, json.loads((root / "features" / "_meta.json").read_text()))
    text = format_markdown(summary, grid, meta)
    if missing:
        text += f"\n**Incomplete grid**: {len(missing)} runs not finished and not counted: {', '.join(missing)}.\n"
    (out / "table1.md").write_text(text)
    plot(summary, out / "table1.png")
    print(text, flush=True)


def main(argv: list[str] | None = None, prog: str = "dlrrec experiment") -> int:
    p = ArgParser(prog=prog, description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--grid", required=True, help="grid YAML, e.g. configs/table1-movielens-100k.yaml")
    p.add_argument("--collect", action="store_true", help="only tabulate the grid's finished runs")
    p.add_argument(
        "--score-test", action="store_true",
        help="score test once for each (variant, seed)'s val-chosen run (tuning runs stay sealed)",
    )  # fmt: skip
    p.add_argument("overrides", nargs="*", help="section.key=value overrides of the base config")
    args = p.parse_intermixed_args(argv)
    with user_errors(prog):
        (collect if args.collect else run)(args.grid, args.overrides, args.score_test)
    return 0


if __name__ == "__main__":
    sys.exit(main())
