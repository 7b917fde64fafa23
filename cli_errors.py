"""How a failed ``gridwatch`` command is reported: one line on stderr saying what failed and
what to do, and an exit code (1: a runtime failure, 2: bad usage, settings or input files).

Commands raise; `explain` is the one place that turns an exception into that line.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

HINT_NO_BROKER = "start one with `gridwatch broker start` or set GRIDWATCH_BOOTSTRAP"


class CommandError(Exception):
    """A failure a command expects and can explain; ``exit_code`` 1 (runtime) or 2 (usage)."""

    exit_code = 1


class UsageError(CommandError):
    """Bad options, settings or input files: fixing the command line or the input fixes it."""

    exit_code = 2


class BrokerUnavailable(CommandError):
    """No Kafka broker answered at the bootstrap address within the connect time-out."""

    def __init__(self, bootstrap: str, timeout_s: float) -> None:
        super().__init__(f"no Kafka broker reachable at {bootstrap} within {timeout_s:g}s: {HINT_NO_BROKER}")


@dataclass(frozen=True)
class Explained:
    message: str
    exit_code: int


# Exceptions whose messages are written for the user: (module, class, exit code). Looked up in
# sys.modules, so reporting an error never imports a module the command did not load (and an
# exception of a class whose module is not loaded cannot have been raised).
KNOWN: tuple[tuple[str, str, int], ...] = (
    ("streams.settings", "SettingsError", 2),
    ("archive_csv", "CsvError", 2),
    ("streams.kafkaio", "KafkaConfigError", 2),
    ("notifier.notify", "NotifyConfigError", 2),
    ("streams.kafkaio", "KafkaUnavailable", 1),
    ("local.replay", "ReplayError", 1),
    ("streams.offline", "OfflineInputError", 1),
    ("local.kafka", "BrokerError", 1),
)


def explain(exc: BaseException) -> Explained | None:
    """The message and exit code for an exception a user can act on; None for a bug (the
    caller shows the traceback then, which is what a bug report needs).

    >>> explain(UsageError("--anomaly 'x': expected TYPE=N"))
    Explained(message="--anomaly 'x': expected TYPE=N", exit_code=2)
    >>> explain(KeyError("x")) is None
    True
    """
    if isinstance(exc, CommandError):
        return Explained(str(exc), exc.exit_code)
    for module, name, code in KNOWN:
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None and isinstance(exc, cls):
            message = str(exc)
            if name == "BrokerError":  # the lines after the first are log excerpts
                message = message.splitlines()[0] if message else name
            elif name == "KafkaUnavailable" or message.startswith("no Kafka broker"):
                message = f"{message}: {HINT_NO_BROKER}"
            return Explained(message, code)
    if isinstance(exc, OSError) and exc.filename is not None:
        return Explained(f"{exc.filename}: {exc.strerror or exc}", 1)
    return None
