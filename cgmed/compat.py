"""Workarounds for framework behaviour that cgmed depends on, in one place.

Each function names the library and the version it was written against, and says why it is
needed. ``tests/test_compat.py`` asserts, for each one, that the library still behaves the way that
makes the workaround necessary: when an upgrade fixes the library, that test fails, and the
workaround (and its test) can go.
"""

from __future__ import annotations

from typing import Any


def deepspeed_process_state_on_cpu(backend: str | None) -> Any:
    """accelerate's ``PartialState`` for a multi-process DeepSpeed run on CPUs (gloo unless ``backend``).

    accelerate 1.16: with DeepSpeed requested and no GPU, ``PartialState()`` picks no process-group
    backend, so it reports one process per rank and every rank trains its own copy. Naming the
    backend makes DeepSpeed's communication start a real (gloo) group.
    """
    from accelerate import PartialState

    return PartialState(backend=backend or "gloo")


def adopt_deepspeed_config(plugin: Any) -> bool:
    """Give this process's existing DeepSpeed plugin the config of ``plugin``; True when there was one.

    accelerate 1.16 allows one DeepSpeed plugin per process: a second ``Accelerator`` created with
    a ``deepspeed_plugin`` raises NotImplementedError. ``cgmed-cg`` trains several models in one
    process, so a later run rewrites the existing plugin's config in place and the caller creates
    its ``Accelerator`` without a plugin (it then uses the existing, updated one). Only the config
    is replaced: what accelerate derived from the first one (``zero_stage``, ...) stays, so the
    runs of one process must share a ZeRO stage (``cgmed-cg`` uses one ``distributed`` group).
    """
    from accelerate.state import AcceleratorState

    if not (AcceleratorState._shared_state and AcceleratorState().deepspeed_plugins is not None):
        return False
    existing = AcceleratorState().deepspeed_plugin
    existing.deepspeed_config.clear()
    existing.deepspeed_config.update(plugin.deepspeed_config)
    existing.set_deepspeed_weakref()
    return True


def forget_hf_deepspeed_config() -> None:
    """Clear the global DeepSpeed config that accelerate registered with transformers.

    accelerate 1.16 registers the run's DeepSpeed config with transformers 5.24 through a global
    weak reference, kept alive for the whole process by accelerate's plugin. While it stands,
    ``from_pretrained`` loads every model partitioned for ZeRO-3; models loaded after training in
    the same process (``cgmed-cg`` evaluates right after training) must load whole.
    """
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()


def drop_zero3_weight_conversions(model: Any) -> None:
    """Forget the weight-name conversions transformers recorded when loading ``model`` under ZeRO-3.

    transformers 5.24: the ZeRO-3 loader records every conversion of the model's mapping, whether
    it matched a weight or not (the ordinary loader keeps only the used ones), and
    ``save_pretrained`` reverts them all, writing names such as ``model.model.layers.*`` that no
    loader reads back. Without a record, ``save_pretrained`` uses the model's default mapping.
    """
    model._weight_conversions = None


def rng_state_problem(checkpoint: Any, process_index: int) -> str | None:
    """Why accelerate could not restore this process's RNG state from ``checkpoint``; None if it can.

    accelerate 1.16: ``load_state`` catches every error while restoring the RNG states (a missing or
    truncated ``random_states_<rank>.pkl``), logs "Could not load random states" at INFO level and
    goes on with the process's current RNG state, so the resumed run silently differs from the
    uninterrupted one. Reading the file the way accelerate does, beforehand, turns that into an error.
    """
    from pathlib import Path

    from accelerate.utils import RNG_STATE_NAME
    from accelerate.utils.other import load

    path = Path(checkpoint) / f"{RNG_STATE_NAME}_{process_index}.pkl"
    if not path.is_file():
        return f"{path.name} (the random number state of process {process_index}) is missing"
    try:
        states = load(path)
    except Exception as err:  # whatever the unpickler meets in a damaged file
        first_sentence = str(err).split(". ")[0].rstrip(".")
        return f"{path.name} cannot be read ({type(err).__name__}: {first_sentence})"
    missing = [k for k in ("random_state", "numpy_random_seed", "torch_manual_seed") if k not in states]
    if missing:
        return f"{path.name} lacks {missing}"
    return None
