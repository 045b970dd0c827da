"""What a secret setting must not be: a well-known placeholder, or too short or too uniform
(the admin key). The checks :class:`service.settings.ServiceSettings` runs on its secrets."""

from __future__ import annotations

import math
from collections import Counter

# Values that look like a secret someone forgot to replace.
PLACEHOLDER_SECRETS = frozenset(
    {
        "",
        "changeme",
        "change-me",
        "change_me",
        "changethis",
        "secret",
        "password",
        "admin",
        "example",
        "xxx",
        "todo",
    }
)
MIN_ADMIN_KEY_LENGTH = 16
# Shannon entropy of the characters x length: 16 repeated characters score 0, "abcd" x 4 scores
# 32, a random 16-character token_urlsafe ~55-60. A rough floor, not a strength meter.
MIN_ADMIN_KEY_BITS = 40.0


def character_entropy_bits(value: str) -> float:
    """Shannon entropy of ``value``'s characters times its length (bits, a rough estimate)."""
    n = len(value)
    if n == 0:
        return 0.0
    return -n * sum(c / n * math.log2(c / n) for c in Counter(value).values())


def is_placeholder_secret(value: str) -> bool:
    """True for empty or well-known placeholder secrets (case-insensitive)."""
    return value.strip().lower() in PLACEHOLDER_SECRETS
