"""Few-shot prompts in each family's multi-turn chat format: the in-context answers are closed by
the same token that closes (and is trained on after) a training answer."""

from __future__ import annotations

import copy

import pytest
from PIL import Image

from cgmed.errors import ConfigError
from cgmed.models import FAMILIES, IGNORE_INDEX, Collator, get_adapter, init_tiny, should_add_special_tokens

SHOTS = [("Q one?", "A"), ("Q two?", "B")]

# What each family's own chat format writes after an assistant answer when the conversation
# goes on, and how user and assistant turns start.
SEPARATOR = {
    "qwen2_vl": "<|im_end|>\n",
    "qwen2_5_vl": "<|im_end|>\n",
    "llava": "</s>",  # LLaVA-1.5's conv_vicuna_v1: sep2 after an answer, no space before USER
    "mllama": "<|eot_id|>",
}
USER_TURN = {
    "qwen2_vl": "<|im_start|>user\n",
    "qwen2_5_vl": "<|im_start|>user\n",
    "llava": "USER: ",
    "mllama": "<|start_header_id|>user<|end_header_id|>\n\n",
}
ASSISTANT_TURN = {
    "qwen2_vl": "<|im_start|>assistant\n",
    "qwen2_5_vl": "<|im_start|>assistant\n",
    "llava": "ASSISTANT: ",
    "mllama": "<|start_header_id|>assistant<|end_header_id|>\n\n",
}


@pytest.fixture(scope="module")
def processors(tmp_path_factory):
    from transformers import AutoProcessor

    root = tmp_path_factory.mktemp("tiny_prompts")
    return {f: AutoProcessor.from_pretrained(init_tiny(f, root / f, seed=0)) for f in FAMILIES}


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompt_images") / "square.png"
    Image.new("RGB", (64, 64), (90, 160, 20)).save(path)
    return path


def test_every_family_has_a_separator():
    assert set(SEPARATOR) == set(USER_TURN) == set(ASSISTANT_TURN) == set(FAMILIES)


@pytest.mark.parametrize("family", FAMILIES)
def test_in_context_turns_end_as_the_family_format_says(family, processors):
    adapter, processor = get_adapter(family), processors[family]
    prompt = adapter.render(processor, "Final?", shots=SHOTS)
    position = 0
    for _, answer in SHOTS:
        answer_at = prompt.index(ASSISTANT_TURN[family], position) + len(ASSISTANT_TURN[family])
        after = answer_at + len(answer)
        assert prompt[answer_at:after] == answer
        next_user = prompt.index(USER_TURN[family], after)
        assert prompt[after:next_user] == SEPARATOR[family], (family, prompt[after:next_user])
        position = next_user
    assert prompt.count(USER_TURN[family]) == 3 and prompt.count(adapter.image_token) == 3
    zero_shot = adapter.render(processor, "Final?")
    assert prompt.endswith(zero_shot[zero_shot.rindex(USER_TURN[family]) :])  # the question's turn, unchanged
    # a training conversation closes its answer the same way, and the closing token is the trained one
    full = adapter.render(processor, "Final?", "C")
    assert full.endswith("C" + SEPARATOR[family]) and SEPARATOR[family].startswith(adapter.eot_token)


def test_llava_prompt_is_the_vicuna_v1_conversation(processors):
    """LLaVA-1.5 was trained on ``USER: <image>\\nQ ASSISTANT: A</s>USER: ...`` (without the
    system line, which llava-hf's template leaves out)."""
    text = get_adapter("llava").render(processors["llava"], "Final?", shots=SHOTS)
    assert text == (
        "USER: <image>\nQ one? ASSISTANT: A</s>"
        "USER: <image>\nQ two? ASSISTANT: B</s>"
        "USER: <image>\nFinal? ASSISTANT:"
    )
    full = get_adapter("llava").render(processors["llava"], "Final?", "C", shots=SHOTS[:1])
    assert full == "USER: <image>\nQ one? ASSISTANT: A</s>USER: <image>\nFinal? ASSISTANT: C</s>"


@pytest.mark.parametrize("family", FAMILIES)
def test_in_context_answers_tokenize_as_the_training_target(family, processors, image_path):
    """The tokens the model is trained to produce (answer + closing token, as the label-mask
    tests pin them) are the tokens of each in-context answer in the few-shot prompt."""
    adapter, processor = get_adapter(family), processors[family]
    collator = Collator(adapter, processor, max_length=4096)
    prompt = adapter.render(processor, "Final?", shots=SHOTS)
    image = Image.open(image_path).convert("RGB")
    prompt_ids = processor(
        images=[[image] * 3],
        text=[prompt],
        add_special_tokens=should_add_special_tokens(processor.tokenizer, prompt),
        return_tensors="pt",
    )["input_ids"][0].tolist()
    for _, answer in SHOTS:
        record = {"id": "r", "image": str(image_path), "question": "Final?", "answer": answer}
        labels = collator([record])["labels"][0]
        target = labels[labels != IGNORE_INDEX].tolist()
        assert target[-1] == collator.eot_id and len(target) == 2
        hits = [i for i in range(len(prompt_ids)) if prompt_ids[i : i + len(target)] == target]
        assert len(hits) == 1, (family, answer, target, prompt_ids)


def test_a_template_that_rewrites_earlier_turns_is_refused(processors):
    processor = copy.copy(processors["llava"])
    # the number of messages up front: each longer conversation changes the text of earlier turns
    processor.chat_template = "{{ messages | length }}" + processors["llava"].chat_template
    with pytest.raises(ConfigError, match="renders an earlier turn differently") as err:
        get_adapter("llava").render(processor, "Final?", shots=SHOTS)
    assert err.value.key == "model.path"
