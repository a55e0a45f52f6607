"""The README's tables from the per-run files: python3 tables.py DIR [DIR ...]
(DIR/<variant>-d0.1-s<seed>-report.json; a variant found in a later DIR replaces the
earlier DIR's runs of it, e.g. a baseline rescored after its own tuning).

Mean ± sample std over seeds of the val and test AUC / gAUC per variant (test-scored runs
only), each variant's per-seed test AUC, and `full` against every other variant paired by
seed (mean difference, SE = std of the differences / sqrt(n)).
"""

import glob
import json
import re
import statistics as st
import sys

ORDER = ["full", "full_nomask", "dlrm", "dlrm_content", "biased_mf"]


def load(d: str) -> dict[str, dict[int, dict]]:
    runs: dict[str, dict[int, dict]] = {}
    for f in glob.glob(f"{d}/*-report.json"):
        m = re.match(r"(.+)-d0\.1-s(\d+)-report\.json", f.split("/")[-1])
        if m and not m[1].startswith("tune"):
            r = json.load(open(f))
            if r["test"] is not None:
                runs.setdefault(m[1], {})[int(m[2])] = r
    return runs


def ms(xs: list[float]) -> str:
    return f"{st.mean(xs):.4f} ± {st.stdev(xs):.4f}"


def main(dirs: list[str]) -> None:
    runs: dict[str, dict[int, dict]] = {}
    for d in dirs:
        runs.update(load(d))
    variants = [v for v in ORDER if v in runs]
    print("| variant | val AUC | val gAUC | test AUC | test gAUC | seeds | code version |\n|---|---|---|---|---|---|---|")
    for v in variants:
        s = runs[v]
        ks = sorted(s)
        cv = ", ".join(sorted({s[k]["code_version"][:8] for k in ks}))
        cells = [ms([s[k][sp][m] for k in ks]) for sp, m in (("val", "auc"), ("val", "gauc"), ("test", "auc"), ("test", "gauc"))]
        print(f"| {v} | " + " | ".join(cells) + f" | {len(ks)} | {cv} |")
    print()
    for v in variants:
        s = runs[v]
        print(f"- {v}: test AUC " + ", ".join(f"{s[k]['test']['auc']:.4f}" for k in sorted(s))
              + " (best epochs " + ", ".join(str(s[k]["best_epoch"]) for k in sorted(s)) + ")")
    print("\n| full vs | n | test AUC | SE | test gAUC | SE | both > 2 SE |\n|---|---|---|---|---|---|---|")
    full = runs["full"]
    for v in variants[1:]:
        ks = sorted(set(runs[v]) & set(full))
        row, ok = [], True
        for m in ("auc", "gauc"):
            dd = [full[k]["test"][m] - runs[v][k]["test"][m] for k in ks]
            mu, se = st.mean(dd), st.stdev(dd) / len(dd) ** 0.5
            ok &= mu > 2 * se
            row += [f"{mu:+.4f}", f"{se:.4f} ({mu / se:.1f} SE)"]
        print(f"| {v} | {len(ks)} | " + " | ".join(row) + f" | {'yes' if ok else '**no**'} |")


if __name__ == "__main__":
    main(sys.argv[1:])
