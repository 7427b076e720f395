"""Authentication for every route but the probes, and the checks made when the API starts.

A client sends the bearer token. The web page instead signs in once (POST /login with the token) and gets
a session cookie: HttpOnly, SameSite=Strict, signed with the token (so no server state, and a new token
ends every session). A request that changes data with that cookie must also carry the session's CSRF
token in the X-CSRF-Token header, which only the page itself can read: a form another site posts is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time
from collections import OrderedDict, deque
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.deps import SettingsDep
from settings import Settings

log = logging.getLogger(__name__)

# auto_error=False: a missing header reaches require_token, which answers with its own 401.
bearer = HTTPBearer(
    auto_error=False, description="The token the API was started with (API_TOKEN): `Authorization: Bearer <token>`."
)
CredentialsDep = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


class InsecureConfigError(RuntimeError):
    """The API would run without authentication although DEV_MODE is off."""


def check_config(settings: Settings) -> None:
    """Refuse to build an API that nobody has to authenticate to, unless DEV_MODE is on."""
    if settings.api_token is None and not settings.dev_mode:
        raise InsecureConfigError(
            "API_TOKEN is not set, so the API would accept requests from anyone; refusing to start. "
            "Set API_TOKEN to a long random secret, e.g. "
            "`export API_TOKEN=$(python -c 'import secrets; print(secrets.token_urlsafe(32))')`, "
            "and send it as `Authorization: Bearer $API_TOKEN`; or, for local development only, "
            "set DEV_MODE=1 to run without authentication."
        )


def log_startup_warnings(settings: Settings) -> None:
    """Say loudly, at every start, what is left open: authentication, or which folders jobs may read."""
    if settings.api_token is None:
        log.warning(
            "!!! DEV_MODE: API_TOKEN is not set, authentication is OFF: anyone who can reach this API can use it. "
            "Never run like this on a shared host or network."
        )
    if not settings.allowed_roots and settings.dev_mode:
        log.warning("!!! DEV_MODE: ALLOWED_ROOTS is not set, so jobs may read ANY folder this process can read.")
    elif not settings.allowed_roots:
        log.warning("ALLOWED_ROOTS is not set: every job will be refused (403) until it names the photo folders.")


def require_token(request: Request, settings: SettingsDep, credentials: CredentialsDep) -> None:
    """Let a request through only with `Authorization: Bearer <API_TOKEN>`, or the web page's session cookie
    (with its CSRF token when it changes data); in DEV_MODE without a token, any."""
    token = settings.api_token
    if token is None:  # DEV_MODE; check_config refuses this otherwise
        return
    if credentials is None and SECRET_PARAMETERS & {key.lower() for key in request.query_params}:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "a token in the URL is not accepted (URLs end up in logs): send `Authorization: Bearer <token>`",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if credentials is None and (cookie := request.cookies.get(SESSION_COOKIE)) is not None:
        _check_session(request, token.get_secret_value(), cookie)
        return
    if credentials is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing bearer token: send the header `Authorization: Bearer <token>` with the API's API_TOKEN "
            "(or sign in on the web page at /)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    # Bytes, not str: compare_digest refuses non-ASCII strings, and headers may hold any Latin-1 text.
    if not hmac.compare_digest(credentials.credentials.encode(), token.get_secret_value().encode()):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "invalid bearer token: it does not match the API's API_TOKEN",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )


# --- the web page's session -----------------------------------------------------------------------------------

SESSION_COOKIE = "catsdogs_session"
CSRF_HEADER = "X-CSRF-Token"
SESSION_SECONDS = 12 * 3600
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class SignInThrottle:
    """Failed sign-ins by client address: after `limit` within `window` seconds, an address is refused
    until the oldest of them is `window` old. Per API process; at most `addresses` are remembered."""

    def __init__(self, limit: int = 10, window: float = 300.0, addresses: int = 10_000) -> None:
        self.limit, self.window, self.addresses = limit, window, addresses
        self.failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, address: str, now: float | None = None) -> float | None:
        """Seconds until `address` may try again, or None if it may now."""
        now = time.monotonic() if now is None else now
        failures = self.failures.get(address)
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if not failures or len(failures) < self.limit:
            return None
        return failures[0] + self.window - now

    def failed(self, address: str, now: float | None = None) -> None:
        self.failures.setdefault(address, deque(maxlen=self.limit)).append(time.monotonic() if now is None else now)
        self.failures.move_to_end(address)
        if len(self.failures) > self.addresses:
            self.failures.popitem(last=False)


def token_matches(given: str, token: str) -> bool:
    # Bytes, not str: compare_digest refuses non-ASCII strings.
    return hmac.compare_digest(given.encode(), token.encode())


def new_session(token: str) -> str:
    """A session cookie's value: when it was issued, a nonce, and their signature with the token."""
    body = f"{int(time.time())}.{secrets.token_urlsafe(16)}"
    return f"{body}.{_sign(token, 'session', body)}"


def session_is_valid(token: str, cookie: str) -> bool:
    """The cookie was made by new_session with this token less than SESSION_SECONDS ago."""
    body, _, signature = cookie.rpartition(".")
    issued, _, nonce = body.partition(".")
    if not (issued.isascii() and issued.isdigit() and nonce):
        return False
    fresh = -60 <= time.time() - int(issued) < SESSION_SECONDS  # a minute's leeway for replicas' clocks
    return fresh and hmac.compare_digest(signature.encode(), _sign(token, "session", body).encode())


def csrf_token(token: str, cookie: str) -> str:
    """The CSRF token of a session: the page gets it with the page, and sends it back in X-CSRF-Token."""
    return _sign(token, "csrf", cookie)


def _sign(token: str, purpose: str, text: str) -> str:
    return hmac.new(token.encode(), f"{purpose}:{text}".encode(), hashlib.sha256).hexdigest()


def _check_session(request: Request, token: str, cookie: str) -> None:
    if not session_is_valid(token, cookie):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "the web session is invalid or has expired: sign in again at /, or send `Authorization: Bearer <token>`",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if request.method not in SAFE_METHODS and not token_matches(
        request.headers.get(CSRF_HEADER, ""), csrf_token(token, cookie)
    ):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"missing or wrong {CSRF_HEADER} header: a request that changes data with the session cookie must "
            "send the CSRF token the page was given",
        )


# Query parameters whose values never reach a log: a client that puts its token in the URL is refused,
# but the URL it sent is still written to the access log.
SECRET_PARAMETERS = frozenset({"token", "access_token", "api_token", "api_key", "apikey", "key", "password", "secret"})
_SECRET_VALUE = re.compile(r"(?i)([?&](?:" + "|".join(sorted(SECRET_PARAMETERS)) + r")=)[^&#\s]*")


def redact_url(text: str) -> str:
    """`text` with the value of every secret-looking query parameter replaced by `***`."""
    return _SECRET_VALUE.sub(r"\1***", text)


class _RedactSecrets(logging.Filter):
    """Uvicorn's access records carry the request's path and query as an argument: redact it there."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact_url(a) if isinstance(a, str) else a for a in record.args)
        return True


def hide_secrets_in_access_log() -> None:
    """Install the filter on uvicorn's access logger (once: uvicorn configures its loggers before the app starts)."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, _RedactSecrets) for f in access.filters):
        access.addFilter(_RedactSecrets())
