"""Merge a LoRA adapter into its base model and save a full model that ``from_pretrained`` loads."""

from __future__ import annotations

import json
from pathlib import Path

from cgmed.errors import ConfigError
from cgmed.models.registry import detect_family, get_adapter


def merge_lora(
    adapter_dir: str | Path, out: str | Path, base: str | None = None, dtype: str = "float32"
) -> Path:
    """``adapter_dir`` holds ``adapter_config.json`` (a LoRA run's ``final/``); ``base`` overrides the
    base model recorded there. The processor is copied from the adapter directory when present."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    conf = adapter_dir / "adapter_config.json"
    if not conf.is_file():
        raise ConfigError(
            "adapter", f"{adapter_dir} holds no adapter_config.json", "point at a LoRA run's final/"
        )
    base = base or json.loads(conf.read_text()).get("base_model_name_or_path")
    if not base:
        raise ConfigError("base", "the adapter does not record its base model", "pass base=PATH")
    family = detect_family(base)
    model, processor = get_adapter(family).load(base, dtype=dtype)
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    return out
