"""cgmed: compositional-generalization research on multimodal LLMs for medical imaging.

The pipeline, one subpackage per stage (the library never imports ``experiments/``, ``launch/``,
``tests/`` or ``benchmarks/``):

- :mod:`cgmed.data`: MAT vocabulary, readers, synthetic world, CG splits and the leakage audit;
- :mod:`cgmed.models`: backbone adapters, the collator, tiny checkpoints;
- :mod:`cgmed.train`: the trainer (full, LoRA, QLoRA; DDP, DeepSpeed, FSDP2);
- :mod:`cgmed.eval`: option scoring / generation, answer parsing, accuracy with intervals;
- :mod:`cgmed.cg`: the CG protocol (Baseline / Baseline+ / Trained), the pilot, their reports;
- :mod:`cgmed.cli`: the Hydra command-line apps; :mod:`cgmed.conf`: the shipped configs;
- :mod:`cgmed.config` (typed config building), :mod:`cgmed.errors`, :mod:`cgmed.compat`.
"""

__version__ = "0.1.0"
