"""What a model directory needs before ``cgmed-eval`` loads it, checked file by file.

Loading a directory that lacks a file fails deep inside transformers with a message about
something else (an ``OSError`` about the hub, a ``SafetensorError``, or a tokenizer without the
family's end-of-turn token that reads like a wrong ``model.family``). :func:`check_model_dir`
looks first and names every missing piece at once:

- a model directory (base, fine-tuned ``final/``, merged export): ``config.json``, the weights
  (one file or an index with all of its shards), the image processor config, the tokenizer
  files and a chat template;
- a LoRA adapter directory: ``adapter_config.json`` and the adapter weights; its base model is
  checked as a model directory.
"""

from __future__ import annotations

import json
from pathlib import Path

from cgmed.errors import ConfigError

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
#: Tokenizer files that can stand in for ``tokenizer.json`` (the "slow" tokenizer's), per family.
SLOW_TOKENIZER_FILES: dict[str, tuple[str, ...]] = {
    "qwen2_vl": ("vocab.json", "merges.txt"),
    "qwen2_5_vl": ("vocab.json", "merges.txt"),
    "llava": ("tokenizer.model",),
}
MODEL_FIX = (
    "a run's final/ is complete only once its training finished: rerun the training "
    "(train.resume=auto), or copy the missing files from the base model the run started from"
)


def check_model_dir(path: Path, family: str) -> None:
    """Raise ConfigError (key ``model.path``) naming every file a ``family`` model directory lacks."""
    problems = [
        *_weight_problems(path),
        *_processor_problems(path),
        *_tokenizer_problems(path, family),
        *_chat_template_problems(path),
    ]
    if problems:
        raise ConfigError(
            "model.path",
            f"{path} is not a complete {family} model directory: " + "; ".join(problems),
            MODEL_FIX,
        )


def check_adapter_dir(path: Path) -> None:
    """Raise ConfigError (key ``model.path``) when a LoRA adapter directory has no weights."""
    if not any((path / name).is_file() for name in ADAPTER_WEIGHTS):
        raise ConfigError(
            "model.path",
            f"{path} is a LoRA adapter (adapter_config.json) without its weights ({' or '.join(ADAPTER_WEIGHTS)})",
            "point at a complete adapter directory: a finished LoRA run's final/",
        )


def _weight_problems(path: Path) -> list[str]:
    if any((path / name).is_file() for name in WEIGHT_FILES):
        return []
    for index in WEIGHT_INDEXES:
        if (path / index).is_file():
            return _shard_problems(path / index)
    return [f"no weights ({', '.join(WEIGHT_FILES + WEIGHT_INDEXES)})"]


def _shard_problems(index: Path) -> list[str]:
    try:
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        return [f"an unreadable weight index {index.name} ({type(err).__name__}: {err})"]
    missing = [s for s in shards if not (index.parent / s).is_file()]
    if not missing:
        return []
    return [f"weight shards listed in {index.name} but missing: {', '.join(missing)}"]


def _processor_problems(path: Path) -> list[str]:
    if (path / "preprocessor_config.json").is_file():
        return []
    # transformers >= 5 saves the image processor inside processor_config.json
    if "image_processor" in _json_keys(path / "processor_config.json"):
        return []
    return [
        "no image processor config (preprocessor_config.json, or processor_config.json with an image_processor)"
    ]


def _tokenizer_problems(path: Path, family: str) -> list[str]:
    problems = []
    slow = SLOW_TOKENIZER_FILES.get(family, ())
    if not (path / "tokenizer.json").is_file() and not (slow and all((path / f).is_file() for f in slow)):
        problems.append(f"no tokenizer files (tokenizer.json{' or ' + ' + '.join(slow) if slow else ''})")
    if not (path / "tokenizer_config.json").is_file():
        problems.append("no tokenizer_config.json")
    return problems


def _chat_template_problems(path: Path) -> list[str]:
    if (path / "chat_template.jinja").is_file() or (path / "chat_template.json").is_file():
        return []
    if any(
        "chat_template" in _json_keys(path / name)
        for name in ("tokenizer_config.json", "processor_config.json")
    ):
        return []
    return [
        "no chat template (chat_template.jinja, chat_template.json, or a chat_template entry in tokenizer_config.json)"
    ]


def _json_keys(path: Path) -> set[str]:
    """The top-level keys of a JSON object file; none when it is missing or unreadable."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    return set(doc) if isinstance(doc, dict) else set()
