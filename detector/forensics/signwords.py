"""64-bit sign words of 8x8 residual blocks, and the bit tricks noise-copy queries them with.

A word holds the signs of one block's residual, bit ``8 i + j`` for row ``i``, column ``j``.
Turning or flipping the block permutes the bits, and an LSH key picks some of them; both are
bit gathers, done here with byte lookup tables so a whole batch of words moves in a few numpy
operations (:mod:`detector.forensics.noisecopy` turns every query word 16 ways against 8
tables: 128 gathers per word).
"""

from __future__ import annotations

import numpy as np

SIDE = 8  # 8 x 8 = 64 bits


def gather_lut(source_bits: np.ndarray) -> np.ndarray:
    """Byte lookup tables that move bit ``source_bits[n]`` of a word to bit ``n``.

    ``out = OR_j lut[j][byte j of word]``: eight lookups instead of one shift per bit.
    """
    lut = np.zeros((8, 256), dtype=np.uint64)
    values = np.arange(256, dtype=np.uint64)
    for n, src in enumerate(np.asarray(source_bits, dtype=np.int64)):
        j, bit = divmod(int(src), 8)
        lut[j] |= ((values >> np.uint64(bit)) & np.uint64(1)) << np.uint64(n)
    return lut


def word_bytes(words: np.ndarray) -> np.ndarray:
    """(n, 8) bytes of each word, byte ``j`` holding bits ``8 j .. 8 j + 7``."""
    return np.ascontiguousarray(words, dtype="<u8").view(np.uint8).reshape(-1, 8)


def gather(luts: np.ndarray, words: np.ndarray) -> np.ndarray:
    """Every gather of ``luts`` (shape ``(..., 8, 256)``) applied to ``words``: ``(..., n)``."""
    by = word_bytes(words)
    out = luts[..., 0, by[:, 0]]
    for j in range(1, 8):
        out |= luts[..., j, by[:, j]]
    return out


def dense_words(resid: np.ndarray, step: int = 1) -> np.ndarray:
    """Sign words of every block origin (on a ``step`` grid) of a residual image."""
    rows, cols = resid.shape[0] - SIDE + 1, resid.shape[1] - SIDE + 1
    if rows <= 0 or cols <= 0:
        return np.zeros((0, 0), dtype=np.uint64)
    positive = resid > 0
    words = np.zeros(((rows + step - 1) // step, (cols + step - 1) // step), dtype=np.uint64)
    for b in range(64):
        i, j = divmod(b, SIDE)
        plane = positive[i : i + rows : step, j : j + cols : step]
        words |= plane.astype(np.uint64) << np.uint64(b)
    return words


def words_at(resid: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Sign words of the blocks with origins (ys, xs): the same as ``dense_words`` there."""
    i, j = np.divmod(np.arange(64), SIDE)
    signs = resid[ys[:, None] + i, xs[:, None] + j] > 0  # (n, 64), bit b = 8 i + j
    packed = np.packbits(signs, axis=1, bitorder="little")  # byte k holds bits 8 k .. 8 k + 7
    return np.ascontiguousarray(packed).view("<u8").ravel().astype(np.uint64)


def transitions(words: np.ndarray) -> np.ndarray:
    """Sign changes between 4-neighbours inside each 8x8 word (0-112); noise has about 56."""
    w = np.asarray(words, dtype=np.uint64)
    not_last_col = np.uint64(0x7F7F7F7F7F7F7F7F)
    horizontal = (w ^ (w >> np.uint64(1))) & not_last_col
    vertical = (w ^ (w >> np.uint64(8))) & np.uint64(0x00FFFFFFFFFFFFFF)
    return popcount(horizontal.ravel()).reshape(w.shape) + popcount(vertical.ravel()).reshape(
        w.shape
    )


_POP8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def popcount(words: np.ndarray) -> np.ndarray:
    """Set bits of each 64-bit word (numpy's own instruction where it has one)."""
    words = np.ascontiguousarray(words, dtype=np.uint64)
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(words).astype(np.int64)
    return _POP8[words.view(np.uint8).reshape(-1, 8)].sum(axis=1)
