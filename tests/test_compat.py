"""Each workaround in ``cgmed.compat`` is still needed.

A test here asserts the library behaviour that makes its workaround necessary, and that the
workaround answers it. When one fails after an upgrade, the library has changed: delete the
workaround and its test, or adapt them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from cgmed.compat import drop_zero3_weight_conversions

# Runs in a fresh process (accelerate's state is process-wide): a one-process DeepSpeed run on CPU,
# as torchrun would start it, reporting what accelerate and transformers do.
DEEPSPEED_PROBE = """
import gc, json
from accelerate import Accelerator, PartialState
from accelerate.utils import DeepSpeedPlugin
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
from cgmed.compat import adopt_deepspeed_config, deepspeed_process_state_on_cpu, forget_hf_deepspeed_config

def plugin(stage):
    config = {"zero_optimization": {"stage": stage}, "train_micro_batch_size_per_gpu": 1,
              "gradient_accumulation_steps": 1, "train_batch_size": 1}
    return DeepSpeedPlugin(hf_ds_config=config)

found = {"backend": PartialState().backend}
PartialState._reset_state()
found["backend_with_workaround"] = deepspeed_process_state_on_cpu(None).backend
first = Accelerator(deepspeed_plugin=plugin(3))
found["distributed_type"] = first.distributed_type.value
del first
gc.collect()
found["zero3_after_run"] = is_deepspeed_zero3_enabled()
forget_hf_deepspeed_config()
found["zero3_after_forget"] = is_deepspeed_zero3_enabled()
try:
    Accelerator(deepspeed_plugin=plugin(2))
    found["second_plugin"] = "accepted"
except NotImplementedError:
    found["second_plugin"] = "refused"
found["adopted"] = adopt_deepspeed_config(plugin(2))
found["stage_after_adopt"] = Accelerator().state.deepspeed_plugin.deepspeed_config["zero_optimization"]["stage"]
print(json.dumps(found))
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def deepspeed_probe() -> dict:
    pytest.importorskip("deepspeed")
    env = {
        **os.environ,
        "CUDA_VISIBLE_DEVICES": "",
        "ACCELERATE_USE_DEEPSPEED": "true",
        "DS_ACCELERATOR": "cpu",
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "OMP_NUM_THREADS": "1",
    }
    res = subprocess.run(
        [sys.executable, "-c", DEEPSPEED_PROBE], env=env, capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stderr[-3000:]
    found = json.loads(res.stdout.strip().splitlines()[-1])
    assert found["distributed_type"] == "DEEPSPEED", found
    return found


def test_accelerate_picks_no_backend_for_deepspeed_on_cpu(deepspeed_probe):
    """deepspeed_process_state_on_cpu: without a named backend, every CPU rank would train alone."""
    assert deepspeed_probe["backend"] is None, "accelerate now picks a backend: the gloo workaround can go"
    assert deepspeed_probe["backend_with_workaround"] == "gloo"


def test_accelerate_refuses_a_second_deepspeed_plugin(deepspeed_probe):
    """adopt_deepspeed_config: a second Accelerator in one process cannot bring its own plugin."""
    assert deepspeed_probe["second_plugin"] == "refused", "accelerate now takes a second plugin"
    assert deepspeed_probe["adopted"] is True
    assert deepspeed_probe["stage_after_adopt"] == 2


def test_the_zero3_marker_outlives_the_run(deepspeed_probe):
    """forget_hf_deepspeed_config: after a ZeRO-3 run, transformers would still load models partitioned."""
    assert deepspeed_probe["zero3_after_run"] is True, "accelerate now clears the marker itself"
    assert deepspeed_probe["zero3_after_forget"] is False


def _tiny_qwen2_vl():
    import transformers

    text = dict(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        bos_token_id=0,
        eos_token_id=1,
        rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]},
    )
    vision = dict(depth=1, embed_dim=16, hidden_size=16, num_heads=2, mlp_ratio=2, patch_size=14)
    config = transformers.Qwen2VLConfig(text_config=text, vision_config=vision)
    return transformers.Qwen2VLForConditionalGeneration(config)


def test_the_zero3_loader_records_unused_weight_conversions():
    """drop_zero3_weight_conversions: saving after a ZeRO-3 load would write ``model.model.*`` names."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import revert_weight_conversion
    from transformers.integrations.deepspeed import _load_state_dict_into_zero3_model
    from transformers.modeling_utils import LoadStateDictConfig

    model = _tiny_qwen2_vl()
    state_dict = model.state_dict()
    mapping = get_model_conversion_mapping(model)
    _load_state_dict_into_zero3_model(model, dict(state_dict), LoadStateDictConfig(weight_mapping=mapping))
    assert any(not conversion.was_used() for conversion in model._weight_conversions), (
        "the ZeRO-3 loader now keeps only the conversions it used: drop_zero3_weight_conversions can go"
    )
    assert any(name.startswith("model.model.") for name in revert_weight_conversion(model, dict(state_dict)))
    drop_zero3_weight_conversions(model)
    saved = revert_weight_conversion(model, dict(state_dict))
    assert not any(name.startswith("model.model.") for name in saved)


def test_accelerate_goes_on_when_the_rng_state_cannot_be_restored(tmp_path):
    """rng_state_problem: accelerate logs an INFO line for an unreadable RNG state and goes on."""
    import torch
    from accelerate import PartialState
    from accelerate.checkpointing import load_accelerator_state, save_accelerator_state

    from cgmed.compat import rng_state_problem

    PartialState(cpu=True)  # accelerate's logging needs its state
    save_accelerator_state(str(tmp_path), [], [], [], [], 0, 0)
    assert rng_state_problem(tmp_path, 0) is None
    rng_file = tmp_path / "random_states_0.pkl"
    rng_file.write_bytes(rng_file.read_bytes()[:100])  # truncated
    before = torch.get_rng_state()
    load_accelerator_state(str(tmp_path), [], [], [], [], 0)  # no error: accelerate still swallows it
    assert torch.equal(torch.get_rng_state(), before), "accelerate now restores or raises: the check can go"
    assert "random_states_0.pkl cannot be read" in rng_state_problem(tmp_path, 0)
    rng_file.unlink()
    assert "random_states_0.pkl (the random number state of process 0) is missing" in rng_state_problem(
        tmp_path, 0
    )
