"""Identifiers shaped like ElevenLabs' own, drawn from a seeded generator.

Real ids (``conv_7401k5m9x2p8ec3rqv6dtnhb0fzw``) are 28 characters of lowercase Crockford
base32 after the prefix, starting with four digits and ``k``. Ids must look real (so parsers
written against the stand-in also accept production ids) and, like real ones, never repeat
across runs: aftercall derives event ids from them, and a sandbox whose log is kept
(``./var``) recorded nothing for the first call of a second run, whose id the first run had
already used. So the generator is seeded from the operating system's randomness unless a
test fixes the seed (then a failing test prints the same ids twice).
"""

from __future__ import annotations

import random
import secrets

import attrs

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
_HEX = "0123456789abcdef"


@attrs.define
class IdFactory:
    """Makes ``prefix_`` + 28-character ids; the same seed gives the same sequence, no
    seed a sequence of its own."""

    seed: int | None = None
    _random: random.Random = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._random = random.Random(secrets.randbits(64) if self.seed is None else self.seed)

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
