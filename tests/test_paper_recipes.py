"""The paper configs hold the paper's training setting, and the experiments are fixed where the
paper's design needs it: what the dry run says about each arm, the image-size caps, the global
batch, LLaVA's frozen vision tower, Table 5's Baseline+, Table 16's refusal on LLaVA-1.5, Table 10's
two-element rows and the sizes of the scaling arms."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from cgmed.cg.config import CGApp, CGConfig
from cgmed.cg.recipe import check_few_shot_fits, prompt_budget
from cgmed.cg.report import note_lines
from cgmed.cg.results import SplitSummary
from cgmed.cg.run import run_groups
from cgmed.cli.hydra_app import CONF_DIR, register_configs, typed_config
from cgmed.data.manifest import read_jsonl
from cgmed.data.split import resolve_ids, select_train, shared_elements
from cgmed.data.subsets import MEDMAT_SUBSETS
from cgmed.data.synth import SynthConfig, write_release
from cgmed.data.vocab import Vocabulary
from cgmed.errors import ConfigError
from cgmed.train.config import ModelConfig, resolve_global_batch

REPO = Path(__file__).resolve().parents[1]
PAPER = CONF_DIR / "experiment" / "paper"
GROUPS = ("cg", "data", "split", "synth", "model", "train", "peft", "distributed", "eval")
STANDIN = {"images_per_subset": 32, "image_size": 32, "test_fraction": 0.25, "medmat_detection": True}
VOCAB = Vocabulary()
QWEN_TOKEN_PIXELS = 28 * 28  # one Qwen2-VL visual token per 28 x 28 block


def typed(overrides: list[str]) -> dict:
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return typed_config(compose(config_name="config", overrides=overrides), GROUPS)


@pytest.fixture(scope="module")
def standin(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("medmat_standin")
    write_release(SynthConfig(layout="medmat", **STANDIN), root)
    return root


def dry_run(name: str, root: Path, run_dir: Path, extra: list[str] = ()) -> dict:
    t = typed([f"experiment=paper/{name}", f"data.root={root}", *extra])
    run_groups(t, run_dir, dry_run=True)
    return t


# ------------------------------------------------------------------------------ recipes


@pytest.mark.parametrize("base", ["_llava", "_qwen2vl", "_llama32v"])
def test_base_configs_hold_the_global_batch_and_drop_no_sample(base):
    t = typed([f"experiment=paper/{base}"])
    train = t["train"]
    assert train.global_batch_size == 32 and train.on_overflow == "error" and train.max_length == 2048
    # the paper's 32 whatever the process count that divides it; another count stops at start-up
    for world in (1, 2, 4, 8):
        assert resolve_global_batch(train, world).effective_batch(world)["global_batch_size"] == 32
    with pytest.raises(ConfigError, match="train.global_batch_size"):
        resolve_global_batch(train, 3)
    text = (PAPER / f"{base}.yaml").read_text()
    assert "on_overflow: error  # " in text and "global_batch_size: 32  # " in text


def test_qwen_caps_the_image_so_the_longest_question_fits():
    t = typed(["experiment=paper/_qwen2vl"])
    max_pixels, max_length = t["model"].max_pixels, t["train"].max_length
    image_tokens = max_pixels // QWEN_TOKEN_PIXELS + 2  # + <|vision_start|> and <|vision_end|>
    # the processor's default (12,845,056 pixels = 16,384 tokens) would not fit at all
    assert max_length < 12_845_056 // QWEN_TOKEN_PIXELS
    # at least 1,000 tokens stay for the system prompt, a question of at most 4 options and the answer
    assert max_length - image_tokens >= 1000
    text = (PAPER / "_qwen2vl.yaml").read_text()
    assert "max_pixels: 802816  # 1,024 x 28 x 28" in text and f"{max_pixels:,}" in text


def test_llava_trains_projector_and_language_and_says_why():
    t = typed(["experiment=paper/_llava"])
    assert t["train"].frozen_parts() == {"vision"} and t["peft"].method == "full"
    text = (PAPER / "_llava.yaml").read_text()
    assert (
        "freeze_vision: true  # not stated" in text
        and "LLaVA-1.5's own visual instruction-tuning stage" in text
    )
    for other in ("_qwen2vl", "_llama32v"):  # "full-parameter" in the paper: every part trains
        assert typed([f"experiment=paper/{other}"])["train"].frozen_parts() == set()


def test_readme_gpu_command_sets_the_global_batch():
    readme = (REPO / "README.md").read_text()
    command = readme[readme.index("The same protocol on Med-MAT with a real backbone on GPUs") :]
    assert "train.global_batch_size=32" in command.split("```")[1]


def test_dry_run_prints_each_arms_recipe(standin, tmp_path, capsys, monkeypatch):
    dry_run("table3_fm", standin, tmp_path / "one", ["cg.only=[t3_row04]"])
    out = capsys.readouterr().out
    # 3 subsets x 24 samples = 72; 72 // 32 = 2 steps per epoch
    assert (
        "    {modality: X-ray, area: Bones, task: Level} -> 25 X-ray Bones Level, 35 X-ray Bones Level" in out
    )
    assert "    {modality: X-ray, area: Lung, task: State} -> 28 X-ray Lung COVID" in out
    assert (
        "  Baseline: the untrained model (llava-hf/llava-1.5-7b-hf); eval generation (the answer is generated and parsed"
        in out
    )
    for arm in ("Baseline+", "Trained"):
        assert (
            f"  {arm}: 72 samples, global batch 32 = 4 per device x 8 accumulation x 1 process, "
            "10 steps (5 epochs of 2 steps)"
        ) in out
    assert (
        out.count(
            "lr 5e-06, cosine, warmup 3%; trains projector + language (full fine-tuning); frozen: vision"
        )
        == 2
    )
    # eight processes split the same global batch
    monkeypatch.setenv("WORLD_SIZE", "8")
    dry_run("table3_fm", standin, tmp_path / "eight", ["cg.only=[t3_row04]"])
    assert "global batch 32 = 4 per device x 1 accumulation x 8 processes" in capsys.readouterr().out


def test_dry_run_says_what_lora_and_a_full_backbone_train(standin, tmp_path, capsys):
    dry_run("table4_qwen2vl", standin, tmp_path / "qwen", ["cg.only=[t4_row1]"])
    assert (
        "trains vision + projector + language (full fine-tuning); frozen: nothing" in capsys.readouterr().out
    )
    dry_run(
        "table3_fm", standin, tmp_path / "lora", ["cg.only=[t3_row04]", "peft=lora", "train.lr_projector=0"]
    )
    out = capsys.readouterr().out
    assert (
        "lr 5e-06 (projector 0), cosine, warmup 3%; trains LoRA r=16 adapters on language; frozen: every base weight"
        in out
    )


# ------------------------------------------------------------------------------ Table 16


def test_table16_is_refused_on_llava_with_the_arithmetic(standin, tmp_path):
    with pytest.raises(ConfigError) as refused:
        dry_run("table16_few_shot", standin, tmp_path / "run")
    message = str(refused.value)
    assert message.startswith("config key 'cg.few_shot': 2 examples per label x 3 labels of target 28")
    assert "= 7 images x 576 tokens = 4,032 image tokens" in message and "> the 4,096 positions" in message
    assert "(shot counts that do not fit: [2, 3, 4])" in message and "counts that fit ([1])" in message
    assert not list((tmp_path / "run").rglob("results.json"))
    # one example per label fits (4 images), and the paper's counts fit a longer-context backbone
    dry_run("table16_few_shot", standin, tmp_path / "one", ["cg.few_shot.shots=[1]"])
    dry_run(
        "table16_few_shot",
        standin,
        tmp_path / "qwen",
        ["model.path=Qwen/Qwen2-VL-7B-Instruct", "model.family=qwen2_vl", "model.max_pixels=802816"],
    )


def test_prompt_budget_reads_a_local_model(tmp_path):
    from cgmed.models.tiny import init_tiny

    path = init_tiny("llava", tmp_path / "llava", seed=0)
    budget = prompt_budget(ModelConfig(path=str(path), family="llava"))
    assert (budget.positions, budget.image_tokens) == (4096, 16)  # 56-pixel CLIP input, 14-pixel patches
    known = prompt_budget(ModelConfig(path="llava-hf/llava-1.5-7b-hf", family="llava"))
    assert (known.positions, known.image_tokens) == (4096, 576)
    assert prompt_budget(ModelConfig(path=None)) is None


def test_few_shot_check_counts_every_image_and_question(tmp_path, standin):
    """check_few_shot_fits on a built split: the largest prompt at its fewest tokens."""
    t = dry_run("table16_few_shot", standin, tmp_path / "run", ["cg.few_shot.shots=[1]"])
    split = SplitSummary(
        tmp_path / "run" / "t16_xray_lung_row27" / "splits" / "related",
        json.loads((tmp_path / "run/t16_xray_lung_row27/splits/related/split_meta.json").read_text()),
    )
    words = min(len(r["question"].split()) for r in read_jsonl(split.manifest("test")))
    app = CGApp(**t)
    # 1 example x 3 labels + the question = 4 images: 4 x (576 + words) + 3 answers
    need = 4 * (576 + words) + 3
    assert need <= 4096
    check_few_shot_fits(app, split, "28")


# ------------------------------------------------------------------------------ Table 5


def test_table5_baseline_plus_gets_the_same_target_samples(standin, tmp_path, capsys):
    t = dry_run("table5_det_targets", standin, tmp_path / "run", ["split.target_train_samples=4"])
    assert t["cg"].baseline_plus
    for spec in t["cg"].targets:
        splits = tmp_path / "run" / spec.name / "splits"
        own = {}
        for arm in ("related", "unrelated"):
            rows = read_jsonl(splits / arm / "train.jsonl")
            own[arm] = sorted(r["id"] for r in rows if r["subset"] == spec.target)
            meta = json.loads((splits / arm / "split_meta.json").read_text())
            assert meta["audit"]["passed"]
        assert len(own["related"]) == 4 and own["unrelated"] == own["related"]
    out = capsys.readouterr().out
    assert "  Baseline+ (4 of them the target's own): 52 samples" in out
    assert "  Trained (4 of them the target's own): 52 samples" in out
    assert "eval generation of boxes, scored on cIoU" in out


# ------------------------------------------------------------------------------ Table 10


def test_table10_marks_its_two_element_rows(standin, tmp_path, capsys):
    t = dry_run("table10_three_element", standin, tmp_path / "run")
    out = capsys.readouterr().out
    marked = []
    for spec in t["cg"].targets:
        target = MEDMAT_SUBSETS[spec.target]
        sources = [resolve_ids([entry], MEDMAT_SUBSETS, VOCAB, "k") for entry in spec.related]
        shares = [max(len(shared_elements(MEDMAT_SUBSETS[s], target, VOCAB)) for s in ids) for ids in sources]
        two_element = max(shares) >= 2  # one source gives the target two of its elements together
        assert ("TWO-element composition" in spec.note) == two_element, spec.name
        if two_element:
            marked.append(spec.name)
            assert f"  note: {spec.note}" in out
    assert marked == ["t10_row1", "t10_row2", "t10_row3", "t10_row4"]
    # the report prints each row's note under the table
    rows = [
        {
            "name": "t10_row1",
            "target": "06 CT Brain Cancer",
            "seeds": [0],
            "note": "a TWO-element composition",
        }
    ]
    assert "t10_row1 (06 CT Brain Cancer): a TWO-element composition" in note_lines(rows, CGConfig(), False)


# ------------------------------------------------------------------------------ Figure 4


@pytest.mark.parametrize("name", ["scaling_03", "scaling_28"])
def test_scaling_arms_that_cannot_reach_the_cap_say_so(name):
    """On the release every ID subset gives 3,000 samples (the paper's ID rule), so an arm reaches
    min(15,000, 3,000 x its subsets); an arm below the others carries a note with its size."""
    t = typed([f"experiment=paper/{name}"])
    cap, split = t["split"].max_train_samples, t["split"]
    reach = {}
    for spec in t["cg"].targets:
        ids = select_train(
            spec.related, spec.without, [spec.target], MEDMAT_SUBSETS, VOCAB, split.train_status
        )
        assert all(MEDMAT_SUBSETS[s].status == "ID" for s in ids)
        reach[spec.name] = min(cap, 3000 * len(ids))
    largest = max(reach.values())
    for spec in t["cg"].targets:
        if reach[spec.name] < largest:
            assert (
                spec.note.startswith("NOT size-equal")
                and f"= {reach[spec.name]:,} training samples" in spec.note
            )
            assert f"split.max_train_samples={reach[spec.name]}" in spec.note
        else:
            assert not spec.note, spec.name
    small = {n for n, size in reach.items() if size < largest}
    assert small == ({"s03_wo_task"} if name == "scaling_03" else set())
    header = (PAPER / f"{name}.yaml").read_text()
    assert re.search(r"reach 15,000", header)
