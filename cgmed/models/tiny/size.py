"""``TinySize``: the dimensions of a tiny checkpoint, the one form every caller uses.

``cgmed-model init`` reads it from the ``tiny`` config group, ``cgmed-cg`` from
``cg.tiny_base`` (a subclass adding the family and the seed), Python callers pass it to
``init_tiny``. A size the builders cannot use fails when the dataclass is made, with a
ConfigError naming the key of the group it came from (``config_key``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from cgmed.errors import ConfigError

DEFAULT_IMAGE_SIZE = 56

# field -> (it must be a positive multiple of this, what to write instead)
_RULES = {
    "image_size": (28, "a positive multiple of 28, e.g. 56 or 84"),
    "text_hidden": (16, "a positive multiple of 16, e.g. 64 or 128"),
    "vision_hidden": (16, "a positive multiple of 16, e.g. 32 or 96"),
    "text_layers": (1, "a positive integer"),
    "vision_layers": (1, "a positive integer"),
}


@dataclass
class TinySize:
    """Dimensions of a tiny model. Heads are 16 wide; ``text_hidden`` and ``vision_hidden``
    must be multiples of 16 and ``image_size`` a multiple of 28 (one Qwen visual token
    covers 28x28 pixels: 14 px patches merged 2x2).

    ``image_size`` is the side in pixels the image processor works at: the Qwen family's
    ``max_pixels`` is ``image_size**2``, LLaVA's CLIP input and Llama-3.2-Vision's tile are
    ``image_size`` square.
    """

    # The config group these fields are set in; errors name ``<config_key>.<field>``.
    config_key: ClassVar[str] = "tiny"

    image_size: int = DEFAULT_IMAGE_SIZE
    text_hidden: int = 64
    text_layers: int = 2
    vision_hidden: int = 32
    vision_layers: int = 2

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """ConfigError (key ``<config_key>.<field>``) for a size the builders cannot use."""
        for name, (step, what) in _RULES.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < step or value % step:
                key = f"{self.config_key}.{name}"
                raise ConfigError(key, f"{value!r} is not {what}", f"set {key} to {what}")

    def text(self, **extra: Any) -> dict[str, Any]:
        """The language model's config arguments for these sizes, plus ``extra``."""
        heads = self.text_hidden // 16
        return dict(
            hidden_size=self.text_hidden,
            intermediate_size=2 * self.text_hidden,
            num_hidden_layers=self.text_layers,
            num_attention_heads=heads,
            # grouped-query attention as in all four real families
            num_key_value_heads=max(1, heads // 2),
            max_position_embeddings=4096,
            **extra,
        )
