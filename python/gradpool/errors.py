"""The exceptions the client raises.

Every error the pool answers carries a stable ``code`` (``not_found``,
``unauthorized``, ``invalid_spec``, ``insufficient_funds``, …) and a
message meant for a person; :class:`PoolError` keeps both, with the HTTP
status. What never reached the pool is :class:`Unreachable`, or
:class:`CertificateMismatch` when the pool showed a certificate other than
the one pinned.
"""

from __future__ import annotations

from typing import Optional


class GradpoolError(Exception):
    """The base of every error this package raises."""


class PoolError(GradpoolError):
    """The pool refused the request: its error ``code`` and ``message``.

    ``status`` is the HTTP status; ``retry_after`` the seconds a busy or
    rate-limiting pool asked to wait (``None`` when it did not say).
    """

    def __init__(
        self,
        code: str,
        message: str,
        status: int,
        retry_after: Optional[float] = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.retry_after = retry_after


class Unauthorized(PoolError):
    """The API key is missing, wrong, or no longer valid (``unauthorized``)."""


class NotFound(PoolError):
    """No such job, blob or booking for this account (``not_found``)."""


class InvalidSpec(PoolError):
    """The job spec was refused; the message names the field (``invalid_spec``)."""


class InsufficientFunds(PoolError):
    """The balance does not cover the budget or hold (``insufficient_funds``)."""


_BY_CODE = {
    "unauthorized": Unauthorized,
    "not_found": NotFound,
    "invalid_spec": InvalidSpec,
    "insufficient_funds": InsufficientFunds,
}


def pool_error(
    code: str, message: str, status: int, retry_after: Optional[float] = None
) -> PoolError:
    """The most specific :class:`PoolError` for ``code``."""
    return _BY_CODE.get(code, PoolError)(code, message, status, retry_after)


class Unreachable(GradpoolError):
    """The request never got an answer: no route, refused, timed out."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach the pool at {url}: {reason}")
        self.url = url
        self.reason = reason


class CertificateMismatch(GradpoolError):
    """The pool's TLS certificate is not the pinned one.

    This is what someone intercepting the connection looks like; it is also
    what a pool whose operator replaced its certificate looks like. Check the
    new fingerprint with the operator before trusting it.
    """

    def __init__(self, url: str, pinned: str, got: str) -> None:
        super().__init__(
            f"the certificate of the pool at {url} is {got}, not the pinned {pinned}: "
            "this is not the pool you named (or its operator changed the "
            "certificate; ask for the new fingerprint)"
        )
        self.url = url
        self.pinned = pinned
        self.got = got


class JobFailed(GradpoolError):
    """A job this client waited on ended ``failed``."""

    def __init__(self, job_id: str, error: Optional[str]) -> None:
        super().__init__(f"job {job_id} failed: {error or 'no reason given'}")
        self.job_id = job_id
        self.error = error
