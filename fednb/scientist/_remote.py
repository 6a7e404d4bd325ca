"""``@fednb.remote``: a function that travels to hospitals as reviewed source text."""

from __future__ import annotations

import ast
import inspect
import textwrap
import traceback
import uuid
import warnings
from collections.abc import Callable, Mapping
from typing import Any, overload

from fednb.client import DomainClient, RemoteRequest
from fednb.errors import InvalidInput
from fednb.privacy import SecureNoise
from fednb.protocol import ClientDP, ParamSpec, ReasonCode, RequestCreate, Update, code_hash
from fednb.runtime import (
    KINDS,
    OutputPolicy,
    apply_output_policy,
    call_function,
    check_params,
    compile_function,
    release,
    weight_specs,
)
from fednb.typing import Weights

__all__ = ["RemoteFunction", "function_source", "parse_params", "remote"]

_TYPES = {float: "float", int: "int", bool: "bool", str: "str",
          "float": "float", "int": "int", "bool": "bool", "str": "str"}


def parse_params(params: Mapping[str, Any] | None) -> dict[str, ParamSpec]:
    """Turn ``{"lr": (float, 1e-4, 1.0), "opt": (str, ["sgd", "adam"]), "flag": bool}``
    into approved-parameter specs."""
    out: dict[str, ParamSpec] = {}
    for name, spec in (params or {}).items():
        if isinstance(spec, ParamSpec):
            out[name] = spec
            continue
        items = tuple(spec) if isinstance(spec, (tuple, list)) else (spec,)
        kind = _TYPES.get(items[0])
        if kind is None:
            raise InvalidInput(f"parameter {name!r}: type must be float, int, bool or str")
        try:
            if kind in ("float", "int"):
                out[name] = ParamSpec(type=kind, low=items[1], high=items[2])
            elif kind == "str":
                out[name] = ParamSpec(type="str", choices=list(items[1]))
            else:
                out[name] = ParamSpec(type="bool")
        except (IndexError, ValueError, TypeError) as exc:
            raise InvalidInput(f"parameter {name!r}: write (float, low, high), (int, low, high), "
                               f"(str, [choices]) or bool ({exc})") from None
    return out


def function_source(fn: Callable[..., Any]) -> str:
    """The function's own source text, dedented, without its decorators."""
    try:
        src = textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError):
        raise InvalidInput(f"cannot read the source of {fn!r}: define it in a file or a "
                           "notebook cell, or use the %%fednb cell magic") from None
    return strip_decorators(src, fn.__name__)


def strip_decorators(src: str, name: str) -> str:
    tree = ast.parse(src)
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            lines = src.splitlines(keepends=True)
            end = node.end_lineno or len(lines)
            return "".join(lines[node.lineno - 1 : end]).rstrip() + "\n"
    raise InvalidInput(f"the source holds no function called {name!r}")


class RemoteFunction:
    """A function approved hospitals run on private data; call it locally as usual.

    Parameters
    ----------
    fn
        The function: ``fn(data, weights, **params)`` or ``fn(data, **params)``, where
        ``data`` is an ``xarray.Dataset``. It may use ``np``, ``xr`` and ``fednb`` without
        importing them; everything else it imports itself.
    kind
        ``"update"``, the one kind of request that is code. Queries and DP-SGD trainings
        are filed as data, not code: :class:`fednb.Query` and :class:`fednb.DPSGD`.
    params
        The parameters a run may pass, with types and bounds (see :func:`parse_params`).
    metrics
        Metrics the result may carry, with bounds: ``{"loss": (0.0, 10.0)}``.
    source
        The source text (default: read from ``fn``).
    """

    def __init__(self, fn: Callable[..., Any], *, kind: str = "update",
                 params: Mapping[str, Any] | None = None,
                 metrics: Mapping[str, tuple[float, float]] | None = None,
                 source: str | None = None) -> None:
        known = next((k for k in KINDS.values() if k.name == kind), None)
        if known is None or not known.code:
            hint = (f"a {kind!r} request is filed as data, not code: use {known.filed_with}"
                    if known is not None else "use kind='update' (the default)")
            raise InvalidInput(f"remote functions are of kind 'update', not {kind!r}: {hint}")
        self.fn, self.kind, self.name = fn, kind, fn.__name__
        self.params = parse_params(params)
        self.metrics = {k: (float(lo), float(hi)) for k, (lo, hi) in (metrics or {}).items()}
        self.source = source if source is not None else function_source(fn)
        self.code_hash = code_hash(self.source)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def run_on_mock(self, client: DomainClient, dataset: str, weights: Weights | None = None,
                    *, dp: ClientDP | None = None, **params: Any) -> Update:
        """Run on the dataset's mock, in this process, through the domain's own code path
        (same compilation from source, same parameter checks, same output policy, and with
        ``dp`` the same clipping, grid noise and default release).

        With ``dp``, ``weights`` is required (the domain refuses DP requests without a
        weight spec), and a run that raises or returns something the policy rejects gives
        what a domain would release: the default (zeros of the approved shapes, metric
        midpoints, noised); the mock is public, so a warning tells you the real reason, with
        the traceback, here (a domain tells only its owner).

        Raises
        ------
        fednb.errors.InvalidInput
            ``dp`` without ``weights``.
        """
        check_params(self.params, params)
        specs = None if weights is None else weight_specs(weights)
        try:
            policy = OutputPolicy(weights=specs, metrics=self.metrics, dp=dp)
        except ValueError as exc:  # DP without a weight spec: refused as a domain refuses it
            raise InvalidInput(str(exc)) from None
        handle = client.datasets[dataset]
        fn = compile_function(self.source, self.name)
        if dp is None:
            out = apply_output_policy(call_function(fn, handle.mock, weights, params), policy)
        else:
            where = f"{self.name} on the mock of {dataset!r}"
            out = _dp_release(fn, handle.mock, weights, params, policy, where)
        return Update(out.weights, out.metrics, num_examples=handle.card.num_examples)

    def preview_epsilon(self, dp: ClientDP, *, runs: int = 1, delta: float = 1e-6) -> float:
        """Epsilon of ``runs`` runs under ``dp`` at ``delta``: a preview; the domain charges.

        Every kind previews the same way: what the epsilon depends on first (here ``dp``),
        then ``runs`` and ``delta`` by keyword (as ``Query.preview_epsilon`` and
        ``DPSGD.preview_epsilon``)."""
        from fednb.privacy import RepeatedEvent, accountant_for

        if not isinstance(dp, ClientDP):
            raise InvalidInput("preview_epsilon takes a fednb.ClientDP(clip=..., noise_multiplier=...)")
        event = KINDS["update"].event(dp, has_metrics=bool(self.metrics))
        if event is None:  # pragma: no cover - a ClientDP always has an event
            raise InvalidInput("this update has no DP event")
        return float(accountant_for("pld").epsilon([RepeatedEvent(event, runs)], delta))

    def request(self, client: DomainClient, dataset: str | list[str], *, runs: int = 1,
                weights: Weights | None = None, dp: ClientDP | None = None, description: str = "",
                request_id: str | None = None, slot_s: float | None = None) -> RemoteRequest:
        """File this function for review; ``weights`` fixes the shapes runs may send and
        receive (required with ``dp``: a DP release takes its structure from the approved
        spec); ``dp`` asks for client-level DP (without it, only scientists the policy
        allows may run); ``slot_s`` proposes a DP run's release slot, seconds from its start
        to its result, whatever it did (the owner approves it; default: the domain's
        ``dp_slot_s``)."""
        body = RequestCreate(
            id=request_id or uuid.uuid4().hex, function_name=self.name, kind="update",
            source=self.source, code_hash=self.code_hash,
            datasets=[dataset] if isinstance(dataset, str) else list(dataset),
            params=self.params, weights=None if weights is None else weight_specs(weights),
            metrics=self.metrics, runs=runs, description=description, dp=dp, slot_s=slot_s)
        return client.requests.submit(body)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}: {v.type}[{v.low}, {v.high}]" if v.low is not None else
                           f"{k}: {v.type}" for k, v in self.params.items())
        return (f"RemoteFunction {self.name} (kind={self.kind}, sha256={self.code_hash[:16]}…)\n"
                f"  params: {params or 'none'}\n"
                f"  metrics: {self.metrics or 'none'}\n" + textwrap.indent(self.source, "  | "))


def _dp_release(fn: Callable[..., Any], data: Any, weights: Weights | None, params: dict[str, Any],
                policy: OutputPolicy, where: str) -> Update:
    """The domain's DP release of one run in this process (``runtime.release``): the code's
    result, or the default in its place, with a warning that names the real outcome."""
    update: Update | None = None
    reason: ReasonCode = "ok"
    trace = ""
    try:
        update = call_function(fn, data, weights, params)
    except Exception:  # the code failed: a domain releases the default, and so do we
        reason, trace = "exception", traceback.format_exc()
    out, reason = release(update, policy, SecureNoise(), reason)
    if reason != "ok":
        message = (f"{where}: the run ended with {reason!r}; a domain would release the default "
                   "(zeros of the approved shapes, metric midpoints, noised), as here, and tell only "
                   "its owner why")
        warnings.warn(message + (f"\n{trace}" if trace else ""), RuntimeWarning, stacklevel=3)
    return out


@overload
def remote(fn: Callable[..., Any], /) -> RemoteFunction: ...


@overload
def remote(*, kind: str = "update", params: Mapping[str, Any] | None = None,
           metrics: Mapping[str, tuple[float, float]] | None = None,
           ) -> Callable[[Callable[..., Any]], RemoteFunction]: ...


def remote(fn: Callable[..., Any] | None = None, /, *, kind: str = "update",
           params: Mapping[str, Any] | None = None,
           metrics: Mapping[str, tuple[float, float]] | None = None,
           ) -> RemoteFunction | Callable[[Callable[..., Any]], RemoteFunction]:
    """Decorator: ``@fednb.remote`` or ``@fednb.remote(params={"lr": (float, 1e-4, 1.0)})``.

    ``kind`` is ``"update"`` (the default and the only kind of code; queries and DP-SGD are
    :class:`fednb.Query` and :class:`fednb.DPSGD`); see :class:`RemoteFunction`."""
    def wrap(f: Callable[..., Any]) -> RemoteFunction:
        return RemoteFunction(f, kind=kind, params=params, metrics=metrics)

    return wrap(fn) if fn is not None else wrap
