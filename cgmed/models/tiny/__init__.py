"""Tiny, randomly initialised checkpoints of every supported family, built offline.

``init_tiny("qwen2_vl", "runs/tiny-qwen2vl")`` writes a directory that looks like a real
hub checkpoint (``config.json``, ``model.safetensors``, tokenizer files, image processor
config, chat template) so that ``get_adapter(family).load(out)`` goes through exactly the
code path of a real model. Nothing is downloaded.

* ``size``: :class:`TinySize`, the dimensions (config group ``tiny``, ``cg.tiny_base``);
* ``corpus``: the text the tokenizers are trained on;
* ``tokenizer``: per family, a BPE trained with the ``tokenizers`` library using the real
  family's pre-tokenization pipeline and special tokens;
* ``builders``: per family, the model config, the model and the processor, with the chat
  template from ``cgmed/models/templates/``;
* ``checkpoint``: :func:`init_tiny`, which seeds, builds and saves.

Sizes are chosen for CPU tests and demos: well under 5M parameters, a vocabulary of about
1k tokens, 56 px images by default. Same ``seed`` -> byte-identical files.

    python -c "from cgmed.models.tiny import init_tiny; init_tiny('llava', '/tmp/tiny-llava')"
"""

from cgmed.models.tiny.builders import TINY_FAMILIES
from cgmed.models.tiny.checkpoint import check_tiny_family, init_tiny
from cgmed.models.tiny.size import DEFAULT_IMAGE_SIZE, TinySize

__all__ = ["DEFAULT_IMAGE_SIZE", "TINY_FAMILIES", "TinySize", "check_tiny_family", "init_tiny"]
