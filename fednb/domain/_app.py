"""The domain's HTTP API (FastAPI). Every route but ``/info`` needs a bearer token.

The OpenAPI document at ``/api/v1/openapi.json`` is the contract of this API.
"""


import json
import logging
import math
import re
from typing import TYPE_CHECKING, Annotated, Any

import anyio
import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from fednb import kernels
from fednb.domain._nearest import run_nearest
from fednb.domain._store import RequestRow, UserRow, is_busy
from fednb.errors import (
    AuthenticationError,
    DomainBusy,
    FednbError,
    InternalError,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    RequestNotApproved,
    UnsupportedMedia,
)
from fednb.protocol import (
    API_PREFIX,
    API_VERSION,
    FEDNB_VERSION,
    ApproveDecision,
    BudgetInfo,
    DatasetCard,
    DenyDecision,
    DomainInfo,
    ReleaseState,
    RequestCreate,
    RequestInfo,
    RequestStatus,
    RunCreate,
    RunInfo,
    SecAggAdvert,
    SecAggJoin,
    SecAggReveal,
    SecAggShare,
    SecAggSignature,
    SecAggSurvivors,
    StatsTemplate,
    TemplateInfo,
    TensorSpec,
    UserInfo,
    dataset_to_bytes,
    decode_message,
)

if TYPE_CHECKING:
    from fednb.domain._domain import Domain

__all__ = ["BINARY", "create_app"]

BINARY = "application/octet-stream"
_MAX_JSON = 4 << 20
_RUN_PATH = re.compile(rf"^{re.escape(API_PREFIX)}/requests/[^/]+/runs/[^/]+$")
_MAX_RUN_BODY = 512 << 20
_HEADER_ALLOWANCE = 64 << 10  # the fednb run header's fixed fields and the safetensors framing
_TENSOR_HEADER = 256  # one tensor's entry in the safetensors header, besides its name
_bearer = HTTPBearer(auto_error=False)
_log = logging.getLogger("fednb.domain")


def _error(exc: FednbError) -> JSONResponse:
    return JSONResponse(exc.to_wire(), status_code=exc.status)


# FastAPI's and Starlette's own HTTP errors (an unparsable body, an unknown path, a wrong
# method), answered in fednb's error shape with a message that says what to fix
_HTTP_ERRORS: dict[int, type[FednbError]] = {
    400: InvalidInput, 401: AuthenticationError, 403: PermissionDenied, 404: NotFound,
    413: PayloadTooLarge, 415: UnsupportedMedia}
_HTTP_MESSAGES = {
    "There was an error parsing the body": "the body is not valid JSON: send a JSON document "
                                           "encoded as UTF-8",
    "Not Found": "no such route: see /api/v1/openapi.json for the routes of this API",
    "Method Not Allowed": "this route does not take that HTTP method: see /api/v1/openapi.json",
}


def _http_error(exc: StarletteHTTPException) -> JSONResponse:
    message = _HTTP_MESSAGES.get(str(exc.detail), str(exc.detail))
    cls = _HTTP_ERRORS.get(exc.status_code)
    code = cls.code if cls is not None else "invalid_input" if exc.status_code < 500 else "internal_error"
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=exc.status_code,
                        headers=getattr(exc, "headers", None))


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for e in exc.errors()[:5]:
        if e.get("type") == "json_invalid":  # loc is ("body", offset): say what it means
            parts.append(f"the body is not valid JSON ({(e.get('ctx') or {}).get('error', 'decode error')} "
                         f"at character {e['loc'][-1]})")
            continue
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
        parts.append(f"{loc or 'body'}: {e.get('msg')}")
    return "; ".join(parts)


def _routes(dom: "Domain") -> APIRouter:
    r = APIRouter(prefix=API_PREFIX)

    def user(cred: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> UserRow:
        return dom.authenticate(cred.credentials if cred else None)

    def owner(u: Annotated[UserRow, Depends(user)]) -> UserRow:
        if u.role != "owner":
            raise PermissionDenied("this route is for the domain's owner")
        return u

    def scientist(u: Annotated[UserRow, Depends(user)]) -> UserRow:
        if u.role != "scientist":
            raise PermissionDenied("this route is for scientists")
        return u

    User = Annotated[UserRow, Depends(user)]
    Owner = Annotated[UserRow, Depends(owner)]
    Scientist = Annotated[UserRow, Depends(scientist)]

    def mine(u: UserRow) -> str | None:
        return None if u.role == "owner" else u.name

    @r.get("/info", response_model=DomainInfo, tags=["public"])
    def info() -> DomainInfo:
        return DomainInfo(name=dom.name, domain_id=dom.domain_id, api_version=API_VERSION,
                          fednb_version=FEDNB_VERSION, sandbox=dom.sandbox_mode or "unavailable",
                          identity=dom.identity.public, kernels=kernels.backend())

    @r.get("/me", response_model=UserInfo)
    def me(u: User) -> UserInfo:
        return UserInfo(name=u.name, role=u.role, created=u.created,
                        revoked=u.revoked)

    @r.get("/datasets", response_model=list[DatasetCard])
    def datasets(u: User) -> list[DatasetCard]:
        return dom.datasets()

    @r.get("/datasets/{name}", response_model=DatasetCard)
    def dataset(name: str, u: User) -> DatasetCard:
        return dom.card(name)

    @r.get("/datasets/{name}/mock", response_class=Response,
           responses={200: {"content": {BINARY: {}}}})
    def mock(name: str, u: User) -> Response:
        return Response(dataset_to_bytes(dom.mock(name)), media_type=BINARY)

    @r.post("/requests", response_model=RequestInfo, status_code=201)
    def submit(body: RequestCreate, u: Scientist) -> RequestInfo:
        return dom.requests.submit(u, body)

    @r.get("/requests", response_model=list[RequestInfo])
    def requests(u: User, status: RequestStatus | None = None) -> list[RequestInfo]:
        return dom.requests.list(scientist=mine(u), status=status)

    @r.get("/requests/{request_id}", response_model=RequestInfo)
    def request(request_id: str, u: User) -> RequestInfo:
        return dom.requests.get(request_id, scientist=mine(u))

    @r.post("/requests/{request_id}/approve", response_model=RequestInfo)
    def approve(request_id: str, body: ApproveDecision, u: Owner) -> RequestInfo:
        return dom.requests.approve(request_id, release=body.release, reviewer=u.name, slot_s=body.slot_s)

    @r.post("/requests/{request_id}/deny", response_model=RequestInfo)
    def deny(request_id: str, body: DenyDecision, u: Owner) -> RequestInfo:
        return dom.requests.deny(request_id, reason=body.reason, reviewer=u.name)

    @r.put("/requests/{request_id}/runs/{run_id}", response_model=RunInfo, status_code=202,
           openapi_extra={"requestBody": {"required": True, "content": {BINARY: {
               "schema": {"type": "string", "format": "binary"}}}}})
    async def run(request_id: str, run_id: str, req: Request, u: Scientist) -> RunInfo:
        if not re.fullmatch(r"[A-Za-z0-9_-]{8,64}", run_id):  # ASCII: str.isalnum() takes any script
            raise InvalidInput("run ids are 8-64 letters, digits, '-' or '_'")
        if req.headers.get("content-type", "").split(";")[0].strip() != BINARY:
            raise UnsupportedMedia(f"a run body is a safetensors message sent as {BINARY}")
        # authorise before reading: nothing of the body is buffered until the request is
        # known to be this scientist's own and approved, and its approved weights bound it
        row = await anyio.to_thread.run_sync(lambda: dom.requests.row(request_id, scientist=u.name))
        if row.status != "approved":
            raise RequestNotApproved(f"request {request_id!r} is {row.status}; it cannot run")
        header, weights = decode_message(await _read_capped(req, _run_body_cap(row)))
        try:
            spec = RunCreate.model_validate(header)
        except ValidationError as exc:
            raise InvalidInput(f"run header: {exc.errors()[0]['msg']}") from None
        return await anyio.to_thread.run_sync(
            lambda: dom.runs.create(u, request_id, run_id, spec.dataset, spec.params,
                                    weights if spec.weights else None, spec.compression, spec.secure))

    # -- secure aggregation (fednb.secagg): the orchestrator relays, the domain checks --
    @r.post("/secagg/join", response_model=SecAggAdvert, tags=["secure aggregation"])
    def secagg_join(body: SecAggJoin, u: Scientist) -> SecAggAdvert:
        return dom.secagg.join(u, body)

    @r.post("/secagg/{round_id}/share", response_model=list[SecAggShare], tags=["secure aggregation"])
    def secagg_share(round_id: str, body: list[SecAggAdvert], u: Scientist) -> list[SecAggShare]:
        return dom.secagg.share(u, round_id, body)

    @r.post("/secagg/{round_id}/masked", response_class=Response, tags=["secure aggregation"],
            responses={200: {"content": {BINARY: {}}}})
    def secagg_masked(round_id: str, body: list[SecAggShare], u: Scientist) -> Response:
        return Response(dom.secagg.masked(u, round_id, body), media_type=BINARY)

    @r.post("/secagg/{round_id}/consistency", response_model=SecAggSignature, tags=["secure aggregation"])
    def secagg_consistency(round_id: str, body: SecAggSurvivors, u: Scientist) -> SecAggSignature:
        if body.round_id != round_id:
            raise InvalidInput("the body's round id differs from the path's")
        return SecAggSignature(signature=dom.secagg.consistency(u, round_id, body.survivors))

    @r.post("/secagg/{round_id}/unmask", response_model=SecAggReveal, tags=["secure aggregation"])
    def secagg_unmask(round_id: str, body: SecAggSurvivors, u: Scientist) -> SecAggReveal:
        if body.round_id != round_id:
            raise InvalidInput("the body's round id differs from the path's")
        return dom.secagg.unmask(u, body)

    @r.get("/runs", response_model=list[RunInfo])
    def runs(u: User, request_id: str | None = None,
             release_state: ReleaseState | None = None) -> list[RunInfo]:
        return dom.runs.list(scientist=mine(u), request_id=request_id, release_state=release_state)

    @r.get("/runs/{run_id}", response_model=RunInfo)
    async def get_run(run_id: str, u: User,
                      wait: Annotated[float, Query(ge=0, le=30)] = 0) -> RunInfo:
        return await anyio.to_thread.run_sync(lambda: dom.runs.wait(run_id, u, wait))

    @r.get("/runs/{run_id}/result", response_class=Response,
           responses={200: {"content": {BINARY: {}}}})
    def result(run_id: str, u: User) -> Response:
        return Response(dom.runs.result(run_id, u), media_type=BINARY)

    @r.get("/runs/{run_id}/nearest", tags=["review"])
    def nearest(run_id: str, u: Owner) -> dict[str, Any]:
        """Released values of a run's result equal to private values of its dataset (the
        owner's memorisation check before a release, fednb.domain._nearest)."""
        return run_nearest(dom, run_id, u)

    @r.get("/templates", response_model=list[TemplateInfo], tags=["templates"])
    def list_templates(u: Owner) -> list[TemplateInfo]:
        return dom.policy.templates.list()

    @r.post("/templates", response_model=TemplateInfo, status_code=201, tags=["templates"])
    def add_template(body: StatsTemplate, u: Owner) -> TemplateInfo:
        return dom.policy.templates.add(body, reviewer=u.name)

    @r.post("/templates/{name}/approve", response_model=TemplateInfo, tags=["templates"])
    def approve_template(name: str, u: Owner) -> TemplateInfo:
        return dom.policy.templates.approve(name, reviewer=u.name)

    @r.delete("/templates/{name}", status_code=204, response_class=Response, tags=["templates"])
    def remove_template(name: str, u: Owner) -> Response:
        dom.policy.templates.remove(name, reviewer=u.name)
        return Response(status_code=204)

    @r.post("/runs/{run_id}/release", response_model=RunInfo)
    def release(run_id: str, u: Owner) -> RunInfo:
        return dom.runs.release(run_id, reviewer=u.name)

    @r.post("/runs/{run_id}/withhold", response_model=RunInfo)
    def withhold(run_id: str, u: Owner) -> RunInfo:
        return dom.runs.withhold(run_id, reviewer=u.name)

    @r.get("/budget", response_model=list[BudgetInfo])
    def budget(u: User) -> list[BudgetInfo]:
        return dom.budgets(scientist=mine(u))

    @r.get("/users", response_model=list[UserInfo])
    def list_users(u: Owner) -> list[UserInfo]:
        return dom.list_users()

    @r.get("/audit")
    def audit(u: Owner, limit: Annotated[int, Query(ge=1, le=10_000)] = 100) -> dict[str, Any]:
        report = dom.verify_audit()
        rows = dom.audit.entries(limit)
        return {"ok": report.ok, "problems": report.problems, "entries": [
            {"seq": e.seq, "ts": e.ts, "actor": e.actor, "action": e.action, "details": e.details}
            for e in rows]}

    return r


def _run_body_cap(row: RequestRow) -> int:
    """The most bytes a run body of the approved request ``row`` can need.

    The approved tensors' bytes, plus room for the safetensors header (a name, dtype, shape
    and offsets per tensor) and for the fednb JSON header (the run's parameters, bounded by
    the approved params schema; escaped once more inside the safetensors metadata, hence
    twice its length). Never more than ``_MAX_RUN_BODY``.
    """
    specs = [TensorSpec.model_validate(v) for v in (row.weights or {}).values()]
    tensors = sum(math.prod(t.shape) * np.dtype(t.dtype).itemsize for t in specs)
    names = sum(2 * len(name) + _TENSOR_HEADER for name in row.weights or {})
    params = 2 * len(json.dumps(row.params or {}))
    return min(_MAX_RUN_BODY, tensors + names + params + _HEADER_ALLOWANCE)


async def _read_capped(req: Request, cap: int) -> bytes:
    """The body, read as it streams in and refused (413) once it passes ``cap`` bytes.

    A declared Content-Length over the cap is refused before a byte is read; a chunked
    body (no length declared) is counted as it arrives and never buffered past the cap.
    """
    too_large = f"the body is larger than the approved request allows ({cap} bytes: the " \
                "approved weights and their headers); send the approved weights only"
    declared = req.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise PayloadTooLarge(too_large)
    chunks, size = [], 0
    async for chunk in req.stream():
        size += len(chunk)
        if size > cap:
            raise PayloadTooLarge(too_large)
        chunks.append(chunk)
    return b"".join(chunks)


class _CapBody:
    """Refuse a body over ``_MAX_JSON`` bytes before anything parses it.

    FastAPI reads a body before it checks the token, so without this an anonymous client
    could make the domain buffer any amount (a chunked body declares no length), whatever
    the content type it claims. Only a run's safetensors body (``PUT .../runs/{id}`` as
    ``application/octet-stream``) passes: its route checks the token, then reads it
    under its own cap.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        headers = dict(scope.get("headers") or []) if scope["type"] == "http" else {}
        ctype = headers.get(b"content-type", b"").split(b";")[0].strip().decode("latin-1")
        run_body = (ctype == BINARY and scope.get("method") == "PUT"
                    and _RUN_PATH.match(scope.get("path", "")) is not None)
        if scope["type"] != "http" or run_body:  # the run route reads (and caps) its body after auth
            await self.app(scope, receive, send)
            return
        too_large = _error(PayloadTooLarge(f"JSON bodies are capped at {_MAX_JSON} bytes"))
        length = headers.get(b"content-length", b"0")
        if length.isdigit() and int(length) > _MAX_JSON:
            return await too_large(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > _MAX_JSON:
                return await too_large(scope, receive, send)
            more = message.get("more_body", False)
        replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def again() -> Any:
            return replay.pop() if replay else await receive()

        await self.app(scope, again, send)


def create_app(dom: "Domain") -> FastAPI:
    """The FastAPI application serving ``dom``."""
    app = FastAPI(title=f"fednb domain: {dom.name}", version=FEDNB_VERSION,
                  openapi_url=f"{API_PREFIX}/openapi.json", docs_url=f"{API_PREFIX}/docs",
                  redoc_url=None)

    app.add_middleware(_CapBody)
    @app.exception_handler(FednbError)
    async def on_fednb(_: Request, exc: FednbError) -> JSONResponse:
        return _error(exc)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _http_error(exc)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        body = InvalidInput(_validation_message(exc)).to_wire()
        return JSONResponse(body, status_code=422)

    @app.exception_handler(OperationalError)
    @app.exception_handler(PoolTimeout)
    async def on_store_error(request: Request, exc: Exception) -> JSONResponse:
        if is_busy(exc):
            # transient: the client retries idempotent calls
            _log.warning("store busy: %s", type(exc).__name__)
            return _error(DomainBusy("the domain's database is busy; try again in a moment"))
        return await on_unexpected(request, exc)

    @app.exception_handler(Exception)
    async def on_unexpected(_: Request, exc: Exception) -> JSONResponse:
        # never echo the exception: its text may hold private data; the owner's log has it
        _log.error("unexpected error", exc_info=exc)
        return _error(InternalError("the domain failed unexpectedly; its owner can find the "
                                    "details in the domain's log"))

    app.include_router(_routes(dom))
    return app
