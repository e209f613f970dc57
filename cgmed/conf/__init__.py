"""cgmed's Hydra configs and DeepSpeed JSONs, shipped as package data.

They live inside the package so that ``pip install cgmed`` (or a wheel) runs from any working
directory. ``CONF_DIR`` is the directory Hydra composes from; a user's own configs are added with
``hydra.searchpath=[file:///abs/dir]`` or ``--config-dir DIR`` (see the README).
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

#: Hydra's primary config directory. ``CGMED_CONF_DIR`` replaces it wholesale (for a fork of the
#: shipped configs); to add configs next to the shipped ones prefer ``hydra.searchpath``.
CONF_DIR = Path(os.environ.get("CGMED_CONF_DIR") or str(files(__name__)))

#: The DeepSpeed JSONs that ``distributed=deepspeed_*`` names as ``deepspeed/<name>.json``.
DEEPSPEED_DIR = Path(str(files(__name__))) / "deepspeed"
