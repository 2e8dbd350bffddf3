"""Whether `serve` can listen on a host and port, checked before the model loads, with a one-line reason.

uvicorn finds out only after start-up and logs the bare OSError; every failure looked like a busy port.
"""
from __future__ import annotations

import errno
import socket

from ..errors import CaptionerError

HOST_HINT = "try --host 127.0.0.1 (this machine only) or 0.0.0.0 (every network)"


def port_in_use(host: str, port: int) -> CaptionerError:
    return CaptionerError(f"could not listen on {host}:{port}; is another server using that port? Try --port")


def check_can_listen(host: str, port: int) -> None:
    """Resolve `host` and bind each of its addresses to `port` as uvicorn will, then let go; CaptionerError says why not."""
    try:
        addresses = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise CaptionerError(f"--host {host} is not an IP address or a host name this machine can resolve ({error.strerror}); {HOST_HINT}") from None
    except UnicodeError:  # a name IDNA cannot encode, e.g. a label over 63 characters
        raise CaptionerError(f"--host {host} is not a valid host name; {HOST_HINT}") from None
    for family, kind, protocol, _, address in addresses:
        try:
            with socket.socket(family, kind, protocol) as trial:
                trial.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's create_server does
                if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                    trial.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                trial.bind(address)
        except OSError as error:
            raise _why_not(host, port, error) from None


def _why_not(host: str, port: int, error: OSError) -> CaptionerError:
    if error.errno == errno.EADDRINUSE:
        return port_in_use(host, port)
    if error.errno == errno.EADDRNOTAVAIL:
        return CaptionerError(f"--host {host} is not an address of this machine ({error.strerror}); {HOST_HINT}")
    if error.errno in (errno.EACCES, errno.EPERM):
        return CaptionerError(f"not allowed to listen on {host}:{port} ({error.strerror}); ports below 1024 need administrator rights: try a --port above 1023")
    return CaptionerError(f"could not listen on {host}:{port}: {error.strerror or error}")
