"""One builder per family: a randomly initialised model and its processor at a ``TinySize``.

Each builder makes the family's transformers config (text, vision and the tokens that tie
them), the model from it, and the processor from the family's image processor, the tiny
tokenizer and the family's chat template (``cgmed/models/templates/*.jinja``, package data).
Builders draw from the global torch RNG; ``init_tiny`` seeds and restores it around them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from cgmed.models.tiny.size import TinySize
from cgmed.models.tiny.tokenizer import llava_tokenizer, mllama_tokenizer, pad_to, qwen_tokenizer

# The chat templates are copied from (or kept close to) the real checkpoints', so that the
# tiny models exercise the same formatting the real ones do:
#   qwen_vl.jinja  Qwen2-VL-7B-Instruct's, which Qwen2.5-VL-7B-Instruct shares;
#   llava.jinja    llava-hf/llava-1.5-7b-hf's; it does not close the assistant turn with </s>,
#                  the LLaVA adapter appends it (LLaVA-1.5 was trained with `ASSISTANT: answer</s>`);
#   mllama.jinja   Llama-3.2-11B-Vision-Instruct's without the tool-calling branches.


def chat_template(name: str) -> str:
    """The text of ``cgmed/models/templates/<name>.jinja``.

    The files end with a newline that the templates themselves do not have (the real
    checkpoints' templates end with their last tag), so it is removed.
    """
    path = resources.files("cgmed.models") / "templates" / f"{name}.jinja"
    return path.read_text(encoding="utf-8").removesuffix("\n")


@dataclass(frozen=True)
class Built:
    """A freshly built model and processor, ready for ``save_pretrained``."""

    model: Any
    processor: Any


# --------------------------------------------------------------------------- Qwen2-VL, Qwen2.5-VL

_QWEN_PATCHES = dict(patch_size=14, spatial_merge_size=2, temporal_patch_size=2)


def _qwen2_vl_vision(size: TinySize) -> dict[str, Any]:
    return dict(
        depth=size.vision_layers,
        embed_dim=size.vision_hidden,
        hidden_size=size.text_hidden,  # the merger projects into the LM width
        num_heads=size.vision_hidden // 16,
        mlp_ratio=2,
        **_QWEN_PATCHES,
    )


def _qwen2_5_vl_vision(size: TinySize) -> dict[str, Any]:
    return dict(
        depth=size.vision_layers,
        hidden_size=size.vision_hidden,
        intermediate_size=2 * size.vision_hidden,
        num_heads=size.vision_hidden // 16,
        out_hidden_size=size.text_hidden,
        # Qwen2.5-VL alternates windowed and full attention blocks; the last block here
        # attends fully, the others within 56 px windows.
        window_size=56,
        fullatt_block_indexes=[size.vision_layers - 1],
        **_QWEN_PATCHES,
    )


def _qwen_family(family: str, size: TinySize) -> Built:
    import transformers as tf

    tok = qwen_tokenizer()
    ids = tok.convert_tokens_to_ids
    text = size.text(
        vocab_size=pad_to(len(tok)),
        # head_dim 16 -> 8 rotary frequencies split over (temporal, height, width), in the
        # proportions of the real [16, 24, 24] split for head_dim 128.
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
        bos_token_id=ids("<|endoftext|>"),
        eos_token_id=ids("<|im_end|>"),
        pad_token_id=ids("<|endoftext|>"),
    )
    tokens = dict(
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=False,
    )
    if family == "qwen2_vl":
        config = tf.Qwen2VLConfig(text_config=text, vision_config=_qwen2_vl_vision(size), **tokens)
        model_cls, processor_cls = tf.Qwen2VLForConditionalGeneration, tf.Qwen2VLProcessor
    else:
        config = tf.Qwen2_5_VLConfig(text_config=text, vision_config=_qwen2_5_vl_vision(size), **tokens)
        model_cls, processor_cls = tf.Qwen2_5_VLForConditionalGeneration, tf.Qwen2_5_VLProcessor
    model = model_cls(config)
    # A square image_size x image_size picture keeps (image_size / 28)^2 visual tokens;
    # larger ones are scaled down to that pixel budget, as max_pixels does for real models.
    pixels = dict(min_pixels=28 * 28, max_pixels=size.image_size**2)
    grid = dict(patch_size=14, merge_size=2, temporal_patch_size=2)
    processor = processor_cls(
        image_processor=tf.Qwen2VLImageProcessor(**grid, **pixels),
        tokenizer=tok,
        # transformers 5.x's Qwen processors require a video processor even for images only.
        video_processor=tf.Qwen2VLVideoProcessor(**grid, **pixels),
        chat_template=chat_template("qwen_vl"),
    )
    return Built(model, processor)


# --------------------------------------------------------------------------- LLaVA-1.5

_LLAVA_PATCH = 14


def _llava_config(size: TinySize, tok: Any):
    import transformers as tf

    vision = tf.CLIPVisionConfig(
        hidden_size=size.vision_hidden,
        intermediate_size=2 * size.vision_hidden,
        num_hidden_layers=size.vision_layers,
        num_attention_heads=size.vision_hidden // 16,
        image_size=size.image_size,
        patch_size=_LLAVA_PATCH,
        projection_dim=size.vision_hidden,
    )
    text = tf.LlamaConfig(
        **size.text(
            vocab_size=pad_to(len(tok)),
            bos_token_id=tok.convert_tokens_to_ids("<s>"),
            eos_token_id=tok.convert_tokens_to_ids("</s>"),
            pad_token_id=tok.convert_tokens_to_ids("<pad>"),
        )
    )
    return tf.LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_seq_length=(size.image_size // _LLAVA_PATCH) ** 2,
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default",  # drop CLIP's class token, as LLaVA-1.5
        # Penultimate CLIP layer, as LLaVA-1.5: the last layer's weights get no gradient.
        vision_feature_layer=-2,
    )


def _llava(size: TinySize) -> Built:
    import transformers as tf

    tok = llava_tokenizer()
    model = tf.LlavaForConditionalGeneration(_llava_config(size, tok))
    image_processor = tf.CLIPImageProcessor(
        size={"shortest_edge": size.image_size},
        crop_size={"height": size.image_size, "width": size.image_size},
        do_center_crop=True,
    )
    processor = tf.LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=_LLAVA_PATCH,
        vision_feature_select_strategy="default",
        # CLIP prepends a class token to the patch features: the processor counts it (+1)
        # and the "default" strategy removes it again (-1), so the number of <image> tokens
        # equals the number of patch features the projector emits. With 0 the prompt holds
        # one <image> token too few and the model raises a token/feature count mismatch.
        num_additional_image_tokens=1,
        chat_template=chat_template("llava"),
    )
    return Built(model, processor)


# --------------------------------------------------------------------------- Llama-3.2-Vision


def _mllama_config(size: TinySize, tok: Any, n_text: int):
    import transformers as tf

    ids = tok.convert_tokens_to_ids
    vision = dict(
        hidden_size=size.vision_hidden,
        intermediate_size=2 * size.vision_hidden,
        num_hidden_layers=size.vision_layers,
        num_global_layers=1,
        attention_heads=size.vision_hidden // 16,
        image_size=size.image_size,  # the tile side
        patch_size=14,
        # The vision output concatenates the last hidden state with these layers' states.
        intermediate_layers_indices=[0],
        vision_output_dim=2 * size.vision_hidden,
        # The default supported aspect ratios are only valid with 4 tiles.
        max_num_tiles=4,
    )
    # Llama-3.2-Vision interleaves gated cross-attention layers (reading the image) with
    # self-attention layers; here one cross-attention layer sits after the first
    # ``text_layers // 2`` self-attention layers (text_layers + 1 layers in all).
    text = size.text(
        vocab_size=n_text,
        cross_attention_layers=[size.text_layers // 2 or 1],
        # The defaults (128000 ...) lie outside the small vocabulary.
        bos_token_id=ids("<|begin_of_text|>"),
        eos_token_id=ids("<|eot_id|>"),
        pad_token_id=ids("<|finetune_right_pad_id|>"),
    )
    text["num_hidden_layers"] = size.text_layers + 1
    return tf.MllamaConfig(vision_config=vision, text_config=text, image_token_index=ids("<|image|>"))


def _mllama(size: TinySize) -> Built:
    import transformers as tf

    tok, n_text = mllama_tokenizer()
    model = tf.MllamaForConditionalGeneration(_mllama_config(size, tok, n_text))
    image_processor = tf.MllamaImageProcessor(
        size={"height": size.image_size, "width": size.image_size}, max_image_tiles=4
    )
    processor = tf.MllamaProcessor(
        image_processor=image_processor, tokenizer=tok, chat_template=chat_template("mllama")
    )
    return Built(model, processor)


BUILDERS: dict[str, Callable[[TinySize], Built]] = {
    "qwen2_vl": lambda size: _qwen_family("qwen2_vl", size),
    "qwen2_5_vl": lambda size: _qwen_family("qwen2_5_vl", size),
    "llava": _llava,
    "mllama": _mllama,
}
TINY_FAMILIES: tuple[str, ...] = tuple(BUILDERS)
