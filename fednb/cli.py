"""The ``fednb`` command line.

::

    fednb --version
    fednb demo [--hospitals N] [--headless] [--no-lab] [--home DIR] [--port-base P]
    fednb dashboard [--domain URL | --relay URL --relay-name NAME [--identity HEX]]
                    [--history DIR] [--address A] [--port P] [--show]
    fednb domain [--home PATH] ...          (or FEDNB_HOME; default ./domain)
        init --name NAME [--store-url URL] [--dask-address ADDR]
        serve [--host H] [--port P] [--certfile F --keyfile F] [--insecure] [--insecure-demo]
              [--relay URL [--relay-name NAME]]     (outbound only, through a relay)
        user add NAME [--role scientist|owner] | list | revoke NAME | rotate NAME
        dataset add NAME FILE [--bounds VAR=LO:HI ...] [--categories VAR=a,b ...] ... | list | show NAME
        policy show | set KEY=VALUE ...
        requests [--all] [--status S]           show REQUEST_ID
        approve REQUEST_ID [--release auto|manual] [--slot S]    deny REQUEST_ID --reason TEXT
        results [show RUN_ID] | release RUN_ID | withhold RUN_ID | runs [--request ID] [--log RUN_ID]
        audit [--limit N] [--verify] | budget [--set SCIENTIST EPSILON [--dataset D]]
        peers [--trust LABEL PUBLIC_KEY] [--forget LABEL]   (and this domain's own identity)

    fednb relay serve [--host H] [--port P] [--certfile F --keyfile F] [--allow FILE] ...

``fednb domain ...`` works on the domain's home directory directly (its store and
files); owner actions taken here are audited with the actor ``owner-cli``. User errors
print ``error: <message>`` and exit with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Callable, Sequence

from fednb import _cli_domain as cd
from fednb import _cli_review as cr
from fednb import _cli_serve as cs
from fednb.errors import FednbError

__all__ = ["build_parser", "main"]

Handler = Callable[[argparse.Namespace], int]

_HOME = argparse.ArgumentParser(add_help=False)
_HOME.add_argument(
    "--home",
    default=argparse.SUPPRESS,
    metavar="PATH",
    help="the domain's home directory (default: $FEDNB_HOME, else ./domain)",
)


def _int_in(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not within [{low}, {high}]")
        return value

    return parse


def _group(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help: str
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    p = sub.add_parser(name, help=help, description=help, parents=[_HOME])
    return p.add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND")


def _leaf(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, func: Handler, help: str
) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=help, parents=[_HOME])
    p.set_defaults(func=func)
    return p


def _add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = _leaf(sub, "serve", cs.cmd_serve, "serve the domain's API in the foreground (Ctrl-C stops)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=_int_in(0, 65535), default=8000, help="port (default 8000; 0: any)")
    p.add_argument("--certfile", help="TLS certificate (PEM); needs --keyfile")
    p.add_argument("--keyfile", help="TLS private key (PEM); needs --certfile")
    p.add_argument(
        "--insecure",
        action="store_true",
        help="allow plain HTTP on a non-loopback address (tokens travel in clear)",
    )
    p.add_argument(
        "--insecure-demo",
        action="store_true",
        help="without bubblewrap, run code UNSANDBOXED (demos on synthetic data only)",
    )
    p.add_argument("--relay", metavar="URL",
                   help="listen on loopback only and dial out to this relay (through $HTTPS_PROXY); "
                        "scientists connect with fednb.connect(relay=URL, domain=NAME, identity=KEY)")
    p.add_argument("--relay-name", metavar="NAME",
                   help="this domain's name on the relay (default: its name as a DNS label)")


def _add_users(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    users = _group(sub, "user", "add, list, revoke users and rotate their tokens")
    p = _leaf(users, "add", cd.on_domain(cd.cmd_user_add), "add a user; prints their token once")
    p.add_argument("name")
    p.add_argument("--role", choices=("scientist", "owner"), default="scientist")
    p.add_argument("--epsilon", type=float, help="privacy budget on every dataset (scientists)")
    _leaf(users, "list", cd.on_domain(cd.cmd_user_list), "list users")
    for name, func, text in (
        ("revoke", cd.cmd_user_revoke, "revoke a user's token"),
        ("rotate", cd.cmd_user_rotate, "issue a user a new token"),
    ):
        _leaf(users, name, cd.on_domain(func), text).add_argument("name")


def _add_datasets(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dsets = _group(sub, "dataset", "add, list and show datasets")
    p = _leaf(
        dsets, "add", cd.on_domain(cd.cmd_dataset_add), "add (or replace) a dataset from a file or folder"
    )
    p.add_argument("name")
    p.add_argument("file", help="NetCDF, Zarr, CSV, Parquet, a DICOM folder or a FHIR Bundle")
    p.add_argument("--format", help="csv, dicom, fhir, netcdf, parquet or zarr (default: inferred)")
    p.add_argument(
        "--bounds",
        action="append",
        default=[],
        metavar="VAR=LO:HI",
        help="numeric bounds of a variable (repeat per variable)",
    )
    p.add_argument(
        "--categories",
        action="append",
        default=[],
        metavar="VAR=A,B,...",
        help="the categories of a text variable (repeat per variable)",
    )
    p.add_argument("--units", action="append", default=[], metavar="VAR=UNIT")
    p.add_argument("--description", default="")
    p.add_argument("--example-dim", metavar="DIM", help="the dimension along which examples lie")
    p.add_argument("--index", metavar="COL", help="tables: the id column")
    p.add_argument("--columns", metavar="C1,C2", help="tables: only these columns")
    p.add_argument("--fields", metavar="F1,F2", help="DICOM: header fields to keep as variables")
    p.add_argument("--size", metavar="ROWS,COLS", help="DICOM: crop/pad every image to this size")
    p.add_argument("--mock", metavar="FILE", help="a mock twin you made (default: synthesised)")
    _leaf(dsets, "list", cd.on_domain(cd.cmd_dataset_list), "list datasets")
    _leaf(dsets, "show", cd.on_domain(cd.cmd_dataset_show), "a dataset's card as JSON").add_argument("name")


def _add_policy(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    policy = _group(sub, "policy", "show or change the domain's policy")
    _leaf(policy, "show", cd.on_domain(cd.cmd_policy_show), "the policy as JSON")
    p = _leaf(
        policy,
        "set",
        cd.on_domain(cd.cmd_policy_set),
        "change policy fields (values are JSON where they parse, else text)",
    )
    p.add_argument(
        "settings", nargs="+", metavar="KEY=VALUE", help="e.g. run_timeout_s=300 allow_no_dp=alice,bob"
    )


def _add_templates(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tpl = _group(sub, "templates", "stats templates: approve a kind of stats request once, run many")
    _leaf(tpl, "list", cd.on_domain(cd.cmd_templates_list), "list templates, active or waiting")
    p = _leaf(tpl, "add", cd.on_domain(cd.cmd_templates_add),
              "add a template from a JSON file (docs/stats-domain.md); you approve it first")
    p.add_argument("file", metavar="FILE.json")
    p.add_argument("--reviewer", default=cd.ACTOR,
                   help=f"who adds it (default {cd.ACTOR}; a two-reviewer template needs an owner account)")
    p = _leaf(tpl, "approve", cd.on_domain(cd.cmd_templates_approve),
              "a second owner's approval of a two-reviewer template")
    p.add_argument("name")
    p.add_argument("--reviewer", required=True, help="the approving owner account (not the one who added it)")
    p = _leaf(tpl, "remove", cd.on_domain(cd.cmd_templates_remove),
              "remove a template; requests it approved keep their approval")
    p.add_argument("name")
    p.add_argument("--reviewer", default=cd.ACTOR, help=f"who removes it (default {cd.ACTOR})")


def _add_review(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = _leaf(sub, "requests", cd.on_domain(cr.cmd_requests), "list code requests (pending by default)")
    p.add_argument("--all", action="store_true", help="every request, whatever its status")
    p.add_argument("--status", choices=("pending", "approved", "denied"))
    _leaf(
        sub, "show", cd.on_domain(cr.cmd_show), "one request in full: source, hash, schemas, diff"
    ).add_argument("request_id")
    p = _leaf(sub, "approve", cd.on_domain(cr.cmd_approve), "approve a request's exact source")
    p.add_argument("request_id")
    p.add_argument(
        "--release",
        choices=("auto", "manual"),
        default="manual",
        help="release results automatically or hold them for you (default manual)",
    )
    p.add_argument("--slot", type=float, default=None, metavar="SECONDS",
                   help="a DP request's release slot: each run's result appears this long after "
                        "the run was created (default: the scientist's proposal, else policy dp_slot_s)")
    p = _leaf(sub, "deny", cd.on_domain(cr.cmd_deny), "deny a request with a reason")
    p.add_argument("request_id")
    p.add_argument("--reason", required=True, help="what the scientist should change")


def _add_results(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = _leaf(sub, "results", cd.on_domain(cr.cmd_results), "results held for your release")
    shows = p.add_subparsers(dest="results_command", metavar="COMMAND")
    _leaf(shows, "show", cd.on_domain(cr.cmd_result_show),
          "one result as it would be released: values or summary, metrics, params, the change since "
          "the previous release").add_argument("run_id")
    _leaf(sub, "release", cd.on_domain(cr.cmd_release), "release a held result").add_argument("run_id")
    _leaf(sub, "withhold", cd.on_domain(cr.cmd_withhold), "withhold a held result for good").add_argument(
        "run_id"
    )
    p = _leaf(sub, "runs", cd.on_domain(cr.cmd_runs), "list runs with their status and reason")
    p.add_argument("--request", metavar="ID", help="only runs of this request")
    p.add_argument("--log", metavar="RUN_ID", help="print the owner-only log of one run")
    p = _leaf(sub, "audit", cd.on_domain(cd.cmd_audit), "the audit log, or --verify its chain")
    p.add_argument("--limit", type=_int_in(1, 1_000_000), default=20, help="entries (default 20)")
    p.add_argument("--verify", action="store_true", help="check the chain; exit 1 if broken")
    p = _leaf(sub, "budget", cd.on_domain(cd.cmd_budget),
              "privacy budgets per scientist and dataset (epsilon spent, reserved, left)")
    p.add_argument("--set", nargs=2, metavar=("SCIENTIST", "EPSILON"), help="set a scientist's budget")
    p.add_argument("--dataset", default="*", help="with --set: one dataset (default: every dataset)")
    p = _leaf(sub, "peers", cd.on_domain(cd.cmd_peers),
              "this domain's identity and the roster of peers for secure aggregation")
    p.add_argument("--trust", nargs=2, metavar=("LABEL", "PUBLIC_KEY"),
                   help="put a peer's identity (its /api/v1/info 'identity') on the roster")
    p.add_argument("--forget", metavar="LABEL", help="take a peer off the roster")


def _add_domain(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dom = _group(sub, "domain", "run and administer a hospital's domain")
    p = _leaf(dom, "init", cs.cmd_init, "create a domain home")
    p.add_argument("--name", required=True, help='the hospital\'s name, e.g. "St Mary"')
    p.add_argument("--store-url", help="SQLAlchemy URL of the store (default: SQLite in the home)")
    p.add_argument("--dask-address", metavar="ADDR",
                   help="run jobs on this Dask scheduler's workers (each in the same sandbox; "
                        "they must see the domain home at the same path)")
    _add_serve(dom)
    _add_users(dom)
    _add_datasets(dom)
    _add_policy(dom)
    _add_templates(dom)
    _add_review(dom)
    _add_results(dom)


def _demo(args: argparse.Namespace) -> int:
    try:
        demo = importlib.import_module("fednb._demo")
    except ModuleNotFoundError as exc:
        if exc.name != "fednb._demo":
            raise
        print("error: the demo is not part of this installation (fednb._demo is missing)", file=sys.stderr)
        return 2
    rc = demo.main(args)
    return rc if isinstance(rc, int) else 0


def _dashboard(args: argparse.Namespace) -> int:
    try:
        dashboard = importlib.import_module("fednb.ui.dashboard")
    except ModuleNotFoundError as exc:
        print(f"error: the dashboard needs Panel ({exc.name} is missing): pip install 'fednb[ui]'",
              file=sys.stderr)
        return 2
    from fednb.client import is_loopback

    if not is_loopback(args.address):
        print(f"warning: serving on {args.address}: anyone who reaches it sees the login page, and tokens "
              "travel in clear unless a TLS proxy sits in front", file=sys.stderr)
    where = f"http://{args.address}:{args.port}"
    # $FEDNB_DOMAIN is a default, not a choice: --relay replaces it
    domain = args.domain or (None if args.relay else os.environ.get("FEDNB_DOMAIN"))
    if domain or args.relay:
        print(f"owner console: {where}/console (log in with the owner's token)", flush=True)
    if args.history:
        print(f"federation view: {where}/federation", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        dashboard.serve(domain, address=args.address, port=args.port, history=args.history,
                        insecure=args.insecure, show=args.show, relay=args.relay,
                        relay_name=args.relay_name, identity=args.identity)
    return 0


def _add_apps(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="local hospitals and JupyterLab on the tutorials")
    p.set_defaults(func=_demo)
    p.add_argument("--hospitals", type=_int_in(1, 5), default=3, help="domains to start (default 3)")
    p.add_argument("--headless", action="store_true",
                   help="play both roles end to end (federations without DP and with DP-SGD), print, exit")
    p.add_argument("--no-lab", action="store_true", help="serve the domains only, without JupyterLab")
    p.add_argument("--home", default=".fednb-demo", help="where the demo domains live")
    p.add_argument(
        "--port-base", type=_int_in(0, 65000), default=0, help="first port (default 0: random free ports)"
    )
    p = sub.add_parser("dashboard", help="the Panel console (login required) and federation view")
    p.set_defaults(func=_dashboard)
    p.add_argument("--domain", metavar="URL",
                   help="the domain the owner console manages (default: $FEDNB_DOMAIN)")
    p.add_argument("--relay", metavar="URL", help="a relay the console's domain sits behind (no --domain)")
    p.add_argument("--relay-name", metavar="NAME", help="the domain's name on the relay")
    p.add_argument("--identity", metavar="HEX",
                   help="the domain's Ed25519 key to pin (`fednb domain peers`; default: the key seen first)")
    p.add_argument("--history", metavar="DIR", help="a saved History (History.save) for /federation")
    p.add_argument("--address", default="127.0.0.1", help="address to bind (default loopback only)")
    p.add_argument("--port", type=_int_in(1, 65535), default=5006, help="port (default 5006)")
    p.add_argument("--insecure", action="store_true",
                   help="allow plain HTTP to a domain that is not on loopback (tokens travel in clear)")
    p.add_argument("--show", action="store_true", help="open a browser")


def build_parser() -> argparse.ArgumentParser:
    """The ``fednb`` argument parser."""
    from fednb.protocol import FEDNB_VERSION

    parser = argparse.ArgumentParser(
        prog="fednb", description="fednb: federated data science for hospitals; code travels, data stays."
    )
    parser.add_argument("--version", action="version", version=f"fednb {FEDNB_VERSION}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_domain(sub)
    _add_apps(sub)
    from fednb.relay import add_relay_parser

    add_relay_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for user errors)."""
    args = build_parser().parse_args(argv)
    func: Handler = args.func
    try:
        return func(args)
    except FednbError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
