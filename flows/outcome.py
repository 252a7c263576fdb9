"""Final states of runs in which some questions failed: ``Failed``, with the finished work kept.

A batch flow (answer, watch, demo) answers what it can and writes it; when some questions failed
it must not end a green ``Completed``. Prefect's idiom is to return a state from the flow, which
becomes the run's final state: :func:`failed_run` builds it, with a
:class:`QuestionsFailedError` as its data that carries what the flow would have returned.
Prefect then resolves the state for the flow's callers: a direct call raises the error, and
:func:`run_result` of a ``return_state=True`` call gives the result either way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeVar, cast

from prefect.client.schemas.objects import State
from prefect.states import Failed

from lrs_core.errors import LrsError
from lrs_core.outputs.parts import BatchCounts

R = TypeVar("R")


class QuestionsFailedError(LrsError, RuntimeError):
    """Some questions of a run failed; the others were answered and written.

    Attributes:
        result: what the flow returns when nothing fails (the answer rows, the watch dict...),
            failed rows included with their ``error``.
    """

    def __init__(self, message: str, result: Any) -> None:
        super().__init__(message)
        self.result = result

    def __reduce__(self) -> tuple[type[QuestionsFailedError], tuple[str, Any]]:
        return (type(self), (str(self), self.result))


def failed_run(message: str, result: R) -> R:
    """Return the final state of a flow run in which some questions failed.

    Return it from the flow: the run ends ``Failed`` with ``message`` (no traceback in its log),
    and its callers get ``result`` back through :class:`QuestionsFailedError`.

    Args:
        message: what the run page shows, e.g. ``"3 of 10 questions failed; see <artifact>"``.
        result: what the flow returns when nothing fails.

    Returns:
        A ``Failed`` state, typed as the flow's return value: Prefect resolves a returned state,
        so no caller of the flow ever sees the state itself.
    """
    state: State[Any] = Failed(message=message, data=QuestionsFailedError(message, result))
    return cast(R, state)


def outcome_of(
    rows: Iterable[Mapping[str, Any]], result: R, *, see: str, what: str = "questions"
) -> R:
    """Return ``result``, or (some rows failed) the :func:`failed_run` state that carries it.

    Args:
        rows: the run's answer rows (``status`` ``answered``, ``skipped`` or ``failed``).
        result: what the flow returns when nothing fails.
        see: where the failures are shown, ending the message ``"N of M <what> failed; see <see>"``.
        what: what the rows count.
    """
    rows = list(rows)
    n_failed = BatchCounts.from_rows(rows).failed
    if not n_failed:
        return result
    return failed_run(f"{n_failed} of {len(rows)} {what} failed; see {see}", result)


def run_result(state: State[R]) -> R:
    """Return a finished run's result, also when it failed by :func:`failed_run`.

    Args:
        state: the final state of a flow called with ``return_state=True``.

    Raises:
        BaseException: the run's own error when it failed any other way (nothing was answered).
    """
    outcome = state.result(raise_on_failure=False)
    if isinstance(outcome, QuestionsFailedError):
        return cast(R, outcome.result)
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome
