"""One error map for both sides of the wire.

A refusal on the wire is ``(status, reason, ran, message)``. The server raises
:class:`Refusal` (or a ``ServerError`` subclass) and :func:`refusal_of` turns
any exception into those four fields; the client turns them back into an
exception with :func:`error_from_refusal`. Those two functions are the only
translation points.

Example:
    >>> from flo_core.errors import error_from_refusal, NotFoundError
    >>> from flo_core.spec import Status, Reason, Ran
    >>> e = error_from_refusal(Status.NOT_FOUND, Reason.NOT_FOUND, Ran.NO, "key not found")
    >>> isinstance(e, NotFoundError), e.reason
    (True, <Reason.NOT_FOUND: 13>)
"""

from __future__ import annotations

from typing import ClassVar

from .spec import REASON_STATUS, Ran, Reason, Status


class FloError(Exception):
    """Base of every error raised by flo_client, flo_server and flamepy's use of them."""


# --- faults that never travel on the wire -----------------------------------


class ClientError(FloError):
    """Something went wrong on this side of the connection."""


class ConnectionClosedError(ClientError, ConnectionError):
    """The connection is closed or was lost while a request was outstanding."""


class NotConnectedError(ConnectionClosedError):
    """The client is not connected (call ``connect()`` or use ``async with``)."""


class RequestTimeoutError(ClientError, TimeoutError):
    """No answer arrived in time."""


class ProtocolError(ClientError):
    """The peer broke the framing rules (bad magic, CRC, table hash, ids)."""


class TxnUnsupportedOpError(ClientError):
    """scan, mget, json_* and history are not available inside a transaction."""


class TxnFinishedError(ClientError):
    """The transaction was already committed or rolled back."""


# --- refusals: (status, reason, ran, message) -------------------------------

_BY_STATUS: dict[int, type["ServerError"]] = {}


class ServerError(FloError):
    """The server refused a request.

    Attributes:
        status_code: the :class:`~flo_core.spec.Status` of the answer.
        reason: the :class:`~flo_core.spec.Reason` the server gave.
        ran: whether the request took effect (:class:`~flo_core.spec.Ran`).
    """

    status: ClassVar[Status] = Status.ERROR_GENERIC

    def __init_subclass__(cls, **kw: object) -> None:
        super().__init_subclass__(**kw)
        if "status" in cls.__dict__:
            if cls.status in _BY_STATUS:
                raise TypeError(f"two errors for status {cls.status!r}")
            _BY_STATUS[cls.status] = cls

    def __init__(
        self,
        message: str = "",
        *,
        reason: Reason | int = Reason.UNCLASSIFIED,
        ran: Ran | int = Ran.NO,
        status_code: Status | int | None = None,
    ) -> None:
        self.status_code = _as(Status, status_code if status_code is not None else self.status)
        self.reason = _as(Reason, reason)
        self.ran = _as(Ran, ran)
        self.message = message or _stock_message(self.status_code)
        super().__init__(self.message)


class GenericServerError(ServerError):
    status = Status.ERROR_GENERIC


class NotFoundError(ServerError, LookupError):
    status = Status.NOT_FOUND


class BadRequestError(ServerError, ValueError):
    status = Status.BAD_REQUEST


class UnauthorizedError(ServerError):
    status = Status.UNAUTHORIZED


class ConflictError(ServerError):
    status = Status.CONFLICT


class InternalServerError(ServerError):
    status = Status.INTERNAL_ERROR


class OverloadedError(ServerError):
    status = Status.OVERLOADED


class RateLimitedError(ServerError):
    status = Status.RATE_LIMITED


class UnavailableError(ServerError):
    status = Status.UNAVAILABLE


class Refusal(ServerError):
    """Raised by server handlers: names the reason; the status follows from it.

    Example:
        >>> raise Refusal(Reason.CAS_MISMATCH, "version is 7")  # doctest: +SKIP
    """

    def __init__(
        self,
        reason: Reason | int,
        message: str = "",
        *,
        status: Status | int | None = None,
        ran: Ran | int = Ran.NO,
    ) -> None:
        reason = _as(Reason, reason)
        st = status if status is not None else REASON_STATUS.get(reason, Status.ERROR_GENERIC)
        super().__init__(message, reason=reason, ran=ran, status_code=st)


def _as(enum: type, value: int) -> int:
    try:
        return enum(value)
    except ValueError:
        return int(value)


_STOCK = {
    Status.ERROR_GENERIC: "Generic error",
    Status.NOT_FOUND: "Not found",
    Status.BAD_REQUEST: "Bad request",
    Status.CROSS_CORE_TRANSACTION: "Cross-core transaction not supported",
    Status.NO_ACTIVE_TRANSACTION: "No active transaction",
    Status.GROUP_LOCKED: "Consumer group is locked",
    Status.UNAUTHORIZED: "Unauthorized",
    Status.CONFLICT: "Conflict",
    Status.INTERNAL_ERROR: "Internal server error",
    Status.OVERLOADED: "Server overloaded",
    Status.RATE_LIMITED: "Request rate limit exceeded",
    Status.UNAVAILABLE: "Unavailable; retry",
}


def _stock_message(status: int) -> str:
    return _STOCK.get(status, f"Unknown status {int(status)}")  # type: ignore[call-overload]


def error_from_refusal(status: int, reason: int, ran: int, message: str) -> ServerError:
    """The client-side translation: a refusal's fields -> the matching exception."""
    cls = _BY_STATUS.get(status, GenericServerError)
    return cls(message, reason=reason, ran=ran, status_code=status)


def refusal_of(exc: BaseException) -> tuple[int, int, int, str]:
    """The server-side translation: any exception -> (status, reason, ran, message).

    Anything that is not a :class:`ServerError` is an internal fault.
    """
    if isinstance(exc, ServerError):
        return int(exc.status_code), int(exc.reason), int(exc.ran), exc.message
    return int(Status.INTERNAL_ERROR), int(Reason.INTERNAL), int(Ran.UNKNOWN), f"internal error: {type(exc).__name__}"


def parse_refusal_body(data: bytes) -> tuple[int, int, str]:
    """Split a refusal body ``[reason u16][ran u8][message]``."""
    if len(data) < 3:
        return int(Reason.UNCLASSIFIED), int(Ran.UNKNOWN), ""
    reason = data[0] | (data[1] << 8)
    ran = data[2]
    return reason, ran, bytes(data[3:]).decode("utf-8", "replace")


def refusal_body(reason: int, ran: int, message: str) -> bytes:
    """Build a refusal body ``[reason u16][ran u8][message]``."""
    return bytes((reason & 0xFF, reason >> 8, ran)) + message.encode("utf-8")


__all__ = [
    "FloError",
    "ClientError",
    "ConnectionClosedError",
    "NotConnectedError",
    "RequestTimeoutError",
    "ProtocolError",
    "TxnUnsupportedOpError",
    "TxnFinishedError",
    "ServerError",
    "GenericServerError",
    "NotFoundError",
    "BadRequestError",
    "UnauthorizedError",
    "ConflictError",
    "InternalServerError",
    "OverloadedError",
    "RateLimitedError",
    "UnavailableError",
    "Refusal",
    "error_from_refusal",
    "refusal_of",
    "parse_refusal_body",
    "refusal_body",
]
