"""What the console of every cgmed command shows, and what only its log file keeps.

Hydra configures logging from ``cgmed/conf/hydra/job_logging/cgmed.yaml``: one handler writes the
run's log file (``<run>/<job>.log``, e.g. ``cg.log``) with every record at INFO and above, from
cgmed and from the libraries alike; the console handler shows, through :class:`ConsoleFilter` and
:class:`ConsoleFormatter`:

- cgmed's own messages (stage lines, progress lines, warnings), without the logger prefix;
- other libraries' warnings and errors, except the known-harmless ones of
  :data:`HARMLESS_MESSAGES`; their INFO records (accelerate's per-file checkpoint messages ...)
  go to the log file only;
- a warning repeated word for word only once (the log file keeps each).

:func:`setup_console` (called by every app before its job runs) routes the libraries that write
to the terminal by their own handlers through logging instead, turns off transformers' per-model
bars ("Loading weights", "Writing model shards") and filters the known-harmless Python warnings.
"""

from __future__ import annotations

import logging
import warnings

__all__ = ["HARMLESS_MESSAGES", "ConsoleFilter", "ConsoleFormatter", "setup_console"]

# Library messages that say nothing a user should act on: shown in the log file only.
HARMLESS_MESSAGES = (
    # DeepSpeed, when imported on a machine without a GPU (accelerate imports it to check for it);
    # cgmed runs on the CPU there on purpose (the demo, the tests)
    "Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it.",
)

# Python warnings filtered out by their exact text (a regular expression matched at the start of
# the message) and category, each with why it is harmless for cgmed. None is known at present:
# the demo, cgmed-train and cgmed-eval runs raise no warning; the others reach the console once
# (Python's default) and the log file.
HARMLESS_WARNINGS: tuple[tuple[str, type[Warning]], ...] = ()

# Libraries that install their own terminal handler on a logger that does not propagate; their
# records are handed to the root logger's handlers (console policy, log file) instead.
REROUTED_LOGGERS = ("DeepSpeed",)


class ConsoleFilter(logging.Filter):
    """Which records reach the console (module docstring); remembers the warnings shown."""

    def __init__(self, name: str = ""):
        super().__init__(name)
        self._shown: set[tuple[str, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        own = record.name == "cgmed" or record.name.startswith("cgmed.")
        if not own and (record.levelno < logging.WARNING or record.getMessage() in HARMLESS_MESSAGES):
            return False
        if record.levelno >= logging.WARNING:
            key = (record.name, record.getMessage())
            if key in self._shown:
                return False
            self._shown.add(key)
        return True


class ConsoleFormatter(logging.Formatter):
    """cgmed's INFO lines as they are, its warnings as ``warning: ...``, a library's records as
    ``warning (library.module): ...``."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        own = record.name == "cgmed" or record.name.startswith("cgmed.")
        if own and record.levelno < logging.WARNING:
            return message
        level = record.levelname.lower()
        return f"{level}: {message}" if own else f"{level} ({record.name}): {message}"


class _Reroute(logging.Filter):
    """On a library's own non-propagating logger: hands each record to the root logger's handlers
    and keeps it from the library's terminal handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        root = logging.getLogger()
        if record.levelno >= root.getEffectiveLevel():
            root.callHandlers(record)
        return False


def setup_console() -> None:
    """Route the libraries' output through the logging Hydra set up (see the module docstring)."""
    for name in REROUTED_LOGGERS:
        # a filter on the logger itself applies before any handler the library adds later
        library_logger = logging.getLogger(name)
        if not any(isinstance(f, _Reroute) for f in library_logger.filters):
            library_logger.addFilter(_Reroute())
    for pattern, category in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern, category=category)
    logging.captureWarnings(True)  # the other warnings: on the console once, and in the log file
    _quiet_transformers()


def _quiet_transformers() -> None:
    """transformers' records through logging (its own handler off), and its per-model bars off;
    the Hugging Face Hub's download bars stay (a first download takes minutes)."""
    try:
        from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers is a dependency
        return
    hub_bars = not are_progress_bars_disabled()
    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()
    hf_logging.disable_progress_bar()  # also turns the hub's bars off ...
    if hub_bars:
        enable_progress_bars()  # ... which come back
