"""DCP `.metadata` as every supported Python pickles it, read by the allow-list unpickler.

Python 3.11.0-3.11.4 (Debian 12's python3 is 3.11.2) pickle an Enum member as
`getattr(EnumClass, "NAME")`; later releases pickle it by value, `EnumClass(value)`.
DCP's TensorProperties holds such a member (`_MEM_FORMAT_ENCODING`). The pickles here
are written both ways on whatever interpreter runs the test, with a reducer override.
"""

import enum
import io
import pickle
import signal
from pathlib import Path, PosixPath
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.metadata import _MEM_FORMAT_ENCODING, Metadata

from trainer.checkpoint import (
    METADATA_FILE,
    SafeFileSystemReader,
    read_metadata_safely,
    unpickle_metadata,
)


class _Call:
    """A stand-in the pickler writes as `getattr(*args)`, to hand-craft a pickle."""

    def __init__(self, *args: Any) -> None:
        self.args = args


def _dumps(obj: Any, enum_by_name: bool) -> bytes:
    class Pickler(pickle.Pickler):
        def reducer_override(self, o: Any) -> Any:
            if isinstance(o, _Call):
                return getattr, o.args
            if isinstance(o, enum.Enum):
                return (getattr, (type(o), o.name)) if enum_by_name else (type(o), (o.value,))
            return NotImplemented

    buf = io.BytesIO()
    Pickler(buf, protocol=pickle.DEFAULT_PROTOCOL).dump(obj)
    return buf.getvalue()


def _globals(data: bytes) -> list[str]:
    """The `module name` pairs a pickle (of the test's own making) references."""
    seen: list[str] = []

    class Recorder(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            seen.append(f"{module} {name}")
            return super().find_class(module, name)

    Recorder(io.BytesIO(data)).load()
    return seen


def _checkpoint(path: Path) -> dict[str, torch.Tensor]:
    state = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.tensor([1.5, -2.0], dtype=torch.float64)}
    dcp.save(state, checkpoint_id=str(path))
    return state


@pytest.mark.parametrize("enum_by_name", [None, False, True], ids=["native", "by_value", "by_name_3.11.2"])
def test_metadata_pickled_either_way_loads_and_restores(enum_by_name: bool | None, tmp_path: Path):
    state = _checkpoint(tmp_path)
    original = pickle.loads((tmp_path / METADATA_FILE).read_bytes())
    if enum_by_name is not None:  # None: as this interpreter's DCP wrote it
        data = _dumps(original, enum_by_name)
        refs = _globals(data)
        assert ("builtins getattr" in refs) == enum_by_name, refs
        (tmp_path / METADATA_FILE).write_bytes(data)

    md = read_metadata_safely(tmp_path)
    assert isinstance(md, Metadata)
    assert md.state_dict_metadata == original.state_dict_metadata
    assert md.state_dict_metadata["w"].properties.memory_format is torch.contiguous_format
    out = {k: torch.zeros_like(v) for k, v in state.items()}
    dcp.load(out, storage_reader=SafeFileSystemReader(str(tmp_path)))
    for k, v in state.items():
        assert torch.equal(out[k], v) and out[k].dtype == v.dtype


@pytest.mark.parametrize("member", list(_MEM_FORMAT_ENCODING))
def test_by_name_enum_member_is_that_member(member: _MEM_FORMAT_ENCODING):
    assert unpickle_metadata(_dumps(member, enum_by_name=True)) is member
    assert unpickle_metadata(_dumps(member, enum_by_name=False)) is member
    assert unpickle_metadata(pickle.dumps(member)) is member  # this interpreter's own form


@pytest.mark.parametrize(
    "call, names",
    [
        (_Call(Metadata, "__init__"), "Metadata"),  # an allowed class, but not an Enum
        (_Call(PosixPath, "home"), "PosixPath"),
        (_Call(_MEM_FORMAT_ENCODING, "__class__"), "__class__"),  # an attribute, not a member
        (_Call(_MEM_FORMAT_ENCODING, "_missing_"), "_missing_"),
        (_Call(_MEM_FORMAT_ENCODING, "TORCH_CHANNELS_LAST", None), "TORCH_CHANNELS_LAST"),  # a default
        (_Call(_Call(_MEM_FORMAT_ENCODING, "TORCH_CHANNELS_LAST"), "value"), "_MEM_FORMAT_ENCODING.TORCH_CHANNELS_LAST"),
        (_Call(torch.float32, "to"), "float32"),
        (_Call(signal.Signals, "SIGKILL"), "signal.Signals"),  # an Enum outside the allow-list
    ],
)
def test_getattr_on_anything_but_an_allowed_enum_member_is_refused(call: _Call, names: str):
    with pytest.raises(pickle.UnpicklingError, match="refusing to load") as e:
        unpickle_metadata(_dumps(call, enum_by_name=True))
    assert names in str(e.value)
