"""The session log: proof that whole sessions exist (docs/LOG.md).

A tape proves that nothing inside it changed; the log proves that tapes exist. Gateways emit
leaves (leaf.py) through the same sink as chunks; one sequencer (sequencer.py) appends them to a
Merkle tree kept as tiles (tiles.py, RFC 9162 hashing in merkle.py) and signs checkpoints
(note.py); `tapegate log verify` (verify.py) checks the tree, its checkpoints and the archive
against each other.
"""
