"""The one URL policy: which user-supplied URLs Moodreel may fetch (video URLs, callback URLs,
webhook endpoints), for every check that asks.

:class:`UrlPolicy` (built from the settings with :meth:`UrlPolicy.from_settings`) is what the
gateway asks when a video, callback or webhook endpoint URL is submitted, and what the worker asks
again at connect time for each media download hop and each webhook delivery
(``shared/net/fetch.py``), where the addresses it returns are the ones connected to.

Rules: http/https only, bounded length, no userinfo, no odd numeric host spellings that
``inet_aton`` would accept (``2130706433``, ``0x7f.1``, ``127.1``, ``0177.0.0.1``), and every
address the host resolves to must be a public unicast address. IPv6 forms that embed an IPv4
address (IPv4-mapped, IPv4-compatible, 6to4, Teredo, NAT64) are judged by the embedded address.
Two development switches let loopback and private ranges through: ``allow_private_urls`` for every
URL, ``private_url_origins`` for listed ``host:port`` origins only. Link-local (cloud metadata at
169.254.169.254), multicast, reserved and unspecified addresses are refused even then. In
production the switches count only beside ``allow_private_urls_in_production`` (and the services
refuse to start without it: :func:`check_private_url_switches`).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import idna

from shared.errors import CodedError
from shared.settings import Settings

MAX_URL_LENGTH = 2048
ALLOWED_SCHEMES = frozenset({"http", "https"})
DEFAULT_PORTS = {"http": 80, "https": 443}

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# Carrier-grade NAT space is not "private" to Python before 3.12 but is not reachable publicly.
_SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")
_DECIMAL_OCTET = re.compile(r"^(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])$")
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")
_HOSTNAME_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


class UrlNotAllowed(CodedError, ValueError):
    """The URL breaks a safety rule; ``reason`` says which, in words safe to show the client."""

    code = "url_not_allowed"

    def __init__(self, reason: str):
        super().__init__(None, reason)
        self.reason = reason


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    # IPv4-compatible (::a.b.c.d, deprecated) — still routed to IPv4 by some stacks.
    if int(address) >> 32 == 0 and int(address) > 1:
        return ipaddress.IPv4Address(int(address))
    return None


def is_address_allowed(ip: str | IPAddress, allow_private: bool = False) -> bool:
    """Whether a connection to ``ip`` is allowed (the worker calls this on the connected address)."""
    try:
        address = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id:
            return False
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return is_address_allowed(embedded, allow_private)
    if address.is_link_local or address.is_multicast or address.is_unspecified or address.is_reserved:
        return False
    if address.is_global and address not in _SHARED_ADDRESS_SPACE:
        return True
    if not allow_private:
        return False
    is_shared = isinstance(address, ipaddress.IPv4Address) and address in _SHARED_ADDRESS_SPACE
    return address.is_loopback or address.is_private or is_shared


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (A and AAAA), as strings."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]).split("%", 1)[0] for info in infos})


def _normalise_host(raw_host: str) -> tuple[str, IPAddress | None]:
    """The host in ASCII lower case, and its address when it is an IP literal."""
    if raw_host.startswith("[") and raw_host.endswith("]"):
        try:
            return raw_host, ipaddress.IPv6Address(raw_host[1:-1])
        except ValueError as exc:
            raise UrlNotAllowed("the IPv6 address in the URL is malformed") from exc
    host = raw_host.rstrip(".").lower()
    if not host:
        raise UrlNotAllowed("the URL has no host")
    labels = host.split(".")
    if _NUMERIC_LABEL.match(labels[-1]):
        # A numeric last label means an IPv4 literal: only the canonical dotted quad is accepted,
        # because libc also reads 2130706433, 0x7f.1, 127.1 and 0177.0.0.1 as 127.0.0.1.
        if len(labels) != 4 or not all(_DECIMAL_OCTET.match(label) for label in labels):
            raise UrlNotAllowed("the host is an IPv4 address in a non-canonical numeric form")
        return host, ipaddress.IPv4Address(host)
    try:
        ascii_host = idna.encode(host, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise UrlNotAllowed("the host name is not a valid domain name") from exc
    if len(ascii_host) > 253 or not all(_HOSTNAME_LABEL.match(label) for label in ascii_host.split(".")):
        raise UrlNotAllowed("the host name is not a valid domain name")
    return ascii_host, None


def _parse(url: str) -> tuple[str, str, int, IPAddress | None]:
    """Scheme, normalised host, port (the scheme's default when absent) and the host's address
    when it is an IP literal; raises :class:`UrlNotAllowed` for any static rule broken."""
    if not isinstance(url, str) or not url:
        raise UrlNotAllowed("the URL is empty")
    if len(url) > MAX_URL_LENGTH:
        raise UrlNotAllowed(f"the URL is longer than {MAX_URL_LENGTH} characters")
    if any(ord(ch) <= 0x20 or ord(ch) == 0x7F or ch == "\\" for ch in url):
        raise UrlNotAllowed("the URL contains whitespace, control characters or backslashes")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UrlNotAllowed("the URL is malformed") from exc
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        raise UrlNotAllowed("only http and https URLs are allowed")
    if "@" in parts.netloc:
        raise UrlNotAllowed("URLs with user information (user@host) are not allowed")
    raw_host = parts.netloc.rsplit(":", 1)[0] if port is not None else parts.netloc
    if raw_host.endswith(":"):
        raw_host = raw_host[:-1]
    host, literal = _normalise_host(raw_host)
    return scheme, host, port or DEFAULT_PORTS[scheme], literal


def _origin(host: str, literal: IPAddress | None, port: int) -> str:
    """``host:port`` in one spelling: ASCII lower-case names, compressed IPv6 in brackets."""
    if isinstance(literal, ipaddress.IPv6Address):
        return f"[{literal.compressed}]:{port}"
    return f"{host}:{port}"


def _configured_origin(entry: str) -> str:
    """A ``private_url_origins`` entry (``host:port``; IPv6 as ``[::1]:8000``) in the spelling of
    :func:`_origin`; a malformed one is a configuration error."""
    raw_host, _, raw_port = entry.strip().rpartition(":")
    if not raw_host or not raw_port.isdigit() or not 0 < int(raw_port) < 65536:
        raise ValueError(f"private_url_origins entry {entry!r} is not host:port")
    if ":" in raw_host and not raw_host.startswith("["):
        raw_host = f"[{raw_host}]"
    try:
        host, literal = _normalise_host(raw_host)
    except UrlNotAllowed as exc:
        raise ValueError(f"private_url_origins entry {entry!r}: {exc.reason}") from exc
    return _origin(host, literal, int(raw_port))


@dataclass(frozen=True)
class CheckedUrl:
    """A URL that passed the policy, with the addresses that were checked: the literal itself, or
    every answer of the one DNS lookup. Connect to one of these, never to a fresh lookup's."""

    scheme: str
    host: str
    port: int
    addresses: tuple[str, ...]

    @property
    def connect_address(self) -> str:
        # Prefer IPv4: many hosts publish AAAA records without a working IPv6 route.
        ipv4 = [a for a in self.addresses if isinstance(ipaddress.ip_address(a), ipaddress.IPv4Address)]
        return (ipv4 or list(self.addresses))[0]


@dataclass(frozen=True)
class UrlPolicy:
    """Which URLs may be fetched. ``allow_private`` lets loopback and private addresses through
    for every URL, ``private_origins`` (``host:port``, as :func:`_origin` spells them) for those
    origins only; nothing lets link-local, multicast, reserved or unspecified addresses through."""

    allow_private: bool = False
    private_origins: frozenset[str] = frozenset()

    @classmethod
    def from_settings(cls, settings: Settings) -> UrlPolicy:
        """The policy the settings ask for. In production the private-address switches count only
        beside ``allow_private_urls_in_production``."""
        if settings.environment == "production" and not settings.allow_private_urls_in_production:
            return cls()
        return cls(
            allow_private=settings.allow_private_urls,
            private_origins=frozenset(_configured_origin(entry) for entry in settings.private_url_origins),
        )

    def allows_private(self, origin: str) -> bool:
        return self.allow_private or origin in self.private_origins

    def check(self, url: str, *, resolver: Resolver | None = None) -> CheckedUrl:
        """Raise :class:`UrlNotAllowed` unless ``url`` may be fetched; return it with the checked
        addresses.

        ``resolver`` (host, port) → addresses defaults to the system resolver; a host that does
        not resolve is refused, as is a host with any disallowed address among its answers.
        """
        scheme, host, port, literal = _parse(url)
        allow_private = self.allows_private(_origin(host, literal, port))
        if literal is not None:
            if not is_address_allowed(literal, allow_private):
                raise UrlNotAllowed("the URL points to a private or reserved address")
            return CheckedUrl(scheme, host, port, (str(literal),))
        resolve = resolver or system_resolver
        try:
            addresses = resolve(host, port)
        except (OSError, UnicodeError) as exc:
            raise UrlNotAllowed("the host name does not resolve") from exc
        if not addresses:
            raise UrlNotAllowed("the host name does not resolve")
        if not all(is_address_allowed(address, allow_private) for address in addresses):
            raise UrlNotAllowed("the host name resolves to a private or reserved address")
        return CheckedUrl(scheme, host, port, tuple(addresses))


def check_private_url_switches(settings: Settings) -> None:
    """Refuse to start a service whose URL settings are malformed, or a production service that
    would fetch private addresses: the switches are for development, unless
    ``allow_private_urls_in_production`` says it is meant (a closed network whose media servers
    all sit on private addresses)."""
    UrlPolicy.from_settings(settings)
    if settings.environment != "production" or settings.allow_private_urls_in_production:
        return
    if settings.allow_private_urls or settings.private_url_origins:
        raise RuntimeError(
            "MOODREEL_ALLOW_PRIVATE_URLS and MOODREEL_PRIVATE_URL_ORIGINS are for development: in "
            "production they expose internal services to every user's URLs. Set "
            "MOODREEL_ALLOW_PRIVATE_URLS_IN_PRODUCTION=true as well if that is really intended."
        )
