"""The series' sign words in LSH tables, searched under every turn, flip and sign inversion.

A block's word may be a donor's word turned by any of the 8 elements of the dihedral group,
sign-inverted or not: 16 variants. Each table keys a word by a random subset of its bits, so a
word within a few bits of a donor shares its key in some table; a lookup turns and keys a
whole batch of query words at once (byte-LUT gathers, :mod:`detector.forensics.signwords`),
16 variants x every table, and keeps the donors within ``max_distance`` bits.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from detector.forensics.signwords import gather, gather_lut, popcount

TRANSFORMS = [(k, flip) for flip in (False, True) for k in range(4)]  # the dihedral group
VARIANTS = 2 * len(TRANSFORMS)  # variant 2 o + negate: turn/flip o, sign-inverted when negate


def transform(a: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """Turn ``a`` by ``k`` quarter turns, after transposing it when ``flip``."""
    return np.rot90(a.T if flip else a, k)


class SignWordTables:
    """LSH tables over 64-bit words, one per bit subset, laid end to end.

    Table ``t``'s bucket of key ``q`` is ``order[starts[t * (2^bits + 1) + q] : ... + q + 1]]``,
    so a lookup is two gathers, not a search.
    """

    def __init__(self, subsets: Sequence[np.ndarray], bucket_cap: int) -> None:
        bits = len(subsets[0])
        if not 1 <= bits <= 32:
            raise ValueError("LSH keys are 1 to 32 bits")
        self.subsets, self.bucket_cap = list(subsets), bucket_cap
        self.key_mask = (1 << bits) - 1
        # Per flip/turn o: bit b of the turned block's word is bit ``turns[o, b]`` of the
        # block's, and the turned word's key in table t gathers bits ``turns[o][subset t]``.
        base = np.arange(64).reshape(8, 8)
        self.turns = np.stack([transform(base, k, flip).ravel() for k, flip in TRANSFORMS])
        self._turn_luts = np.stack([gather_lut(turn) for turn in self.turns])  # (8, 8, 256)
        self._key_luts = np.stack(  # (8 turns, tables, 8, 256); keys fit in 32 bits
            [[gather_lut(turn[sub]) for sub in self.subsets] for turn in self.turns]
        ).astype(np.uint32)
        self._plain_key_luts = np.stack([gather_lut(sub) for sub in self.subsets]).astype(np.uint32)
        self.words = np.empty(0, dtype=np.uint64)
        self._starts = np.zeros(0, dtype=np.int32)
        self._order = np.zeros(0, dtype=np.int32)

    def build(self, words: np.ndarray) -> None:
        """Put ``words`` (the series' indexed words, in owner order) into the tables."""
        n, tables = words.size, len(self.subsets)
        if tables * n >= 2**31:
            raise ValueError("noise-copy index too large; lower index_budget")
        starts, orders = [], []
        for t in range(tables):
            keys = gather(self._plain_key_luts[t], words)
            orders.append(_stable_order(keys).astype(np.int32))
            count = np.bincount(keys, minlength=self.key_mask + 1)
            starts.append(np.concatenate([[0], np.cumsum(count)]) + t * n)
        self.words = words
        self._starts = np.concatenate(starts).astype(np.int32)
        self._order = np.concatenate(orders)

    def pairs(
        self, words: np.ndarray, max_distance: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(variant, query, donor) of indexed words within ``max_distance`` bits of a query
        word under a variant, each triple once, sorted.

        A bucket holding more than ``bucket_cap`` words is a pattern that recurs by nature
        (structure, not noise) and is skipped, which also bounds the work per query.
        """
        n, tables = words.size, len(self.subsets)
        keys = gather(self._key_luts, words).astype(np.int64)  # (8, tables, n)
        keys = np.stack([keys, keys ^ self.key_mask], axis=1).reshape(VARIANTS, tables, n)
        turned = gather(self._turn_luts, words)  # (8, n)
        turned = np.stack([turned, ~turned], axis=1).reshape(VARIANTS, n)
        keys += (np.arange(tables, dtype=np.int64) * (self.key_mask + 2))[None, :, None]
        flat = keys.ravel()
        lo = self._starts[flat].astype(np.int64)
        count = self._starts[flat + 1] - lo
        take = np.flatnonzero((count > 0) & (count <= self.bucket_cap))
        if take.size == 0:
            return (np.empty(0, np.int64),) * 3  # type: ignore[return-value]
        counts = count[take]
        which = np.repeat(take, counts)
        offset = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        cand = self._order[np.repeat(lo[take], counts) + offset].astype(np.int64)
        variant, query = which // (tables * n), which % n
        near = popcount(self.words[cand] ^ turned[variant, query]) <= max_distance
        triple = np.unique((variant[near] * n + query[near]) * self.words.size + cand[near])
        vq, donor = np.divmod(triple, self.words.size)
        return vq // n, vq % n, donor


def _stable_order(keys: np.ndarray) -> np.ndarray:
    """``np.argsort(keys, kind="stable")`` for keys below 2^32, as two 16-bit radix passes."""
    keys = keys.astype(np.uint32, copy=False)
    low = np.argsort((keys & 0xFFFF).astype(np.uint16), kind="stable")
    return low[np.argsort((keys[low] >> 16).astype(np.uint16), kind="stable")]
