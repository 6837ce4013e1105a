"""Identifiers shaped like ElevenLabs' own, drawn from a seeded generator.

Real ids (``conv_7401k5m9x2p8ec3rqv6dtnhb0fzw``) are 28 characters of lowercase Crockford
base32 after the prefix, starting with four digits and ``k``. Tests want ids that look real
(so parsers written against the stand-in also accept production ids) and that repeat from
run to run (so a failing test prints the same ids twice): hence a seeded ``random.Random``.
"""

from __future__ import annotations

import random

import attrs

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
_HEX = "0123456789abcdef"


@attrs.define
class IdFactory:
    """Makes ``prefix_`` + 28-character ids; the same seed gives the same sequence."""

    seed: int = 0
    _random: random.Random = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._random = random.Random(self.seed)

    def make(self, prefix: str) -> str:
        digits = "".join(self._random.choice("0123456789") for _ in range(4))
        rest = "".join(self._random.choice(_CROCKFORD) for _ in range(23))
        return f"{prefix}_{digits}k{rest}"

    def token(self) -> str:
        """A conversation signature, ``cvtkn_`` as seen in the wild."""
        return self.make("cvtkn")

    def call_sid(self) -> str:
        """A Twilio call SID: ``CA`` and 32 hex digits."""
        return "CA" + "".join(self._random.choice(_HEX) for _ in range(32))
