"""Shared plumbing of the Hydra command-line apps (``cgmed-data``, ``cgmed-train``, ``cgmed-eval``, ``cgmed-cg`` ...).

Config-group defaults live in the dataclasses (``DataConfig``, ``SplitConfig`` ...); they are
registered here as each group's ``schema`` node, and the YAML files in ``cgmed/conf/`` only state
what differs. ``app_config`` turns a composed config into a command's root dataclass (one field
per group it reads: ``CGApp``, ``TrainApp`` ...) once, at start-up; ``typed_config`` gives the
groups by name.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from cgmed.cli.console import setup_console
from cgmed.conf import CONF_DIR
from cgmed.config import as_dict, build_config
from cgmed.errors import CgmedError

__all__ = [
    "CONF_DIR",
    "register_configs",
    "typed_config",
    "app_config",
    "run_app",
    "run_subcommands",
    "run_dir",
]
App = TypeVar("App")


def _schemas() -> dict[str, type]:
    from cgmed.cg.config import CGConfig
    from cgmed.cli.tiny_group import TinyInit
    from cgmed.data.imaging import ImageConfig
    from cgmed.data.source import DataConfig
    from cgmed.data.split import SplitConfig
    from cgmed.data.synth import SynthConfig
    from cgmed.eval.score import EvalConfig
    from cgmed.train.config import GROUPS

    return {
        "data": DataConfig,
        "split": SplitConfig,
        "synth": SynthConfig,
        "image": ImageConfig,
        "tiny": TinyInit,
        "eval": EvalConfig,
        "cg": CGConfig,
        **GROUPS,
    }


def register_configs() -> None:
    """Store every group's dataclass defaults as ``<group>/schema`` in Hydra's ConfigStore."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for group, cls in _schemas().items():
        cs.store(group=group, name="schema", node=as_dict(cls()))


def typed_config(cfg: Any, groups: tuple[str, ...] = ("data", "split", "synth")) -> dict[str, Any]:
    """Composed config -> {group: dataclass}; every problem is a ConfigError naming the key."""
    schemas = _schemas()
    return {g: build_config(schemas[g], cfg.get(g), g) for g in groups}


def app_config(cfg: Any, app: type[App]) -> App:
    """Composed config -> ``app``, the root dataclass of one command (a field per config group it
    reads), built once at start-up; its own checks run on the whole."""
    groups = tuple(f.name for f in dataclasses.fields(app))
    return app(**typed_config(cfg, groups))


def _with_defaults(argv: list[str], job_name: str) -> list[str]:
    """``argv`` with the job's name (names the log file: ``cg.log``) and cgmed's logging
    (:mod:`cgmed.cli.console`) unless the command line sets them."""
    if not any(a.startswith("hydra.job.name=") for a in argv):
        argv.append(f"hydra.job.name={job_name}")
    if not any(a.lstrip("+~").startswith("hydra/job_logging=") for a in argv):
        argv.append("hydra/job_logging=cgmed")
    return argv


def run_app(
    prog: str, job: Callable[[Any], None], argv: list[str] | None = None, config_name: str = "config"
) -> None:
    """A single-command Hydra app (``cgmed-train key=value ...``) on the primary config
    ``config_name`` of ``cgmed/conf``."""
    import hydra

    argv = _with_defaults(list(sys.argv[1:] if argv is None else argv), prog.replace("cgmed-", ""))
    register_configs()

    def task(cfg: Any) -> None:
        setup_console()
        try:
            job(cfg)
        except CgmedError as err:
            print(f"{prog}: error: {err}", file=sys.stderr)
            sys.exit(2)

    sys.argv = [prog, *argv]
    hydra.main(config_path=str(CONF_DIR), config_name=config_name, version_base="1.3")(task)()


def resolved(cfg: Any) -> dict[str, Any]:
    """The composed config as plain data (for the run directory)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)


def run_subcommands(
    prog: str, commands: dict[str, Callable[[Any], None]], argv: list[str] | None = None
) -> None:
    """``prog COMMAND [overrides...]``: pick the command, then hand the overrides to Hydra."""
    import hydra

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in commands:
        names = " | ".join(commands)
        print(f"usage: {prog} {{{names}}} [key=value ...]   (Hydra overrides; add --help for the config)")
        sys.exit(0 if argv and argv[0] in ("-h", "--help") else 2)
    name = argv.pop(0)
    argv = _with_defaults(argv, f"{prog.replace('cgmed-', '')}_{name}")
    register_configs()

    def task(cfg: Any) -> None:
        setup_console()
        try:
            commands[name](cfg)
        except CgmedError as err:
            print(f"{prog} {name}: error: {err}", file=sys.stderr)
            sys.exit(2)

    sys.argv = [f"{prog} {name}", *argv]
    hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")(task)()


def run_dir() -> Path:
    """The Hydra run directory of the current job."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)
