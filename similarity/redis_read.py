"""dlrrec similarity neighbors item 42 --config configs/movielens-100k.yaml [--top N]

Look up an entity's SWING neighbours in the Redis version that is `current` (written
by `dlrrec similarity export-redis`).  Prints `rank<TAB>neighbor<TAB>score` lines, ids
as in the source data, plus `<TAB>title` for items whose items table has titles;
an id the export does not know is a one-line error (exit 2).

The read API is `read_neighbors(client, prefix, kind, anchor)`; a reader holds a
client from `similarity.redis_store.connect`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, cast

import redis

from dlrrec.config import ConfigError, DataError, build_dataclass, load_raw, section_values
from dlrrec.entry import ArgParser, user_errors
from similarity.config import SwingConfig
from similarity.redis_store import (
    KIND_NAMES,
    connect,
    key_anchor,
    key_current,
    key_meta,
    key_titles,
    safe_url,
    text,
)


def current_version(client: redis.Redis, prefix: str) -> str | None:
    raw = client.get(key_current(prefix))
    return text(raw) if raw is not None else None


def read_neighbors(
    client: redis.Redis,
    prefix: str,
    kind: str,
    anchor: str | int,
    top: int | None = None,
    version: str | None = None,
) -> list[tuple[str, float]]:
    """[(neighbor id, score)] in the tables' rank order (higher score, then neighbour id).

    Args:
        kind: "item" / "user" (or "item_item" / "user_user").
        anchor: the entity's id in the source data (MovieLens "1", a Yelp business_id).
        top: at most this many (all when None).
        version: the export version to read (default: the current one).

    Raises:
        DataError: nothing was exported under `prefix` yet, or the export has no
            neighbours for `anchor` (an unknown id, or one SWING found no neighbours for).
    """
    table = KIND_NAMES.get(kind, kind)
    version = version or current_version(client, prefix)
    if version is None:
        raise DataError(f"redis prefix {prefix!r}: nothing exported yet (no {key_current(prefix)})")
    # The version's keys outlive a switch by the grace period, so this read sees the
    # complete list of the version it resolved, even if `current` moves meanwhile.
    key = key_anchor(prefix, version, table, str(anchor))
    rows = client.zrange(key, 0, -1, desc=True, withscores=True)
    if not rows:
        raise DataError(
            f"{kind} {str(anchor)!r}: not in the export {prefix}:{version} "
            "(an unknown id, or one without SWING neighbours)"
        )
    out = [(text(m), float(s)) for m, s in cast(list[Any], rows)]
    # Redis orders equal scores by member bytes, descending here; the tables rank ties
    # by ascending neighbour index, which follows the source ids' order.
    order = client.hget(key_meta(prefix, version), f"id_order_{table}")
    sort_key = _ORDERS[text(order)] if order is not None else _legacy_order
    out.sort(key=lambda r: (-r[1], sort_key(r[0])))
    return out[:top] if top is not None else out


def read_titles(client: redis.Redis, prefix: str, version: str | None, ids: list[str]) -> list[str | None]:
    """The item titles of `ids` in `version` (None where it has none)."""
    if not ids or version is None:
        return [None] * len(ids)
    found = cast(list[Any], client.hmget(key_titles(prefix, version), ids))
    return [text(t) if t is not None else None for t in found]


def _legacy_order(text: str) -> tuple[int, int | str]:
    """Tie order of versions exported before the order was recorded."""
    try:
        return (0, int(text))
    except ValueError:
        return (1, text)


# How each id kind sorts (similarity.tables.IdMap.order); the features stage orders
# digit-only ids by (length, text) (features.vocab.entity_order).
_ORDERS: dict[str, Callable[[str], Any]] = {
    "integer": int,
    "numeric": lambda t: (len(t), t),
    "lexicographic": lambda t: t,
}


def main(argv: list[str] | None = None, prog: str = "dlrrec similarity neighbors") -> int:
    p = ArgParser(prog=prog, description="look up an entity's SWING neighbours in Redis")
    p.add_argument("kind", choices=sorted(KIND_NAMES), help="item or user")
    p.add_argument("id", help="the anchor id, as in the pair tables")
    p.add_argument("--config", help="YAML config with similarity.redis_url")
    p.add_argument("--top", type=int, default=None, help="print at most N neighbours")
    p.add_argument(
        "overrides", nargs="*", help="key=value overrides, e.g. redis_url=redis://h:6379"
    )
    args = p.parse_intermixed_args(argv)
    with user_errors(prog):
        if args.top is not None and args.top <= 0:
            raise ConfigError(f"--top: must be > 0, got {args.top}")
        values = section_values(load_raw(args.config, args.overrides, "similarity"), "similarity")
        values.setdefault("run_dir", ".")  # a reader needs only the redis_* keys
        cfg = build_dataclass(SwingConfig, values, "similarity")
        client = connect(cfg.redis_url)
        try:
            version = current_version(client, cfg.redis_prefix)
            rows = read_neighbors(client, cfg.redis_prefix, args.kind, args.id, args.top, version)
            items = [n for n, _ in rows] if KIND_NAMES[args.kind] == "item_item" else []
            titles = read_titles(client, cfg.redis_prefix, version, items) if items else [None] * len(rows)
        except redis.RedisError as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise DataError(f"redis {safe_url(cfg.redis_url)}: {first}") from None
        finally:
            client.close()
        for rank, ((neighbor, score), title) in enumerate(zip(rows, titles)):
            print(f"{rank}\t{neighbor}\t{score:.9g}" + (f"\t{title}" if title else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
