"""`torchx run --dryrun` on kubernetes and slurm: the specs a cluster would receive.

Each test runs the venv's torchx CLI from the repo root, as a user would, so the root
`.torchxconfig` supplies the scheduler options, and checks the request field by field:
image, nodes x processes (replicas and the torchrun command), resources, env and args.
`--workspace ""` keeps torchx from building a patched image, which needs a docker engine.
"""

from __future__ import annotations

import configparser
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from torchx.schedulers import get_scheduler_factories
from torchx.schedulers.kubernetes_scheduler import RESERVED_MEMMB, RESERVED_MILLICPU

from launch import components

REPO = Path(__file__).parents[2]
CONFIG = "configs/movielens-100k.yaml"
IMAGE = "ghcr.io/dlrrec/dlrrec:cuda"
# -j 2x4 on 4-GPU nodes, with every resource, env and restart knob set
TRAIN_ARGS = [
    "-j", "2x4", "--gpu", "4", "--cpu", "16", "--memMB", "65536",
    "--max_restarts", "2", "--max_retries", "1", "--image", IMAGE,
    "--env", "NCCL_DEBUG=WARN,OMP_NUM_THREADS=4",
    "--", "--config", CONFIG, "epochs=3",
]  # fmt: skip
USER_ENV = {"NCCL_DEBUG": "WARN", "OMP_NUM_THREADS": "4"}


def torchx_dryrun(scheduler: str, component: str, args: list[str]) -> str:
    """The SCHEDULER REQUEST part of `torchx run --dryrun`'s output."""
    cmd = [
        sys.executable, "-m", "torchx.cli.main", "run", "--dryrun", "--workspace", "",
        "-s", scheduler, f"launch/components.py:{component}", *args,
    ]  # fmt: skip
    # TORCHXCONFIG pins the repo's file and keeps a ~/.torchxconfig out of the test
    env = {**os.environ, "TORCHXCONFIG": str(REPO / ".torchxconfig")}
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert f"loaded configs from {REPO / '.torchxconfig'}" in p.stderr, p.stderr
    return p.stdout.split("=== SCHEDULER REQUEST ===\n", 1)[1]


def torchrun_cmd(endpoint_host: str, rdzv_id: str, job: list[str], restarts: int = 2) -> list[str]:
    return [
        "torchrun", "--max-restarts", str(restarts),
        "--rdzv_backend", "c10d", "--rdzv_endpoint", f"${{{endpoint_host}:=localhost}}:29500",
        "--rdzv_id", rdzv_id, "--nnodes", "2", "--nproc_per_node", "4", "--tee", "3", "--role", "",
        "-m", "launch.cli", *job,
    ]  # fmt: skip


def test_torchxconfig_sets_known_options_of_three_schedulers():
    # torchx silently skips unknown keys, so a typo here would go unnoticed on a cluster
    cfg = configparser.ConfigParser()
    cfg.read(REPO / ".torchxconfig")
    assert set(cfg.sections()) == {"local_cwd", "kubernetes", "slurm"}
    factories = get_scheduler_factories()
    for name in cfg.sections():
        opts = factories[name]("dlrrec-test").run_opts()
        for key in cfg[name]:
            assert opts.get(key) is not None, f".torchxconfig [{name}] {key}: not a {name} run option"
        required = {k for k, o in opts if o.is_required}
        assert required <= set(cfg[name]), f".torchxconfig [{name}]: missing {required - set(cfg[name])}"
    assert dict(cfg["kubernetes"]) == {
        "namespace": "dlrrec",
        "queue": "default",
        "image_repo": "ghcr.io/dlrrec/dlrrec-dev",
    }
    assert dict(cfg["slurm"]) == {"partition": "gpu", "time": "04:00:00"}


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"]}


def test_kubernetes_dryrun_train_2x4():
    job = yaml.safe_load(torchx_dryrun("kubernetes", "train", TRAIN_ARGS))
    assert job["apiVersion"] == "batch.volcano.sh/v1alpha1" and job["kind"] == "Job"
    app_id = job["metadata"]["name"]
    assert app_id.startswith("dlrrec-train-")
    spec = job["spec"]
    assert spec["schedulerName"] == "volcano"
    assert spec["queue"] == "default"  # from .torchxconfig
    assert spec["maxRetry"] == 1  # --max_retries
    # one Volcano task per node, both required (gang-scheduled)
    tasks = spec["tasks"]
    assert [(t["name"], t["replicas"], t["minAvailable"]) for t in tasks] == [("cli-0", 1, 1), ("cli-1", 1, 1)]
    # node 0 hosts the c10d store; the others find it through Volcano's host env var
    rank0_hosts = ["TORCHX_RANK0_HOST", "VC_CLI_0_HOSTS"]
    for node, task in enumerate(tasks):
        pod = task["template"]["spec"]
        (container,) = pod["containers"]
        assert container["image"] == IMAGE
        assert container["command"][:2] == ["bash", "-c"] and len(container["command"]) == 3
        assert shlex.split(container["command"][2]) == torchrun_cmd(
            rank0_hosts[node], app_id, ["train", "--config", CONFIG, "epochs=3"]
        )
        assert container["ports"] == [{"containerPort": 29500, "name": "c10d"}]
        assert container["resources"] == {
            "limits": {"cpu": "16000m", "memory": "65536M", "nvidia.com/gpu": "4"},
            "requests": {
                "cpu": f"{16000 - RESERVED_MILLICPU}m",
                "memory": f"{65536 - RESERVED_MEMMB}M",
                "nvidia.com/gpu": "4",
            },
        }
        expected_env = {
            **USER_ENV,
            "LOGLEVEL": "WARNING",
            "TORCHX_JOB_ID": f"kubernetes://torchx/{app_id}",
            "TORCHX_TRACKING_EXPERIMENT_NAME": "default-experiment",
        }
        if node == 0:
            expected_env["TORCHX_RANK0_HOST"] = "localhost"
        assert _env(container) == expected_env
        assert pod["restartPolicy"] == "Never"  # restarts are torchrun's and Volcano's job


def test_kubernetes_dryrun_swing_defaults_and_run_root_volume():
    args = ["-j", "2x2", "--mounts", "type=volume,src=dlrrec-runs,dst=/app/runs", "--", "--config", CONFIG]
    job = yaml.safe_load(torchx_dryrun("kubernetes", "swing", args))
    app_id = job["metadata"]["name"]
    assert app_id.startswith("dlrrec-swing-")
    assert job["spec"]["maxRetry"] == 0
    assert len(job["spec"]["tasks"]) == 2
    pod = job["spec"]["tasks"][1]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == components.DEFAULT_IMAGE == "ghcr.io/dlrrec/dlrrec:cpu"
    cmd = shlex.split(container["command"][2])
    assert cmd[:3] == ["torchrun", "--max-restarts", "0"]
    assert cmd[cmd.index("--nproc_per_node") + 1] == "2" and cmd[cmd.index("--nnodes") + 1] == "2"
    assert cmd[cmd.index("-m") :] == ["-m", "launch.cli", "similarity", "swing", "--config", CONFIG]
    assert container["resources"]["limits"] == {"cpu": "2000m", "memory": "8192M"}
    # the shared run root: a PersistentVolumeClaim mounted where configs put run_dir
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert list(claims.values()) == ["dlrrec-runs"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[next(iter(claims))] == "/app/runs"


def _slurm_groups(request: str) -> tuple[list[list[str]], list[list[str]]]:
    """(#SBATCH option groups, srun groups) of the generated heterogeneous job script."""
    sbatch = [shlex.split(line[len("#SBATCH ") :]) for line in request.splitlines() if line.startswith("#SBATCH --")]
    srun = request.split("\nsrun ", 1)[1].split("\nexitcode=", 1)[0]
    return sbatch, [shlex.split(group) for group in srun.split(" :\\\n")]


def test_slurm_dryrun_train_2x4():
    request = torchx_dryrun("slurm", "train", TRAIN_ARGS)
    assert request.splitlines()[0] == "sbatch --parsable $SBATCH_SCRIPT"
    assert "export TORCHX_MAX_RETRIES=1\n" in request  # --max_retries: requeues the job
    sbatch, srun = _slurm_groups(request)
    # one heterogeneous group per node, each a whole node's share of the job
    assert sbatch == [
        [
            f"--job-name=cli-{node}", "--requeue", "--partition=gpu", "--time=04:00:00",
            "--ntasks-per-node=1", "--cpus-per-task=16", "--mem=65536", "--gpus-per-task=4",
        ]
        for node in range(2)
    ]  # fmt: skip
    env = {**USER_ENV, "TORCHX_TRACKING_EXPERIMENT_NAME": "default-experiment", "LOGLEVEL": "WARNING"}
    env["TORCHX_JOB_ID"] = "slurm://torchx/$SLURM_JOB_ID"
    assert len(srun) == 2
    for node, group in enumerate(srun):
        assert group[:4] == [
            f"--output=slurm-$SLURM_JOB_ID-cli-{node}.out",
            f"--error=slurm-$SLURM_JOB_ID-cli-{node}.err",
            "--wait=60",
            "--kill-on-bad-exit=1",
        ]
        assert group[4] == "--export=ALL," + ",".join(f"{k}={v}" for k, v in env.items())
        assert group[5:7] == ["bash", "-c"] and len(group) == 8
        # every node rendezvouses at the first het group's host; Slurm runs in the
        # submitting directory with the active virtualenv, so there is no image
        assert shlex.split(group[7]) == torchrun_cmd(
            "SLURM_JOB_NODELIST_HET_GROUP_0", "$SLURM_JOB_ID", ["train", "--config", CONFIG, "epochs=3"]
        )


@pytest.mark.parametrize("component,job", [("train", ["train"]), ("swing", ["similarity", "swing"])])
def test_max_restarts_goes_to_torchrun(component: str, job: list[str]):
    make = getattr(components, component)
    for n in (0, 5):
        cmd = shlex.split(make("--config", "c.yaml", j="2x1", max_restarts=n).roles[0].args[1])
        assert cmd[:3] == ["torchrun", "--max-restarts", str(n)]
        assert cmd.count("--max-restarts") == 1
        assert cmd[cmd.index("-m") :] == ["-m", "launch.cli", *job, "--config", "c.yaml"]
    with pytest.raises(ValueError, match="--max_restarts"):
        make("--config", "c.yaml", max_restarts=-1)


def test_pipeline_submits_swing_and_train_with_its_image_resources_and_mounts():
    from torchx.runner import get_runner

    from dlrrec.config import build_dataclass, load_raw, section_values
    from launch.pipeline import PipelineConfig, stage_apps

    args = ["--image", IMAGE, "--gpu", "4", "--cpu", "16", "--memMB", "65536",
            "--mounts", "type=volume,src=dlrrec-runs,dst=/app/runs", "--", "--config", CONFIG]  # fmt: skip
    job = yaml.safe_load(torchx_dryrun("kubernetes", "pipeline", args))
    (container,) = job["spec"]["tasks"][0]["template"]["spec"]["containers"]
    assert container["image"] == IMAGE
    assert container["resources"]["limits"] == {"cpu": "16000m", "memory": "65536M"}  # the driver: no GPU
    # the driver's own command line: what the pipeline process parses
    argv = container["command"][container["command"].index("pipeline") + 1 :]
    config, overrides = argv[1], argv[2:]
    assert config == CONFIG
    pcfg = build_dataclass(PipelineConfig, section_values(load_raw(config, overrides, None), "pipeline"), "pipeline")
    apps = stage_apps(pcfg, argv)
    assert [(name, j) for name, j, _ in apps] == [("similarity", "1x2"), ("train", "1x2")]
    with get_runner() as runner:
        for name, _, app in apps:
            info = runner.dryrun(app, "kubernetes", cfg={"queue": "default", "namespace": "dlrrec"})
            pod = yaml.safe_load(str(info))["spec"]["tasks"][0]["template"]["spec"]
            (c,) = pod["containers"]
            assert c["image"] == IMAGE, name
            gpus = {"nvidia.com/gpu": "4"} if name == "train" else {}  # SWING runs on CPU
            assert c["resources"]["limits"] == {"cpu": "16000m", "memory": "65536M", **gpus}, name
            claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
            assert claims == ["dlrrec-runs"], name
            assert [m["mountPath"] for m in c["volumeMounts"] if m["mountPath"] == "/app/runs"] == ["/app/runs"]
