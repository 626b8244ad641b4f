"""Signatures: Standard Webhooks for callbacks, HMAC links for large results."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

EXPIRES_RE = re.compile(r"[1-9][0-9]{0,15}")  # Unix seconds, as ASCII digits
SIG_RE = re.compile(r"[A-Za-z0-9_-]{43}")  # unpadded urlsafe base64 of a SHA-256 HMAC


def _secret_bytes(secret: str) -> bytes:
    raw = secret.removeprefix("whsec_")
    return base64.b64decode(raw + "=" * (-len(raw) % 4))


def new_webhook_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def sign_webhook(secrets_: tuple[str, ...] | list[str], msg_id: str, ts: int, body: bytes) -> str:
    """The `webhook-signature` header: one `v1,<base64>` per secret, space-separated."""
    payload = f"{msg_id}.{ts}.".encode() + body
    sigs = []
    for secret in secrets_:
        mac = hmac.new(_secret_bytes(secret), payload, hashlib.sha256).digest()
        sigs.append("v1," + base64.b64encode(mac).decode())
    return " ".join(sigs)


class ResultLinks:
    """Signed, expiring links to a job's result that need no API key."""

    def __init__(self, key: bytes, base_url: str) -> None:
        self._key = key
        self.base_url = base_url.rstrip("/")

    def _sig(self, job_id: str, expires_s: int) -> str:
        mac = hmac.new(self._key, f"{job_id}.{expires_s}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def url(self, job_id: str, expires_s: int) -> str:
        sig = self._sig(job_id, expires_s)
        return f"{self.base_url}/v1/results/{job_id}?expires={expires_s}&sig={sig}"

    def verify(self, job_id: str, expires: str, sig: str, now_s: float) -> bool:
        """Only the link's one spelling verifies: ASCII digits without a leading zero, and
        the signature exactly as `url` writes it."""
        if not EXPIRES_RE.fullmatch(expires) or not SIG_RE.fullmatch(sig):
            return False
        expires_s = int(expires)
        if expires_s < now_s:
            return False
        return hmac.compare_digest(self._sig(job_id, expires_s).encode(), sig.encode())
