"""TorchX components for every dlrrec job, and a small local launcher for the pipeline.

    torchx run -s local_cwd launch/components.py:train -j 1x2 -- --config configs/movielens-100k.yaml
    torchx run -s local_cwd launch/components.py:swing -j 1x2 -- --config configs/movielens-100k.yaml
    torchx run -s local_cwd launch/components.py:features -- --config configs/movielens-100k.yaml

Distributed jobs are `torchx.components.dist.ddp` apps running `python -m launch.cli
<job>` under torchrun, so the same component serves local_cwd, kubernetes and slurm.
This is the only module that imports torchx.
"""

# torchx 0.7 parses component signatures itself: it needs typing.Optional/Dict rather
# than `X | None` / `dict[...]`, and real (not postponed) annotations.
import json
import os
import sys
import threading
from dataclasses import dataclass
from typing import Dict, List, Optional  # noqa: UP035

import torchx.specs as specs
from torchx.components import dist as torchx_dist
from torchx.runner import get_runner

DEFAULT_IMAGE = "ghcr.io/dlrrec/dlrrec:cpu"


def _ddp(
    job: list[str],
    script_args: tuple[str, ...],
    name: str,
    image: str,
    j: str,
    h: Optional[str],
    cpu: int,
    gpu: int,
    memMB: int,
    max_retries: int,
    max_restarts: int,
    rdzv_port: int,
    env: Optional[Dict[str, str]],
    mounts: Optional[List[str]],
) -> specs.AppDef:
    if max_restarts < 0:
        raise ValueError(f"--max_restarts: must be >= 0, got {max_restarts}")
    app = torchx_dist.ddp(
        *job,
        *script_args,
        m="launch.cli",
        image=image,
        name=name,
        h=h,
        cpu=cpu,
        gpu=gpu,
        memMB=memMB,
        j=j,
        env=env,
        max_retries=max_retries,
        rdzv_port=rdzv_port,
        mounts=mounts,
    )
    # torchx 0.7's dist.ddp has no max_restarts: add torchrun's own flag. TorchElastic
    # then restarts the whole worker group in place (every node re-rendezvouses) after a
    # worker dies, up to N times, before the scheduler's max_retries resubmits the job.
    role = app.roles[0]
    head = "torchrun "
    if not role.args[1].startswith(head):  # a torchx upgrade changed dist.ddp's command
        raise RuntimeError(f"dist.ddp command does not start with {head!r}: {role.args[1]!r}")
    role.args[1] = f"{head}--max-restarts {max_restarts} {role.args[1][len(head) :]}"
    return app


def train(
    *script_args: str,
    image: str = DEFAULT_IMAGE,
    j: str = "1x2",
    h: Optional[str] = None,
    cpu: int = 2,
    gpu: int = 0,
    memMB: int = 8192,
    max_retries: int = 0,
    max_restarts: int = 0,
    rdzv_port: int = 29500,
    env: Optional[Dict[str, str]] = None,
    mounts: Optional[List[str]] = None,
) -> specs.AppDef:
    """Trains the sharded DLRREC model with N ranks (gloo on CPU, nccl on GPU).

    Args:
        script_args: arguments of `dlrrec train`, e.g. `--config configs/movielens-100k.yaml epochs=5`
        image: container image (local_cwd ignores it)
        j: {nnodes}x{nproc_per_node}, e.g. 1x2; {min}:{max}x{nproc} for elastic
        h: a named resource (e.g. aws_p4d.24xlarge); overrides cpu/gpu/memMB
        cpu: CPUs per node
        gpu: GPUs per node
        memMB: memory per node in MB
        max_retries: times the scheduler retries a failed job
        max_restarts: times TorchElastic (torchrun --max-restarts) restarts the worker group after a failure
        rdzv_port: rendezvous port of the c10d store on rank 0's host
        env: extra environment variables
        mounts: volumes for the shared run root, e.g. type=volume,src=dlrrec-runs,dst=/app/runs
            (kubernetes: a PersistentVolumeClaim; see README "Running on a cluster")
    """
    return _ddp(
        ["train"], script_args, "dlrrec-train", image, j, h, cpu, gpu, memMB, max_retries, max_restarts, rdzv_port, env, mounts
    )


def swing(
    *script_args: str,
    image: str = DEFAULT_IMAGE,
    j: str = "1x2",
    h: Optional[str] = None,
    cpu: int = 2,
    gpu: int = 0,
    memMB: int = 8192,
    max_retries: int = 0,
    max_restarts: int = 0,
    rdzv_port: int = 29500,
    env: Optional[Dict[str, str]] = None,
    mounts: Optional[List[str]] = None,
) -> specs.AppDef:
    """Computes SWING item-item and user-user pair tables with N ranks.

    Args:
        script_args: arguments of `dlrrec similarity swing`, e.g. `--config configs/movielens-100k.yaml`
        image: container image (local_cwd ignores it)
        j: {nnodes}x{nproc_per_node}, e.g. 1x2
        h: a named resource; overrides cpu/gpu/memMB
        cpu: CPUs per node
        gpu: GPUs per node
        memMB: memory per node in MB
        max_retries: times the scheduler retries a failed job
        max_restarts: times TorchElastic (torchrun --max-restarts) restarts the worker group after a failure
        rdzv_port: rendezvous port of the c10d store on rank 0's host
        env: extra environment variables
        mounts: volumes for the shared run root, e.g. type=volume,src=dlrrec-runs,dst=/app/runs
            (kubernetes: a PersistentVolumeClaim; see README "Running on a cluster")
    """
    return _ddp(
        ["similarity", "swing"], script_args, "dlrrec-swing", image, j, h, cpu, gpu, memMB, max_retries, max_restarts,
        rdzv_port, env, mounts,
    )  # fmt: skip


def _single(
    job: list[str], script_args: tuple[str, ...], name: str, image: str, h: Optional[str],
    cpu: int, memMB: int, max_retries: int, env: Optional[Dict[str, str]], mounts: Optional[List[str]],
) -> specs.AppDef:  # fmt: skip
    return specs.AppDef(
        name=name,
        roles=[
            specs.Role(
                name=name,
                image=image,
                entrypoint="python",
                args=["-m", "launch.cli", *job, *script_args],
                env=env or {},
                resource=specs.resource(cpu=cpu, gpu=0, memMB=memMB, h=h),
                max_retries=max_retries,
                mounts=specs.parse_mounts(mounts) if mounts else [],
            )
        ],
    )


def features(
    *script_args: str,
    image: str = DEFAULT_IMAGE,
    h: Optional[str] = None,
    cpu: int = 2,
    memMB: int = 8192,
    max_retries: int = 0,
    env: Optional[Dict[str, str]] = None,
    mounts: Optional[List[str]] = None,
) -> specs.AppDef:
    """Builds leakage-free examples and entity tables from raw reviews (one process).

    Args:
        script_args: arguments of `dlrrec features build`, e.g. `--config configs/movielens-100k.yaml`
        image: container image (local_cwd ignores it)
        h: a named resource; overrides cpu/memMB
        cpu: CPUs
        memMB: memory in MB
        max_retries: times the scheduler retries a failed job
        env: extra environment variables
        mounts: volumes for the shared run root, e.g. type=volume,src=dlrrec-runs,dst=/app/runs
            (kubernetes: a PersistentVolumeClaim; see README "Running on a cluster")
    """
    return _single(["features", "build"], script_args, "dlrrec-features", image, h, cpu, memMB, max_retries, env, mounts)


def pipeline(
    *script_args: str,
    image: str = DEFAULT_IMAGE,
    h: Optional[str] = None,
    cpu: int = 2,
    gpu: int = 0,
    memMB: int = 8192,
    max_retries: int = 0,
    env: Optional[Dict[str, str]] = None,
    mounts: Optional[List[str]] = None,
) -> specs.AppDef:
    """Runs every stage (fetch, features, SWING, train) into one run root.

    The driver runs the features stage itself and submits SWING and training as their
    own jobs with the same image, resources and mounts (`pipeline.*` overrides appended
    to its arguments); only training gets the GPUs.

    Args:
        script_args: arguments of `dlrrec pipeline`, e.g. `--config configs/movielens-100k.yaml`
        image: container image of every job (local_cwd ignores it)
        h: a named resource; overrides cpu/gpu/memMB
        cpu: CPUs per node of every job
        gpu: GPUs per node of the training job (the driver and SWING get none)
        memMB: memory in MB per node of every job
        max_retries: times the scheduler retries a failed job
        env: extra environment variables (of the driver)
        mounts: volumes for the shared run root, e.g. type=volume,src=dlrrec-runs,dst=/app/runs
            (kubernetes: a PersistentVolumeClaim; see README "Running on a cluster")
    """
    forward = [f"pipeline.image={image}", f"pipeline.cpu={cpu}", f"pipeline.gpu={gpu}", f"pipeline.mem_mb={memMB}"]
    if h:
        forward.append(f"pipeline.resource={h}")
    if mounts:
        forward.append("pipeline.mounts=" + json.dumps(list(mounts)))
    args = (*script_args, *forward)
    return _single(["pipeline"], args, "dlrrec-pipeline", image, h, cpu, memMB, max_retries, env, mounts)


def experiment(
    *script_args: str,
    image: str = DEFAULT_IMAGE,
    h: Optional[str] = None,
    cpu: int = 2,
    memMB: int = 8192,
    max_retries: int = 0,
    env: Optional[Dict[str, str]] = None,
    mounts: Optional[List[str]] = None,
) -> specs.AppDef:
    """Runs the paper's Table 1 grid (variants x dropout x seeds) on a pipeline's run root.

    Args:
        script_args: arguments of `dlrrec experiment`, e.g. `--grid configs/table1-movielens-100k.yaml`
        image: container image (local_cwd ignores it)
        h: a named resource; overrides cpu/memMB
        cpu: CPUs
        memMB: memory in MB
        max_retries: times the scheduler retries a failed job
        env: extra environment variables
        mounts: volumes for the shared run root, e.g. type=volume,src=dlrrec-runs,dst=/app/runs
    """
    return _single(["experiment"], script_args, "dlrrec-experiment", image, h, cpu, memMB, max_retries, env, mounts)


@dataclass
class LaunchResult:
    app_handle: str
    state: str
    ok: bool
    error: str = ""  # the failed worker's error, one line ("" when unknown)


def launch_and_wait(
    app: specs.AppDef, scheduler: str = "local_cwd", log_dir: Optional[str] = None, stream: bool = True
) -> LaunchResult:
    """Submit `app` to `scheduler`, stream replica 0's output, wait for the end.

    The interpreter's own bin folder goes first on PATH so `torchrun` and `python` in
    the app resolve to this environment, as they would inside the image. On local_cwd
    with a `log_dir`, torchrun copies its failed worker's error to
    `log_dir/<app>.error.json` (TORCHELASTIC_ERROR_FILE of torchrun itself), which
    becomes `LaunchResult.error`.
    """
    bindir = os.path.dirname(sys.executable)
    error_file = os.path.abspath(os.path.join(log_dir, f"{app.name}.error.json")) if log_dir else None
    if error_file and os.path.exists(error_file):
        os.remove(error_file)  # a previous launch's error is not this one's
    for role in app.roles:
        role.env = {**role.env, "PATH": bindir + os.pathsep + os.environ.get("PATH", "")}
        role.env.setdefault("PYTHONUNBUFFERED", "1")
        if error_file and scheduler == "local_cwd":
            role.env["TORCHELASTIC_ERROR_FILE"] = error_file
    cfg: dict[str, specs.CfgVal] = {}
    if log_dir:
        cfg["log_dir"] = log_dir
    with get_runner() as runner:
        handle = runner.run(app, scheduler, cfg=cfg)
        printer = None
        if stream:
            def _print() -> None:
                try:
                    for line in runner.log_lines(handle, app.roles[0].name, 0, should_tail=True):
                        print(line, end="" if line.endswith("\n") else "\n", flush=True)
                except Exception:  # log streaming is best-effort; the status below decides
                    pass

            printer = threading.Thread(target=_print, daemon=True)
            printer.start()
        status = runner.wait(handle, wait_interval=1)
        if printer is not None:
            printer.join(timeout=5)
    state = str(status.state) if status else "UNKNOWN"
    ok = status is not None and status.is_terminal() and state.endswith("SUCCEEDED")
    error = "" if ok or not error_file else read_worker_error(error_file)
    return LaunchResult(app_handle=handle, state=state, ok=ok, error=error)


def read_worker_error(path: str) -> str:
    """The first line of a TorchElastic error file's message ("" when missing or unreadable).

    Its format is torch.distributed.elastic's: {"message": {"message": "Type: text", ...}}
    (or a plain string message).
    """
    try:
        with open(path) as f:
            message = json.load(f).get("message", "")
    except (OSError, ValueError, AttributeError):
        return ""
    if isinstance(message, dict):
        message = message.get("message", "")
    lines = str(message).strip().splitlines()
    return lines[0] if lines else ""
