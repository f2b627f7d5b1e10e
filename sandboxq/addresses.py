"""Redis addresses: one server, a Redis Cluster, or a master found through Sentinel.

Every place that takes a Redis URL (``Queue(url=)``, ``$SANDBOXQ_REDIS_URL``,
the worker's and the admin CLI's ``--url``, the dashboard, the metrics probe)
reads it here, so all of them accept the same three kinds:

- ``redis://``, ``rediss://`` and ``unix://``: one server, as redis-py reads them;
- ``redis+cluster://[user:password@]host:port[,host:port...]`` (``rediss+cluster://``
  for TLS): seed nodes of a Redis Cluster, which tell the rest;
- ``redis+sentinel://[user:password@]host:port[,host:port...]/SERVICE[/DB]``
  (``rediss+sentinel://``): the master Sentinel knows as SERVICE, found again
  after every failover.

The user name and password are the data nodes' (the cluster's nodes, the
Sentinel-managed master). Sentinels that want a password of their own take
``?sentinel_password=...`` (and ``sentinel_username``). A ``rediss+`` URL
takes redis-py's TLS settings as options too (``ssl_cert_reqs``,
``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``, ``ssl_check_hostname``).
A bad URL raises a ValueError whose one line names what is wrong, with any
password hidden.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qs, unquote

#: Ports used when a cluster seed or a sentinel gives none.
CLUSTER_DEFAULT_PORT = 6379
SENTINEL_DEFAULT_PORT = 26379

Kind = Literal["server", "cluster", "sentinel"]

_SCHEMES: dict[str, tuple[Kind, bool]] = {
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
}
_SERVER_SCHEMES = ("redis", "rediss", "unix")
_SENTINEL_OPTIONS = ("sentinel_username", "sentinel_password")
#: TLS settings a rediss+ URL may carry, named as redis-py names them.
_TLS_OPTIONS = (
    "ssl_cert_reqs",
    "ssl_ca_certs",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_check_hostname",
)
_URL = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<rest>.*)$", re.DOTALL)


@dataclass(frozen=True)
class Address:
    """A parsed ``redis+cluster://`` or ``redis+sentinel://`` URL (a plain
    server's URL is left to redis-py: ``kind == "server"``, no nodes)."""

    kind: Kind
    url: str = field(repr=False)
    #: Cluster seed nodes, or the sentinels.
    nodes: tuple[tuple[str, int], ...] = ()
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    #: Sentinel only: the master's service name, and the database to select.
    service: str | None = None
    db: int = 0
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    #: rediss+: redis-py's SSL settings (ssl_cert_reqs, ssl_ca_certs...).
    tls_options: dict[str, str | bool] = field(default_factory=dict)


def redact(url: str) -> str:
    """``url`` with its password (and any ``sentinel_password``) replaced by
    ``***``, for messages and logs."""
    url = re.sub(r"(://[^/@]*?:)[^/@]*@", r"\1***@", url, count=1)
    return re.sub(r"(sentinel_password=)[^&]*", r"\1***", url)


def parse(url: str) -> Address:
    """What ``url`` points at. Raises ValueError naming the problem."""
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"bad Redis URL {url!r}: it is empty")
    match = _URL.match(url.strip())
    if match is None:
        raise ValueError(
            f"bad Redis URL {redact(url)!r}: expected SCHEME://..., with SCHEME one of "
            f"{', '.join(_SERVER_SCHEMES + tuple(_SCHEMES))}"
        )
    scheme = match["scheme"].lower()
    if scheme in _SERVER_SCHEMES:
        return Address("server", url)
    if scheme not in _SCHEMES:
        raise ValueError(
            f"bad Redis URL {redact(url)!r}: unknown scheme {scheme!r} (use one of "
            f"{', '.join(_SERVER_SCHEMES + tuple(_SCHEMES))})"
        )
    kind, tls = _SCHEMES[scheme]
    try:
        return _parse_multi_node(url, kind, tls, match["rest"])
    except ValueError as exc:
        raise ValueError(f"bad Redis URL {redact(url)!r}: {exc}") from None


def _parse_multi_node(url: str, kind: Kind, tls: bool, rest: str) -> Address:
    rest, _, query = rest.partition("?")
    options = _query_options(query, kind, tls)
    tls_options: dict[str, str | bool] = {k: v for k, v in options.items() if k in _TLS_OPTIONS}
    if "ssl_check_hostname" in tls_options:
        tls_options["ssl_check_hostname"] = _flag(str(tls_options["ssl_check_hostname"]))
    netloc, _, path = rest.partition("/")
    username = password = None
    if "@" in netloc:
        credentials, _, netloc = netloc.rpartition("@")
        user, has_password, secret = credentials.partition(":")  # as redis-py reads them
        username = unquote(user) or None
        password = unquote(secret) if has_password else None
    default_port = CLUSTER_DEFAULT_PORT if kind == "cluster" else SENTINEL_DEFAULT_PORT
    nodes = tuple(_host_port(part, default_port) for part in netloc.split(","))
    parts = [unquote(p) for p in path.split("/")] if path else []
    if kind == "cluster":
        if parts not in ([], ["0"], [""]):
            raise ValueError(
                f"a cluster URL takes no path (got /{path}): Redis Cluster has only database 0"
            )
        return Address(kind, url, nodes, username, password, tls, tls_options=tls_options)
    if not parts or not parts[0]:
        raise ValueError("no service name: write redis+sentinel://HOST:PORT[,...]/SERVICE[/DB]")
    if len(parts) > 2:
        raise ValueError(f"too many path parts in /{path}: expected /SERVICE or /SERVICE/DB")
    db = _database(parts[1]) if len(parts) == 2 and parts[1] else 0
    return Address(
        kind,
        url,
        nodes,
        username,
        password,
        tls,
        service=parts[0],
        db=db,
        sentinel_username=options.get("sentinel_username"),
        sentinel_password=options.get("sentinel_password"),
        tls_options=tls_options,
    )


def _query_options(query: str, kind: Kind, tls: bool) -> dict[str, str]:
    if not query:
        return {}
    pairs = parse_qs(query, keep_blank_values=True)
    allowed = (_SENTINEL_OPTIONS if kind == "sentinel" else ()) + (_TLS_OPTIONS if tls else ())
    unknown = sorted(set(pairs) - set(allowed))
    if unknown:
        known = f" (known: {', '.join(allowed)})" if allowed else ""
        raise ValueError(f"unknown option {', '.join(unknown)}{known}")
    return {name: values[-1] for name, values in pairs.items()}


def _host_port(part: str, default_port: int) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[v6]:port``."""
    if not part:
        raise ValueError("a host is missing (empty entry in the host list)")
    if part.startswith("["):
        host, bracket, tail = part[1:].partition("]")
        if not bracket or (tail and not tail.startswith(":")):
            raise ValueError(f"bad host {part!r}: an IPv6 address is written [ADDRESS]:PORT")
        port_text = tail[1:] if tail else ""
    else:
        host, _, port_text = part.partition(":")
        if ":" in port_text:
            raise ValueError(f"bad host {part!r}: write an IPv6 address as [ADDRESS]:PORT")
    if not host:
        raise ValueError(f"bad host {part!r}: the host name is empty")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad port {port_text!r} in {part!r}: expected 1 to 65535")
    return host, int(port_text)


def _flag(text: str) -> bool:
    if text.lower() in ("true", "yes", "1"):
        return True
    if text.lower() in ("false", "no", "0"):
        return False
    raise ValueError(f"bad ssl_check_hostname {text!r}: expected true or false")


def _database(text: str) -> int:
    if not text.isdigit():
        raise ValueError(f"bad database {text!r}: expected a number")
    return int(text)
