"""``sandboxq dashboard``: serve the dashboard with uvicorn, refusing to
run without authentication anywhere but on a loopback address."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys

from sandboxq.dashboard.app import TOKEN_ENV, app

EXIT_USAGE = 2
#: Host names always allowed: a browser sends them only for a page it loaded
#: from this machine, never for another site's page (DNS rebinding).
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_ADDRESSES = ("", "0.0.0.0", "::", "[::]")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_auth(host: str, token: str | None, no_auth: bool) -> str | None:
    """Why serving like this is refused, or None if it is fine."""
    if token:
        return None
    if not no_auth:
        return (
            f"the dashboard needs a token: pass --token or set ${TOKEN_ENV} "
            "(or --no-auth, on a loopback address only)"
        )
    if not is_loopback(host):
        return (
            f"refusing to serve without authentication on {host}, which is not a "
            f"loopback address: pass --token or set ${TOKEN_ENV}"
        )
    return None


def allowed_hosts(host: str, given: list[str] | None) -> list[str]:
    """The Host names served: the loopback names, the bound address and
    ``given``; ValueError when bound to every address with none given."""
    if host.strip() in WILDCARD_ADDRESSES and not given:
        raise ValueError(
            f"bound to {host or 'every address'}, the dashboard cannot tell which Host names "
            "are its own: pass --allowed-host NAME for each name or address clients use "
            "(--allowed-host '*' accepts any, for a proxy that checks Host itself)"
        )
    return [*LOOPBACK_NAMES, host, *(given or ())]


def run(args: argparse.Namespace) -> int:
    token = None if args.no_auth else (args.token or os.environ.get(TOKEN_ENV) or None)
    problem = check_auth(args.host, token, args.no_auth)
    if problem is not None:
        print(f"sandboxq: {problem}", file=sys.stderr)
        return EXIT_USAGE
    try:
        import uvicorn
    except ImportError:
        print(
            "sandboxq: the dashboard server needs uvicorn: pip install 'sandboxq[dashboard]'",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        hosts = allowed_hosts(args.host, args.allowed_host)
        application = app(
            args.url,
            token=token or "",
            read_only=args.read_only,
            allowed_hosts=hosts,
            session_ttl=args.session_ttl,
            trust_proxy_headers=args.trust_proxy_headers,
        )
    except ValueError as exc:
        print(f"sandboxq: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(
        f"sandboxq dashboard on http://{args.host}:{args.port}/ "
        f"({'read-only, ' if args.read_only else ''}{'token auth' if token else 'no auth'})",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(application, host=args.host, port=args.port, log_level="warning")
    return 0
