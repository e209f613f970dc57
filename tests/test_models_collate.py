"""The training collator on tiny checkpoints of every family: exact answer-only labels,
a finite loss that a few optimizer steps reduce, overflow handling, length grouping."""

from __future__ import annotations

import copy
import dataclasses
import random

import pytest
import torch
from PIL import Image

from cgmed.errors import ConfigError, DataError
from cgmed.models import (
    FAMILIES,
    IGNORE_INDEX,
    Collator,
    LengthGroupedBatchSampler,
    get_adapter,
    group_by_length,
    init_tiny,
    load_image,
    padding_fraction,
    random_batches,
)

SUFFIX = "Answer with the option's letter from the given choices directly."


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """One tiny checkpoint per family, built once per test session."""
    root = tmp_path_factory.mktemp("tiny_collate")
    return {family: init_tiny(family, root / family, seed=0) for family in FAMILIES}


@pytest.fixture(scope="session")
def processors(tiny_dirs):
    return {family: get_adapter(family).load(path)[1] for family, path in tiny_dirs.items()}


@pytest.fixture(scope="session")
def records(tmp_path_factory):
    """Two records of different lengths: different image sizes/modes and question lengths."""
    root = tmp_path_factory.mktemp("images")
    rng = random.Random(0)
    specs = [((64, 64), "RGB"), ((120, 80), "L")]  # grayscale, as many medical images are
    out = []
    for i, (size, mode) in enumerate(specs):
        img = Image.frombytes(
            mode, size, bytes(rng.randrange(256) for _ in range(len(mode) * size[0] * size[1]))
        )
        path = root / f"img{i}.png"
        img.save(path)
        options = ["Tumor", "Normal", "Cyst", "Nodule"][: 2 + 2 * i]
        body = "\n".join(f"{'ABCD'[k]}: {o}" for k, o in enumerate(options))
        question = f"What does this CT image of the lung show{' in the upper lobe' * i}?\n{body}\n{SUFFIX}"
        out.append({"id": f"rec{i}", "image": str(path), "question": question, "answer": "BD"[i]})
    return out


def _check_labels(family, processor, batch, records):
    adapter = get_adapter(family)
    tok = processor.tokenizer
    eot_id = tok.convert_tokens_to_ids(adapter.eot_token)
    labels, ids, mask = batch["labels"], batch["input_ids"], batch["attention_mask"]
    assert labels.shape == ids.shape == mask.shape
    for row, record in enumerate(records):
        labelled = (labels[row] != IGNORE_INDEX).nonzero().flatten().tolist()
        # exactly the answer letter and the end-of-turn token, adjacent, nothing else
        assert len(labelled) == 2, (family, labelled)
        assert labelled[1] == labelled[0] + 1
        assert labels[row, labelled].tolist() == ids[row, labelled].tolist()
        assert labels[row, labelled[1]].item() == eot_id
        assert tok.decode(labels[row, labelled]).strip() == record["answer"] + adapter.eot_token
        assert tok.decode(labels[row, labelled[:1]]).strip() == record["answer"]
        # padding is on the right and never labelled; the answer is the last real content
        n_real = int(mask[row].sum())
        assert mask[row, :n_real].all() and not mask[row, n_real:].any()
        assert (labels[row, n_real:] == IGNORE_INDEX).all()
        assert (ids[row, n_real:] == tok.pad_token_id).all()
        assert labelled[1] >= n_real - 2  # at most Qwen's trailing newline follows <|im_end|>
        image_positions = ids[row] == tok.convert_tokens_to_ids(adapter.image_token)
        assert image_positions.any() and (labels[row, image_positions] == IGNORE_INDEX).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_label_mask_is_exact(family, processors, records):
    processor = processors[family]
    batch = Collator(get_adapter(family), processor, max_length=1024)(records)
    lengths = batch["attention_mask"].sum(1).tolist()
    assert lengths[0] != lengths[1]  # the batch really is padded
    _check_labels(family, processor, batch, records)
    if family == "mllama":  # padded text positions read no image tiles
        n0 = lengths[0]
        assert not batch["cross_attention_mask"][0, n0:].any()
    if family.startswith("qwen"):
        assert batch["image_grid_thw"].shape == (2, 3)


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_finite_loss_and_overfit(family, tiny_dirs, records):
    adapter = get_adapter(family)
    torch.manual_seed(0)
    model, processor = adapter.load(tiny_dirs[family])
    batch = Collator(adapter, processor, max_length=1024)(records)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(6):
        loss = model(**batch).loss
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5, losses


@pytest.mark.parametrize("family", ["qwen2_vl", "mllama"])
def test_overflow_drop_counts(family, processors, records):
    adapter = get_adapter(family)
    collator = Collator(adapter, processors[family], max_length=1024)
    n0, n1 = (collator.length(r) for r in records)
    assert n0 < n1
    collator = Collator(adapter, processors[family], max_length=n0, on_overflow="drop")
    batch = collator(records)
    assert collator.dropped == 1 and batch["input_ids"].shape == (1, n0)
    _check_labels(family, processors[family], batch, records[:1])
    assert collator([records[1], records[1]]) == {}
    assert collator.dropped == 3


def test_overflow_error_names_the_record(processors, records):
    collator = Collator(get_adapter("llava"), processors["llava"], max_length=10, on_overflow="error")
    with pytest.raises(DataError, match="record rec0") as err:
        collator(records)
    assert "max_length=10" in str(err.value) and collator.dropped == 0


def test_bad_collator_arguments(processors):
    adapter, processor = get_adapter("qwen2_vl"), processors["qwen2_vl"]
    with pytest.raises(ConfigError) as err:
        Collator(adapter, processor, max_length=0)
    assert err.value.key == "train.max_length"
    with pytest.raises(ConfigError) as err:
        Collator(adapter, processor, max_length=64, on_overflow="truncate")
    assert err.value.key == "train.on_overflow"


def test_bad_records(processors, records, tmp_path):
    collator = Collator(get_adapter("qwen2_vl"), processors["qwen2_vl"], max_length=1024)
    with pytest.raises(DataError, match="does not exist"):
        collator([{**records[0], "image": str(tmp_path / "missing.png")}])
    with pytest.raises(DataError, match="'answer'"):
        collator([{k: v for k, v in records[0].items() if k != "answer"}])
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="cannot be read"):
        collator([{**records[0], "image": str(tmp_path / "junk.png")}])


def test_template_without_eot_is_refused(processors, records):
    # an adapter that expects the wrong end-of-turn token must not silently train on nothing
    adapter = dataclasses.replace(get_adapter("qwen2_vl"), eot_token="<|endoftext|>")
    with pytest.raises(DataError, match="closes the assistant answer"):
        Collator(adapter, processors["qwen2_vl"], max_length=1024)(records)


def test_prompt_not_prefix_is_refused(processors, records):
    processor = copy.copy(processors["llava"])
    # generation prompt "ASSISTANT:" but assistant turns rendered as "ANSWER: ..."
    processor.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}USER: <image>\n{{ m['content'][1]['text'] }} "
        "{% else %}ANSWER: {{ m['content'][0]['text'] }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
    )
    with pytest.raises(DataError, match="not a prefix"):
        Collator(get_adapter("llava"), processor, max_length=1024)(records)


def test_load_image_converts_to_rgb(tmp_path):
    for mode in ("L", "RGBA", "P", "I;16"):
        path = tmp_path / f"{mode.replace(';', '')}.png"
        Image.new(mode, (8, 6)).save(path)
        assert load_image(str(path)).mode == "RGB"


# --------------------------------------------------------------------------- length grouping


def test_group_by_length_is_a_deterministic_partition():
    rng = random.Random(1)
    lengths = [rng.randint(20, 400) for _ in range(1000)]
    batches = group_by_length(lengths, batch_size=8, seed=3, mega_batch_mult=10)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert all(1 <= len(b) <= 8 for b in batches)
    assert batches == group_by_length(lengths, batch_size=8, seed=3, mega_batch_mult=10)
    assert batches != group_by_length(lengths, batch_size=8, seed=4, mega_batch_mult=10)
    full = group_by_length(lengths, batch_size=8, seed=3, mega_batch_mult=10, drop_last=True)
    assert all(len(b) == 8 for b in full)


def test_grouping_cuts_padding():
    rng = random.Random(2)
    lengths = [rng.randint(30, 600) for _ in range(2000)]
    grouped = padding_fraction(group_by_length(lengths, 16, seed=0), lengths)
    baseline = padding_fraction(random_batches(len(lengths), 16, seed=0), lengths)
    assert grouped < 0.1 < 0.3 < baseline


def test_padding_fraction_exact():
    assert padding_fraction([[0, 1], [2]], [10, 6, 5]) == pytest.approx(4 / 25)
    assert padding_fraction([], []) == 0.0


def test_batch_sampler_ranks_get_equal_disjoint_batches():
    lengths = list(range(1, 104))
    ranks = [
        LengthGroupedBatchSampler(lengths, 4, seed=1, mega_batch_mult=4, num_replicas=2, rank=r)
        for r in (0, 1)
    ]
    b0, b1 = list(ranks[0]), list(ranks[1])
    assert len(b0) == len(b1) == len(ranks[0])
    assert not {i for b in b0 for i in b} & {i for b in b1 for i in b}
    ranks[0].set_epoch(1)
    assert list(ranks[0]) != b0
    with pytest.raises(ConfigError):
        LengthGroupedBatchSampler(lengths, 4, num_replicas=2, rank=2)


def test_records_may_be_objects(processors, records):
    from types import SimpleNamespace

    collator = Collator(get_adapter("qwen2_vl"), processors["qwen2_vl"], max_length=1024)
    as_objects = collator([SimpleNamespace(**r) for r in records])
    as_dicts = collator(records)
    assert all(torch.equal(as_objects[k], as_dicts[k]) for k in as_dicts)


@pytest.mark.parametrize(
    ("family", "image_tokens"), [("qwen2_vl", 9), ("qwen2_5_vl", 9), ("llava", 36), ("mllama", 1)]
)
def test_demo_sized_model_runs(family, image_tokens, records, tmp_path):
    """The size the demo trains (84 px, width 128, 4 text layers) builds, loads and runs."""
    square = tmp_path / "square.png"
    Image.new("RGB", (84, 84), (200, 30, 30)).save(square)
    path = init_tiny(
        family, tmp_path / family, image_size=84, text_hidden=128, text_layers=4, vision_hidden=96
    )
    adapter = get_adapter(family)
    model, processor = adapter.load(path)
    assert 1_000_000 < sum(p.numel() for p in model.parameters()) < 5_000_000
    batch = Collator(adapter, processor, max_length=1024)([{**records[0], "image": str(square)}])
    image_id = processor.tokenizer.convert_tokens_to_ids(adapter.image_token)
    assert int((batch["input_ids"] == image_id).sum()) == image_tokens
    assert torch.isfinite(model(**batch).loss)


# --------------------------------------------------------------------------- one processor call per batch


def _benchmark():
    """benchmarks/collate_speed.py: it holds the per-sample reference collation."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "collate_speed.py"
    spec = importlib.util.spec_from_file_location("collate_speed", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def mixed_records(records, tmp_path_factory):
    """The two records plus a wide palette image and a tall one: four image sizes, three modes."""
    root = tmp_path_factory.mktemp("mixed")
    wide, tall = root / "wide.png", root / "tall.png"
    Image.new("P", (300, 90), 7).save(wide)
    Image.new("RGB", (40, 150), (10, 200, 90)).save(tall)
    return [
        *records,
        {
            "id": "wide",
            "image": str(wide),
            "question": records[1]["question"] + " Look closely.",
            "answer": "C",
        },
        {
            "id": "tall",
            "image": str(tall),
            "question": "Is it normal?\nA: Yes\nB: No\n" + SUFFIX,
            "answer": "A",
        },
    ]


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_collation_equals_per_sample_reference(family, processors, mixed_records):
    """One processor call per batch gives the very tensors of per-sample calls + right padding:
    input_ids, labels, attention_mask, pixel values and every other tensor."""
    bench = _benchmark()
    collator = Collator(get_adapter(family), processors[family], max_length=1024)
    batch = collator(mixed_records)
    bench.assert_same_batch(bench.reference_collate(collator, mixed_records), batch, family)
    _check_labels(family, processors[family], batch, mixed_records)
    # with an over-long record left out, the batch is the reference's batch of the others
    lengths = [collator.length(r) for r in mixed_records]
    shorter = Collator(get_adapter(family), processors[family], max_length=sorted(lengths)[-2])
    kept = shorter(mixed_records)
    assert shorter.dropped == 1 and kept["input_ids"].shape[0] == len(mixed_records) - 1
    bench.assert_same_batch(bench.reference_collate(shorter, mixed_records), kept, f"{family} drop")


def test_collate_skips_bad_images_and_fills_the_batch(processors, mixed_records, tmp_path):
    collator = Collator(get_adapter("qwen2_vl"), processors["qwen2_vl"], max_length=1024)
    missing = {**mixed_records[0], "id": "gone", "image": str(tmp_path / "missing.png")}
    out = collator.collate([missing, *mixed_records[:2]], skip_bad_images=True, fill=True)
    assert (out.bad_images, out.too_long) == (1, 0)
    expected = collator([mixed_records[0], mixed_records[1], mixed_records[0]])
    assert all(torch.equal(out.batch[k], expected[k]) for k in expected)
    assert collator.collate([missing], skip_bad_images=True).batch == {}
    with pytest.raises(DataError, match="does not exist"):
        collator.collate([missing, *mixed_records[:2]])


def test_a_tokenizer_without_pad_token_pads_with_eos(processors, mixed_records):
    processor = copy.deepcopy(processors["qwen2_vl"])
    processor.tokenizer.pad_token = None
    collator = Collator(get_adapter("qwen2_vl"), processor, max_length=1024)
    assert collator.pad_id == processor.tokenizer.eos_token_id  # <|im_end|>, the end-of-turn token too
    batch = collator(mixed_records)
    bench = _benchmark()
    bench.assert_same_batch(bench.reference_collate(collator, mixed_records), batch, "eos padding")
    assert processor.tokenizer.pad_token is None


def test_answer_merging_with_the_prompt_is_refused(processors, records):
    processor = copy.copy(processors["llava"])
    # generation prompt "ASSISTANT: " with its space: the answer's token "▁B" starts inside the prompt
    processor.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}USER: <image>\n{{ m['content'][1]['text'] }} "
        "{% else %}ASSISTANT: {{ m['content'][0]['text'] }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}ASSISTANT: {% endif %}"
    )
    with pytest.raises(DataError, match="tokenizes differently once the answer follows it"):
        Collator(get_adapter("llava"), processor, max_length=1024)(records)
