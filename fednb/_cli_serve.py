"""``fednb domain init`` and ``fednb domain serve``: create a domain home, and run the
domain process in the foreground (TLS or loopback checks first, then the banner).

The parsers live in :mod:`fednb.cli`.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sys
from pathlib import Path
from typing import Any

from fednb._cli_domain import home_of, open_domain
from fednb.errors import Conflict, InsecureSetting, InvalidInput

__all__ = ["announce_relay", "cmd_init", "cmd_serve"]


def cmd_init(args: argparse.Namespace) -> int:
    """``fednb domain init``: create a domain home."""
    from fednb.domain import Domain

    home = home_of(args)
    try:
        dom = Domain.create(home, name=args.name, store_url=args.store_url, dask_address=args.dask_address)
    except Conflict:
        raise Conflict(f"{home} already holds a domain: use it as it is, or pick another --home") from None
    dom.close()
    quoted = shlex.quote(str(dom.home))
    print(
        f"created domain {dom.name!r} in {dom.home}\n\nnext steps:\n"
        f"  export FEDNB_HOME={quoted}\n"
        "  fednb domain user add olivia --role owner   # you, for the notebook side\n"
        "  fednb domain user add alice                 # a scientist; the token shows once\n"
        "  fednb domain dataset add NAME FILE --bounds VAR=LO:HI ...\n"
        "  fednb domain serve"
    )
    return 0


def _check_transport(args: argparse.Namespace) -> bool:
    """Refuse unsafe listening settings before anything binds; True when tokens would
    travel in clear over a network (allowed with ``--insecure``)."""
    from fednb.client import is_loopback

    if (args.certfile is None) != (args.keyfile is None):
        raise InvalidInput("TLS needs both --certfile and --keyfile")
    for f in (args.certfile, args.keyfile):
        if f is not None and not Path(f).is_file():
            raise InvalidInput(f"no such file: {f}")
    tls = args.certfile is not None
    if not tls and not is_loopback(args.host) and not args.insecure:
        raise InsecureSetting(
            f"refusing to serve plain HTTP on {args.host}: tokens would travel in clear. Give "
            "--certfile and --keyfile, listen on 127.0.0.1 behind a TLS proxy, or pass "
            "--insecure if you accept that anyone on the network can read them"
        )
    return not tls and not is_loopback(args.host)


def _announce(name: str, url: str, mode: str | None, in_clear: bool) -> None:
    print(f"domain {name!r} serving at {url}  (Ctrl-C stops)", flush=True)
    print(f"sandbox: {mode or 'none'}", flush=True)
    if in_clear:
        print("WARNING: plain HTTP on a non-loopback address: tokens travel in clear", file=sys.stderr)
    if mode == "insecure-demo":
        print(
            "\n" + "!" * 78 + "\nWARNING: --insecure-demo: submitted code runs WITHOUT any "
            "sandbox, as this user,\nwith this user's files and network. Use it only for "
            "demos on synthetic data,\nnever with real patient data.\n" + "!" * 78 + "\n",
            file=sys.stderr,
            flush=True,
        )
    elif mode is None:
        print(
            "private runs will be refused: bubblewrap is not available. Install it "
            "(e.g. `apt install bubblewrap`) and restart, or restart with --insecure-demo "
            "for a demo on synthetic data.",
            file=sys.stderr,
            flush=True,
        )


def cmd_serve(args: argparse.Namespace) -> int:
    """``fednb domain serve``: serve in the foreground until Ctrl-C."""

    in_clear = False if args.relay else _check_transport(args)
    dom = open_domain(args)
    try:
        server = dom.serve(
            args.host, args.port, insecure_demo=args.insecure_demo, certfile=args.certfile,
            keyfile=args.keyfile, background=False, relay=args.relay, relay_name=args.relay_name,
        )
        mode = dom.sandbox_mode
    except OSError as exc:
        dom.close()
        raise InvalidInput(
            f"cannot listen on {args.host}:{args.port} ({exc.strerror or exc}); pick another --port or --host"
        ) from None
    except BaseException:
        dom.close()
        raise
    _announce(dom.name, server.url, mode, in_clear)
    if args.relay:
        announce_relay(server)
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn shuts down, then re-raises SIGINT
        server.run_forever()
    print("stopped", flush=True)
    return 0


def announce_relay(server: Any) -> None:
    """Print what scientists need to reach a domain served through a relay."""
    print(f"outbound only: dialling relay {server.relay} as {server.relay_name!r} "
          "(through $HTTPS_PROXY where set); nothing listens beyond loopback", flush=True)
    print(f"identity (scientists pin it): {server.identity}", flush=True)
    print(f"  fednb.connect(relay={server.relay!r}, domain={server.relay_name!r}, "
          f"identity={server.identity!r}, token=...)", flush=True)
