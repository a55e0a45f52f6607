"""`dlrrec`: one console script, one subcommand per job.

    dlrrec data fetch movielens-100k [--out DIR]
    dlrrec features build --config C [key=value ...]
    dlrrec similarity swing --config C [key=value ...]
    dlrrec similarity export-redis --config C [key=value ...]
    dlrrec similarity neighbors KIND ID --config C
    dlrrec train --config C [key=value ...]
    dlrrec pipeline --config C [key=value ...]
    dlrrec experiment --grid G.yaml [--score-test]
    dlrrec report RUN_DIR
    dlrrec export --config C
    dlrrec score --config C input=PAIRS output=OUT
    dlrrec recommend --config C user=ID [top=K] [exclude_seen=true]

Each job module owns its own `main(argv)`; this file only dispatches, importing the
job lazily so `dlrrec --help` stays fast.
"""

from __future__ import annotations

import importlib
import sys

from dlrrec.entry import fail

# (words, module): the first matching prefix of argv wins.
COMMANDS: list[tuple[tuple[str, ...], str, str]] = [
    (("data", "fetch"), "features.fetch", "fetch a real dataset into the raw-reviews schema"),
    (("features", "build"), "features.main", "raw reviews -> leakage-free examples + entity tables"),
    (("similarity", "swing"), "similarity.main", "SWING item-item / user-user positive-pair tables"),
    (("similarity", "export-redis"), "similarity.redis_export", "export pair tables to Redis"),
    (("similarity", "neighbors"), "similarity.redis_read", "look up an entity's neighbours in Redis"),
    (("train",), "trainer.main", "train the sharded TorchRec DLRM"),
    (("pipeline",), "launch.pipeline", "run every stage into one run root"),
    (("experiment",), "launch.experiment", "the paper's Table 1 grid: variants x dropout x seeds"),
    (("report",), "launch.report", "print a run's metrics table"),
    (("export",), "serve.export", "a trained run -> a self-contained TorchScript package"),
    (("score",), "serve.score", "score (user, item) pairs with the exported model"),
    (("recommend",), "serve.recommend", "a user's top-K items from the exported model"),
]


def usage() -> str:
    lines = ["usage: dlrrec COMMAND [--config FILE.yaml] [key=value ...]", "", "commands:"]
    for words, _, doc in COMMANDS:
        lines.append(f"  {' '.join(words):<24} {doc}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    for words, module, _ in COMMANDS:
        if tuple(argv[: len(words)]) == words:
            mod = importlib.import_module(module)
            prog = "dlrrec " + " ".join(words)
            return int(mod.main(argv[len(words) :], prog=prog) or 0)
    fail("dlrrec", f"unknown command {' '.join(argv[:2])!r}; see `dlrrec --help`")


if __name__ == "__main__":
    sys.exit(main())
