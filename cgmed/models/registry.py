"""Backbone adapters: what cgmed needs to know about each vision-language model family.

One frozen :class:`BackboneAdapter` per family holds

* where the vision tower, the projector and the language model live, as prefixes of the
  names in ``model.named_parameters()`` of the transformers 5.x class (for freezing, LoRA
  targets and per-part learning rates; a test checks them on real instances);
* how one multiple-choice sample becomes a chat (one image + the question in the user
  turn, the answer letter in the assistant turn) through the processor's chat template,
  and which token closes the assistant answer (it carries a label, see ``collate.py``);
* the image-size knobs the family's processor takes (``min_pixels`` / ``max_pixels`` for
  Qwen, whose visual token count grows with the picture);
* ``load()``: ``AutoModelForImageTextToText`` / ``AutoProcessor.from_pretrained``, the same
  call for a hub id and for a local directory (tests load checkpoints from ``cgmed.models.tiny``).

    adapter = get_adapter(detect_family(path))
    model, processor = adapter.load(path, dtype="bfloat16", max_pixels=448 * 448)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cgmed.errors import ConfigError

Part = Literal["vision", "projector", "language"]
PARTS: tuple[Part, ...] = ("vision", "projector", "language")
_DTYPES = ("auto", "float32", "bfloat16", "float16")
# attention kernels every family's from_pretrained takes (model.attn_implementation)
ATTN_IMPLEMENTATIONS = ("sdpa", "flash_attention_2", "eager")


@dataclass(frozen=True)
class BackboneAdapter:
    """Family-specific facts and the chat formatting of one VLM family.

    ``eot_token`` closes the assistant answer and is trained on; ``append_eot`` is set for
    families whose hub chat template leaves assistant turns open (llava-hf's template ends
    each answer with a space, while LLaVA-1.5 was trained on ``ASSISTANT: B</s>USER: ...``):
    ``render`` then closes every assistant turn, in-context examples included, with it.
    ``pixel_knobs`` are the processor arguments that bound image resolution (empty when
    the family resizes to a fixed size).
    """

    family: str
    model_types: tuple[str, ...]
    example_hub_id: str
    vision_prefixes: tuple[str, ...]
    projector_prefixes: tuple[str, ...]
    language_prefixes: tuple[str, ...]
    image_token: str
    eot_token: str
    append_eot: bool = False
    pixel_knobs: tuple[str, ...] = ()

    # ------------------------------------------------------------------ parameter names

    @property
    def prefixes(self) -> dict[Part, tuple[str, ...]]:
        """``{"vision": (...), "projector": (...), "language": (...)}``."""
        return {
            "vision": self.vision_prefixes,
            "projector": self.projector_prefixes,
            "language": self.language_prefixes,
        }

    def part_of(self, name: str) -> Part | None:
        """Which part a parameter name belongs to (None if no prefix matches)."""
        for part, prefixes in self.prefixes.items():
            if name.startswith(prefixes):
                return part
        return None

    def split_parameters(self, model: Any) -> dict[Part, list[tuple[str, Any]]]:
        """Group ``model.named_parameters()`` by part; raises if a parameter fits no part.

        A parameter outside every prefix means the adapter no longer matches the installed
        transformers version: freezing it silently (or not) would be a wrong experiment.
        """
        groups: dict[Part, list[tuple[str, Any]]] = {p: [] for p in PARTS}
        stray = []
        for name, param in model.named_parameters():
            part = self.part_of(name)
            if part is None:
                stray.append(name)
            else:
                groups[part].append((name, param))
        if stray:
            raise ConfigError(
                "model.family",
                f"{len(stray)} parameters of {type(model).__name__} match none of the {self.family} "
                f"adapter's prefixes, e.g. {stray[:3]}",
                "update the prefixes in cgmed/models/registry.py for this transformers version",
            )
        return groups

    # ------------------------------------------------------------------ chat formatting

    @staticmethod
    def messages(
        question: str, answer: str | None = None, shots: Sequence[tuple[str, str]] = ()
    ) -> list[dict[str, Any]]:
        """The conversation: a user turn with one image then the question; the answer if given.

        ``shots`` are in-context examples (question, answer) put before it as earlier turns,
        each with its own image (few-shot prompting; the images go to the processor in order).
        """
        conv: list[dict[str, Any]] = []
        for q, a in shots:
            conv.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]})
            conv.append({"role": "assistant", "content": [{"type": "text", "text": a}]})
        conv.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]})
        if answer is not None:
            conv.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        return conv

    def render(
        self,
        processor: Any,
        question: str,
        answer: str | None = None,
        shots: Sequence[tuple[str, str]] = (),
    ) -> str:
        """Chat-template text (image placeholders not yet expanded: one per shot, then the question's).

        Without ``answer``: the prompt ending with the generation prompt (what the model
        sees at inference). With ``answer``: the whole conversation. Every assistant turn,
        the in-context examples' included, ends with ``eot_token`` as in the family's
        multi-turn chat format (``append_eot``).
        """
        conv = self.messages(question, answer, shots)
        text = processor.apply_chat_template(conv, add_generation_prompt=answer is None)
        return self._close_assistant_turns(processor, conv, text) if self.append_eot else text

    def _close_assistant_turns(self, processor: Any, conv: list[dict[str, Any]], text: str) -> str:
        """``text`` (the template's rendering of ``conv``) with every assistant turn that the
        template leaves open closed by ``eot_token`` in place of its trailing whitespace.

        The turns are found by rendering the conversation up to each assistant turn, which
        must be a prefix of ``text``: LLaVA-1.5 (``conv_vicuna_v1``) reads
        ``USER: <image>\\nQ ASSISTANT: A</s>USER: ...``, llava-hf's template writes ``A USER:``.
        """
        closed, done = [], 0
        for end, message in enumerate(conv, start=1):
            if message["role"] != "assistant":
                continue
            upto = text if end == len(conv) else processor.apply_chat_template(conv[:end])
            if not text.startswith(upto) or len(upto) < done:
                raise ConfigError(
                    "model.path",
                    f"the {self.family} chat template renders an earlier turn differently once later turns "
                    "follow it, so in-context answers cannot be closed",
                    "use the family's hub chat template",
                )
            turn = upto[done:]
            if not turn.rstrip().endswith(self.eot_token):
                turn = turn.rstrip() + self.eot_token
            closed.append(turn)
            done = len(upto)
        return "".join(closed) + text[done:]

    # ------------------------------------------------------------------ loading

    def processor_kwargs(self, **knobs: Any) -> dict[str, Any]:
        """Validate image-size knobs (``min_pixels``/``max_pixels``...) for this family."""
        out = {}
        for key, value in knobs.items():
            if value is None:
                continue
            if key in ("min_pixels", "max_pixels"):
                if key not in self.pixel_knobs:
                    raise ConfigError(
                        f"model.{key}",
                        f"the {self.family} processor resizes images to a fixed size and takes no {key}",
                        f"remove model.{key} (it applies to the Qwen families only)",
                    )
                if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                    raise ConfigError(
                        f"model.{key}",
                        f"must be a positive integer, got {value!r}",
                        f"e.g. model.{key}={448 * 448}",
                    )
            out[key] = value
        lo, hi = out.get("min_pixels"), out.get("max_pixels")
        if lo is not None and hi is not None and lo > hi:
            raise ConfigError(
                "model.min_pixels",
                f"min_pixels {lo} exceeds max_pixels {hi}",
                "set model.min_pixels <= model.max_pixels",
            )
        return out

    def load(
        self,
        path_or_hub_id: str | Path,
        dtype: Any = "auto",
        trust_remote_code: bool = False,
        model_kwargs: dict[str, Any] | None = None,
        attn_implementation: str = "sdpa",
        use_liger: bool = False,
        **processor_kwargs: Any,
    ) -> tuple[Any, Any]:
        """Load ``(model, processor)`` with ``AutoModelForImageTextToText`` / ``AutoProcessor``.

        ``dtype`` is a torch dtype or one of ``auto``, ``float32``, ``bfloat16``, ``float16``.
        ``processor_kwargs`` go to ``AutoProcessor.from_pretrained`` (for the Qwen family,
        ``min_pixels`` / ``max_pixels`` bound each image's visual tokens). Raises ConfigError
        when the checkpoint belongs to another family. ``attn_implementation`` (one of
        :data:`ATTN_IMPLEMENTATIONS`) and ``model_kwargs`` (``quantization_config`` for QLoRA
        ...) go to the model's ``from_pretrained``; ``use_liger`` patches the loaded model with
        Liger kernels (:func:`apply_liger`).
        """
        from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

        ref = str(path_or_hub_id)
        kwargs = self.processor_kwargs(**processor_kwargs)
        check_attn_implementation(attn_implementation)
        config = AutoConfig.from_pretrained(ref, trust_remote_code=trust_remote_code)
        if config.model_type not in self.model_types:
            raise ConfigError(
                "model.family",
                f"{ref} is a {config.model_type!r} checkpoint, not {self.family}",
                f"set model.family={_family_of_model_type(config.model_type) or '<a known family>'}",
            )
        model = AutoModelForImageTextToText.from_pretrained(
            ref,
            config=config,
            dtype=_torch_dtype(dtype),
            trust_remote_code=trust_remote_code,
            attn_implementation=attn_implementation,
            **(model_kwargs or {}),
        )
        if use_liger:
            apply_liger(model, self.family)
        processor = AutoProcessor.from_pretrained(ref, trust_remote_code=trust_remote_code, **kwargs)
        return model, processor


def check_attn_implementation(name: str) -> None:
    """ConfigError unless ``name`` is a known attention kernel whose package is installed."""
    import importlib.util

    if name not in ATTN_IMPLEMENTATIONS:
        raise ConfigError(
            "model.attn_implementation",
            f"{name!r} is not one of {list(ATTN_IMPLEMENTATIONS)}",
            "use sdpa (the default), flash_attention_2 or eager",
        )
    if name == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise ConfigError(
            "model.attn_implementation",
            "flash_attention_2 needs the flash-attn package, which is not installed",
            "pip install flash-attn --no-build-isolation (CUDA only), or use model.attn_implementation=sdpa",
        )


def apply_liger(model: Any, family: str) -> None:
    """Patch ``model`` in place with the Liger kernels the installed liger-kernel has for its type.

    Only the layer kernels (RMSNorm, RoPE, SwiGLU ...) are applied: cgmed computes its own
    answer-only loss from the logits, so Liger's fused linear cross-entropy, which skips the
    logits, stays off. ConfigError when liger-kernel is not installed or knows no kernels
    for the model type.
    """
    try:
        from liger_kernel.transformers.monkey_patch import (
            MODEL_TYPE_TO_APPLY_LIGER_FN,
            _apply_liger_kernel_to_instance,
        )
    except ImportError as err:
        raise ConfigError(
            "model.use_liger",
            f"needs the liger-kernel package, which does not import ({err})",
            "pip install liger-kernel (CUDA only), or set model.use_liger=false",
        ) from None
    model_type = model.config.model_type
    if model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        raise ConfigError(
            "model.use_liger",
            f"the installed liger-kernel has no kernels for {family} (model_type {model_type!r})",
            "upgrade liger-kernel, or set model.use_liger=false",
        )
    _apply_liger_kernel_to_instance(model=model, fused_linear_cross_entropy=False, cross_entropy=False)


def _torch_dtype(dtype: Any) -> Any:
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ConfigError("model.dtype", f"unknown dtype {dtype!r}", f"use one of {list(_DTYPES)}")
    return dtype if dtype == "auto" else getattr(torch, dtype)


# Prefixes checked against transformers 5.24 instances (tests/test_models_registry.py).
_QWEN_PARTS = dict(
    # The Qwen vision tower holds its own projector ("merger": 2x2 patch merge + MLP).
    vision_prefixes=("model.visual.patch_embed.", "model.visual.blocks."),
    projector_prefixes=("model.visual.merger.",),
    language_prefixes=("model.language_model.", "lm_head."),
    image_token="<|image_pad|>",
    eot_token="<|im_end|>",
    pixel_knobs=("min_pixels", "max_pixels"),
)

ADAPTERS: dict[str, BackboneAdapter] = {
    a.family: a
    for a in (
        BackboneAdapter(
            family="qwen2_vl",
            model_types=("qwen2_vl",),
            example_hub_id="Qwen/Qwen2-VL-7B-Instruct",
            **_QWEN_PARTS,
        ),
        BackboneAdapter(
            family="qwen2_5_vl",
            model_types=("qwen2_5_vl",),
            example_hub_id="Qwen/Qwen2.5-VL-7B-Instruct",
            **_QWEN_PARTS,
        ),
        BackboneAdapter(
            family="llava",
            model_types=("llava",),
            example_hub_id="llava-hf/llava-1.5-7b-hf",
            vision_prefixes=("model.vision_tower.",),
            projector_prefixes=("model.multi_modal_projector.",),
            language_prefixes=("model.language_model.", "lm_head."),
            image_token="<image>",
            eot_token="</s>",
            append_eot=True,
        ),
        BackboneAdapter(
            family="mllama",
            model_types=("mllama",),
            example_hub_id="meta-llama/Llama-3.2-11B-Vision-Instruct",
            vision_prefixes=("model.vision_model.",),
            projector_prefixes=("model.multi_modal_projector.",),
            # The gated cross-attention layers that read the image sit inside the language
            # model's layer stack, so they count as language model here.
            language_prefixes=("model.language_model.", "lm_head."),
            image_token="<|image|>",
            eot_token="<|eot_id|>",
        ),
    )
}

FAMILIES: tuple[str, ...] = tuple(ADAPTERS)


def get_adapter(family: str) -> BackboneAdapter:
    """The adapter of ``family``; ConfigError(key="model.family") listing the known ones otherwise."""
    try:
        return ADAPTERS[family]
    except (KeyError, TypeError):
        raise ConfigError(
            "model.family",
            f"unknown model family {family!r}; known: {list(FAMILIES)}",
            f"set model.family to one of {list(FAMILIES)}",
        ) from None


def _family_of_model_type(model_type: str) -> str | None:
    for adapter in ADAPTERS.values():
        if model_type in adapter.model_types:
            return adapter.family
    return None


def detect_family(path: str | Path) -> str:
    """The family of a local checkpoint directory, from ``config.json``'s ``model_type``."""
    config = Path(path) / "config.json"
    try:
        model_type = json.loads(config.read_text())["model_type"]
    except FileNotFoundError:
        raise ConfigError(
            "model.path",
            f"{config} does not exist",
            "point model.path at a checkpoint directory holding config.json",
        ) from None
    except (KeyError, json.JSONDecodeError) as err:
        raise ConfigError("model.path", f"{config} has no readable model_type ({err})") from None
    family = _family_of_model_type(model_type)
    if family is None:
        raise ConfigError(
            "model.family",
            f"{config} has model_type {model_type!r}, which no adapter handles; known: {list(FAMILIES)}",
            "set model.family explicitly or add an adapter",
        )
    return family
