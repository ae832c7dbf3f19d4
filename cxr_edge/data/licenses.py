"""Licence strings → how restrictive they are, so a prepared set can say what it may be used for.

Manifests carry free-text licences ("CC BY-NC-SA 4.0", "NIH ChestX-ray14
(unrestricted use, citation requested)", "GPL-2+ (debian/copyright ...)").
:func:`license_rank` orders them coarsely; the most restrictive one seen is
recorded in ``prepared.json`` so nobody ships a commercial model trained on
non-commercial images by accident. The ranking is a screen, not legal advice.
"""

from __future__ import annotations

import re

__all__ = ["is_permissive", "is_redistributable", "LEVELS", "license_rank", "summarize_licenses"]

#: rank -> (name, permissive?) ; higher = more restrictive.
LEVELS = {
    0: ("public domain / CC0 / unrestricted", True),
    1: ("permissive with attribution (CC BY, MIT, BSD, Apache, free use)", True),
    2: ("copyleft / share-alike (GPL, CC BY-SA)", False),
    3: ("non-commercial (CC BY-NC*)", False),
    4: ("research-only or custom terms", False),
    5: ("unknown (no licence recorded)", False),
}

_RULES = (  # first match wins, so the most restrictive patterns come first
    # The NLM Montgomery set's README asks users not to share it outside their group: custom terms.
    (4, r"research[- ]only|do not (share|redistribute)|challenge data terms|data use agreement|montgomery"),
    (3, r"\bnc\b|non[- ]?commercial|by-nc"),
    (2, r"\bgpl|\bsa\b|by-sa|share[- ]?alike|copyleft"),
    (0, r"\bcc0\b|public[- ]domain|unrestricted"),
    (1, r"\bcc[- ]by\b|\bmit\b|\bbsd|apache|\bpsf|free use|nih|permissive|\bterms\b"),
)


def license_rank(text: str | None) -> int:
    """0 (public domain) … 5 (unknown): how restrictive a free-text licence is."""
    t = (text or "").strip().lower()
    if not t:
        return 5
    for rank, pattern in _RULES:
        if re.search(pattern, t):
            return rank
    return 4  # a licence we cannot classify is custom terms until someone reads it


def is_permissive(text: str | None) -> bool:
    """True when the licence allows commercial use (public domain or attribution-only)."""
    return LEVELS[license_rank(text)][1]


def is_redistributable(text: str | None) -> bool:
    """True when a model trained on the image may be handed on (possibly only non-commercially).

    Research-only or custom terms (rank 4) and no recorded licence (rank 5) are not: the terms would have
    to be read by a person first.
    """
    return license_rank(text) <= 3


def summarize_licenses(licenses, permissive_flags) -> dict:
    """Counts per licence, the most restrictive one and whether every image is permissive."""
    counts: dict[str, int] = {}
    for lic in licenses:
        counts[lic or ""] = counts.get(lic or "", 0) + 1
    flags = list(permissive_flags)
    worst = max(counts, key=lambda k: (license_rank(k), k), default=None)
    return {
        "counts": dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))),
        "most_restrictive": worst,
        "most_restrictive_level": LEVELS[license_rank(worst)][0] if worst is not None else None,
        "non_permissive_images": sum(1 for f in flags if not f),
        "permissive_only": bool(flags) and all(flags),
    }
