"""Arm pickers: which arm of a weighted split serves a request. Pure functions of weights, key and salt.

Random picks draw from a caller-supplied ``random.Random``. Sticky picks use weighted rendezvous hashing: every arm
gets the score ``weight / -ln(u)`` where ``u`` is a stable hash of (salt, arm, key) in (0, 1), and the highest score
wins. Arm *i* then wins with probability ``w_i / sum(w)``, the same key always lands on the same arm in any process,
and raising one arm's weight only raises that arm's scores, so none of its existing users move away (users of the
other arms move to it, which is the point). This module never looks at time, the network or the request body.
"""

from __future__ import annotations

import hashlib
import math
import random
from bisect import bisect_right
from collections.abc import Sequence
from itertools import accumulate

__all__ = ["SplitPicker", "stable_unit"]

_TWO_64 = float(2**64)


def stable_unit(*parts: str) -> float:
    """A number in the open interval (0, 1) that depends only on ``parts``: the same in every process."""
    # surrogatepass: a key may hold a lone surrogate (a JSON body's "\ud83d"); other text hashes as plain UTF-8
    digest = hashlib.blake2b("\x1f".join(parts).encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return (int.from_bytes(digest, "big") + 0.5) / _TWO_64


class SplitPicker:
    """Picks an index into ``names`` by ``weights``: at random, or sticky to a key.

    >>> picker = SplitPicker("chat", ["a", "b"], [90, 10])
    >>> picker.sticky("user-42") == picker.sticky("user-42")
    True
    """

    __slots__ = ("_cumulative", "_names", "_salt", "_total", "_weights")

    def __init__(self, salt: str, names: Sequence[str], weights: Sequence[float]) -> None:
        if len(names) != len(weights) or not names:
            raise ValueError("names and weights must be non-empty and of the same length")
        if any(w < 0 or not math.isfinite(w) for w in weights) or not any(w > 0 for w in weights):
            raise ValueError("weights must be finite, non-negative, and at least one positive")
        self._salt = salt
        self._names = tuple(names)
        self._weights = tuple(float(w) for w in weights)
        self._cumulative = tuple(accumulate(self._weights))
        self._total = self._cumulative[-1]

    def random(self, rng: random.Random) -> int:
        """A weighted random index."""
        if len(self._weights) == 1:
            return 0
        index = bisect_right(self._cumulative, rng.random() * self._total)
        # rng.random() < 1 keeps index in range; a zero-weight tail arm can never be hit.
        return min(index, len(self._weights) - 1)

    def shares(self) -> list[tuple[str, float]]:
        """Each name with its share of the calls, in percent."""
        return [(name, 100.0 * weight / self._total) for name, weight in zip(self._names, self._weights, strict=True)]

    def sticky(self, key: str) -> int:
        """The index that ``key`` always maps to under these weights (weighted rendezvous hashing)."""
        best_index, best_score = 0, -1.0
        for index, (name, weight) in enumerate(zip(self._names, self._weights, strict=True)):
            if weight <= 0:
                continue
            score = weight / -math.log(stable_unit(self._salt, name, key))
            if score > best_score:
                best_index, best_score = index, score
        return best_index
