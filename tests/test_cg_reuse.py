"""Train once what is the same (``cgmed.cg.reuse``): targets whose training data coincide train
once, across targets of a run and across run directories (``cg.reuse_from``); anything that
changes the weights trains again; ``cg.reuse=false`` trains every arm; a reuse whose original
disappeared or changed is refused; the report and the dry run say which arms were shared."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import cgmed.train.loop
from cgmed.cg.config import CGApp, CGConfig, CGTarget, TinyBase
from cgmed.cg.protocol import run_protocol
from cgmed.cg.records import MODEL_KEYS, OUTPUT_TRAIN_KEYS, TINY_BASE_MARKER, read_stage_doc
from cgmed.cg.reuse import NO_TRAINING_FOLDERS, base_identity, reused_training, training_identity
from cgmed.data.imaging import ImageConfig
from cgmed.data.source import DataConfig
from cgmed.data.split import OptionsConfig, SplitConfig
from cgmed.data.synth import SynthConfig
from cgmed.errors import ConfigError
from cgmed.eval.score import EvalConfig
from cgmed.models.processor_cache import RUN_CACHE_FOLDER
from cgmed.train.config import ModelConfig, PeftConfig, TrainConfig

CT_LUNG = {"modality": "CT", "area": "Lung", "task": "Cancer"}
RELATED = [
    {"modality": "CT", "area": "Brain", "task": "Cancer"},
    {"modality": "MRI", "area": "Lung", "task": "Cancer"},
]
# the same row of Table 3 under two names: the same Related and Unrelated data
TWINS = [
    CGTarget(name="a", target=CT_LUNG, related=RELATED),
    CGTarget(name="b", target=CT_LUNG, related=RELATED),
]


def tiny_app(cache: Path, targets=TWINS, train: dict | None = None, **cg_kw) -> CGApp:
    """A few training steps of a tiny model on a 12-subset world."""
    cg = {"targets": list(targets), "tiny_base": TinyBase(), "eval_seen": False, "plots": False, **cg_kw}
    return CGApp(
        cg=CGConfig(**cg),
        data=DataConfig(cache_dir=str(cache)),
        split=SplitConfig(cap_per_subset=8, options=OptionsConfig(mode="rebuild", order="sorted")),
        synth=SynthConfig(
            modalities=["CT", "MRI", "X-ray"],
            areas=["Lung", "Brain"],
            images_per_subset=20,
            image_size=56,
            test_fraction=0.2,
        ),
        train=TrainConfig(
            **{
                "max_steps": 2,
                "per_device_batch_size": 4,
                "lr": 1e-3,
                "progress_bar": False,
                "tensorboard": False,
            }
            | (train or {})
        ),
        eval=EvalConfig(batch_size=16, bootstrap=20),
    )


def counted_run(app: CGApp, run: Path, **kw) -> tuple[dict, list[str]]:
    """The protocol's report and the output folders of the trainings it ran."""
    trained: list[str] = []
    real_train = cgmed.train.loop.train

    def counting_train(*args, **kwargs):
        trained.append(Path(args[5]).relative_to(run).as_posix())
        return real_train(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cgmed.train.loop, "train", counting_train)
        doc = run_protocol(app, run, **kw)
    return doc, trained


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """One run of the twin targets (Trained and Baseline+, one seed)."""
    root = tmp_path_factory.mktemp("reuse")
    doc, trained = counted_run(tiny_app(root / "cache"), root / "run")
    return root, doc, trained


def test_identical_training_data_train_once(twins):
    root, doc, trained = twins
    run = root / "run"
    for split in ("related", "unrelated"):  # the premise: the two targets' manifests are the same bytes
        a, b = (run / t / "splits" / split / "train.jsonl" for t in "ab")
        assert a.read_bytes() == b.read_bytes()
    assert trained == ["a/seed-0/trained", "a/seed-0/baseline_plus"]
    for arm in ("trained", "baseline_plus"):
        original, reuse = run / "a" / "seed-0" / arm, run / "b" / "seed-0" / arm
        assert (original / "final" / "model.safetensors").is_file()
        assert not (reuse / "final").exists() and not (reuse / "checkpoints").exists()
        record, first = read_stage_doc(reuse), read_stage_doc(original)
        assert record["reused_from"] == f"../../../a/seed-0/{arm}"
        assert record["reused_from_absolute"] == str(original.resolve())
        assert record["identity"] == first["identity"] and "reused_from" not in first
        assert record["settings"] == first["settings"]
        # the evaluation loaded the original's final/, and says so
        model = read_stage_doc(reuse / "eval")["settings"]["model"]
        assert (reuse / "eval" / model).resolve() == (original / "final").resolve()
        assert (reuse / "eval" / "predictions.jsonl").read_text() == (
            original / "eval" / "predictions.jsonl"
        ).read_text()
    row_a, row_b = doc["targets"]
    assert "reused_from" not in row_a["trained"] and "reused_from" not in row_a["baseline_plus"]
    assert row_b["trained"]["reused_from"] == ["a/seed-0/trained"]
    assert row_b["baseline_plus"]["reused_from"] == ["a/seed-0/baseline_plus"]
    assert row_b["trained"]["accuracy"] == row_a["trained"]["accuracy"]
    assert json.loads((run / "cg_report.json").read_text())["targets"][1]["trained"]["reused_from"] == [
        "a/seed-0/trained"
    ]
    md = (run / "cg_report.md").read_text()
    assert (
        "Shared training (b): Trained seed 0 = a/seed-0/trained; Baseline+ seed 0 = a/seed-0/baseline_plus"
        in md
    )
    assert "Shared training (a)" not in md


def test_rerun_and_dry_run_keep_the_sharing(twins, capsys):
    root, doc, _ = twins
    again, trained = counted_run(tiny_app(root / "cache"), root / "run")
    assert trained == [] and again["targets"] == doc["targets"]
    capsys.readouterr()
    run_protocol(tiny_app(root / "cache"), root / "run", dry_run=True)
    plan = capsys.readouterr().out
    target_b = plan[plan.index("target b:") :]
    assert "trains once: Baseline+ seed 0 uses a/seed-0/baseline_plus's training" in target_b
    assert "trains once: Trained seed 0 uses a/seed-0/trained's training" in target_b
    assert "trains once" not in plan[: plan.index("target b:")]
    run_protocol(tiny_app(root / "cache", reuse=False), root / "run", dry_run=True)
    assert "trains once" not in capsys.readouterr().out


def test_reuse_off_trains_every_arm(twins, tmp_path):
    root, _, _ = twins
    doc, trained = counted_run(tiny_app(root / "cache", baseline_plus=False, reuse=False), tmp_path / "run")
    assert trained == ["a/seed-0/trained", "b/seed-0/trained"]
    assert not any("reused_from" in row["trained"] for row in doc["targets"])
    a, b = (read_stage_doc(tmp_path / "run" / t / "seed-0" / "trained") for t in "ab")
    assert a["identity"] == b["identity"]  # the same training, trained twice as asked


def test_reuse_across_run_directories(twins, tmp_path):
    root, _, _ = twins
    first = root / "run"
    cache = root / "cache"
    doc, trained = counted_run(
        tiny_app(cache, targets=TWINS[:1], reuse_from=[str(first)]), tmp_path / "other"
    )
    assert trained == []  # its own tiny base, identical in content, in its own folder
    assert base_identity(str(tmp_path / "other" / "base")) == base_identity(str(first / "base"))
    (row,) = doc["targets"]
    assert row["trained"]["reused_from"] == [str((first / "a" / "seed-0" / "trained").resolve())]
    record = read_stage_doc(tmp_path / "other" / "a" / "seed-0" / "trained")
    assert record["reused_from"] == os.path.relpath(
        first / "a" / "seed-0" / "trained", tmp_path / "other" / "a" / "seed-0" / "trained"
    )
    # a weight-changing key trains again, in spite of cg.reuse_from
    changed = tiny_app(
        cache, targets=TWINS[:1], baseline_plus=False, reuse_from=[str(first)], train={"lr": 2e-3}
    )
    doc, trained = counted_run(changed, tmp_path / "lr")
    assert trained == ["a/seed-0/trained"] and "reused_from" not in doc["targets"][0]["trained"]


def test_reuse_record_refused_when_the_original_changes(twins, tmp_path):
    root, _, _ = twins
    elsewhere = tmp_path / "elsewhere"
    original = elsewhere / "trained"
    shutil.copytree(root / "run" / "a" / "seed-0" / "trained", original)
    first = read_stage_doc(original)
    settings, identity = first["settings"], first["identity"]
    cg = CGConfig(reuse_from=[str(elsewhere)])
    out = tmp_path / "run" / "t" / "seed-0" / "trained"
    assert reused_training(cg, out, settings, identity, None) == original.resolve()
    assert read_stage_doc(out)["reused_from"] == "../../../../elsewhere/trained"
    assert reused_training(cg, out, settings, identity, None) == original.resolve()  # the record is followed
    with pytest.raises(ConfigError, match="another training identity than this run's"):
        reused_training(cg, out, settings, "0" * 64, None)  # e.g. another base model's content

    (original / "stage.json").write_text(json.dumps({**first, "identity": "1" * 64}))
    with pytest.raises(ConfigError, match=f"{out}.*{original}, which holds another training now") as refused:
        reused_training(cg, out, settings, identity, None)
    assert "cg.redo=[train]" in str(refused.value)
    # cg.redo=[train] drops the record (and what was evaluated beside it), never the original
    assert (
        reused_training(CGConfig(reuse_from=cg.reuse_from, redo=["train"]), out, settings, identity, None)
        is None
    )
    assert not out.exists() and (original / "final" / "model.safetensors").is_file()

    (original / "stage.json").write_text(json.dumps(first))
    assert reused_training(cg, out, settings, identity, None) == original.resolve()
    shutil.rmtree(elsewhere)
    with pytest.raises(ConfigError, match=f"{out} reuses the training in .*elsewhere/trained, which is gone"):
        reused_training(cg, out, settings, identity, None)


def test_the_search_skips_the_run_caches():
    assert RUN_CACHE_FOLDER in NO_TRAINING_FOLDERS  # thousands of files, never a training


def test_a_half_finished_training_is_not_reused(twins, tmp_path):
    root, _, _ = twins
    half = tmp_path / "elsewhere" / "trained"
    shutil.copytree(root / "run" / "a" / "seed-0" / "trained", half)
    (half / "final" / "model.safetensors").unlink()  # as a killed save leaves it
    first = read_stage_doc(half)
    out = tmp_path / "run" / "t" / "seed-0" / "trained"
    cg = CGConfig(reuse_from=[str(tmp_path / "elsewhere")])
    assert reused_training(cg, out, first["settings"], first["identity"], None) is None
    assert not out.exists()


# ---------------------------------------------------------------------------------- the identity


def fake_base(folder: Path, weights: bytes = b"weights", tiny: bool = True) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(weights)
    if tiny:
        (folder / TINY_BASE_MARKER).write_text(json.dumps({"where": str(folder)}))
    return folder


def changed(value):
    """Another value of the same kind (settings are not validated here, only hashed)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "-other"
    if value is None:
        return 8
    if isinstance(value, list):
        return [*value, 1]
    if isinstance(value, dict):
        return {**value, "other": 1}
    first = dataclasses.fields(value)[0].name
    return dataclasses.replace(value, **{first: changed(getattr(value, first))})


SETTINGS = (
    [("train", f.name) for f in dataclasses.fields(TrainConfig)]
    + [("peft", f.name) for f in dataclasses.fields(PeftConfig)]
    + [("model", k) for k in MODEL_KEYS]
    + [("image", f.name) for f in dataclasses.fields(ImageConfig)]
)


@pytest.mark.parametrize(("group", "key"), SETTINGS, ids=[f"{g}.{k}" for g, k in SETTINGS])
def test_identity_changes_with_every_weight_setting(tmp_path, group, key):
    app = CGApp(model=ModelConfig(path=str(fake_base(tmp_path / "base"))), train=TrainConfig(max_steps=2))
    before = training_identity(app, app.train, "m" * 64)
    config = dataclasses.replace(getattr(app, group))
    setattr(config, key, changed(getattr(config, key)))
    app = dataclasses.replace(app, **{group: config}) if group != "train" else app
    after = training_identity(app, config if group == "train" else app.train, "m" * 64)
    # train keys that place, log or pace a training; image keys that say where results are kept
    same_weights = (group == "train" and key in OUTPUT_TRAIN_KEYS) or (
        group == "image" and key not in ImageConfig().describe()
    )
    assert (after == before) == same_weights


def test_identity_of_data_base_model_curves_and_processes(tmp_path, monkeypatch):
    def identity(base: Path | str, manifest="m" * 64, curves=None, **train) -> str:
        app = CGApp(model=ModelConfig(path=str(base)), train=TrainConfig(per_device_batch_size=4, **train))
        return training_identity(app, app.train, manifest, curves)

    base = fake_base(tmp_path / "run1" / "base")
    reference = identity(base)
    assert identity(fake_base(tmp_path / "run2" / "base")) == reference  # the same content elsewhere
    assert identity(fake_base(tmp_path / "run3" / "base", weights=b"other")) != reference
    assert identity(base, manifest="n" * 64) != reference
    curve = tmp_path / "curve.jsonl"
    curve.write_text("{}\n")
    with_curve = identity(base, curves={"target": str(curve)})
    assert with_curve != reference
    curve.write_text("[]\n")
    assert identity(base, curves={"target": str(curve)}) != with_curve
    # a local model by its place (not hashed); a hub id by its name
    plain = fake_base(tmp_path / "plain", tiny=False)
    assert base_identity(str(plain)) == f"local:{plain.resolve()}"
    assert base_identity("Qwen/Qwen2-VL-2B-Instruct") == "hub:Qwen/Qwen2-VL-2B-Instruct"
    # the process count changes the step's batch unless train.global_batch_size fixes it
    fixed = identity(base, global_batch_size=8)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert identity(base) != reference
    assert identity(base, global_batch_size=8) == fixed


RANKS_SCRIPT = """
import json, sys
import torch.distributed
from pathlib import Path
import cgmed.cg.reuse as reuse
from cgmed.cg.config import CGConfig
from cgmed.train.config import DistributedConfig
from cgmed.train.distributed import init_process_state

state = init_process_state(DistributedConfig())  # as cgmed-cg starts every rank
assert state.num_processes == 2
if state.process_index == 1:  # as if this rank did not see the original yet (a file system that lags)
    reuse.find_training = lambda *args, **kwargs: None
elsewhere, out = sys.argv[1:3]
record = json.loads((Path(elsewhere) / "trained" / "stage.json").read_text())
found = reuse.reused_training(CGConfig(reuse_from=[elsewhere]), Path(out), record["settings"], record["identity"], None)
# one file per rank: lines printed by two processes to one pipe may interleave
Path(out).parent.mkdir(parents=True, exist_ok=True)
(Path(out).parent / f"rank{state.process_index}.txt").write_text(f"rank {state.process_index} uses {found}")
state.wait_for_everyone()
# torn down before exit: a gloo group left to the interpreter's shutdown may abort a rank
torch.distributed.destroy_process_group()
"""


def test_every_rank_follows_the_main_process(twins, tmp_path):
    root, _, _ = twins
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(root / "run" / "a" / "seed-0" / "trained", elsewhere / "trained")
    script = tmp_path / "ranks.py"
    script.write_text(RANKS_SCRIPT)
    out = tmp_path / "run" / "t" / "seed-0" / "trained"
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    done = subprocess.run(
        [*launch, str(script), str(elsewhere), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    original = (elsewhere / "trained").resolve()
    assert [(out.parent / f"rank{rank}.txt").read_text() for rank in (0, 1)] == [
        f"rank 0 uses {original}",
        f"rank 1 uses {original}",
    ]
    assert read_stage_doc(out)["reused_from_absolute"] == str(original)
