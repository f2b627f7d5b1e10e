"""``sandboxq dashboard``: serve the dashboard with uvicorn, refusing to
run without authentication anywhere but on a loopback address."""

from __future__ import annotations

import argparse
import getpass
import ipaddress
import os
import sys
from typing import TextIO

from sandboxq.dashboard.app import TOKEN_ENV, app
from sandboxq.dashboard.auth import check_token
from sandboxq.dashboard.users import hash_token

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


def check_auth(host: str, credentials: str | None, no_auth: bool) -> str | None:
    """Why serving like this is refused, or None if it is fine.
    ``credentials``: the token or the users file, if any."""
    if credentials:
        return None
    if not no_auth:
        return (
            f"the dashboard needs a token: pass --token or set ${TOKEN_ENV}, or name users "
            "with --users (or --no-auth, on a loopback address only)"
        )
    if not is_loopback(host):
        return (
            f"refusing to serve without authentication on {host}, which is not a "
            f"loopback address: pass --token or set ${TOKEN_ENV}, or --users"
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
    if args.dashboard_command == "hash-token":
        return print_token_hash(sys.stdin)
    if args.no_auth and (args.token or args.users):
        return _usage("--no-auth contradicts --token and --users: pick one")
    if args.token and args.users:
        return _usage("pass --token (one shared token) or --users (named users), not both")
    shared = None if args.no_auth or args.users else args.token or os.environ.get(TOKEN_ENV)
    problem = check_auth(args.host, shared or args.users, args.no_auth)
    if problem is not None:
        return _usage(problem)
    try:
        import uvicorn
    except ImportError:
        return _usage("the dashboard server needs uvicorn: pip install 'sandboxq[dashboard]'")
    try:
        hosts = allowed_hosts(args.host, args.allowed_host)
        application = app(
            args.url,
            token=shared or "",
            users=args.users,
            read_only=args.read_only,
            allowed_hosts=hosts,
            session_ttl=args.session_ttl,
            trust_proxy_headers=args.trust_proxy_headers,
        )
    except ValueError as exc:
        return _usage(str(exc))
    users = application.auth.users
    auth = "token auth" if shared else f"{len(users)} named user(s)" if users else "no auth"
    print(
        f"sandboxq dashboard on http://{args.host}:{args.port}/ "
        f"({'read-only, ' if args.read_only else ''}{auth})",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(application, host=args.host, port=args.port, log_level="warning")
    return 0


def print_token_hash(stdin: TextIO) -> int:
    """``sandboxq dashboard hash-token``: read a token (prompted for, without
    echo, on a terminal; else one line of standard input) and print its hash,
    the part of a users file's ``name:hash`` line after the colon."""
    if stdin.isatty():
        token = getpass.getpass("Token: ")
        if getpass.getpass("The same again: ") != token:
            return _usage("the two tokens differ")
    else:
        lines = stdin.read().splitlines()
        if len(lines) != 1:
            return _usage("expected the token alone on one line of standard input")
        token = lines[0]
    try:
        check_token(token)
    except ValueError as exc:
        return _usage(str(exc))
    print(hash_token(token))
    return 0


def _usage(problem: str) -> int:
    print(f"sandboxq: {problem}", file=sys.stderr)
    return EXIT_USAGE
