"""Few-shot prompting (the paper's Table 16): the shot pool a split sets aside, its audit, the
draws, the prompts each family sees, batching/sharding invariance, and the CG protocol's
few-shot table."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections import Counter

import pytest

from cgmed.cg.config import CGApp, CGConfig, CGTarget, FewShot, TinyBase
from cgmed.cg.protocol import run_protocol
from cgmed.data.build import build_split, resolve_root, write_split
from cgmed.data.source import DataConfig, open_source
from cgmed.data.split import OptionsConfig, SplitConfig
from cgmed.data.synth import SynthConfig
from cgmed.errors import ConfigError, DataError, LeakageError
from cgmed.eval.run import evaluate
from cgmed.eval.score import EvalConfig, ShotPool, read_manifest
from cgmed.models.registry import get_adapter
from cgmed.train.config import DistributedConfig, ModelConfig, PeftConfig, TrainConfig

TARGET = {"modality": "CT", "area": "Lung", "task": "Cancer"}
RELATED = [
    {"modality": "CT", "area": "Brain", "task": "Cancer"},
    {"modality": "MRI", "area": "Lung", "task": "Cancer"},
]


def world() -> SynthConfig:
    return SynthConfig(
        modalities=["CT", "MRI"],
        areas=["Lung", "Brain"],
        images_per_subset=40,
        image_size=56,
        test_fraction=0.2,
    )


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    data = DataConfig(cache_dir=str(tmp_path_factory.mktemp("cache")))
    return data, open_source(data, resolve_root(data, world()))


def split_cfg(**kw) -> SplitConfig:
    return SplitConfig(
        targets=[TARGET],
        train=RELATED,
        cap_per_subset=20,
        options=OptionsConfig(mode="rebuild", order="sorted"),
        **kw,
    )


def test_split_sets_aside_shots_from_the_target_training_portion(source, tmp_path):
    data, src = source
    built = build_split(src, data, split_cfg(shots_per_label=3))
    (tid,) = built.targets
    labels = Counter(s.label for s in built.shots)
    assert set(labels) == {s.label for s in built.test} and set(labels.values()) == {3}
    assert {s.subset for s in built.shots} == {tid}
    test_images = {s.image for s in built.test}
    assert not test_images & {s.image for s in built.shots}
    assert not {s.id for s in built.train} & {s.id for s in built.shots}  # never trained on
    assert all(s.options and s.answer for s in built.shots)  # written as questions like the test set
    assert built.audit.checks["shot_examples"] == 6
    meta = write_split(built, tmp_path / "a", {"split": {}}, src)
    assert meta["sizes"]["shots"] == 6 and (tmp_path / "a" / "shots.jsonl").is_file()
    again = write_split(
        build_split(src, data, split_cfg(shots_per_label=3)), tmp_path / "b", {"split": {}}, src
    )
    assert again["content_hash"] == meta["content_hash"]
    assert (tmp_path / "a" / "shots.jsonl").read_bytes() == (tmp_path / "b" / "shots.jsonl").read_bytes()
    # without the option there is no shots.jsonl and the other manifests are unchanged
    plain = build_split(src, data, split_cfg())
    assert plain.shots == [] and [s.id for s in plain.train] == [s.id for s in built.train]
    meta0 = write_split(plain, tmp_path / "c", {"split": {}}, src)
    assert "shots" not in meta0["sizes"] and not (tmp_path / "c" / "shots.jsonl").exists()
    # rebuilding into a folder that held a pool removes it: no stale examples next to new manifests
    write_split(plain, tmp_path / "a", {"split": {}}, src)
    assert not (tmp_path / "a" / "shots.jsonl").exists()
    # asked for but nothing drawn: an empty pool, so the evaluator names the shortage, not a missing file
    write_split(dataclasses.replace(plain, asked=("shots",)), tmp_path / "a", {"split": {}}, src)
    assert (tmp_path / "a" / "shots.jsonl").read_text() == ""
    with pytest.raises(DataError, match="holds no in-context examples"):
        ShotPool(tmp_path / "a" / "shots.jsonl", 1)


def test_audit_stops_a_shot_showing_a_test_image(source):
    from cgmed.data.audit import audit_split

    data, src = source
    built = build_split(src, data, split_cfg(shots_per_label=2))
    leaked = dataclasses.replace(built.shots[0], image=built.test[0].image)
    targets = [src.subsets()[t] for t in built.targets]
    with pytest.raises(LeakageError, match="in-context example image .* same bytes as target test sample"):
        audit_split(built.train, built.test, targets, shots=[leaked, *built.shots[1:]])
    for stranger in (
        built.train[0],  # another subset's sample
        built.test[0],  # a target test question
        dataclasses.replace(built.shots[0], id="x-test-1", source_split="test"),  # the target's test portion
    ):
        with pytest.raises(LeakageError, match="not from a target's training portion"):
            audit_split(built.train, built.test, targets, shots=[stranger])
    with pytest.raises(LeakageError, match="in-context example is also a training sample"):
        audit_split(
            [*built.train, built.shots[0]],
            built.test,
            targets,
            shots=built.shots,
            allowed_target_train=frozenset({built.shots[0].id}),
        )


def test_shots_never_overlap_the_targets_own_training_samples(source):
    data, src = source
    # 12 of the target's 16 training samples per label are trained on; the examples come from the rest
    built = build_split(src, data, split_cfg(shots_per_label=3, target_train_samples=24))
    (tid,) = built.targets
    own = {s.id for s in built.train if s.subset == tid}
    assert len(own) == 24 and len(built.shots) == 6 and not own & {s.id for s in built.shots}


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from cgmed.models.tiny import init_tiny

    root = tmp_path_factory.mktemp("tiny")
    made: dict[str, str] = {}

    def get(family: str) -> str:
        if family not in made:
            made[family] = str(init_tiny(family, root / family, seed=0))
        return made[family]

    return get


@pytest.fixture(scope="module")
def split_dir(source, tmp_path_factory):
    data, src = source
    out = tmp_path_factory.mktemp("split")
    write_split(build_split(src, data, split_cfg(shots_per_label=3)), out, {"split": {}}, src)
    return out


def test_draws_are_per_label_keyed_by_question_and_seed(split_dir):
    pool = ShotPool(split_dir / "shots.jsonl", 2)
    tests = read_manifest(split_dir / "test.jsonl")
    pool.check(tests)
    by_image = {r["image"]: r for r in read_manifest(split_dir / "shots.jsonl")}
    for rec in tests[:6]:
        drawn = pool.draw(rec, 0)
        assert Counter(by_image[img]["label"] for _, _, img in drawn) == {
            lab: 2 for lab in pool.by_subset[rec["subset"]]
        }
        assert all(q == by_image[img]["question"] and a == by_image[img]["answer"] for q, a, img in drawn)
        assert pool.draw(rec, 0) == drawn  # the same question and seed: the same examples
    draws = {tuple(pool.draw(r, s)) for r in tests[:3] for s in range(3)}
    assert len(draws) > 1  # seeds and questions change the draw
    # a pool holding a question's own image never shows it to that question
    rec = dict(tests[0])
    own = next(iter(by_image.values()))
    rec["image"], rec["subset"] = own["image"], own["subset"]
    tight = ShotPool(split_dir / "shots.jsonl", 3)
    with pytest.raises(DataError, match="other than question"):
        tight.draw(rec, 0)
    assert all(img != own["image"] for _, _, img in pool.draw(rec, 0))


def test_pool_errors_name_the_fix(split_dir, tmp_path):
    tests = read_manifest(split_dir / "test.jsonl")
    with pytest.raises(DataError, match="(?s)needs 4 examples per label.*shots_per_label >= 4"):
        ShotPool(split_dir / "shots.jsonl", 4).check(tests)
    other = [dict(tests[0], subset="99")]
    with pytest.raises(DataError, match="holds no example of subset 99"):
        ShotPool(split_dir / "shots.jsonl", 1).check(other)
    with pytest.raises(ConfigError, match="eval.shot_pool"):
        EvalConfig(shots=2)
    with pytest.raises(ConfigError, match="eval.shots"):
        EvalConfig(shots=-1)
    with pytest.raises(ConfigError, match="cg.few_shot.shots"):
        FewShot(shots=[0])
    with pytest.raises(ConfigError, match="eval.shot_pool.*does not exist"):
        ShotPool(tmp_path / "missing.jsonl", 1)
    # a label the questions ask about but the pool lacks
    pool_rows = [json.loads(x) for x in (split_dir / "shots.jsonl").read_text().splitlines()]
    keep = pool_rows[0]["label"]
    partial = tmp_path / "partial.jsonl"
    partial.write_text("".join(json.dumps(r) + "\n" for r in pool_rows if r["label"] == keep))
    with pytest.raises(DataError, match="holds no example of label"):
        ShotPool(partial, 1).check(tests)


@pytest.mark.parametrize("family", ["qwen2_vl", "llava", "mllama"])
def test_each_family_prompt_holds_the_examples_in_order(family, tiny_model_dir):
    from transformers import AutoProcessor

    adapter = get_adapter(family)
    processor = AutoProcessor.from_pretrained(tiny_model_dir(family))
    shots = [("Q one?", "ANSWER_ONE"), ("Q two?", "ANSWER_TWO")]
    text = adapter.render(processor, "Final question?", shots=shots)
    assert text.count(adapter.image_token) == 3
    pos = [text.index(s) for s in ("Q one?", "ANSWER_ONE", "Q two?", "ANSWER_TWO", "Final question?")]
    assert pos == sorted(pos)
    assert text.endswith(adapter.render(processor, "Final question?")[-12:])  # ends at the generation prompt
    assert adapter.render(processor, "Final question?", shots=()) == adapter.render(
        processor, "Final question?"
    )


def test_few_shot_predictions_do_not_depend_on_batching(split_dir, tiny_model_dir, tmp_path):
    model = tiny_model_dir("qwen2_vl")
    cfg = EvalConfig(
        batch_size=1, bootstrap=50, shots=1, shot_pool=str(split_dir / "shots.jsonl"), shot_seed=1
    )
    one = evaluate(model, cfg, str(split_dir / "test.jsonl"), tmp_path / "b1", "qwen2_vl")
    many = evaluate(
        model,
        dataclasses.replace(cfg, batch_size=7),
        str(split_dir / "test.jsonl"),
        tmp_path / "b7",
        "qwen2_vl",
    )
    rows1 = [json.loads(x) for x in (tmp_path / "b1" / "predictions.jsonl").read_text().splitlines()]
    rows7 = [json.loads(x) for x in (tmp_path / "b7" / "predictions.jsonl").read_text().splitlines()]
    assert [(r["pred"], r["shots"]) for r in rows1] == [(r["pred"], r["shots"]) for r in rows7]
    n_labels = len({r["label"] for r in read_manifest(split_dir / "shots.jsonl")})
    assert all(len(r["shots"]) == n_labels for r in rows1)
    assert one["shots"] == {"per_label": 1, "pool": str(split_dir / "shots.jsonl"), "seed": 1}
    assert one["overall"]["accuracy"] == many["overall"]["accuracy"]
    zero = evaluate(
        model, dataclasses.replace(cfg, shots=0), str(split_dir / "test.jsonl"), tmp_path / "z", "qwen2_vl"
    )
    rows0 = [json.loads(x) for x in (tmp_path / "z" / "predictions.jsonl").read_text().splitlines()]
    assert "shots" not in zero and "shots" not in rows0[0]


def test_protocol_reports_few_shot_table(tmp_path):
    target = CGTarget(
        name="ct_lung_cancer",
        target=TARGET,
        related=RELATED,
        paper_few_shot={"baseline": {0: 30.0, 1: 28.83}, "trained": {0: 28.0, 1: 37.0}},
    )
    cg = CGConfig(
        targets=[target],
        tiny_base=TinyBase(),
        few_shot=FewShot(shots=[1, 2], repeats=2),
        baseline_plus=False,
        eval_seen=False,
    )
    groups = dict(
        data=DataConfig(cache_dir=str(tmp_path / "cache")),
        # cgmed-cg sets each split's targets and training data itself (from cg.targets)
        split=dataclasses.replace(split_cfg(), targets=[], train="related"),
        synth=world(),
        model=ModelConfig(),
        train=TrainConfig(
            max_steps=6, per_device_batch_size=8, lr=2e-3, progress_bar=False, tensorboard=False
        ),
        peft=PeftConfig(),
        distributed=DistributedConfig(),
        eval=EvalConfig(batch_size=16, bootstrap=50),
    )
    doc = run_protocol(CGApp(cg=cg, **groups), tmp_path / "run")
    fs = doc["targets"][0]["few_shot"]
    assert fs["shots"] == [0, 1, 2]
    out = tmp_path / "run" / "ct_lung_cancer"
    for arm, folder in (("baseline", out / "baseline"), ("trained", out / "seed-0" / "trained")):
        for n in ("1", "2"):
            accs = [
                json.loads((folder / f"eval_{n}shot" / f"repeat-{r}" / "results.json").read_text())[
                    "overall"
                ]["accuracy"]
                for r in range(2)
            ]
            assert fs[arm][n]["values"] == accs
            mean = sum(accs) / 2
            assert fs[arm][n]["mean"] == pytest.approx(mean)
            assert fs[arm][n]["sd"] == pytest.approx(
                (sum((a - mean) ** 2 for a in accs) / 2) ** 0.5
            )  # ddof 0
            rows = (folder / f"eval_{n}shot" / "repeat-0" / "predictions.jsonl").read_text().splitlines()
            assert len(json.loads(rows[0])["shots"]) == 2 * int(n)  # two labels per synthetic subset
    assert fs["baseline"]["0"]["values"] == [doc["targets"][0]["baseline"]["accuracy"]]
    assert fs["paper"] == {"baseline": {"0": 30.0, "1": 28.83}, "trained": {"0": 28.0, "1": 37.0}}
    md = (tmp_path / "run" / "cg_report.md").read_text()
    assert "| Model | 0-shot | 1-shot | 2-shot |" in md and "| paper: trained | 28.0 | 37.0 | - |" in md
    split = json.loads((out / "splits" / "related" / "split_meta.json").read_text())
    assert split["sizes"]["shots"] == 4 and split["config"]["split"]["shots_per_label"] == 2
    # the same run directory with other split settings is refused, naming the difference
    cg2 = dataclasses.replace(cg, few_shot=FewShot(shots=[3], repeats=1))
    with pytest.raises(ConfigError, match=r"other settings \(differing: \['split.shots_per_label'\]\)"):
        run_protocol(CGApp(cg=cg2, **groups), tmp_path / "run")
    shutil.rmtree(tmp_path / "cache")


@pytest.mark.parametrize("family", ["qwen2_vl", "llava", "mllama"])
def test_the_model_sees_every_example_image(family, split_dir, tiny_model_dir):
    import torch

    from cgmed.eval.score import Scorer, load_for_eval

    model, processor, adapter = load_for_eval(tiny_model_dir(family))
    scorer = Scorer(model, processor, adapter, "option_scoring")
    pool = ShotPool(split_dir / "shots.jsonl", 2)
    recs = read_manifest(split_dir / "test.jsonl")[:2]
    shots = [pool.draw(r, 0) for r in recs]
    with_shots = scorer._inputs([r["question"] for r in recs], [r["image"] for r in recs], shots)
    alone = scorer._inputs([r["question"] for r in recs], [r["image"] for r in recs])
    n_images = {
        "qwen2_vl": lambda enc: enc["image_grid_thw"].shape[0],
        "llava": lambda enc: enc["pixel_values"].shape[0],
        "mllama": lambda enc: int(enc["aspect_ratio_ids"].ne(0).sum()),
    }[family]
    assert n_images(with_shots) == sum(len(s) + 1 for s in shots) == 10 and n_images(alone) == 2
    with torch.no_grad():
        a = model(**with_shots, use_cache=False).logits[:, -1]
        b = model(**alone, use_cache=False).logits[:, -1]
    assert not torch.allclose(a, b)  # the examples reach the answer position


def test_prompts_beyond_the_models_positions_are_refused(split_dir, tiny_model_dir):
    from cgmed.eval.score import Scorer, load_for_eval

    model, processor, adapter = load_for_eval(tiny_model_dir("llava"))
    scorer = Scorer(model, processor, adapter, "option_scoring")
    rec = read_manifest(split_dir / "test.jsonl")[0]
    shots = [ShotPool(split_dir / "shots.jsonl", 3).draw(rec, 0)]
    length = scorer._inputs([rec["question"]], [rec["image"]], shots)["input_ids"].shape[1]
    model.config.text_config.max_position_embeddings = length  # + max_new_tokens no longer fits
    with pytest.raises(
        ConfigError, match=f"eval.shots.*{length} tokens.*beyond the model's {length} positions"
    ):
        scorer._inputs([rec["question"]], [rec["image"]], shots)
    scorer._inputs([rec["question"]], [rec["image"]])  # the zero-shot prompt still fits


def test_cg_refuses_global_shots_and_detection_targets(tmp_path):
    from cgmed.cg.config import refuse_global_shots

    with pytest.raises(ConfigError, match="(?s)eval.shots.*cg.few_shot"):
        refuse_global_shots(EvalConfig(shots=2, shot_pool="x.jsonl"))
    refuse_global_shots(EvalConfig())


def test_split_settings_check_reads_older_metas_with_defaults(tmp_path):
    from cgmed.cg.stages import check_split_settings
    from cgmed.config import as_dict

    older = as_dict(SplitConfig(targets=["01"]))
    del older["shots_per_label"]  # a split_meta.json written before the key existed
    meta = {"config": {"split": older, "data": as_dict(DataConfig(root="/old/place"))}}
    data = DataConfig(root="/new/place")  # the data moved: same records
    check_split_settings(meta, SplitConfig(targets=["01"]), data, tmp_path, "it")
    check_split_settings(meta, SplitConfig(targets=["01"], audit_images=False), data, tmp_path, "it")
    with pytest.raises(ConfigError, match=r"differing: \['split.shots_per_label'\]"):
        check_split_settings(meta, SplitConfig(targets=["01"], shots_per_label=2), data, tmp_path, "it")
    with pytest.raises(ConfigError, match=r"differing: \['split.targets', 'split.cap_per_subset'\]"):
        check_split_settings(meta, SplitConfig(targets=["02"], cap_per_subset=5), data, tmp_path, "it")
    with pytest.raises(ConfigError, match=r"differing: \['data.split_seed'\]"):
        check_split_settings(meta, SplitConfig(targets=["01"]), DataConfig(split_seed=3), tmp_path, "it")
