"""Checking a provider's signature on its pushes (CONTRACT §5b), for the protocols whose
provider signs them: an upstream that implements `base.VerifiesPush` calls one of these.

Standard Webhooks (Replicate): `webhook-id`, `webhook-timestamp` (within 5 minutes) and
`webhook-signature` (`v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, several
space-separated) under the provider's `whsec_` secret.
"""

from __future__ import annotations

from collections.abc import Mapping

from standardwebhooks.webhooks import Webhook


def verify_standard_webhook(secret: str, headers: Mapping[str, str], body: bytes) -> bool:
    """Whether `body` with `headers` carries a valid, recent Standard Webhooks signature
    under `secret`. Never raises (a malformed secret or header is simply not valid)."""
    wanted = ("webhook-id", "webhook-timestamp", "webhook-signature")
    lowered = {k.lower(): v for k, v in headers.items() if k.lower() in wanted}
    try:
        Webhook(secret).verify(body, lowered)
    except Exception:  # WebhookVerificationError, a malformed secret or header: not valid
        return False
    return True
