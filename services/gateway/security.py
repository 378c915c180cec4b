"""Credentials: argon2 password hashes, HS256 access tokens, refresh tokens, API keys, and
signed local-upload URLs.

Each purpose signs with its own key derived from ``settings.secret_key`` (HMAC with a label), so
a value minted for one purpose can never be replayed as another.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import re
import secrets
import string
import uuid
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from jose import JWTError, jwt
from passlib.context import CryptContext

from shared.settings import Settings

JWT_ALGORITHM = "HS256"
API_KEY_PREFIX = "mr_live_"
API_KEY_RANDOM_CHARS = 32
API_KEY_CHECKSUM_CHARS = 6
DEFAULT_SECRET = "dev-insecure-change-me"
_BASE62 = string.digits + string.ascii_letters

# OWASP's argon2id recommendation (19 MiB, t=2, p=1): strong, and cheap enough for 2-core hosts.
password_context = CryptContext(
    schemes=["argon2"],
    deprecated="auto",
    argon2__type="ID",
    argon2__memory_cost=19_456,
    argon2__rounds=2,
    argon2__parallelism=1,
)
# Verified against when the e-mail is unknown, so both paths cost one argon2 verification.
DUMMY_PASSWORD_HASH = password_context.hash(secrets.token_urlsafe(16))


def derive_key(settings: Settings, purpose: str) -> bytes:
    return _derived_key(settings.secret_key.get_secret_value(), purpose)


@functools.lru_cache(maxsize=64)
def _derived_key(secret: str, purpose: str) -> bytes:
    # Every authenticated request derives a key; the derivation depends on nothing else.
    return hmac.new(secret.encode(), purpose.encode(), hashlib.sha256).digest()


def hash_password(password: str) -> str:
    return password_context.hash(password)


def verify_password(password: str, password_hash: str | None) -> bool:
    if password_hash is None:
        password_context.verify(password, DUMMY_PASSWORD_HASH)
        return False
    try:
        return password_context.verify(password, password_hash)
    except (ValueError, TypeError):
        return False


# --- access tokens -----------------------------------------------------------------------------
class InvalidToken(Exception):
    pass


def password_stamp(password_hash: str, settings: Settings) -> str:
    """A short keyed digest of the account's password hash, carried by its access tokens: a
    password change or reset changes it, so every access token issued before stops working at
    once (not only when it expires). Reveals nothing of the hash."""
    digest = hmac.new(derive_key(settings, "password-stamp"), password_hash.encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(digest.digest()[:12]).decode()


@dataclass(frozen=True)
class AccessClaims:
    user_id: uuid.UUID
    password_stamp: str


def create_access_token(
    user_id: uuid.UUID, password_hash: str, settings: Settings, *, now: datetime | None = None
) -> tuple[str, int]:
    now = now or datetime.now(UTC)
    lifetime = timedelta(minutes=settings.access_token_minutes)
    claims = {
        "sub": str(user_id),
        "pws": password_stamp(password_hash, settings),
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "iat": int(now.timestamp()),
        "nbf": int(now.timestamp()),
        "exp": int((now + lifetime).timestamp()),
        "jti": uuid.uuid4().hex,
        "typ": "access",
    }
    token = jwt.encode(claims, derive_key(settings, "jwt-access").hex(), algorithm=JWT_ALGORITHM)
    return token, int(lifetime.total_seconds())


def decode_access_token(token: str, settings: Settings) -> AccessClaims:
    """The user id and password stamp of a valid access token; :class:`InvalidToken` for anything
    else (bad signature, other algorithm, ``alg: none``, wrong issuer/audience, expired, wrong
    type, no stamp)."""
    try:
        header = jwt.get_unverified_header(token)
        if header.get("alg") != JWT_ALGORITHM:
            raise InvalidToken("unexpected algorithm")
        claims = jwt.decode(
            token,
            derive_key(settings, "jwt-access").hex(),
            algorithms=[JWT_ALGORITHM],
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            options={
                "require_exp": True,
                "require_iat": True,
                "require_sub": True,
                "require_aud": True,
                "require_iss": True,
            },
        )
        if claims.get("typ") != "access":
            raise InvalidToken("not an access token")
        if not isinstance(claims.get("pws"), str):
            raise InvalidToken("no password stamp")
        return AccessClaims(uuid.UUID(claims["sub"]), claims["pws"])
    except (JWTError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InvalidToken(str(exc)) from exc


# --- refresh tokens ----------------------------------------------------------------------------
def new_refresh_token() -> str:
    return "mr_rt_" + secrets.token_urlsafe(32)


def hash_refresh_token(token: str) -> str:
    # 256 random bits need no slow hash: SHA-256 is enough to make a stolen table useless.
    return hashlib.sha256(token.encode()).hexdigest()


# --- API keys ----------------------------------------------------------------------------------
def _base62(number: int, width: int) -> str:
    chars = []
    for _ in range(width):
        number, digit = divmod(number, 62)
        chars.append(_BASE62[digit])
    return "".join(reversed(chars))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), API_KEY_CHECKSUM_CHARS)


_API_KEY_SHAPE = re.compile(
    re.escape(API_KEY_PREFIX) + f"[0-9A-Za-z]{{{API_KEY_RANDOM_CHARS + API_KEY_CHECKSUM_CHARS}}}"
)


def generate_api_key() -> str:
    """``mr_live_`` + 32 base62 characters (~190 bits) + a 6-character CRC32 checksum, so typos
    and scanned garbage are rejected without touching the database (and secret scanners can
    recognise leaked keys)."""
    body = "".join(secrets.choice(_BASE62) for _ in range(API_KEY_RANDOM_CHARS))
    return API_KEY_PREFIX + body + _checksum(API_KEY_PREFIX + body)


def is_well_formed_api_key(key: str) -> bool:
    if _API_KEY_SHAPE.fullmatch(key) is None:
        return False
    body, checksum = key[:-API_KEY_CHECKSUM_CHARS], key[-API_KEY_CHECKSUM_CHARS:]
    return hmac.compare_digest(_checksum(body), checksum)


def hash_api_key(key: str, settings: Settings) -> str:
    return hmac.new(derive_key(settings, "api-key"), key.encode(), hashlib.sha256).hexdigest()


def api_key_display_prefix(key: str) -> str:
    return key[: len(API_KEY_PREFIX) + 4]


# --- password reset tokens --------------------------------------------------------------------
PASSWORD_RESET_PREFIX = "mr_reset_"


def _reset_signature(user_id: uuid.UUID, expires: int, password_hash: str, settings: Settings) -> str:
    # The current password hash is signed too: once the password changes, the token is spent.
    message = f"{user_id}.{expires}.{password_hash}".encode()
    digest = hmac.new(derive_key(settings, "password-reset"), message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def create_password_reset_token(
    user_id: uuid.UUID, password_hash: str, settings: Settings, *, minutes: int, now: datetime | None = None
) -> str:
    """A single-use, expiring token that lets its holder set a new password (nothing stored)."""
    expires = int(((now or datetime.now(UTC)) + timedelta(minutes=minutes)).timestamp())
    signature = _reset_signature(user_id, expires, password_hash, settings)
    return f"{PASSWORD_RESET_PREFIX}{user_id.hex}.{expires}.{signature}"


def password_reset_user_id(token: str) -> tuple[uuid.UUID, int, str] | None:
    """(user id, expiry, signature) of a well-formed token, before its signature is checked."""
    try:
        user_hex, expires, signature = token.removeprefix(PASSWORD_RESET_PREFIX).split(".")
        return uuid.UUID(hex=user_hex), int(expires), signature
    except ValueError:
        return None


def verify_password_reset(
    user_id: uuid.UUID, expires: int, signature: str, password_hash: str, settings: Settings
) -> bool:
    if expires < int(datetime.now(UTC).timestamp()):
        return False
    return hmac.compare_digest(_reset_signature(user_id, expires, password_hash, settings), signature)


# --- signed local upload URLs ------------------------------------------------------------------
# Unix seconds have 10 digits until 2286; anything longer is not a time this gateway signed.
_MAX_EXPIRES_DIGITS = 12


def sign_upload(upload_id: uuid.UUID | str, expires: int | str, settings: Settings) -> str:
    # Query values may hold any character (lone surrogates too): encoding must never fail.
    message = f"{upload_id}.{expires}".encode("utf-8", "backslashreplace")
    digest = hmac.new(derive_key(settings, "local-upload"), message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def verify_upload_signature(upload_id: str, expires: str, signature: str, settings: Settings) -> bool:
    """Whether the raw path id, ``expires`` and ``signature`` are an unexpired URL this gateway
    signed. Any input, however malformed (non-ASCII, wrong length, not a number), is simply
    invalid, and every input costs the same: one HMAC and one constant-time comparison of bytes."""
    expected = sign_upload(upload_id, expires, settings).encode()
    presented = signature.encode("utf-8", "backslashreplace")
    signed = hmac.compare_digest(expected, presented)
    in_time = (
        expires.isascii()
        and expires.isdigit()
        and len(expires) <= _MAX_EXPIRES_DIGITS
        and int(expires) >= int(datetime.now(UTC).timestamp())
    )
    return signed and in_time
