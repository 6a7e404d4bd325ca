"""The one exception hierarchy of fednb.

Every error has a stable ``code`` (a short snake-case string that travels on the wire
and that scripts may match on) and an HTTP status. A client turns a server's error
body back into the same class with :func:`from_wire`.

::

    FednbError                      500 internal
    ├── InvalidInput                400 invalid_input
    │   ├── ParamsOutOfSchema       400 params_out_of_schema
    │   ├── DisclosureRefused       400 disclosure_refused
    │   └── UnsupportedMedia        415 unsupported_media
    ├── AuthenticationError         401 unauthenticated
    ├── PermissionDenied            403 forbidden
    ├── NotFound                    404 not_found
    ├── Conflict                    409 conflict
    │   └── RequestNotApproved      409 request_not_approved
    ├── RunRefused                  409 run_refused
    ├── PayloadTooLarge             413 payload_too_large
    ├── InsecureSetting             400 insecure_setting
    ├── SandboxUnavailable          503 sandbox_unavailable
    ├── ResultNotReady              409 result_not_ready
    ├── RunFailed                   409 run_failed
    ├── DomainBusy                  503 domain_busy
    ├── InternalError               500 internal_error
    ├── SecAggRefused               409 secagg_refused
    ├── RoundAbandoned              409 round_abandoned
    ├── RoundFailed                 409 round_failed (client side only)
    └── ConnectionFailed            503 connection_failed (client side only)
        ├── IdentityMismatch        503 identity_mismatch (client side only)
        └── ChannelTampered         503 channel_tampered (client side only)

Messages name the bad value and say how to fix it. They never carry private data:
exception text from a sandboxed run goes to the owner's log, not into an error.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "AuthenticationError",
    "ChannelTampered",
    "Conflict",
    "ConnectionFailed",
    "DisclosureRefused",
    "DomainBusy",
    "FednbError",
    "IdentityMismatch",
    "InsecureSetting",
    "InternalError",
    "InvalidInput",
    "NotFound",
    "ParamsOutOfSchema",
    "PayloadTooLarge",
    "PermissionDenied",
    "RequestNotApproved",
    "ResultNotReady",
    "RoundAbandoned",
    "RoundFailed",
    "RunFailed",
    "RunRefused",
    "SandboxUnavailable",
    "SecAggRefused",
    "UnsupportedMedia",
    "from_wire",
    "http_status",
]


class FednbError(Exception):
    """Base class of every fednb error.

    Parameters
    ----------
    message
        What went wrong and how to fix it; shown to whoever made the call.
    """

    code: ClassVar[str] = "internal"
    status: ClassVar[int] = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_wire(self) -> dict[str, Any]:
        """The JSON body a server sends for this error."""
        return {"error": {"code": self.code, "message": self.message}}


class InvalidInput(FednbError):
    """A value the caller sent is malformed or out of range."""

    code = "invalid_input"
    status = 400


class ParamsOutOfSchema(InvalidInput):
    """Run parameters or weight shapes fall outside what the owner approved."""

    code = "params_out_of_schema"


class UnsupportedMedia(InvalidInput):
    """The body's content type is not one fednb accepts (JSON or safetensors)."""

    code = "unsupported_media"
    status = 415


class AuthenticationError(FednbError):
    """No token, an unknown token or a revoked token."""

    code = "unauthenticated"
    status = 401


class PermissionDenied(FednbError):
    """The token is valid but its role may not do this."""

    code = "forbidden"
    status = 403


class DisclosureRefused(InvalidInput):
    """A statistic the owner's disclosure rules forbid releasing; the message names the rule
    (a minimum cell count, a minimum subset, a parameter cap, a variable list) and how to
    proceed (coarser groups, a larger subset, fewer parameters, or the owner's review)."""

    code = "disclosure_refused"


class NotFound(FednbError):
    """No such object, or not one the caller may see."""

    code = "not_found"
    status = 404


class Conflict(FednbError):
    """The object exists in a state that does not allow this call."""

    code = "conflict"
    status = 409


class RequestNotApproved(Conflict):
    """The request is pending or denied, so it cannot run."""

    code = "request_not_approved"


class RunRefused(FednbError):
    """The domain refused a run before it started (policy, budget, runs used up)."""

    code = "run_refused"
    status = 409


class PayloadTooLarge(FednbError):
    """A body or a result exceeds the domain's size cap."""

    code = "payload_too_large"
    status = 413


class InsecureSetting(FednbError):
    """A setting that would leak secrets, such as a token over plain HTTP."""

    code = "insecure_setting"
    status = 400


class SandboxUnavailable(FednbError):
    """No sandbox (bubblewrap) on this domain and it was not started with --insecure-demo."""

    code = "sandbox_unavailable"
    status = 503


class ResultNotReady(FednbError):
    """The run has not finished, or its result is held for the owner's release."""

    code = "result_not_ready"
    status = 409


class RunFailed(FednbError):
    """The run ended without a result; the message gives its status and reason code only."""

    code = "run_failed"
    status = 409


class DomainBusy(FednbError):
    """The domain could not serve the call just now (its database was busy); try again."""

    code = "domain_busy"
    status = 503


class InternalError(FednbError):
    """The domain failed in a way it did not foresee; the details are in its own log only."""

    code = "internal_error"
    status = 500


class SecAggRefused(FednbError):
    """A domain refused a secure-aggregation step (the message says which check failed)."""

    code = "secagg_refused"
    status = 409


class RoundAbandoned(FednbError):
    """Too few members survived a secure round to unmask it: nothing was revealed."""

    code = "round_abandoned"
    status = 409


class RoundFailed(FednbError):
    """A federated round could not go on (too few domains answered, or survived secure
    aggregation); the message says how many and why (client side only)."""

    code = "round_failed"
    status = 409


class ConnectionFailed(FednbError):
    """The domain could not be reached (client side only)."""

    code = "connection_failed"
    status = 503


class IdentityMismatch(ConnectionFailed):
    """The peer's TLS key is not the identity pinned for the domain: a relay that routes to
    the wrong domain, or a man in the middle. Nothing was sent to it."""

    code = "identity_mismatch"


class ChannelTampered(ConnectionFailed):
    """The end-to-end TLS channel failed its integrity check: bytes were altered on the way."""

    code = "channel_tampered"


def _all_subclasses(cls: type[FednbError]) -> list[type[FednbError]]:
    out = [cls]
    for sub in cls.__subclasses__():
        out.extend(_all_subclasses(sub))
    return out


_BY_CODE: dict[str, type[FednbError]] = {c.code: c for c in _all_subclasses(FednbError)}


def http_status(exc: BaseException) -> int:
    """The HTTP status a server answers for ``exc`` (500 for anything not a FednbError)."""
    return exc.status if isinstance(exc, FednbError) else 500


def from_wire(body: Any, status: int) -> FednbError:
    """Rebuild the exception a server sent, as the same class where the code is known."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        cls = _BY_CODE.get(str(err.get("code")), FednbError)
        return cls(str(err.get("message", "")))
    if isinstance(body, dict) and "detail" in body:  # FastAPI's own validation errors
        return InvalidInput(f"the domain rejected the request body: {body['detail']}")
    for cls in _BY_CODE.values():
        if cls.status == status and cls.__base__ is FednbError:
            return cls(f"HTTP {status}")
    return FednbError(f"HTTP {status}")
