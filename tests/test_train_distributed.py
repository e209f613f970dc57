"""Multi-process training on CPU: 2 processes (gloo) against 1, DeepSpeed ZeRO-2/3 with resume,
``accelerate launch`` with the shipped configs, and the launch configs themselves.

Every run is the real ``python -m cgmed.train`` started by ``torchrun`` / ``accelerate launch``
in a subprocess (CUDA hidden, one thread per process), on a tiny Qwen2-VL and a small synthetic
split. FSDP2 has no training test: accelerate does not run FSDP on CPU processes (it leaves the
run undistributed), so the test here is that cgmed refuses instead of training unsynchronised copies.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from cgmed.conf import CONF_DIR, DEEPSPEED_DIR
from cgmed.data.build import build_from_config
from cgmed.data.source import DataConfig
from cgmed.data.split import OptionsConfig, SplitConfig
from cgmed.data.synth import SynthConfig
from cgmed.models import init_tiny

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 240  # seconds per launched run; a run takes 5-15 s here
STEPS = 4
# lr high enough that 4 steps move the weights well beyond the comparison tolerances
COMMON = [
    f"train.max_steps={STEPS}",
    "train.lr=1e-3",
    "train.warmup_steps=1",
    "train.seed=7",
    "train.group_by_length=true",
    "train.progress_bar=false",
    "train.tensorboard=false",
]
# Losses of 1 process (batch 2B) and 2 processes (batch B each) agree to float32 rounding: the
# global batch holds the same samples, the loss is normalised by the global token count and the
# gradients are averaged over ranks; only the order of float additions differs (two padded
# widths instead of one, a gloo all-reduce). Observed: losses bitwise equal at lr 1e-3 and
# <= 1.4e-7 relative at lr 2e-5, grad norms <= 1e-7 relative, weights <= 7.2e-7 apart after
# updates of ~3e-3. A schedule or normalisation bug moves them by 1e-3 or more.
LOSS_TOL = dict(rel=1e-6, abs=1e-7)
WEIGHT_TOL = dict(rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return init_tiny("qwen2_vl", tmp_path_factory.mktemp("tiny_dist") / "qwen2_vl", seed=0)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """A synthetic split with 56 px images (the tiny model's size); ~290 training records."""
    root = tmp_path_factory.mktemp("split_dist")
    cfg = SplitConfig(
        targets=[{"modality": "CT", "area": "Lung", "task": "Cancer"}],
        options=OptionsConfig(mode="rebuild", order="sorted"),
    )
    build_from_config(
        DataConfig(root=None, cache_dir=str(root / "cache")),
        cfg,
        SynthConfig(images_per_subset=24, image_size=56),
        root / "split",
    )
    return root / "split" / "train.jsonl"


@pytest.fixture(scope="module")
def small_bucket_configs(tmp_path_factory) -> dict[str, Path]:
    """The shipped DeepSpeed JSONs with only the communication bucket sizes lowered.

    The shipped 5e8-element buckets are right for GPUs; on CPU DeepSpeed allocates and clears
    buffers of that size (2 GB in fp32) every step, which takes ~4 s per step here instead of
    ~0.15 s. Nothing else changes, and the losses are the same either way.
    """
    root = tmp_path_factory.mktemp("ds_configs")
    out = {}
    for stage in ("zero2", "zero3"):
        cfg = json.loads((DEEPSPEED_DIR / f"{stage}.json").read_text())
        zero = cfg["zero_optimization"]
        for key in [k for k in zero if k.endswith("bucket_size")]:
            zero[key] = 5_000_000
        out[stage] = root / f"{stage}.json"
        out[stage].write_text(json.dumps(cfg, indent=1))
    return out


def _env() -> dict[str, str]:
    """CPU only, one thread per process, no launcher settings inherited from the caller."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ACCELERATE_", "FSDP_", "DS_"))
        and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    }
    env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(prefix: list[str], tiny: Path, manifest: Path, out: Path, *overrides: str) -> str:
    """Run the trainer under ``prefix``; assert it succeeded; return its stdout."""
    cmd = [
        *prefix,
        f"model.path={tiny}",
        f"data.train_manifest={manifest}",
        *COMMON,
        *overrides,
        f"hydra.run.dir={out}",
    ]
    res = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    if res.returncode != 0:
        # the ranks' own errors first: torchrun's summary at the end of stderr names no cause
        causes = [ln for ln in res.stderr.splitlines() if "error" in ln.lower() or ln.startswith("  fix:")]
        pytest.fail(
            f"{' '.join(cmd)}\nexit {res.returncode}\n--- errors\n"
            + "\n".join(dict.fromkeys(causes))[-3000:]
            + f"\n--- stderr\n{res.stderr[-4000:]}"
        )
    return res.stdout


def torchrun(n: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={n}",
        "-m",
        "cgmed.train",
    ]


SINGLE = [sys.executable, "-m", "cgmed.train"]


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def column(out: Path, key: str) -> list[float]:
    return [r[key] for r in rows(out)]


def assert_weights_close(a_dir: Path, b_dir: Path, init_dir: Path) -> None:
    import torch

    a, b = load_file(str(a_dir / "model.safetensors")), load_file(str(b_dir / "model.safetensors"))
    init = load_file(str(init_dir / "model.safetensors"))
    # the same tensor names as the base checkpoint: other tools (vLLM, transformers) read final/ too
    for name, got in (("a", a), ("b", b)):
        odd = sorted(set(got) ^ set(init))
        assert not odd, f"{name}: final/ tensor names differ from the base checkpoint's, e.g. {odd[:4]}"
    moved = max((a[k].float() - init[k].float()).abs().max().item() for k in a)
    assert moved > 100 * WEIGHT_TOL["atol"], f"training barely moved the weights ({moved}): the check is void"
    for k in a:
        torch.testing.assert_close(a[k], b[k], **WEIGHT_TOL, msg=lambda m, k=k: f"{k}: {m}")


def assert_sane(out: Path) -> None:
    got = rows(out)
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    for r in got:
        assert math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) and r["grad_norm"] > 0, r
    assert got[-1]["loss"] < got[0]["loss"] - 0.3, [r["loss"] for r in got]  # ~7.1 -> ~6.1 here


@pytest.fixture(scope="module")
def ddp_run(tiny, manifest, tmp_path_factory) -> Path:
    """2 processes x batch 2 with DDP (the default distributed group), full fine-tuning."""
    out = tmp_path_factory.mktemp("ddp") / "run"
    launch(torchrun(2), tiny, manifest, out, "train.per_device_batch_size=2")
    return out


# --------------------------------------------------------------------------- DDP


def test_two_processes_equal_one_process_with_the_same_global_batch(ddp_run, tiny, manifest, tmp_path):
    single = tmp_path / "single"
    launch(SINGLE, tiny, manifest, single, "train.per_device_batch_size=4")
    assert_sane(ddp_run)
    assert_sane(single)
    one, two = rows(single), rows(ddp_run)
    # the schedule counts optimizer steps, whatever the number of processes
    assert [r["lr"] for r in two] == [r["lr"] for r in one]
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], **LOSS_TOL)
    assert [r["grad_norm"] for r in two] == pytest.approx([r["grad_norm"] for r in one], rel=1e-6)
    # throughput counts every rank's samples
    assert all(r["samples_per_s"] > 0 for r in two)
    assert_weights_close(single / "final", ddp_run / "final", tiny)


def test_global_batch_size_gives_one_and_two_processes_the_explicit_runs_batch(tiny, manifest, tmp_path):
    """``train.global_batch_size=8`` derives grad_accum 2 for 1 process x 4 and for 2 processes x 2:
    the same global batch, and the same losses, as ``train.grad_accum=2`` given explicitly."""
    explicit, one, two = tmp_path / "explicit", tmp_path / "one", tmp_path / "two"
    launch(SINGLE, tiny, manifest, explicit, "train.per_device_batch_size=4", "train.grad_accum=2")
    launch(SINGLE, tiny, manifest, one, "train.per_device_batch_size=4", "train.global_batch_size=8")
    launch(torchrun(2), tiny, manifest, two, "train.per_device_batch_size=2", "train.global_batch_size=8")
    for out, per_device, world in ((one, 4, 1), (two, 2, 2)):
        batch = {
            "global_batch_size": 8,
            "per_device_batch_size": per_device,
            "grad_accum": 2,
            "world_size": world,
        }
        resolved = json.loads((out / "resolved_config.json").read_text())
        assert resolved["run"] == {**batch, "engine": "ddp"} and resolved["train"]["grad_accum"] == 2
        assert {k: rows(out)[0][k] for k in batch} == batch
        state = json.loads((out / "checkpoints" / f"step-{STEPS:06d}" / "trainer_state.json").read_text())
        assert (state["global_batch"], state["grad_accum"], state["world_size"]) == (8, 2, world)
        assert not (out / "cgmed.lock").exists()  # the ranks' one lock, released
    assert column(one, "loss") == column(explicit, "loss")
    assert column(two, "loss") == pytest.approx(column(explicit, "loss"), **LOSS_TOL)
    assert column(two, "lr") == column(explicit, "lr")
    assert_weights_close(two / "final", explicit / "final", tiny)


# --------------------------------------------------------------------------- DeepSpeed


@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_deepspeed_checkpoints_and_resumes_exactly(
    stage, ddp_run, tiny, manifest, small_bucket_configs, tmp_path
):
    ds = [f"distributed=deepspeed_{stage}", f"distributed.deepspeed_config={small_bucket_configs[stage]}"]
    args = [*ds, "train.per_device_batch_size=2", "train.save_every=2"]

    # uninterrupted
    full = tmp_path / "full"
    launch(torchrun(2), tiny, manifest, full, *args)
    assert_sane(full)
    ckpt = full / "checkpoints" / "step-000002"
    assert json.loads((ckpt / "trainer_state.json").read_text())["step"] == 2
    assert (ckpt / "pytorch_model").is_dir() and (ckpt / "random_states_1.pkl").is_file()  # DeepSpeed layout
    assert (full / "final" / "model.safetensors").is_file()
    # the same optimisation as DDP (ZeRO shards optimizer state / parameters, not the maths);
    # DeepSpeed clips with its own norm computation, so agreement is to ~1e-6, not bitwise
    assert column(full, "loss") == pytest.approx(column(ddp_run, "loss"), rel=1e-5)
    assert column(full, "lr") == column(ddp_run, "lr")

    # interrupted after 2 steps, then the same command with train.resume=auto
    part = tmp_path / "part"
    stdout = launch(torchrun(2), tiny, manifest, part, *args, "train.stop_after_steps=2")
    assert "stopped early" in stdout
    assert [r["step"] for r in rows(part)] == [1, 2]
    assert not (part / "final").exists()
    stdout = launch(torchrun(2), tiny, manifest, part, *args, "train.resume=auto")
    assert "finished at step 4" in stdout
    resumed = rows(part)
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    # Observed bitwise equal (fp32 on CPU, one thread per rank); compared with a float32-rounding
    # tolerance so that only a real difference (optimizer state, lr, data position) fails.
    assert column(part, "loss") == pytest.approx(column(full, "loss"), **LOSS_TOL)
    assert column(part, "grad_norm") == pytest.approx(column(full, "grad_norm"), rel=1e-6)
    assert column(part, "lr") == column(full, "lr")
    assert_weights_close(part / "final", full / "final", tiny)


def test_accelerate_launch_with_the_shipped_deepspeed_yaml(tiny, manifest, small_bucket_configs, tmp_path):
    """``accelerate launch --config_file launch/accelerate/deepspeed_zero2.yaml``, 2 CPU processes.

    The JSON's "auto" micro batch size must be filled by cgmed: accelerate only fills it from a
    prepared DataLoader. The yaml is the shipped one with the JSON path swapped for the
    small-bucket copy (see ``small_bucket_configs``).
    """
    text = (REPO / "launch" / "accelerate" / "deepspeed_zero2.yaml").read_text()
    assert "cgmed/conf/deepspeed/zero2.json" in text
    yaml_path = tmp_path / "zero2.yaml"
    yaml_path.write_text(text.replace("cgmed/conf/deepspeed/zero2.json", str(small_bucket_configs["zero2"])))
    prefix = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(yaml_path),
        "--num_processes", "2",
        "--main_process_port", str(_free_port()),
        "-m", "cgmed.train",
    ]  # fmt: skip
    out = tmp_path / "run"
    launch(prefix, tiny, manifest, out, "train.per_device_batch_size=2")
    assert_sane(out)
    assert (out / "final" / "model.safetensors").is_file()


# --------------------------------------------------------------------------- FSDP2


def test_fsdp2_on_cpu_processes_is_refused(tiny, manifest, tmp_path):
    """accelerate sets up FSDP only on GPUs (and NPUs, XPUs ...): on CPU it returned a
    non-distributed Accelerator and each rank trained its own copy. cgmed stops with the reason."""
    cmd = [*torchrun(2), f"model.path={tiny}", f"data.train_manifest={manifest}", *COMMON]
    cmd += ["distributed=fsdp2", "train.per_device_batch_size=2", f"hydra.run.dir={tmp_path / 'run'}"]
    res = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert res.returncode != 0
    assert "distributed.fsdp" in res.stderr and "FSDP2 needs GPUs" in res.stderr, res.stderr[-3000:]
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


# --------------------------------------------------------------------------- launch configs (fast)

ACCEL = REPO / "launch" / "accelerate"
DS_JSON = DEEPSPEED_DIR


@pytest.mark.parametrize("path", sorted(DS_JSON.glob("*.json")), ids=lambda p: p.name)
def test_deepspeed_json_stage_matches_its_name(path):
    cfg = json.loads(path.read_text())
    stage = int(path.stem.removeprefix("zero")[0])
    assert cfg["zero_optimization"]["stage"] == stage
    # cgmed fills these from train.*; a fixed value would silently override the train config
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size"):
        assert cfg[key] == "auto", key


@pytest.mark.parametrize(
    "path", sorted((CONF_DIR / "distributed").glob("deepspeed_*.yaml")), ids=lambda p: p.name
)
def test_distributed_group_points_at_the_matching_json(path):
    import yaml

    target = CONF_DIR / yaml.safe_load(path.read_text())["deepspeed_config"]
    assert target.is_file()
    assert target.stem == path.stem.removeprefix("deepspeed_")


EXPECTED = {
    "ddp": dict(distributed_type="MULTI_GPU", env={}),
    "deepspeed_zero2": dict(
        distributed_type="DEEPSPEED",
        env={
            "ACCELERATE_USE_DEEPSPEED": "true",
            "ACCELERATE_DEEPSPEED_CONFIG_FILE": "cgmed/conf/deepspeed/zero2.json",
        },
    ),
    "deepspeed_zero3": dict(
        distributed_type="DEEPSPEED",
        env={
            "ACCELERATE_USE_DEEPSPEED": "true",
            "ACCELERATE_DEEPSPEED_CONFIG_FILE": "cgmed/conf/deepspeed/zero3.json",
            "ACCELERATE_DEEPSPEED_ZERO3_INIT": "true",
        },
    ),
    "fsdp2": dict(
        distributed_type="FSDP",
        env={
            "ACCELERATE_USE_FSDP": "true",
            "FSDP_VERSION": "2",
            "FSDP_STATE_DICT_TYPE": "SHARDED_STATE_DICT",
        },
    ),
}


def test_every_accelerate_yaml_is_expected():
    assert sorted(p.stem for p in ACCEL.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_accelerate_yaml_loads_and_launches_8_processes(name, monkeypatch):
    """Each yaml goes through accelerate's own loader, launch validation and launcher environment,
    and the plugin accelerate then builds in the training process (everything but starting it)."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import DeepSpeedPlugin, FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    path = ACCEL / f"{name}.yaml"
    want = EXPECTED[name]
    cfg = load_config_from_file(str(path))
    assert cfg.distributed_type.value == want["distributed_type"]
    assert cfg.num_processes == 8 and cfg.num_machines == 1 and not cfg.use_cpu

    monkeypatch.chdir(REPO)  # the yamls name the DeepSpeed JSONs relative to the repository
    args = launch_command_parser().parse_args(
        ["--config_file", str(path), "-m", "cgmed.train", "experiment=x"]
    )
    args, defaults, mp_from_config = _validate_launch_command(args)
    assert args.num_processes == 8
    if args.use_deepspeed:
        # as accelerate's launch_command does: these fields are checked against the JSON file
        fields = list(defaults.deepspeed_config) + (["mixed_precision"] if mp_from_config else [])
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        _, env = prepare_deepspeed_cmd_env(args)
    else:
        env = prepare_multi_gpu_env(args)
        assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    for key, value in want["env"].items():
        assert env.get(key) == value, key
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if name.startswith("deepspeed"):
        plugin = DeepSpeedPlugin()  # raises if the yaml sets a field the JSON file owns
        assert plugin.zero_stage == int(name[-1])
        assert plugin.deepspeed_config["zero_optimization"]["stage"] == int(name[-1])
    elif name == "fsdp2":
        plugin = FullyShardedDataParallelPlugin()
        assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True


def test_cg_protocol_under_torchrun_with_deepspeed_zero3(small_bucket_configs, tmp_path):
    """cgmed-cg on every rank: data and reports on rank 0, two ZeRO-3 trainings in one process
    (accelerate allows one DeepSpeed plugin per process), evaluation of the saved models."""
    out = tmp_path / "cg"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "cgmed.cg",
        "experiment=demo",
        "cg.only=[ct_lung_cancer]",
        f"data.cache_dir={tmp_path / 'cache'}",
        "synth.images_per_subset=40",
        "synth.image_size=56",
        "cg.tiny_base.image_size=56",
        "cg.tiny_base.text_hidden=64",
        "cg.tiny_base.text_layers=2",
        "cg.tiny_base.vision_hidden=32",
        "cg.tiny_base.vision_layers=2",
        "train.max_steps=3",
        "train.per_device_batch_size=4",
        "distributed=deepspeed_zero3",
        f"distributed.deepspeed_config={small_bucket_configs['zero3']}",
        f"hydra.run.dir={out}",
    ]
    res = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=2 * TIMEOUT)
    assert res.returncode == 0, res.stderr[-4000:]
    report = json.loads((out / "cg_report.json").read_text())
    (row,) = report["targets"]
    assert {"baseline", "baseline_plus", "trained", "seen_accuracy"} <= set(row)
    for arm in ("trained", "baseline_plus"):
        final = out / "ct_lung_cancer" / "seed-0" / arm / "final" / "model.safetensors"
        # the same tensor names as the base checkpoint (no ZeRO-3 "model.model." renaming)
        assert set(load_file(str(final))) == set(load_file(str(out / "base" / "model.safetensors")))
        steps = [
            json.loads(x)["step"] for x in (final.parent.parent / "metrics.jsonl").read_text().splitlines()
        ]
        assert steps == [1, 2, 3]


def test_a_failure_on_the_main_process_stops_every_rank(tmp_path):
    """Splits are built on rank 0 only; when that fails (here: unreadable images with
    data.on_bad_sample=fail) rank 1 must stop too, not wait at a barrier until the timeout."""
    from cgmed.data.source import DataConfig, open_source
    from cgmed.data.synth import SynthConfig, write_release

    root = tmp_path / "world"
    synth = SynthConfig(
        modalities=["CT", "MRI", "X-ray"], areas=["Lung", "Brain"], images_per_subset=20, image_size=56
    )
    write_release(synth, root)
    source = open_source(DataConfig(root=str(root)), root)
    (brain,) = [s for s, i in source.subsets().items() if i.triplet == ("CT", "Brain", "Cancer")]
    for rec in json.loads((root / "Aggregated_Subsets" / f"Subset--{brain}-train.json").read_text()):
        (root / rec["image"]).write_bytes(b"not a png")  # a Related subset of the demo's first target
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "cgmed.cg",
        "experiment=demo",
        "cg.only=[ct_lung_cancer]",
        f"data.root={root}",
        "cg.tiny_base.image_size=56",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    res = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert res.returncode != 0
    # rank 0 names the bad records; rank 1 stops with a pointer to it, both as people-facing errors
    assert "cgmed-cg: error: data: 18 bad sample(s) (unreadable image: 18)" in res.stderr
    assert "cgmed-cg: error: stopped on rank 1: the main process failed with DataError" in res.stderr
    assert not (tmp_path / "run" / "ct_lung_cancer" / "seed-0").exists()
