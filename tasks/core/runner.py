"""How every stage's ``main()`` ends: one clear line for a user's mistake, exit 75 for a blip.

- A :class:`~tasks.core.errors.ConfigError` (params.yaml, a tuned override) prints
  ``error: <key and what is allowed>`` and exits 2.
- Any other :class:`~tasks.core.errors.UserError` (bad data source, a split that cannot be made,
  weights that do not fit, a missing upstream output, too much data quarantined) prints
  ``error: <what is wrong and what to do>`` and exits 1: no traceback, nothing to retry.
- A transient error (a refused or reset connection, a timeout, S3 endpoint trouble) prints
  ``error (transient): ...`` and exits 75 (EX_TEMPFAIL), which the Prefect flow retries with
  backoff.
- Missing credentials or a refused permission print one line and exit 1.
- Anything else is a bug: the traceback is shown as usual.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable

from tasks.core.errors import ConfigError, UserError

EX_USER = 1  # a mistake in the data or files
EX_CONFIG = 2  # a mistake in params.yaml, found before any work
EX_TEMPFAIL = 75  # BSD's EX_TEMPFAIL: try again later; the Prefect flow retries these

_TRANSIENT_ERRNOS = {
    errno.ECONNREFUSED,
    errno.ECONNRESET,
    errno.ECONNABORTED,
    errno.ETIMEDOUT,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.ENETDOWN,
    errno.EPIPE,
}
_TRANSIENT_NAMES = {  # by name, so botocore / aiohttp need not be imported to recognise them
    "EndpointConnectionError",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ConnectionClosedError",
    "ClientConnectorError",
    "ClientOSError",
    "ServerDisconnectedError",
    "ServerTimeoutError",
}
_ACCESS_NAMES = {"NoCredentialsError", "PartialCredentialsError", "InvalidAccessKeyId"}


def is_transient(error: BaseException) -> bool:
    """True when `error` (or anything in its cause chain) is a network or timeout problem."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ConnectionError | TimeoutError):
            return True
        if type(current).__name__ in _TRANSIENT_NAMES:
            return True
        if isinstance(current, OSError) and current.errno in _TRANSIENT_ERRNOS:
            return True
        current = current.__cause__ or current.__context__
    return False


def is_access_problem(error: BaseException) -> bool:
    """True for missing credentials or a refused permission (local or on S3)."""
    return isinstance(error, PermissionError) or type(error).__name__ in _ACCESS_NAMES


def stage_main(main: Callable[[], None]) -> None:
    """Run a stage's main() and turn known failures into one line and an exit code."""
    try:
        main()
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(EX_CONFIG) from None
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(EX_USER) from None
    except Exception as error:
        if is_access_problem(error):
            print(
                f"error: access denied ({type(error).__name__}: {error}); check the credentials "
                "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE) and permissions",
                file=sys.stderr,
            )
            raise SystemExit(EX_USER) from None
        if not is_transient(error):
            raise
        print(
            f"error (transient, a retry may succeed): {type(error).__name__}: {error}",
            file=sys.stderr,
        )
        raise SystemExit(EX_TEMPFAIL) from None
