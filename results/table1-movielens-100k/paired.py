"""Paired comparisons of a Table 1 grid from its per-run files: python3 paired.py DIR.

Each (variant, seed) is its test-scored run (the dropout chosen on val); differences are
paired by seed, SE = std of the differences / sqrt(n)."""

import glob
import json
import re
import statistics as st
import sys


def chosen(d: str) -> dict[str, dict[int, dict]]:
    out: dict[str, dict[int, dict]] = {}
    for f in glob.glob(f"{d}/*-report.json"):
        m = re.match(r"(.+)-d([0-9.]+)-s(\d+)-report\.json", f.split("/")[-1])
        r = json.load(open(f))
        if m and r["test"] is not None:
            out.setdefault(m[1], {})[int(m[3])] = r
    return out


def main(d: str) -> None:
    runs = chosen(d)
    for v, s in sorted(runs.items()):
        aucs = [s[k]["test"]["auc"] for k in sorted(s)]
        print(f"{v}: test AUC {st.mean(aucs):.4f} ± {st.stdev(aucs):.4f} ({len(aucs)} seeds), "
              f"dropouts {[s[k]['config']['dropout'] for k in sorted(s)]}")
    for a, b in (("cotrained_bce", "v0_bce"), ("cotrained_contrastive", "cotrained_bce")):
        seeds = sorted(set(runs[a]) & set(runs[b]))
        for m in ("auc", "gauc", "accuracy", "fpr"):
            d_ = [runs[a][k]["test"][m] - runs[b][k]["test"][m] for k in seeds]
            se = st.stdev(d_) / len(d_) ** 0.5
            print(f"{a} vs {b} {m}: {st.mean(d_):+.4f} (SE {se:.4f}, {abs(st.mean(d_)) / se:.1f} SE, n={len(d_)})")


if __name__ == "__main__":
    main(sys.argv[1])
