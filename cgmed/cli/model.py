"""``cgmed-model``: tiny local checkpoints and LoRA export.

    cgmed-model init family=qwen2_vl out=DIR [tiny.image_size=56 tiny.text_hidden=64 tiny.seed=0]
    cgmed-model export adapter=RUN/final out=DIR [base=PATH]

``init`` writes a randomly initialised, very small model of a real architecture plus a working
processor (a tokenizer trained locally, the family's chat template and image processor), saved
with ``save_pretrained``: it loads through exactly the code path of a real checkpoint, so a real
model is swapped in by giving its directory or hub id as ``model.path``. Its sizes and the seed
of its weights are the ``tiny`` group (:class:`cgmed.cli.tiny_group.TinyInit`).
``export`` merges a LoRA adapter into its base model and saves a full safetensors model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cgmed.cli.hydra_app import app_config, run_subcommands
from cgmed.cli.tiny_group import TinyInit
from cgmed.errors import ConfigError


@dataclass
class ModelApp:
    """Root config of ``cgmed-model``: the group ``init`` reads (``export`` takes only its
    top-level arguments)."""

    tiny: TinyInit = field(default_factory=TinyInit)


def _need(cfg: Any, key: str, example: str) -> str:
    value = cfg.get(key)
    if not value:
        raise ConfigError(key, "is required", example)
    return str(value)


def init(cfg: Any) -> None:
    from cgmed.models.tiny import init_tiny

    family = _need(cfg, "family", "cgmed-model init family=qwen2_vl out=DIR")
    out = _need(cfg, "out", "cgmed-model init family=qwen2_vl out=DIR")
    tiny = app_config(cfg, ModelApp).tiny
    path = init_tiny(family, Path(out).expanduser(), seed=tiny.seed, size=tiny)
    print(f"tiny {family} checkpoint written to {path}")


def export(cfg: Any) -> None:
    from cgmed.models.export import merge_lora

    adapter = _need(cfg, "adapter", "cgmed-model export adapter=RUN/final out=DIR")
    out = _need(cfg, "out", "cgmed-model export adapter=RUN/final out=DIR")
    path = merge_lora(adapter, out, base=cfg.get("base"), dtype=str(cfg.get("dtype") or "float32"))
    print(f"merged model written to {path}")


COMMANDS = {"init": init, "export": export}


def main() -> None:
    run_subcommands("cgmed-model", COMMANDS)


if __name__ == "__main__":
    main()
