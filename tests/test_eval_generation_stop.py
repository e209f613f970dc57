"""Generation that costs what it must: the stop rule reads the letters that full generation
reads, batches sorted by prompt length give the rows unsorted batches give, and cgmed-eval
loads models with the configured attention kernel.

The trained model writes a letter, a line break and a sentence ("B.\\nThe image shows it."), as
chatty models do, so the stop rule has something to cut and full generation something to read.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cgmed.data.build import build_from_config
from cgmed.data.manifest import write_jsonl
from cgmed.data.source import DataConfig
from cgmed.data.split import OptionsConfig, SplitConfig
from cgmed.data.synth import SynthConfig
from cgmed.eval.generate import STOP_RULE, AnswerStop
from cgmed.eval.parse import parse_choice
from cgmed.eval.run import evaluate
from cgmed.eval.score import EvalConfig, Scorer, asking_order, load_for_eval, read_manifest, score_records
from cgmed.models.tiny import init_tiny
from cgmed.train.config import DistributedConfig, ModelConfig, PeftConfig, TrainConfig

# no letter a parser could read in it. It follows "B." whose ".\n" is one token: after a bare "\n"
# (the token the prompt ends with) a briefly trained model would start its answer with the sentence
EXPLANATION = "The image shows it."
OPTIONS = ["Tumor", "Cyst", "Normal"]


def chatty(record: dict) -> dict:
    """The record answered with its letter and a sentence on the next line."""
    return {**record, "answer": f"{record['answer']}.\n{EXPLANATION}"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny Qwen2-VL trained for a few dozen steps to answer with a letter and a sentence, and
    the test questions (the target's and the trained-on subsets')."""
    from cgmed.train.loop import train

    root = tmp_path_factory.mktemp("genstop")
    synth = SynthConfig(
        modalities=["CT", "MRI"],
        areas=["Lung", "Brain"],
        images_per_subset=24,
        image_size=56,
        test_fraction=0.25,
    )
    split = SplitConfig(
        targets=[{"modality": "CT", "area": "Lung", "task": "Cancer"}],
        train="all",
        options=OptionsConfig(mode="rebuild", order="sorted"),
    )
    build_from_config(DataConfig(cache_dir=str(root / "cache")), split, synth, root / "split")
    write_jsonl(root / "chatty.jsonl", [chatty(r) for r in read_manifest(root / "split" / "train.jsonl")])
    base = init_tiny("qwen2_vl", root / "base")
    cfg = TrainConfig(
        max_steps=24,
        per_device_batch_size=8,
        lr=3e-3,
        warmup_ratio=0.0,
        progress_bar=False,
        tensorboard=False,
    )
    train(
        ModelConfig(path=str(base)),
        cfg,
        PeftConfig(),
        DistributedConfig(),
        str(root / "chatty.jsonl"),
        root / "run",
    )
    records = read_manifest(root / "split" / "test.jsonl") + read_manifest(root / "split" / "seen_test.jsonl")
    model = load_for_eval(root / "run" / "final")
    return model, records[:48], root


def generate_all(model, records, stop: bool, sort: bool = True, circular: bool = False):
    scorer = Scorer(*model, "generation", max_new_tokens=16, stop_at_answer=stop, sort_by_length=sort)
    rows = score_records(scorer, records, batch_size=16, circular=circular)
    return rows, scorer


@pytest.fixture(scope="module")
def stopped_and_full(trained):
    model, records, _ = trained
    return generate_all(model, records, stop=True), generate_all(model, records, stop=False)


def test_stop_rule_reads_the_letters_full_generation_reads(stopped_and_full):
    (stopped, _), (full, _) = stopped_and_full
    # the model goes on after its letter: there is text for the rule to cut
    assert all("\n" in r["text"].strip() for r in full), [r["text"] for r in full[:4]]
    assert [r["id"] for r in stopped] == [r["id"] for r in full]
    for s, f in zip(stopped, full, strict=True):
        assert s["pred"] is not None
        assert (s["pred"], s["correct"]) == (f["pred"], f["correct"])
        assert f["text"].startswith(s["text"]) and len(s["text"]) < len(f["text"])


def test_stop_rule_generates_fewer_tokens(stopped_and_full):
    (_, stopped), (_, full) = stopped_and_full
    assert stopped.answers_generated == full.answers_generated == 48
    assert stopped.tokens_generated < full.tokens_generated
    assert stopped.generation_settings()["stop"] == STOP_RULE


def test_sorted_batches_give_the_rows_of_unsorted_batches(trained):
    model, records, _ = trained
    records = records[::4]  # from every subset: prompts of several lengths
    for method in ("generation", "option_scoring"):
        rows = {}
        for sort in (True, False):
            scorer = Scorer(*model, method, max_new_tokens=16, sort_by_length=sort)
            rows[sort] = score_records(scorer, records, batch_size=8, circular=True)
        assert rows[True] == rows[False], method
        assert [r["id"] for r in rows[True]] == [r["id"] for r in records]
    # the questions differ in length, so sorting did move them across batches
    order = asking_order([(r["question"], ()) for r in records])
    assert sorted(order) == list(range(12)) and order != list(range(12))


# -- the stop criterion on crafted answers ---------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(init_tiny("qwen2_vl", tmp_path_factory.mktemp("tok") / "m"))


def stop_point(tokenizer, text: str) -> str | None:
    """The text generated when ``text`` is decoded token by token under the stop rule (None: the
    rule never stops it), after a fake 3-token prompt."""
    import torch

    ids = [7, 8, 9] + tokenizer(text, add_special_tokens=False)["input_ids"]
    stop = AnswerStop(tokenizer, 3, [tokenizer.convert_tokens_to_ids("<|im_end|>")], [OPTIONS])
    for end in range(4, len(ids) + 1):
        if bool(stop(torch.tensor([ids[:end]]), None)[0]):
            assert stop.lengths == [end - 3]
            return tokenizer.decode(ids[3:end], skip_special_tokens=True)
    return None


@pytest.mark.parametrize(
    ("text", "stops_after", "letter"),
    [
        ("B\nthe image shows it.", "B\n", "B"),
        ("B. Cyst\nmore text", "B. Cyst\n", "B"),
        ("A cyst is visible.\nmore", "A cyst is visible.\n", "B"),  # the article, then an option text
        ("B<|im_end|>", "B", "B"),  # end of sequence
        ("Not A\nB\nmore", "Not A\nB\n", "B"),  # the first line denies A and decides nothing
        ("A or B\nC\n", None, None),  # ambiguous, and a later letter does not undo that
        ("A. There is no tumor.\nmore", None, None),  # negated on its own line
        ("A", None, "A"),  # a lone letter without its line end decides nothing yet
        ("B.", None, "B"),
    ],
)
def test_stop_criterion_on_crafted_answers(tokenizer, text, stops_after, letter):
    stopped = stop_point(tokenizer, text)
    assert stopped == stops_after
    if stopped is not None:
        # what the rule stops at reads as the whole answer reads
        assert (
            parse_choice(stopped, OPTIONS) == parse_choice(text.replace("<|im_end|>", ""), OPTIONS) == letter
        )


def test_stop_rule_reads_a_later_change_of_mind_as_the_first_decided_line(tokenizer):
    """The one documented difference from full generation: text after the deciding line is not
    generated, so "B\\nThe answer is C." is read as B, where the whole text is ambiguous."""
    assert stop_point(tokenizer, "B\nThe answer is C.") == "B\n"
    assert parse_choice("B\nThe answer is C.", OPTIONS) is None


def test_stop_criterion_ends_rows_one_by_one(tokenizer):
    import torch

    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in ("C\nx y z", "x y z C\n")]
    width = max(map(len, rows))
    pad = tokenizer.pad_token_id
    stop = AnswerStop(tokenizer, 0, [], [OPTIONS, OPTIONS])
    flags = []
    for end in range(1, width + 1):
        batch = torch.tensor([(r + [pad] * width)[:end] for r in rows])
        flags.append(stop(batch, None).tolist())
    first, second = len(tokenizer("C\n", add_special_tokens=False)["input_ids"]), len(rows[1])
    assert stop.lengths == [first, second]
    assert flags[first - 1] == [True, False] and flags[-1] == [True, True]


# -- the attention kernel reaches every evaluation -------------------------------------------


def test_evaluate_loads_with_the_configured_attention_and_records_it(trained, tmp_path):
    _, records, root = trained
    manifest = tmp_path / "few.jsonl"
    write_jsonl(manifest, records[:4])
    cfg = EvalConfig(method="generation", bootstrap=0)
    doc = evaluate(
        str(root / "run" / "final"), cfg, str(manifest), tmp_path / "eager", attn_implementation="eager"
    )
    written = json.loads((tmp_path / "eager" / "results.json").read_text())
    assert doc["kernels"] == written["kernels"] == {"attn_implementation": "eager", "use_liger": False}
    assert written["generation"]["stop"] == STOP_RULE and written["generation"]["answers"] == 4
    doc = evaluate(str(root / "run" / "final"), EvalConfig(bootstrap=0), str(manifest), tmp_path / "sdpa")
    assert doc["kernels"]["attn_implementation"] == "sdpa" and "generation" not in doc


def test_cgmed_eval_and_the_cg_eval_stage_pass_the_model_kernels(monkeypatch, tmp_path):
    """``model.attn_implementation`` and ``model.use_liger`` go from both apps' config to the loader."""
    import cgmed.eval.run
    from cgmed.cg.config import CGApp
    from cgmed.cg.stages import eval_stage
    from cgmed.cli import eval as eval_cli

    seen = []

    def fake_evaluate(*args, **kwargs):
        seen.append({k: kwargs[k] for k in ("attn_implementation", "use_liger")})
        return {
            "overall": {"accuracy": 0.0, "ci95": None, "n": 0, "chance": 0.0},
            "unparsed": 0,
            "per_mat": {},
        }

    monkeypatch.setattr(cgmed.eval.run, "evaluate", fake_evaluate)
    manifest = tmp_path / "test.jsonl"
    manifest.write_text("")
    model = ModelConfig(path="m", attn_implementation="eager", use_liger=True)
    app = CGApp(model=model)
    eval_stage(app, "m", manifest, tmp_path / "eval")
    monkeypatch.setattr(
        eval_cli,
        "app_config",
        lambda cfg, cls: eval_cli.EvalApp(model=model, data=DataConfig(test_manifest=str(manifest))),
    )
    monkeypatch.setattr(eval_cli, "run_dir", lambda: tmp_path / "cli")
    eval_cli.job(None)
    assert seen == [{"attn_implementation": "eager", "use_liger": True}] * 2


def test_eval_speed_benchmark_reports_every_arm_side_by_side(trained):
    import subprocess
    import sys

    _, _, root = trained
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "eval_speed.py"
    args = ["--model", str(root / "run" / "final"), "--manifest", str(root / "split" / "seen_test.jsonl")]
    proc = subprocess.run(
        [sys.executable, str(script), *args, "--smoke", "--limit", "8", "--shots", "0"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for label in ("option scoring", "generation, stop rule", "generation to EOS", "circular generation"):
        assert re.search(rf"^{label}.*\s[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.-]+$", proc.stdout, re.M), proc.stdout
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert figures["n"] == 8 and 0.0 <= figures["agreement_scoring_generation"] <= 1.0
    assert figures["agreement_stop_full"] == 1.0
    assert figures["generation_stop"]["tokens"] < figures["generation_full"]["tokens"]
