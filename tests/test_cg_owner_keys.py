"""cgmed-cg refuses a value in a key of another group that it sets itself, naming where the value
belongs; the configs it runs (demo, paper experiments) set none of them."""

from __future__ import annotations

import dataclasses

import pytest
from hydra import compose, initialize_config_dir

from cgmed.cg.config import (
    PILOT_OWNED_KEYS,
    PROTOCOL_OWNED_KEYS,
    CGApp,
    CGConfig,
    CGTarget,
    Pilot,
)
from cgmed.cli.hydra_app import CONF_DIR, app_config, register_configs
from cgmed.errors import ConfigError

# a value other than the default for every key cgmed-cg may own
VALUES = {
    "split.targets": ["04"],
    "split.train": "unrelated",
    "split.without": ["task"],
    "split.match_size_of": "related",
    "split.shots_per_label": 2,
    "split.target_train_samples": 10,
    "split.seen_test": False,
    "train.seed": 7,
    "train.resume": "runs/x/checkpoints/step-10",
    "train.output_dir": "runs/elsewhere",
    "train.eval_every": 5,
    "eval.shot_seed": 3,
}
# what the fix of each refusal points at
HOMES = {
    "split.targets": "cg.targets[i].target",
    "split.train": "cg.targets[i].related",
    "split.without": "cg.targets[i].without",
    "split.match_size_of": "cg.baseline_plus",
    "split.shots_per_label": "cg.few_shot.shots",
    "train.seed": "cg.seeds",
    "train.resume": "rerun it in the same hydra.run.dir",
    "train.output_dir": "hydra.run.dir",
    "train.eval_every": "cg.curve_every",
    "eval.shot_seed": "cg.few_shot.repeats",
}
PROTOCOL = CGConfig(targets=[CGTarget(target="04")])
PILOT = CGConfig(pilot=Pilot())


def app_with(cg: CGConfig, key: str, value) -> CGApp:
    group, name = key.split(".")
    groups = {"cg": cg, group: dataclasses.replace(getattr(CGApp(), group), **{name: value})}
    return CGApp(**groups)


def test_every_refused_key_has_a_test_value():
    assert set(PROTOCOL_OWNED_KEYS) | set(PILOT_OWNED_KEYS) == set(VALUES)
    assert set(PROTOCOL_OWNED_KEYS) == set(HOMES)


@pytest.mark.parametrize("key", sorted(PROTOCOL_OWNED_KEYS))
def test_protocol_refuses_a_key_it_sets(key):
    with pytest.raises(
        ConfigError, match=f"(?s)config key '{key}': is set by cgmed-cg itself.*fix:.*"
    ) as err:
        app_with(PROTOCOL, key, VALUES[key])
    assert HOMES[key] in str(err.value) and repr(VALUES[key]) in str(err.value)


@pytest.mark.parametrize("key", sorted(PILOT_OWNED_KEYS))
def test_pilot_refuses_a_key_it_sets(key):
    with pytest.raises(ConfigError, match=f"(?s)config key '{key}': is set by cgmed-cg itself.*fix:.*"):
        app_with(PILOT, key, VALUES[key])


def test_keys_the_protocol_passes_on_are_accepted():
    # the protocol does not set these: the Related split takes them as given
    for key in ("split.target_train_samples", "split.seen_test"):
        app_with(PROTOCOL, key, VALUES[key])


def test_defaults_and_the_value_cgmed_cg_uses_itself_are_accepted():
    CGApp(cg=PROTOCOL)
    CGApp(cg=PILOT)
    # launchers pass train.resume=auto to every module (launch/slurm/*.sbatch)
    app_with(PROTOCOL, "train.resume", "auto")
    app_with(PILOT, "train.resume", "auto")


def compose_cfg(overrides: list[str]):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def test_an_override_on_the_command_line_is_refused_at_start_up():
    cfg = compose_cfg(["experiment=demo", "split.targets=['04']"])
    with pytest.raises(ConfigError, match=r"(?s)'split.targets'.*cg.targets\[i\].target"):
        app_config(cfg, CGApp)
    cfg = compose_cfg(["experiment=demo", "train.seed=1"])
    with pytest.raises(ConfigError, match=r"(?s)'train.seed'.*cg.seeds"):
        app_config(cfg, CGApp)


CG_EXPERIMENTS = sorted(
    str(p.relative_to(CONF_DIR / "experiment").with_suffix(""))
    for p in (CONF_DIR / "experiment").rglob("*.yaml")
    if not p.name.startswith("_") and p.stem != "demo_data"  # partials and the cgmed-data demo
)


@pytest.mark.parametrize("name", CG_EXPERIMENTS)
def test_cg_experiments_set_no_owned_key(name):
    app = app_config(compose_cfg([f"experiment={name}"]), CGApp)
    assert app.cg.targets or app.cg.pilot is not None
