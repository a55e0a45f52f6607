"""Checks an image's torch / fbgemm stack from package metadata alone.

    docker run --rm -i --entrypoint python IMAGE - cpu|cuda < docker/check_stack.py

Nothing here imports torch or fbgemm_gpu: the CUDA build's fbgemm_gpu loads
libnvidia-ml.so.1 from the GPU driver at import, so an import-based check fails on every
machine without a GPU. Instead it reads what the wheels ship: torch/version.py (the
source of `torch.version.cuda`), the installed fbgemm distribution and the variant
fbgemm_gpu records in fbgemm_gpu/docs/target.default.json.py. Standard library only:
it runs in the image's python, piped in, so the image carries no copy of it.
Prints one line with the stack; exits 1 with the reason when it is not the variant's.
"""

from __future__ import annotations

import ast
import json
import sys
from importlib import metadata
from pathlib import Path

FBGEMM = {"cpu": "fbgemm-gpu-cpu", "cuda": "fbgemm-gpu"}


def dist_file(dist: metadata.Distribution, name: str) -> Path:
    for f in dist.files or ():
        if str(f).replace("\\", "/") == name:
            return Path(str(dist.locate_file(f)))
    raise LookupError(f"{dist.metadata['Name']} {dist.version} ships no {name}")


def torch_version_module(dist: metadata.Distribution) -> dict[str, object]:
    """The literal assignments of torch/version.py (`__version__`, `cuda`, ...)."""
    tree = ast.parse(dist_file(dist, "torch/version.py").read_text())
    out: dict[str, object] = {}
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        value = getattr(node, "value", None)
        if isinstance(target, ast.Name) and value is not None:
            try:
                out[target.id] = ast.literal_eval(value)
            except ValueError:
                pass
    return out


def fbgemm_variant(dist: metadata.Distribution) -> str:
    return str(json.loads(dist_file(dist, "fbgemm_gpu/docs/target.default.json.py").read_text())["variant"])


def installed(name: str) -> metadata.Distribution | None:
    try:
        return metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return None


def check(variant: str) -> list[str]:
    """The problems with this environment's stack for `variant`; empty when it is right."""
    torch = installed("torch")
    if torch is None:
        return ["torch is not installed"]
    tv = torch_version_module(torch)
    cuda = tv.get("cuda")
    fb = {name: d for name in FBGEMM.values() if (d := installed(name)) is not None}
    print(
        f"torch {tv.get('__version__')} (cuda {cuda}), "
        + ", ".join(f"{n} {d.version} (variant {fbgemm_variant(d)})" for n, d in fb.items())
    )
    problems = []
    if variant == "cuda" and not str(cuda or "").startswith("13."):
        problems.append(f"torch.version.cuda is {cuda!r}, expected a CUDA 13 build")
    if variant == "cpu" and cuda is not None:
        problems.append(f"torch.version.cuda is {cuda!r}, expected None (the CPU build)")
    want = FBGEMM[variant]
    if list(fb) != [want]:
        problems.append(f"fbgemm distributions {sorted(fb)}, expected exactly [{want!r}]")
    elif fbgemm_variant(fb[want]) != variant:
        problems.append(f"{want} records variant {fbgemm_variant(fb[want])!r}, expected {variant!r}")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in FBGEMM:
        print("usage: check_stack.py cpu|cuda", file=sys.stderr)
        return 2
    problems = check(argv[0])
    for p in problems:
        print(f"check_stack: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
