"""RFC 9162 Merkle tree hashing, inclusion and consistency proofs (section 2.1).

Leaf and node hashes are domain-separated (0x00 before a leaf's bytes, 0x01 before two child
hashes), so a leaf can never pass for an inner node. Trees are read through `Nodes`: the hash of
a complete, aligned subtree, which the tile store answers from its tiles and a test from a list.
The proof checkers are the RFC's algorithms as written, and need nothing but hashes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

HASH_LEN = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

# node(level, index): the hash of the complete subtree over leaves
# [index * 2**level, (index + 1) * 2**level).
Nodes = Callable[[int, int], bytes]


class ProofError(ValueError):
    """A proof that does not check out against the hashes it was given."""


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def subtree_hash(nodes: Nodes, start: int, end: int) -> bytes:
    """MTH over leaves [start, end), where start is aligned as RFC 9162's splits leave it."""
    n = end - start
    if n <= 0:
        return EMPTY_ROOT
    if n & (n - 1) == 0 and start % n == 0:
        level = n.bit_length() - 1
        return nodes(level, start >> level)
    k = _split(n)
    return node_hash(subtree_hash(nodes, start, start + k), subtree_hash(nodes, start + k, end))


def root(nodes: Nodes, size: int) -> bytes:
    return subtree_hash(nodes, 0, size)


def inclusion_proof(nodes: Nodes, index: int, size: int) -> list[bytes]:
    """PATH(index, D[size]) of RFC 9162 2.1.3.1."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of {size}")
    proof: list[bytes] = []
    start, end = 0, size
    while end - start > 1:
        k = _split(end - start)
        if index < start + k:
            proof.append(subtree_hash(nodes, start + k, end))
            end = start + k
        else:
            proof.append(subtree_hash(nodes, start, start + k))
            start += k
    return proof[::-1]


def consistency_proof(nodes: Nodes, old: int, new: int) -> list[bytes]:
    """PROOF(old, D[new]) of RFC 9162 2.1.4.1."""
    if not 0 <= old <= new:
        raise ValueError(f"no consistency proof from {old} to {new}")
    if old in (0, new):
        return []
    proof: list[bytes] = []
    start, end, whole = 0, new, True
    m = old
    while True:
        n = end - start
        if m == n:
            if not whole:
                proof.append(subtree_hash(nodes, start, end))
            break
        k = _split(n)
        if m <= k:
            proof.append(subtree_hash(nodes, start + k, end))
            end = start + k
        else:
            proof.append(subtree_hash(nodes, start, start + k))
            start, m, whole = start + k, m - k, False
    return proof[::-1]


def check_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], expected_root: bytes
) -> None:
    """RFC 9162 2.1.3.2, for a leaf hash. Raises ProofError unless it holds."""
    if not 0 <= index < size:
        raise ProofError(f"leaf {index} is not in a tree of {size}")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ProofError("inclusion proof is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("inclusion proof is too short")
    if r != expected_root:
        raise ProofError("inclusion proof does not lead to the root")


def check_consistency(
    old: int, new: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """RFC 9162 2.1.4.2. Raises ProofError unless the tree of `new` extends the one of `old`."""
    if not 0 <= old <= new:
        raise ProofError(f"a tree of {new} cannot extend one of {old}")
    if old == new:
        if proof:
            raise ProofError("consistency proof between equal sizes must be empty")
        if old_root != new_root:
            raise ProofError("two trees of the same size with different roots")
        return
    if old == 0:
        if proof:
            raise ProofError("consistency proof from the empty tree must be empty")
        return
    if not proof:
        raise ProofError("consistency proof is empty")
    path = list(proof)
    if old & (old - 1) == 0:  # an exact power of two: the old root is the first node
        path.insert(0, old_root)
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is too long")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("consistency proof is too short")
    if fr != old_root:
        raise ProofError("consistency proof does not lead to the old root")
    if sr != new_root:
        raise ProofError("consistency proof does not lead to the new root")


def list_nodes(leaf_hashes: Sequence[bytes]) -> Nodes:
    """`Nodes` over leaf hashes held in memory (tests, small trees)."""
    cache: dict[tuple[int, int], bytes] = {}

    def nodes(level: int, index: int) -> bytes:
        if level == 0:
            return leaf_hashes[index]
        got = cache.get((level, index))
        if got is None:
            got = node_hash(nodes(level - 1, 2 * index), nodes(level - 1, 2 * index + 1))
            cache[(level, index)] = got
        return got

    return nodes
