"""The addresses a server will listen on, tried before it starts: a port already taken, an address that is not this
machine's, a privileged port or one port given to two listeners is one line naming the flag (exit 2), found before
the gateway opens connections or the engine loads its model, never a traceback from inside the event loop.

Each address is bound and listened on as asyncio's `create_server` does it (SO_REUSEADDR, IPv6 sockets IPv6-only),
all of them at once (so two flags that overlap collide here as they would in the server), then let go. A server that
loses the port in the moment between is reported the same way by `bind_failure`.
"""

from __future__ import annotations

import errno
import re
import socket
from contextlib import ExitStack

from byoc.errors import ByocError, ByocFailure
from runtime.serve.config import Address

_WILDCARDS = {"0.0.0.0", "::", ""}


def _overlap(a: Address, b: Address) -> bool:
    return a.port == b.port != 0 and (a.host == b.host or a.host in _WILDCARDS or b.host in _WILDCARDS)


def _problem(address: Address, flag: str, error: OSError, earlier: list[tuple[Address, str]]) -> ByocError:
    clash = next((other for other, _ in earlier if other.port == address.port != 0), None)
    if error.errno == errno.EADDRINUSE and clash is not None:
        flags = next(f for a, f in earlier if a == clash)
        return ByocError(flag, f"{address} takes the port of {flags} ({clash})", "give each listener its own port")
    if error.errno == errno.EADDRINUSE:
        return ByocError(
            flag,
            f"{address} is already in use by another process",
            f"pick another port, or stop the process on it: `ss -ltnp 'sport = :{address.port}'` shows which",
        )
    if error.errno == errno.EADDRNOTAVAIL:
        return ByocError(
            flag,
            f"{address.host} is not an address of this machine",
            "use 0.0.0.0 for every interface, 127.0.0.1 for this machine only, or one of its own addresses",
        )
    if error.errno == errno.EACCES:
        return ByocError(flag, f"port {address.port} needs privileges this user lacks", "use a port above 1023")
    return ByocError(flag, f"cannot listen on {address}: {error.strerror or error}", "check the address")


def check_listen(addresses: list[tuple[Address, str]]) -> None:
    """Raise ByocError naming the flag when one of (address, flag) cannot be listened on beside the others."""
    held: list[tuple[Address, str]] = []
    with ExitStack() as sockets:
        for address, flag in addresses:
            clash = next(((a, f) for a, f in held if _overlap(a, address)), None)
            if clash is not None:
                raise ByocError(
                    flag, f"{address} takes the port of {clash[1]} ({clash[0]})", "give each listener its own port"
                )
            try:
                infos = socket.getaddrinfo(
                    address.host or None, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
                )
            except (socket.gaierror, UnicodeError) as exc:
                reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
                raise ByocError(
                    flag, f"{address.host} does not resolve to an address: {reason}", "give an IP address, e.g. 0.0.0.0"
                ) from None
            for family, kind, proto, _, sockaddr in infos:
                sock = sockets.enter_context(socket.socket(family, kind, proto))
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                try:
                    sock.bind(sockaddr)
                    sock.listen(1)
                except OSError as exc:
                    raise _problem(address, flag, exc, held) from None
            held.append((address, flag))


BIND_ERRORS = {errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES}


def bind_failure(error: OSError, addresses: list[tuple[Address, str]]) -> ByocFailure | None:
    """A server's own bind error (an address taken after `check_listen`) as one line (exit 1), or None for any other
    OSError. asyncio names the address in its message: `error while attempting to bind on address (HOST, PORT)`."""
    if error.errno not in BIND_ERRORS:
        return None
    text = str(error)
    flag = next((f for a, f in addresses if re.search(rf"'{re.escape(a.host)}', {a.port}\b", text)), addresses[0][1])
    return ByocFailure(flag, f"cannot listen: {error.strerror or text}", "pick a free port and start again")
