"""The owner's actions of ``fednb domain ...`` on an existing domain home: users,
datasets, policy, budgets, peers, stats templates, audit; and the helpers every action
shares (the home, the open domain, tables).

The review of requests and results is in :mod:`fednb._cli_review`, ``init`` and ``serve``
in :mod:`fednb._cli_serve`, the parsers in :mod:`fednb.cli`. Heavy imports (the domain,
xarray) happen inside the actions, so ``fednb --help`` stays quick.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fednb.errors import InvalidInput, NotFound

if TYPE_CHECKING:
    from fednb.domain import Domain

ACTOR = "owner-cli"
"""Who the audit log names for reviews made here."""

DomainHandler = Callable[["Domain", argparse.Namespace], int]


# --------------------------------------------------------------------------- helpers


def home_of(args: argparse.Namespace) -> Path:
    """``--home``, else ``$FEDNB_HOME``, else ``./domain``."""
    return Path(getattr(args, "home", None) or os.environ.get("FEDNB_HOME") or "domain")


def open_domain(args: argparse.Namespace) -> Domain:
    from fednb.domain import Domain

    home = home_of(args)
    try:
        return Domain.open(home)
    except NotFound:
        raise NotFound(
            f"{home} holds no domain: create one with `fednb domain init --home "
            f"{shlex.quote(str(home))} --name NAME`, or point --home or FEDNB_HOME "
            "at an existing one"
        ) from None


def on_domain(handler: DomainHandler) -> Callable[[argparse.Namespace], int]:
    """Wrap an action so it gets the open domain, closed afterwards."""

    def run(args: argparse.Namespace) -> int:
        dom = open_domain(args)
        try:
            return handler(dom, args)
        finally:
            dom.close()

    return run


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], empty: str) -> None:
    """Print rows as aligned columns, or ``empty`` when there are none."""
    body = [[str(c) for c in row] for row in rows]
    if not body:
        print(empty)
        return
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(headers)]
    for row in [list(headers), *body]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def when(t: datetime | None) -> str:
    """A time as the tables print it (``-`` for none)."""
    return "-" if t is None else t.strftime("%Y-%m-%d %H:%M:%S")


def _split(text: str, option: str, example: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise InvalidInput(f"{option} {text!r} must look like {example}")
    return key, value


def _csv(text: str | None) -> list[str] | None:
    return None if text is None else [s.strip() for s in text.split(",") if s.strip()]


# --------------------------------------------------------------------------- users


def _show_token(name: str, token: str, what: str) -> None:
    note = "shown only this once: the domain keeps only its SHA-256 hash, not the token"
    print(f"{what} for {name!r} ({note}):", file=sys.stderr)
    print(token, flush=True)


def cmd_user_add(dom: Domain, args: argparse.Namespace) -> int:
    token = dom.add_user(args.name, role=args.role, epsilon=args.epsilon, actor=ACTOR)
    _show_token(args.name, token, f"added {args.role}")
    return 0


def cmd_user_list(dom: Domain, args: argparse.Namespace) -> int:
    rows = [
        (u.name, u.role, when(u.created), "revoked" if u.revoked else "active") for u in dom.list_users()
    ]
    table(("name", "role", "created", "status"), rows, "no users yet: fednb domain user add NAME")
    return 0


def cmd_user_revoke(dom: Domain, args: argparse.Namespace) -> int:
    dom.revoke_user(args.name, actor=ACTOR)
    print(f"revoked {args.name!r}: their token no longer works (`user rotate` issues a new one)")
    return 0


def cmd_user_rotate(dom: Domain, args: argparse.Namespace) -> int:
    _show_token(args.name, dom.rotate_token(args.name, actor=ACTOR), "new token")
    return 0


# --------------------------------------------------------------------------- datasets


def _bounds(args: argparse.Namespace) -> dict[str, tuple[float, float] | list[str]]:
    out: dict[str, tuple[float, float] | list[str]] = {}
    for text in args.bounds:
        var, rng = _split(text, "--bounds", "VAR=LO:HI, e.g. age=0:120")
        lo, _, hi = rng.partition(":")
        try:
            out[var] = (float(lo), float(hi))
        except ValueError:
            raise InvalidInput(
                f"--bounds {text!r} must look like VAR=LO:HI with numbers, e.g. --bounds age=0:120"
            ) from None
    for text in args.categories:
        var, cats = _split(text, "--categories", "VAR=A,B,..., e.g. sex=female,male")
        out[var] = _csv(cats) or []
    return out


def _loader_options(args: argparse.Namespace) -> dict[str, Any]:
    opts: dict[str, Any] = {"index": args.index, "columns": _csv(args.columns), "fields": _csv(args.fields)}
    if args.size is not None:
        try:
            opts["size"] = [int(s) for s in args.size.lower().replace("x", ",").split(",")]
        except ValueError:
            raise InvalidInput(f"--size {args.size!r} must look like ROWS,COLS, e.g. 256,256") from None
    return {k: v for k, v in opts.items() if v is not None}


def cmd_dataset_add(dom: Domain, args: argparse.Namespace) -> int:
    from fednb.loaders import load

    opts = _loader_options(args)
    mock = None if args.mock is None else load(args.mock, format=args.format, **opts)
    units = dict(_split(u, "--units", "VAR=UNIT, e.g. age=years") for u in args.units)
    card = dom.add_dataset(
        args.name,
        args.file,
        mock=mock,
        bounds=_bounds(args),
        units=units,
        description=args.description,
        example_dim=args.example_dim,
        format=args.format,
        actor=ACTOR,
        **opts,
    )
    size = f"{card.num_examples} examples along {card.example_dim!r}, {len(card.variables)} variables"
    print(f"added dataset {card.name!r}: {size}; mock: {card.mock.method}")
    return 0


def cmd_dataset_list(dom: Domain, args: argparse.Namespace) -> int:
    rows = [(c.name, c.num_examples, len(c.variables), c.mock.method) for c in dom.datasets()]
    table(("name", "rows", "variables", "mock"), rows, "no datasets yet: fednb domain dataset add")
    return 0


def cmd_dataset_show(dom: Domain, args: argparse.Namespace) -> int:
    print(dom.card(args.name).model_dump_json(indent=2))
    return 0


# --------------------------------------------------------------------------- policy, budget


def cmd_policy_show(dom: Domain, args: argparse.Namespace) -> int:
    print(json.dumps(dom.policy.get().model_dump(), indent=2))
    return 0


def _policy_changes(settings: Sequence[str], current: dict[str, Any]) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    for text in settings:
        key, raw = _split(text, "setting", "KEY=VALUE, e.g. run_timeout_s=300")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        if isinstance(current.get(key), list) and not isinstance(value, list):
            value = _csv(raw)
        changes[key] = value
    return changes


def cmd_policy_set(dom: Domain, args: argparse.Namespace) -> int:
    changes = _policy_changes(args.settings, dom.policy.get().model_dump())
    new = dom.policy.update(**changes).model_dump()
    for key in sorted(changes):
        print(f"{key} = {json.dumps(new[key])}")
    return 0


def cmd_budget(dom: Domain, args: argparse.Namespace) -> int:
    if args.set is not None:
        name, raw = args.set
        try:
            epsilon = float(raw)
        except ValueError:
            raise InvalidInput(f"epsilon must be a number, not {raw!r}") from None
        dom.set_budget(name, epsilon, args.dataset, actor=ACTOR)
    rows = [(b.scientist, b.dataset, _eps(b.epsilon_budget), f"{b.epsilon_spent:.3f}",
             f"{b.epsilon_reserved:.3f}", _eps(b.epsilon_remaining), _eps(b.dataset_cap),
             f"{b.dataset_spent:.3f}", f"{b.delta:.1e}") for b in dom.budgets()]
    table(("scientist", "dataset", "budget", "spent", "reserved", "left", "dataset cap", "dataset spent",
           "delta"), rows, "no scientists yet")
    allowed = dom.policy.get().allow_no_dp
    print(f"may run without DP (policy allow_no_dp): {', '.join(allowed) if allowed else 'nobody'}")
    return 0


def cmd_peers(dom: Domain, args: argparse.Namespace) -> int:
    if args.trust is not None:
        dom.peers.trust(args.trust[0], args.trust[1], actor=ACTOR)
    if args.forget is not None:
        dom.peers.forget(args.forget, actor=ACTOR)
    print(f"this domain's identity: {dom.identity.public}")
    table(("peer", "identity"), sorted(dom.peers.list().items()), "no peers on the roster")
    print(f"fewest members of a secure round (policy secagg_min_members): "
          f"{dom.policy.get().secagg_min_members}")
    return 0


def _eps(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


# --------------------------------------------------------------------------- stats templates


def cmd_templates_list(dom: Domain, args: argparse.Namespace) -> int:
    from fednb.client import template_row

    rows = [tuple(template_row(i).values()) for i in dom.policy.templates.list()]
    headers = ("name", "functions", "datasets", "scientists", "limits", "protection", "reviewers", "state")
    table(headers, rows, "no stats templates: add one with `fednb domain templates add FILE.json`")
    return 0


def cmd_templates_add(dom: Domain, args: argparse.Namespace) -> int:
    try:
        body = json.loads(Path(args.file).read_text())
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"cannot read template {args.file}: {exc}") from None
    info = dom.policy.templates.add(body, reviewer=args.reviewer)
    state = "active" if info.active else "waiting for a second owner's `fednb domain templates approve`"
    print(f"added template {info.template.name!r} ({state})")
    return 0


def cmd_templates_approve(dom: Domain, args: argparse.Namespace) -> int:
    info = dom.policy.templates.approve(args.name, reviewer=args.reviewer)
    print(f"{args.reviewer} approved template {args.name!r} "
          f"({'active' if info.active else 'still waiting'})")
    return 0


def cmd_templates_remove(dom: Domain, args: argparse.Namespace) -> int:
    dom.policy.templates.remove(args.name, reviewer=args.reviewer)
    print(f"removed template {args.name!r}")
    return 0


# --------------------------------------------------------------------------- audit


def cmd_audit(dom: Domain, args: argparse.Namespace) -> int:
    if args.verify:
        report = dom.verify_audit()
        print(report)
        return 0 if report.ok else 1
    entries = dom.audit.entries(limit=args.limit)[::-1]
    rows = [(e.seq, e.ts[:19].replace("T", " "), e.actor, e.action, e.details) for e in entries]
    table(("seq", "time", "actor", "action", "details"), rows, "the audit log is empty")
    return 0
