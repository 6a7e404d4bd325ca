"""``fednb relay serve``: the relay's command line (``fednb.cli`` mounts it)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
from pathlib import Path

from fednb.errors import InvalidInput
from fednb.relay._limits import Limits
from fednb.relay._relay import Relay
from fednb.relay._server import RelayServer

__all__ = ["add_relay_parser", "cmd_relay_serve"]


def _allow(path: str | None) -> dict[str, str] | None:
    if path is None:
        return None
    try:
        allow = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"--allow {path}: not a readable JSON file ({exc})") from None
    if not isinstance(allow, dict) or not all(isinstance(v, str) for v in allow.values()):
        raise InvalidInput(f"--allow {path}: expected {{\"domain-name\": \"<identity hex>\", ...}}")
    return {str(k): v for k, v in allow.items()}


def _token(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise InvalidInput(f"--metrics-token-file {path}: not readable ({exc})") from None
    if len(token) < 16:
        raise InvalidInput(f"--metrics-token-file {path}: the token needs at least 16 characters")
    return token


def cmd_relay_serve(args: argparse.Namespace) -> int:
    """Serve a relay in the foreground until Ctrl-C or SIGTERM."""
    if (args.certfile is None) != (args.keyfile is None):
        raise InvalidInput("TLS needs both --certfile and --keyfile")
    limits = Limits(domain_connections=args.max_domain_connections,
                    client_connections=args.max_client_connections,
                    domain_bytes_per_s=args.domain_rate, client_bytes_per_s=args.client_rate)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    relay = Relay(limits=limits, allow=_allow(args.allow), metrics_token=_token(args.metrics_token_file))
    srv = RelayServer.start(args.host, args.port, relay=relay, certfile=args.certfile,
                            keyfile=args.keyfile, background=False)
    with contextlib.suppress(KeyboardInterrupt):
        srv.run_forever()
    print("stopped", flush=True)
    return 0


def add_relay_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``relay serve`` to the ``fednb`` command line."""
    relay = sub.add_parser("relay", help="run a relay for domains behind firewalls",
                           description="run a relay for domains behind firewalls")
    cmds = relay.add_subparsers(dest="relay_command", required=True, metavar="COMMAND")
    p = cmds.add_parser("serve", help="serve a relay in the foreground (Ctrl-C stops)",
                        description="Route clients to domains that dial out to this relay. It never "
                                    "sees inside their end-to-end TLS; /health and /metrics answer "
                                    "plain HTTP GETs.")
    p.set_defaults(func=cmd_relay_serve)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8443, help="port (default 8443; 0: any)")
    p.add_argument("--certfile", help="the relay's own TLS certificate (PEM); needs --keyfile")
    p.add_argument("--keyfile", help="the relay's TLS private key (PEM); needs --certfile")
    p.add_argument("--allow", metavar="FILE",
                   help='JSON {"domain-name": "<identity hex>"}: only these domains, with these '
                        "keys, may register (default: any domain may take a free name)")
    p.add_argument("--metrics-token-file", metavar="FILE",
                   help="a file holding the bearer token /metrics asks for (default: /metrics "
                        "answers clients on this machine only)")
    p.add_argument("--max-domain-connections", type=int, default=256, metavar="N",
                   help="open connections per domain (default 256)")
    p.add_argument("--max-client-connections", type=int, default=64, metavar="N",
                   help="open connections per client address (default 64)")
    p.add_argument("--domain-rate", type=float, metavar="BYTES_PER_S",
                   help="bytes per second per domain (default: unlimited)")
    p.add_argument("--client-rate", type=float, metavar="BYTES_PER_S",
                   help="bytes per second per client address (default: unlimited)")
