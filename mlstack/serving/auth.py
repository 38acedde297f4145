"""Optional bearer-token authentication of `mlstack serve`.

Tokens come from a file (`MLSTACK_SERVE_TOKENS_FILE`, e.g. a Docker or Kubernetes secret mounted
at /run/secrets/...), one token per line; blank lines and `#` comments are ignored. Never from the
command line, where `ps` would show them. With no file configured, authentication is off.

When on, every route but the probes (`/health`, `/ping`, `/v2/health/live`, `/v2/health/ready`)
needs `Authorization: Bearer <token>`; otherwise the answer is 401 with MLflow's error JSON
(`UNAUTHENTICATED`) and a `WWW-Authenticate: Bearer` header. The presented token is compared with
every configured token (`hmac.compare_digest`, and no early exit). compare_digest's loop runs over
its second argument, the configured token, whatever the presented value's length or content, so
neither the content, the length nor the position of a valid token leaks through timing. (Hashing
both sides with SHA-256 first, as this did before, gave the same guarantee for several times the
CPU: it was most of what a bearer token cost per request, bench/serving_cost_bench.py.)

Scrape-only tokens (`MLSTACK_SERVE_METRICS_TOKENS_FILE`, the monitoring overlay's generated scrape
token) are accepted on `GET /metrics` and nowhere else, so Prometheus holds no token that can
score. They matter only when authentication is on: without it `/metrics` is open and the
Authorization header is ignored, so one scrape configuration serves both modes.
"""

from __future__ import annotations

import hmac
from pathlib import Path

OPEN_PATHS = frozenset(("/health", "/ping", "/v2/health/live", "/v2/health/ready"))
MIN_TOKEN_CHARS = 16
CHALLENGE = (b"www-authenticate", b'Bearer realm="mlstack-serve"')


class TokenFileError(ValueError):
    """The tokens file is missing, unreadable, empty or holds a token too short to be safe."""


def read_tokens(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenFileError(f"cannot read the serving tokens file {path}: {exc}") from exc
    tokens = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if len(line) < MIN_TOKEN_CHARS or any(c.isspace() for c in line):
            raise TokenFileError(
                f"{path}, line {number}: a token must be at least {MIN_TOKEN_CHARS} characters "
                "without spaces (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
            )
        tokens.append(line)
    if not tokens:
        raise TokenFileError(f"the serving tokens file {path} holds no token")
    return tokens


class BearerAuth:
    def __init__(self, tokens: list[str]) -> None:
        self._tokens = [t.encode() for t in tokens]

    @classmethod
    def from_file(cls, path: Path) -> BearerAuth:
        return cls(read_tokens(path))

    def allows(self, authorization: bytes | None) -> bool:
        """True when the Authorization header value carries one of the tokens."""
        if not authorization or authorization[:7].lower() != b"bearer ":
            return False
        presented = authorization[7:].strip()
        matched = False
        for token in self._tokens:  # all of them, always: no early exit
            # The configured token second: the comparison's time follows its length only.
            matched |= hmac.compare_digest(presented, token)
        return matched
