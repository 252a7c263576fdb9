"""Which task failures are worth a retry: transient I/O and network errors, never bad input.

Prefect calls :func:`retry_condition_fn` after a task run fails; returning False ends the run as
failed at once instead of spending its retries. An :class:`~lrs_core.errors.LrsError` always means
the input is wrong (a missing or corrupt scene, a bad config), so it is never retried, even when it
is also an ``OSError``. Anything else is retried only when it, or an error it was raised from, is a
timeout, a dropped connection or an ``OSError`` whose errno says "try again".
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any

from lrs_core.errors import LrsError

if TYPE_CHECKING:
    from prefect.client.schemas.objects import State, TaskRun

#: errno values of an OSError that a later attempt may not see again.
TRANSIENT_ERRNOS = frozenset(
    {
        errno.EAGAIN,
        errno.EBUSY,
        errno.EINTR,
        errno.EIO,
        errno.ETIMEDOUT,
        errno.ECONNABORTED,
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.EHOSTUNREACH,
        errno.ENETDOWN,
        errno.ENETRESET,
        errno.ENETUNREACH,
        errno.EPIPE,
        errno.ESTALE,
    }
)
#: Class names of third-party transient errors (fsspec back ends), matched along the MRO so that
#: aiohttp / botocore need not be importable.
TRANSIENT_ERROR_NAMES = frozenset(
    {
        "ClientConnectionError",
        "ServerDisconnectedError",
        "ServerTimeoutError",
        "ClientPayloadError",
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ReadTimeoutError",
        "ConnectionClosedError",
        "IncompleteReadError",
        "RemoteDisconnected",
    }
)
#: How many ``__cause__`` / ``__context__`` links are followed looking for a transient error.
MAX_CAUSE_DEPTH = 8


def is_transient_error(exc: BaseException) -> bool:
    """Return True when ``exc`` is worth retrying (see the module docstring).

    Args:
        exc: the exception a task raised.

    Returns:
        False for every :class:`LrsError`, for ``FileNotFoundError``/``PermissionError`` and other
        non-transient errors; True for timeouts, connection errors, transient ``errno`` values and
        known transient fsspec back-end errors, found on ``exc`` or its cause chain.
    """
    if isinstance(exc, LrsError):
        return False
    current: BaseException | None = exc
    for _ in range(MAX_CAUSE_DEPTH):
        if current is None or isinstance(current, LrsError):
            return False
        if _is_transient_here(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def _is_transient_here(exc: BaseException) -> bool:
    if isinstance(exc, (TimeoutError, ConnectionError, InterruptedError, BlockingIOError)):
        return True
    if isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS:
        return True
    return any(cls.__name__ in TRANSIENT_ERROR_NAMES for cls in type(exc).__mro__)


def retry_condition_fn(task: Any, task_run: TaskRun, state: State[Any]) -> bool:
    """Prefect ``retry_condition_fn``: retry only when the failure is transient.

    Args:
        task: the Prefect task (unused; part of Prefect's signature).
        task_run: the failed task run (unused; part of Prefect's signature).
        state: the Failed state; its result is the raised exception.

    Returns:
        True to go on with the task's retry policy, False to fail now.
    """
    exc = state.result(raise_on_failure=False)
    return isinstance(exc, BaseException) and is_transient_error(exc)
