"""Backbone registry and tiny checkpoints: every family builds, saves, loads back through
its adapter (the real checkpoint code path), and the adapter's parameter prefixes match
the transformers classes."""

from __future__ import annotations

import json

import pytest
import torch

from cgmed.errors import ConfigError
from cgmed.models import FAMILIES, PARTS, detect_family, get_adapter, init_tiny
from cgmed.models.tiny import TINY_FAMILIES


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """One tiny checkpoint per family, built once per test session."""
    root = tmp_path_factory.mktemp("tiny_registry")
    return {family: init_tiny(family, root / family, seed=0) for family in FAMILIES}


@pytest.fixture(scope="session")
def loaded(tiny_dirs):
    return {family: get_adapter(family).load(path) for family, path in tiny_dirs.items()}


def test_every_family_has_a_tiny_builder():
    assert set(TINY_FAMILIES) == set(FAMILIES) == {"qwen2_vl", "qwen2_5_vl", "llava", "mllama"}


def test_unknown_family_lists_known_ones():
    with pytest.raises(ConfigError) as err:
        get_adapter("gpt4v")
    assert err.value.key == "model.family"
    for family in FAMILIES:
        assert family in str(err.value)


@pytest.mark.parametrize("family", FAMILIES)
def test_detect_family_reads_model_type(family, tiny_dirs):
    assert detect_family(tiny_dirs[family]) == family
    assert json.loads((tiny_dirs[family] / "config.json").read_text())["model_type"] == family


def test_detect_family_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        detect_family(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ConfigError, match="'bert'") as err:
        detect_family(tmp_path)
    assert err.value.key == "model.family"


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_checkpoint_is_small_and_complete(family, tiny_dirs, loaded):
    files = {p.name for p in tiny_dirs[family].iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= files
    model, processor = loaded[family]
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    assert 800 <= len(processor.tokenizer) <= 2000
    adapter = get_adapter(family)
    # the special tokens the collator and the chat template rely on are single tokens
    for token in (adapter.image_token, adapter.eot_token):
        ids = processor.tokenizer(token, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and processor.tokenizer.convert_ids_to_tokens(ids[0]) == token
    assert model.config.model_type == family


@pytest.mark.parametrize("family", FAMILIES)
def test_prefixes_partition_parameters(family, loaded):
    adapter = get_adapter(family)
    model, _ = loaded[family]
    names = [n for n, _ in model.named_parameters()]
    for name in names:  # disjoint: exactly one part claims each parameter
        owners = [part for part, prefixes in adapter.prefixes.items() if name.startswith(prefixes)]
        assert len(owners) == 1, (name, owners)
    groups = adapter.split_parameters(model)
    assert set(groups) == set(PARTS)
    for part in PARTS:
        assert groups[part], f"{family}: no {part} parameters"
    assert sorted(n for g in groups.values() for n, _ in g) == sorted(names)  # covering


def test_split_parameters_rejects_strays(loaded):
    adapter = get_adapter("llava")
    model, _ = loaded["qwen2_vl"]  # Qwen names are not LLaVA's
    with pytest.raises(ConfigError, match="match none"):
        adapter.split_parameters(model)


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_same_weights(family, tiny_dirs, tmp_path):
    from safetensors.torch import load_file

    again = load_file(init_tiny(family, tmp_path / "a", seed=0) / "model.safetensors")
    other = load_file(init_tiny(family, tmp_path / "b", seed=1) / "model.safetensors")
    first = load_file(tiny_dirs[family] / "model.safetensors")
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)
    same_tok = (tmp_path / "a" / "tokenizer.json").read_text() == (
        tiny_dirs[family] / "tokenizer.json"
    ).read_text()
    assert same_tok


def test_init_tiny_leaves_global_rng_alone(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    init_tiny("llava", tmp_path / "x", seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_init_tiny_rejects_bad_sizes(tmp_path):
    with pytest.raises(ConfigError) as err:
        init_tiny("qwen2_vl", tmp_path, image_size=50)
    assert err.value.key == "tiny.image_size"
    with pytest.raises(ConfigError):
        init_tiny("qwen2_vl", tmp_path, text_hidden=100)
    with pytest.raises(ConfigError):
        init_tiny("blip", tmp_path)


def test_qwen_pixel_knobs_reach_the_processor(tiny_dirs):
    _, processor = get_adapter("qwen2_vl").load(
        tiny_dirs["qwen2_vl"], min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 9
    )
    assert processor.image_processor.size.shortest_edge == 28 * 28 * 4
    assert processor.image_processor.size.longest_edge == 28 * 28 * 9


def test_pixel_knobs_validated(tiny_dirs):
    with pytest.raises(ConfigError) as err:
        get_adapter("llava").load(tiny_dirs["llava"], max_pixels=1000)
    assert err.value.key == "model.max_pixels"
    with pytest.raises(ConfigError, match="exceeds"):
        get_adapter("qwen2_5_vl").processor_kwargs(min_pixels=10_000, max_pixels=1000)
    with pytest.raises(ConfigError, match="positive integer"):
        get_adapter("qwen2_5_vl").processor_kwargs(max_pixels=-1)


def test_load_checks_family_and_dtype(tiny_dirs):
    with pytest.raises(ConfigError, match="set model.family=qwen2_vl"):
        get_adapter("llava").load(tiny_dirs["qwen2_vl"])
    with pytest.raises(ConfigError) as err:
        get_adapter("llava").load(tiny_dirs["llava"], dtype="float8")
    assert err.value.key == "model.dtype"
    model, _ = get_adapter("llava").load(tiny_dirs["llava"], dtype="bfloat16")
    assert model.dtype == torch.bfloat16


def test_trust_remote_code_is_only_passed_through(tiny_dirs, monkeypatch):
    import transformers

    seen = []

    def spy(original):
        def wrapper(*args, **kwargs):
            seen.append(kwargs.get("trust_remote_code"))
            return original(*args, **kwargs)

        return wrapper

    for cls in (
        transformers.AutoConfig,
        transformers.AutoModelForImageTextToText,
        transformers.AutoProcessor,
    ):
        monkeypatch.setattr(cls, "from_pretrained", spy(cls.from_pretrained))
    get_adapter("llava").load(tiny_dirs["llava"])
    assert len(seen) >= 3 and set(seen) == {False}
    seen.clear()
    get_adapter("llava").load(tiny_dirs["llava"], trust_remote_code=True)
    assert len(seen) >= 3 and set(seen) == {True}


@pytest.mark.parametrize("family", FAMILIES)
def test_render_matches_family_format(family, loaded):
    adapter = get_adapter(family)
    _, processor = loaded[family]
    prompt = adapter.render(processor, "Is it normal?")
    full = adapter.render(processor, "Is it normal?", "B")
    assert full.startswith(prompt) and prompt.count(adapter.image_token) == 1
    assert full.endswith(adapter.eot_token) or full.endswith(adapter.eot_token + "\n")
    expected_prompt_end = {
        "qwen2_vl": "<|im_start|>assistant\n",
        "qwen2_5_vl": "<|im_start|>assistant\n",
        "llava": "Is it normal? ASSISTANT:",
        "mllama": "<|start_header_id|>assistant<|end_header_id|>\n\n",
    }[family]
    assert prompt.endswith(expected_prompt_end)
