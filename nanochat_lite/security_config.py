"""Access settings of `serve`: API keys, the Host names answered, CORS origins; and the
parsing of Host and Origin values they are compared with.

Standard library only, so `cli` can add the flags without importing the web stack
(start-up is a feature). The middleware that applies them is `server/security.py`,
which re-exports SecurityConfig and add_flags.
"""

from __future__ import annotations

import argparse
import hmac
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

from .config import ConfigError

ENV_API_KEY = "NANOCHAT_LITE_API_KEY"  # comma-separated [NAME:]KEY[:TOKENS][:admin] entries
DEFAULT_KEY_NAME = "default"
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
MAX_KEY_CHARS = 512
MAX_KEY_NAME_CHARS = 64

# A key must be an HTTP token (RFC 9110 tchar) so it can travel as a WebSocket
# subprotocol; secrets.token_urlsafe() output always is one.
KEY_RE = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
# Options after a named key: a daily token quota (alice:KEY:100000, alice:KEY:100k,
# alice:KEY:2M) and the admin role (ops:KEY:admin), in any order (ops:KEY:1M:admin).
_QUOTA_RE = re.compile(r"([0-9][0-9_]*)([kKmM]?)")
ADMIN_OPTION = "admin"
_TRAILING_COMMENT = re.compile(r"\s+#.*$")
MAX_DAILY_TOKEN_QUOTA = 10**12
# A Host header or an origin's authority: a name, an IPv4 address or a bracketed IPv6
# address, and an optional port. No userinfo, path or spaces ("evil@127.0.0.1" fails).
_AUTHORITY_RE = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9._-]+))(?::(?P<port>[0-9]{1,5}))?")
DEFAULT_PORTS = {"http": 80, "https": 443}


# -- configuration ----------------------------------------------------------------------
@dataclass(frozen=True)
class SecurityConfig:
    """Who may use the server. The default is a loopback-only server without keys.

    keys: key name -> key; empty means no key is needed.
    allowed_hosts: extra Host names to answer (e.g. a reverse proxy's public name);
        "*" answers any Host (turns the DNS-rebinding defence off).
    cors_origins: origins (scheme://host[:port]) whose pages may call the API.
    host: the address the server listens on (its name is answered too).
    daily_token_quotas: key name -> prompt + completion tokens per UTC day (429 past it).
    admins: key names with the admin role: they may read every owner's conversations
        (`?owner=`) and see every key's usage.
    """

    keys: Mapping[str, str] = field(default_factory=dict, repr=False)  # never in a log line
    allowed_hosts: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    daily_token_quotas: Mapping[str, int] = field(default_factory=dict)
    admins: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        for name, key in self.keys.items():
            _check_key(name, key, where="SecurityConfig")
        unknown = set(self.admins) - set(self.keys)
        if unknown:
            raise ConfigError(f"SecurityConfig: admins {sorted(unknown)} name no key")
        object.__setattr__(self, "keys", dict(self.keys))
        object.__setattr__(self, "daily_token_quotas", dict(self.daily_token_quotas))
        object.__setattr__(self, "admins", frozenset(self.admins))
        object.__setattr__(self, "allowed_hosts",
                           tuple(_normalize_host(h, flag="--allowed-host") for h in self.allowed_hosts))
        object.__setattr__(self, "cors_origins", tuple(_normalize_origin(o) for o in self.cors_origins))
        _normalize_host(self.host, flag="--host")

    @cached_property
    def _host_names(self) -> frozenset[str]:
        return LOOPBACK_NAMES | set(self.allowed_hosts) | {_normalize_host(self.host, flag="--host")}

    @classmethod
    def from_args(cls, args: argparse.Namespace | None, env: Mapping[str, str], *,
                  host: str | None = None) -> SecurityConfig:
        """Build from the flags of `add_flags` and the environment.

        Keys come from `--api-key` and `--api-keys-file` when either is given, else from
        NANOCHAT_LITE_API_KEY. `host` is the listening address (default: `--host`, then
        HOST, then 127.0.0.1). Raises ConfigError naming the flag, file line or variable.
        """

        def flag(name: str) -> list[str]:
            value = getattr(args, name, None) if args is not None else None
            return [] if value is None else [value] if isinstance(value, str) else list(value)

        specs = [(s, "--api-key") for s in flag("api_key")]
        for keys_file in flag("api_keys_file"):
            specs += _read_keys_file(Path(keys_file).expanduser())
        if not specs and env.get(ENV_API_KEY, "").strip():
            specs = [(s, ENV_API_KEY) for s in env[ENV_API_KEY].split(",") if s.strip()]
        listen = host or next(iter(flag("host")), None) or env.get("HOST") or "127.0.0.1"
        key_specs, quotas, admins = split_key_options(specs)
        return cls(keys=parse_keys(key_specs), allowed_hosts=tuple(flag("allowed_host")),
                   cors_origins=tuple(flag("cors_origin")), host=listen, daily_token_quotas=quotas,
                   admins=frozenset(admins))

    @property
    def loopback_only(self) -> bool:
        """True when the listening address is reachable from this machine only."""
        h = self.host.strip("[]").lower()
        if h == "localhost":
            return True
        try:
            return ipaddress.ip_address(h).is_loopback
        except ValueError:
            return False

    def exposure_warning(self) -> str | None:
        """A line for the start-up banner when the server is open to the network without a key."""
        if self.keys or self.loopback_only:
            return None
        return (f"listening on {self.host} without an API key: anyone who can reach this port can read "
                f"every conversation and use the model. Set one with --api-key NAME:KEY, "
                f"--api-keys-file PATH or {ENV_API_KEY}.")

    def host_allowed(self, hostname: str) -> bool:
        """hostname: lower-case, no port, IPv6 without brackets."""
        return "*" in self.allowed_hosts or hostname in self._host_names or is_ip(hostname)


def add_flags(parser: argparse.ArgumentParser) -> None:
    """The `serve` flags read by SecurityConfig.from_args."""
    g = parser.add_argument_group("security")
    g.add_argument("--api-key", action="append", metavar="[NAME:]KEY[:TOKENS][:admin]",
                   help="require this key on /api, /v1 and /ws (repeatable; a key without NAME: is named "
                        "'default'). Each key sees only the conversations it made. NAME:KEY:TOKENS also caps "
                        "the key's prompt + completion tokens per UTC day (100000, 100k, 2M; 429 once spent); "
                        "NAME:KEY:admin lets it read every key's conversations (?owner=) and usage. Command "
                        f"lines are visible to other users: prefer {ENV_API_KEY} (comma-separated) or "
                        "--api-keys-file")
    g.add_argument("--api-keys-file", metavar="PATH",
                   help="a file of NAME:KEY lines, each optionally followed by :TOKENS and/or :admin "
                        "(blank lines and # comments, on their own line or after a space, ignored)")
    g.add_argument("--allowed-host", action="append", metavar="NAME",
                   help="also answer requests for this Host name, e.g. a reverse proxy's public name "
                        "(repeatable; loopback names, IP addresses and --host always are)")
    g.add_argument("--cors-origin", action="append", metavar="ORIGIN",
                   help="let pages of this origin (https://app.example.com) call the API from the "
                        "browser (repeatable; none by default)")
    from .limits_config import add_flags as add_limit_flags

    add_limit_flags(parser)


def split_key_options(specs: Iterable[tuple[str, str]]
                      ) -> tuple[list[tuple[str, str]], dict[str, int], set[str]]:
    """Take the options off NAME:KEY:OPTION... specs (a key never contains ':'): a daily
    token quota (TOKENS) and the admin role ("admin"), in any order, each at most once.

    split_key_options([("alice:k1:100k", "--api-key"), ("ops:k2:admin", "--api-key"), ("k3", "--api-key")])
    -> ([("alice:k1", "--api-key"), ("ops:k2", "--api-key"), ("k3", "--api-key")], {"alice": 100000}, {"ops"})
    """
    out: list[tuple[str, str]] = []
    quotas: dict[str, int] = {}
    admins: set[str] = set()
    for spec, where in specs:
        parts = spec.strip().split(":")
        if len(parts) <= 2:
            out.append((spec, where))
            continue
        name, key, options = parts[0].strip(), parts[1], [o.strip() for o in parts[2:]]
        if not name:
            raise ConfigError(f"{where}: a key with options (:TOKENS, :admin) needs a name: NAME:KEY:OPTION")
        for option in options:
            if option.lower() == ADMIN_OPTION and name not in admins:
                admins.add(name)
            elif option.lower() != ADMIN_OPTION and name not in quotas:
                quotas[name] = _quota(option, where)
            else:
                raise ConfigError(f"{where}: the option {option[:20]!r} is given twice for the key {name!r}")
        out.append((f"{name}:{key}", where))
    return out, quotas, admins


def _quota(text: str, where: str) -> int:
    m = _QUOTA_RE.fullmatch(text)
    tokens = int(m[1]) * {"": 1, "k": 1_000, "m": 1_000_000}[m[2].lower()] if m else 0
    if not m or not 0 < tokens <= MAX_DAILY_TOKEN_QUOTA:
        raise ConfigError(f"{where}: after NAME:KEY: expected a daily token quota (a whole number of tokens from "
                          f"1 to {MAX_DAILY_TOKEN_QUOTA:,}: 100000, 100k or 2M) or {ADMIN_OPTION!r}, "
                          f"got {text[:20]!r}")
    return tokens


def parse_keys(specs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """(spec, where) pairs -> {name: key}. A spec is NAME:KEY or a plain KEY.

    parse_keys([("alice:k1", "--api-key"), ("k2", "--api-key")]) -> {"alice": "k1", "default": "k2"};
    a second plain key is named "default-2", a third "default-3".
    """
    keys: dict[str, str] = {}
    unnamed = 0
    for spec, where in specs:
        name, sep, key = spec.strip().partition(":")
        if not sep:  # a plain KEY (a key never contains ":")
            name, key = "", name
        name, key = name.strip(), key.strip()
        if not name:
            unnamed += 1
            name = DEFAULT_KEY_NAME if unnamed == 1 else f"{DEFAULT_KEY_NAME}-{unnamed}"
        _check_key(name, key, where=where)
        if name in keys:
            raise ConfigError(f"{where}: the key name {name!r} is given twice; give each key its own name (NAME:KEY)")
        for other, value in keys.items():
            if hmac.compare_digest(value, key):
                raise ConfigError(f"{where}: keys {other!r} and {name!r} have the same value; "
                                  "each key needs its own value so requests can be told apart")
        keys[name] = key
    return keys


def _check_key(name: str, key: str, *, where: str) -> None:
    # Error messages name the key, never show its value.
    if not _NAME_RE.fullmatch(name) or len(name) > MAX_KEY_NAME_CHARS:
        raise ConfigError(f"{where}: the key name {name[:MAX_KEY_NAME_CHARS]!r} may use only letters, digits, "
                          f"'_', '.' and '-' (at most {MAX_KEY_NAME_CHARS} characters)")
    if not key:
        raise ConfigError(f"{where}: the key {name!r} is empty")
    if len(key) > MAX_KEY_CHARS or not KEY_RE.fullmatch(key):
        raise ConfigError(f"{where}: the key {name!r} must be 1-{MAX_KEY_CHARS} characters of letters, digits "
                          "and !#$%&'*+.^_`|~- (no spaces, ':' or ','); make one with "
                          "python -c 'import secrets; print(secrets.token_urlsafe(32))'")


def _read_keys_file(path: Path) -> list[tuple[str, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) else "it is not UTF-8 text"
        raise ConfigError(f"--api-keys-file {path}: cannot read it ({why})") from None
    specs = []
    for number, line in enumerate(text.splitlines(), 1):
        # A comment after a key needs a space before its '#': a key may contain '#', never a space.
        line = _TRAILING_COMMENT.sub("", line).strip()
        if line and not line.startswith("#"):
            specs.append((line, f"{path}:{number}"))
    if not specs:
        raise ConfigError(f"--api-keys-file {path}: no NAME:KEY lines in it")
    return specs


def _normalize_host(value: str, *, flag: str) -> str:
    """A host name as Host headers are compared: 'Chat.Example.COM.' -> 'chat.example.com',
    '[::1]' -> '::1', '::' -> '::'. A port is dropped: every port of an allowed name is allowed."""
    v = value.strip()
    if v == "*":
        return v
    if "://" in v or "/" in v:
        raise ConfigError(f"{flag} {value!r}: pass a host name (chat.example.com), not a URL")
    if v.count(":") > 1 and not v.startswith("["):
        v = f"[{v}]"  # a bare IPv6 address, e.g. --host ::
    parsed = split_authority(v)
    if parsed is None:
        raise ConfigError(f"{flag} {value!r}: not a host name or IP address")
    return parsed[0]


def _normalize_origin(value: str) -> str:
    origin = parse_origin(value.strip().rstrip("/"))
    if origin is None:
        raise ConfigError(f"--cors-origin {value!r}: expected scheme://host[:port] "
                          "(http or https, no path), e.g. https://app.example.com")
    return origin.text


# -- parsing what the client sent ------------------------------------------------------------
def split_authority(value: str) -> tuple[str, int | None] | None:
    """'Example.com:8080' -> ('example.com', 8080); '[::1]' -> ('::1', None); junk -> None."""
    m = _AUTHORITY_RE.fullmatch(value)
    if m is None:
        return None
    port = int(m["port"]) if m["port"] else None
    if port is not None and port > 65535:
        return None
    if m["v6"] is not None:
        if not is_ip(m["v6"]):
            return None
        return str(ipaddress.ip_address(m["v6"])), port
    name = m["name"].lower().rstrip(".")
    return (name, port) if name else None


def is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


class Origin(NamedTuple):
    scheme: str
    host: str
    port: int
    text: str  # normalized: "https://app.example.com", "http://[::1]:8080"


def parse_origin(value: str) -> Origin | None:
    """An Origin header value, or None for 'null' and anything malformed."""
    try:
        parts = urlsplit(value)
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or parts.path or parts.query or parts.fragment:
        return None
    authority = split_authority(parts.netloc)
    if authority is None:
        return None
    host, port = authority
    port = port if port is not None else DEFAULT_PORTS[scheme]
    shown = f"[{host}]" if ":" in host else host
    text = f"{scheme}://{shown}" + ("" if port == DEFAULT_PORTS[scheme] else f":{port}")
    return Origin(scheme, host, port, text)
