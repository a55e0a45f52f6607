"""Val-only screens against the grid they would change: python3 screens.py TUNE_DIR GRID_DIR,
or against a reference run of TUNE_DIR itself (the same config on this machine):
python3 screens.py TUNE_DIR --ref NAME (pairs with NAME-s<seed>-report.json).

TUNE_DIR holds sealed runs, <setting>-s<seed>-report.json. Each run is paired with the
GRID_DIR run of the same variant and seed (<variant>-d0.1-s<seed>-report.json, the current
config) and the table prints, per setting, the val AUC / gAUC differences per seed and their
mean with its paired SE (std of the differences / sqrt(n); blank for one seed). Test is
never read: a screen's file must have no test figure.
"""

import glob
import json
import re
import statistics as st
import sys


def load(pattern: str, rx: str) -> dict[tuple[str, int], dict]:
    out = {}
    for f in glob.glob(pattern):
        m = re.match(rx, f.split("/")[-1])
        if m:
            out[(m[1], int(m[2]))] = json.load(open(f))
    return out


def paired(dd: list[float]) -> str:
    se = f" (SE {st.stdev(dd) / len(dd) ** 0.5:.4f})" if len(dd) > 1 else ""
    return f"{st.mean(dd):+.4f}{se}"


def main(tune_dir: str, grid_dir: str, ref: str = "") -> None:
    screens = load(f"{tune_dir}/*-report.json", r"(.+)-s(\d+)-report\.json")
    if ref:  # every variant pairs with the reference setting's run of its seed
        grid = {(r["config"]["variant"], s): r for (n, s), r in screens.items() if n == ref}
        screens = {k: r for k, r in screens.items() if k[0] != ref and (r["config"]["variant"], k[1]) in grid}
    else:
        grid = load(f"{grid_dir}/*-report.json", r"(.+)-d0\.1-s(\d+)-report\.json")
    print("| setting | variant | seeds | val AUC per seed (Δ) | mean Δ AUC | mean Δ gAUC |\n|---|---|---|---|---|---|")
    for name in sorted({n for n, _ in screens}):
        seeds = sorted(s for n, s in screens if n == name)
        runs = [screens[(name, s)] for s in seeds]
        assert all(r["test"] is None for r in runs), f"{name}: a screen scored test"
        refs = [grid[(r["config"]["variant"], s)] for r, s in zip(runs, seeds)]
        per = ", ".join(f"{r['val']['auc']:.4f} ({r['val']['auc'] - g['val']['auc']:+.4f})" for r, g in zip(runs, refs))
        da = [r["val"]["auc"] - g["val"]["auc"] for r, g in zip(runs, refs)]
        dg = [r["val"]["gauc"] - g["val"]["gauc"] for r, g in zip(runs, refs)]
        print(f"| {name} | {runs[0]['config']['variant']} | {','.join(map(str, seeds))} | {per} | {paired(da)} | {paired(dg)} |")


if __name__ == "__main__":
    if sys.argv[2] == "--ref":
        main(sys.argv[1], "", sys.argv[3])
    else:
        main(sys.argv[1], sys.argv[2])
