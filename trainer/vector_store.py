"""Frozen pretrained entity vectors (MiniLM, 384-d) in read-only disk stores, read per batch.

Shape legend: B = local batch size, M = extra negatives, C = content dim (384),
n = entities of one kind (users, items, or (user, slot) keys).

The towers and the InfoNCE losses need entity vectors: the item vector of each row
(unless the features stage wrote it per row, `row_content`), the anchor, the sampled
SWING positive and the extra negatives. Each entity content column
(`features/entities/{users,items}.parquet`), and each keyed column's per-(user, slot)
table, is one fixed-width FP16 file, `features/vectors/{name}.f16`:

    [0, 4096)                      header: JSON (format, features fingerprint, name, n, C), space-padded
    [4096, 4096 + n*C*2)           row i: entity i's vector (zeros where it has none)
    [4096 + n*C*2, ... + n)        has_content: one byte per entity (the extra-negative catalogue)

Why a file and where: a rank's data loader reads only its local batch's rows
(`VectorStore.read`: one compiled `pread` per sorted unique id, `scatter_read`, about
1 us each and without the GIL), so no process holds an [n, C] table and
a step runs no collective for it. Reads are not `np.memmap` fancy indexing on purpose:
mapped file pages count in the process RSS; pread pages stay in the kernel's page cache,
shared by every rank on the node. The store is derived from one features artifact, so it
lives inside it: rebuilding the features (an atomic folder swap) drops it with the
artifact it came from. The first process that needs it (any rank, `dlrrec serve`, a tool)
writes it under an exclusive `flock`, streaming the Parquet in bounded batches, to a temp
name then renamed; the others wait on the lock and open the finished file. The header's
fingerprint refuses a store copied from another features artifact.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import json
import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numba
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dlrrec.config import DataError

KINDS = ("row", "pos", "neg")
FORMAT = "dlrrec-vectors/1"
HEADER_BYTES = 4096
READ_BATCH_ROWS = 8192
FOLDER = "vectors"  # under features/


def feature_key(col: str, kind: str) -> str:
    """A batch's vector key: `{col}/row` [B], `{col}/pos` [B] or `{col}/neg` [M]."""
    return f"{col}/{kind}"


def fixed_list_to_numpy(col: pa.ChunkedArray | pa.Array, where: str) -> np.ndarray:
    """[rows, width] float16 of a fixed-size-list column; NaN/inf and other types are errors."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if not pa.types.is_fixed_size_list(arr.type):
        raise DataError(f"{where}: expected a fixed-size list of floats, got {arr.type}")
    width = arr.type.list_size
    flat = arr.flatten().to_numpy(zero_copy_only=False)
    out = flat.reshape(len(arr), width).astype(np.float16, copy=False)
    if not np.isfinite(out).all():
        raise DataError(f"{where}: NaN or inf in content vectors")
    return out


def parquet_files(path: Path) -> list[Path]:
    """A Parquet file, or the part files of a folder (the profile table is written in parts)."""
    return sorted(path.glob("part-*.parquet")) if path.is_dir() else [path]


def scan_parquet(path: Path, id_col: str, col: str, n: int, dim: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids [k] int64, vectors [k, C] float16) of a content column, one record batch at a
    time (one row group at a time: one `iter_batches` call over many may buffer them all).

    Raises:
        DataError: the file or a column is missing, a width differs from `dim`, an id
            is outside [0, n), or a value is NaN/inf.
    """
    if not (path.is_file() or path.is_dir()):
        raise DataError(f"{path}: missing; run `dlrrec features build` first")
    for file in parquet_files(path):
        pf = pq.ParquetFile(file)
        for c in (id_col, col):
            if c not in pf.schema_arrow.names:
                raise DataError(f"{file}: missing column {c!r}")
        for g in range(pf.num_row_groups):
            for rb in pf.iter_batches(batch_size=READ_BATCH_ROWS, row_groups=[g], columns=[id_col, col]):
                ids = rb.column(0).to_numpy(zero_copy_only=False).astype(np.int64)
                vec = fixed_list_to_numpy(rb.column(1), f"{file}:{col}")
                if vec.shape[1] != dim:
                    raise DataError(f"{file}:{col}: vectors of width {vec.shape[1]}, _meta.json content_dim is {dim}")
                if ids.size and (ids.min() < 0 or ids.max() >= n):
                    raise DataError(f"{file}:{id_col}: ids outside [0, {n}) (from _meta.json)")
                yield ids, vec


def runs(sorted_ids: np.ndarray) -> tuple[list[int], list[int]]:
    """[start, end) positions of the runs of consecutive ids (i, i + 1, ...) in sorted ids."""
    breaks = np.flatnonzero(np.diff(sorted_ids) != 1) + 1
    starts = np.concatenate([[0], breaks]).astype(np.int64)
    ends = np.concatenate([breaks, [sorted_ids.size]]).astype(np.int64)
    return starts.tolist(), ends.tolist()


def source_digest(source: Path | None) -> str:
    """A digest of the source Parquet files' (name, bytes, mtime) now (None: no file), so
    the header keeps a fixed size whatever the number of part files."""
    files = [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in parquet_files(source)] if source else []
    return hashlib.sha256(json.dumps(files).encode()).hexdigest()


def store_header(fingerprint: str, name: str, n: int, dim: int, source: Path | None) -> dict[str, Any]:
    """What a vector store's header must say: its features artifact, name, shape, and
    its source files as they were when it was written (`source_digest`)."""
    return {"format": FORMAT, "fingerprint": fingerprint, "name": name, "n": n, "dim": dim,
            "source": source_digest(source)}  # fmt: skip


def write_atomic(path: Path, size: int, fill: Callable[[int], dict[str, Any]]) -> None:
    """A store file of `size` bytes (zeros until written): `fill(fd)` writes the body and
    returns the header, written last; to a temp file renamed onto `path`, so readers
    never see a partial store."""
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            f.truncate(size)  # a sparse file: unwritten rows read as zeros
            header = fill(f.fileno())
            os.pwrite(f.fileno(), json.dumps(header).encode().ljust(HEADER_BYTES), 0)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_once(path: Path, write: Callable[[], None]) -> None:
    """`write()` unless `path` exists, under an exclusive lock on its folder, so one
    process writes a store and every other waits for it and then reads it."""
    if path.is_file():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not path.is_file():  # another process may have written it while this one waited
            write()


def open_checked(path: Path, want: dict[str, Any], size_of: Callable[[dict[str, Any]], int]) -> tuple[int, dict[str, Any]]:
    """A read-only descriptor of a store whose header has `want`'s keys and values and
    whose size is `size_of(header)`, and the header (with any keys the writer added).

    Raises:
        DataError: a foreign store (another artifact, name, shape or format), a stale one
            (its source files changed since), or a truncated one; one line, with the fix.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        header = json.loads(os.pread(fd, HEADER_BYTES, 0).decode().strip())
    except (UnicodeDecodeError, json.JSONDecodeError):
        header = {}
    got = header if isinstance(header, dict) else {}
    why = next((k for k in want if k != "source" and got.get(k) != want[k]), "")
    problem = (
        f"foreign store ({why} {str(got.get(why))[:16]}, this artifact's is {str(want[why])[:16]})" if why
        else "stale store (its source Parquet changed since it was written)" if got["source"] != want["source"]
        else "truncated store" if os.fstat(fd).st_size != size_of(got)
        else ""
    )  # fmt: skip
    if problem:
        os.close(fd)
        raise DataError(f"{path}: {problem}; delete {path.parent} to rebuild it")
    compile_reads()
    return fd, got


def write_store(
    path: Path, batches: Iterable[tuple[np.ndarray, np.ndarray]], header: dict[str, Any]
) -> None:
    """Write a vector store (`header`: `store_header`) from (ids, vectors [k, C]) batches
    in any id order (a later duplicate wins)."""
    n, row_bytes = int(header["n"]), int(header["dim"]) * 2

    def fill(fd: int) -> dict[str, Any]:
        has = np.zeros(n, bool)  # one byte per entity while writing
        for ids, vec in batches:
            order = np.argsort(ids, kind="stable")
            ids, vec = ids[order], np.ascontiguousarray(vec[order], np.float16)
            has[ids] = np.abs(vec).max(axis=1) > 0 if vec.size else False
            for s, e in zip(*runs(ids)):
                os.pwrite(fd, vec[s:e].data, HEADER_BYTES + int(ids[s]) * row_bytes)
        os.pwrite(fd, has.data, HEADER_BYTES + n * row_bytes)
        return header

    write_atomic(path, HEADER_BYTES + n * row_bytes + n, fill)


_libc = ctypes.CDLL(None, use_errno=True)
_pread = _libc.pread
_pread.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_long]
_pread.restype = ctypes.c_ssize_t


@numba.njit(nogil=True)
def _scatter_pread(fd: int, offsets: np.ndarray, sizes: np.ndarray, dest: int) -> int:
    """pread each range into the next bytes at address `dest`; the index of the first range
    that hit the end of the file, or len(offsets). Compiled and without the GIL: a batch
    reads thousands of scattered rows, at about 1 us each instead of 3 from Python."""
    pos = 0
    for k in range(offsets.size):
        done = 0
        while done < sizes[k]:
            got = _pread(fd, dest + pos + done, sizes[k] - done, offsets[k] + done)
            if got <= 0:
                return k
            done += got
        pos += sizes[k]
    return offsets.size


_SCATTER_JIT = _scatter_pread  # the dispatcher itself (tests may swap the module's name for a spy)
# what `scatter_read` passes: fd, C-contiguous int64 offsets and sizes, the address
_SCATTER_SIGNATURE = "int64(int64, int64[::1], int64[::1], int64)"


def compile_reads() -> None:
    """Compile the read loop now, once per process (about 1 s; later calls are free).

    Every store calls this when it opens, during setup. Left to the first read, the
    compile would run in the first batch's reader thread while the first training step
    waits for it: about 1 s of a 300-step run's timed 27 s at 1M rows on two ranks.
    """
    _SCATTER_JIT.compile(_SCATTER_SIGNATURE)


def scatter_read(fd: int, offsets: np.ndarray, sizes: np.ndarray, out: np.ndarray, path: Path) -> None:
    """Fill `out` (C-contiguous) with the file's byte ranges [offsets[k], offsets[k] + sizes[k]),
    one after another; each range is read with pread, so threads may share `fd`.

    Raises:
        DataError: the file ends inside a range (a truncated store).
    """
    offsets = np.ascontiguousarray(offsets, np.int64)
    sizes = np.ascontiguousarray(sizes, np.int64)
    if not out.flags.c_contiguous or int(sizes.sum()) != out.nbytes:
        raise ValueError(f"scatter_read: {int(sizes.sum())} bytes into a buffer of {out.nbytes}")
    k = _scatter_pread(fd, offsets, sizes, out.ctypes.data)
    if k < offsets.size:
        raise DataError(f"{path}: truncated (read past its end in bytes {offsets[k]}+{sizes[k]})")


def read_at(fd: int, offset: int, out: np.ndarray, path: Path) -> np.ndarray:
    """`out` filled with the file's bytes from `offset` (one range); returns `out`."""
    scatter_read(fd, np.array([offset]), np.array([out.nbytes]), out, path)
    return out


class VectorStore:
    """One store, open for reading (the file descriptor is shared by threads: pread has
    no file position).

    Args:
        path: the `.f16` file.
        want: the header it must have (`store_header`): a store of another features
            artifact (foreign), or one older than its source Parquet (stale), is refused.

    Example::

        store = VectorStore(path, store_header(meta["fingerprint"], "item_text", 1682, 384, items_parquet))
        vec = store.read(np.array([5, 3, 5]))  # float16 [3, 384]
    """

    def __init__(self, path: Path, want: dict[str, Any]) -> None:
        self.path, self.n, self.dim = path, int(want["n"]), int(want["dim"])
        self.row_bytes = self.dim * 2
        self._fd = -1
        self._fd, _ = open_checked(path, want, lambda _: HEADER_BYTES + self.n * self.row_bytes + self.n)

    @property
    def has_content(self) -> np.ndarray:
        """[n] bool: entities with a nonzero vector (read from the file on each call)."""
        has = read_at(self._fd, HEADER_BYTES + self.n * self.row_bytes, np.empty(self.n, np.uint8), self.path)
        return has.view(bool)

    def read(self, ids: np.ndarray) -> np.ndarray:
        """float16 [len(ids), C]: the vectors of `ids` (any order, repeats allowed); only
        those rows are read, one compiled pread per unique id (`scatter_read`).

        Raises:
            ValueError: an id outside [0, n).
        """
        ids = np.asarray(ids, np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.n):
            raise ValueError(f"{self.path}: ids outside [0, {self.n})")
        unique, inverse = np.unique(ids, return_inverse=True)
        out = np.empty((unique.size, self.dim), np.float16)
        rb = self.row_bytes
        scatter_read(self._fd, HEADER_BYTES + unique * rb, np.full(unique.size, rb), out, self.path)
        return out if np.array_equal(unique, ids) else out[inverse.reshape(-1)]

    def close(self) -> None:
        if getattr(self, "_fd", -1) >= 0:
            os.close(self._fd)
        self._fd = -1

    def __del__(self) -> None:
        self.close()


def open_store(
    features: Path, fingerprint: str, name: str, source: Path, id_col: str, col: str, n: int, dim: int
) -> VectorStore:
    """`features/vectors/{name}.f16`, written first from `source`'s column `col` (keyed by
    `id_col`) when missing, by whichever process takes the folder's lock first.

    Raises:
        DataError: the source is missing or invalid (`scan_parquet`), or the store is
            foreign or stale (`VectorStore`).
    """
    if not (source.is_file() or source.is_dir()):
        raise DataError(f"{source}: missing; run `dlrrec features build` first")
    path = features / FOLDER / f"{name}.f16"
    want = store_header(fingerprint, name, n, dim, source)
    write_once(path, lambda: write_store(path, scan_parquet(source, id_col, col, n, dim), want))
    return VectorStore(path, want)
