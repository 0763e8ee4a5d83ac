"""Errors a user can cause.

Every error raised on purpose by the engine derives from :class:`TxRayError` and carries one message
that names the problem and says what to do. The CLI prints that message on one line and exits with
code 2; Python callers can catch the class that fits.
"""

from __future__ import annotations


class TxRayError(Exception):
    """Base class of all errors raised on purpose by txray_engine."""


class InputError(TxRayError, ValueError):
    """Activations, features, masks or options that cannot be used as given."""


class NonFiniteError(InputError):
    """NaN or infinite activations (name the layer and position)."""


class LayerNotFoundError(TxRayError, KeyError):
    """A layer name or pattern that matches no module of the model."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class StoreError(TxRayError):
    """A store that is not ours, is damaged, or cannot be written as asked."""


class StageExistsError(StoreError):
    """Writing into an existing stage without resume or overwrite."""


class StoreLockedError(StoreError):
    """Another writer holds the stage."""


class StageNotReadyError(StoreError):
    """A stage whose writer has not committed its first snapshot yet (writing it, or stopped
    before it): nothing to read, and nothing damaged."""


class CorpusError(TxRayError):
    """A corpus that is empty or cannot be read."""


class StageChangedError(StoreError):
    """A writer committed a newer snapshot of a stage since it was opened: open it again."""


class Terminated(KeyboardInterrupt):
    """A stop asked by a signal (SIGTERM: what a batch scheduler sends before it kills a job),
    raised where the work can stop, as Ctrl-C raises ``KeyboardInterrupt``. ``flushed``: a
    collection committed its sums up to its last whole batch first."""

    def __init__(self, signum: int, flushed: bool = False):
        super().__init__(signum, flushed)
        self.signum, self.flushed = signum, flushed


def whole_number(value, what: str, least: int = 0) -> int:
    """``value`` as an ``int`` when it is a whole number ≥ ``least`` (``3.0`` from a column
    too), else an :class:`InputError` naming ``what``: ``2.5`` was cut to 2, ``-1`` sliced from
    the end, ``"3"`` failed deep inside."""
    ok = not isinstance(value, (bool, str, bytes)) and value is not None and \
        getattr(getattr(value, "dtype", None), "kind", "") != "b"  # (numpy's bools too)
    try:
        number = int(value) if ok else None
    except (TypeError, ValueError, OverflowError):
        number = None
    if number is None or number != value or number < least:
        raise InputError(f"{what} must be a whole number ≥ {least}, got {value!r}")
    return number
