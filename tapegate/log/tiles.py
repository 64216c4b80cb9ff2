"""The log's tree as tiles in an object store (C2SP tlog-tiles layout, tile height 8).

    tile/<L>/<N>[.p/<W>]        hashes at tree level 8*L: 256 per full tile, W in a partial one
    tile/entries/<N>[.p/<W>]    the leaves themselves: each a big-endian uint16 length and bytes
    checkpoint                  the latest signed checkpoint (note.py)
    checkpoints/<time ms>       every checkpoint ever signed, kept so that each pair can be
                                checked for consistency

<N> is written in groups of three digits, all but the last prefixed with "x" (1234067 →
x001/x234/067). Tiles are only ever added: a partial tile stays when its full tile is written,
so a reader of an older, smaller tree still finds what it signed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from tapegate.log import merkle

TILE_HEIGHT = 8
TILE_WIDTH = 1 << TILE_HEIGHT
MAX_ENTRY_BYTES = 0xFFFF
CACHE_TILES = 1024  # about 8 MiB of hash tiles, or a few tens of MiB of entry bundles


class Store(Protocol):
    """The part of the archive's ObjectStore the log uses."""

    def put(self, key: str, data: bytes) -> None: ...

    def get(self, key: str) -> bytes: ...

    def list(self, prefix: str = "") -> list[str]: ...


class TileError(ValueError):
    """A tile that is missing or malformed for the tree size asked about."""


def index_path(n: int) -> str:
    groups = []
    while True:
        groups.append(f"{n % 1000:03d}")
        n //= 1000
        if n == 0:
            break
    groups.reverse()
    return "/".join([f"x{g}" for g in groups[:-1]] + [groups[-1]])


def tile_path(level: int | str, n: int, width: int = TILE_WIDTH) -> str:
    path = f"tile/{level}/{index_path(n)}"
    return path if width == TILE_WIDTH else f"{path}.p/{width}"


def encode_bundle(entries: Sequence[bytes]) -> bytes:
    out = bytearray()
    for entry in entries:
        if len(entry) > MAX_ENTRY_BYTES:
            raise ValueError(f"a log entry of {len(entry)} bytes is over {MAX_ENTRY_BYTES}")
        out += len(entry).to_bytes(2, "big") + entry
    return bytes(out)


def decode_bundle(data: bytes) -> list[bytes]:
    entries, pos = [], 0
    while pos < len(data):
        if pos + 2 > len(data):
            raise TileError("entry bundle ends inside a length")
        length = int.from_bytes(data[pos : pos + 2], "big")
        if pos + 2 + length > len(data):
            raise TileError("entry bundle ends inside an entry")
        entries.append(data[pos + 2 : pos + 2 + length])
        pos += 2 + length
    return entries


class TileLog:
    """Read and extend the tree kept in `store` under `prefix`."""

    def __init__(self, store: Store, prefix: str = "") -> None:
        self.store = store
        self.prefix = prefix
        # Tiles read or written, by path: a proof or a root reads the same ones again. Bounded:
        # the embedded sequencer lives as long as the gateway and the log only grows.
        self._tiles: dict[str, bytes] = {}

    # -- reading ---------------------------------------------------------------------------

    def nodes(self, size: int) -> merkle.Nodes:
        """The tree of `size` leaves as `merkle.Nodes`, read from its tiles."""

        def node(level: int, index: int) -> bytes:
            tile_level, height = divmod(level, TILE_HEIGHT)
            first = index << height  # at tree level 8 * tile_level
            count = 1 << height
            tile, offset = divmod(first, TILE_WIDTH)
            hashes = self._hashes(tile_level, tile, size)
            if offset + count > len(hashes):
                raise TileError(f"tile {tile_level}/{tile} has no node {level}/{index}")
            group = hashes[offset : offset + count]
            return merkle.root(merkle.list_nodes(group), count) if count > 1 else group[0]

        return node

    def root(self, size: int) -> bytes:
        return merkle.root(self.nodes(size), size)

    def entries(self, start: int, end: int, size: int) -> list[bytes]:
        """Leaves [start, end) of the tree of `size`."""
        out: list[bytes] = []
        for tile in range(start // TILE_WIDTH, (end + TILE_WIDTH - 1) // TILE_WIDTH):
            width = min(TILE_WIDTH, size - tile * TILE_WIDTH)
            bundle = decode_bundle(self._read("entries", tile, width))
            if len(bundle) < width:
                raise TileError(f"entry bundle {tile} holds {len(bundle)} of {width} entries")
            base = tile * TILE_WIDTH
            out += bundle[max(start - base, 0) : min(end - base, width)]
        return out

    def leaf_hashes(self, size: int) -> list[bytes]:
        out: list[bytes] = []
        for tile in range((size + TILE_WIDTH - 1) // TILE_WIDTH):
            out += self._hashes(0, tile, size)
        return out

    def _hashes(self, level: int, tile: int, size: int) -> list[bytes]:
        width = min(TILE_WIDTH, (size >> (TILE_HEIGHT * level)) - tile * TILE_WIDTH)
        if width <= 0:
            raise TileError(f"a tree of {size} has no tile {level}/{tile}")
        data = self._read(level, tile, width)
        if len(data) < width * merkle.HASH_LEN:
            raise TileError(f"tile {level}/{tile} holds {len(data) // 32} of {width} hashes")
        return [data[i : i + 32] for i in range(0, width * 32, 32)]

    def _read(self, level: int | str, tile: int, width: int) -> bytes:
        """A tile of `width`: its partial file, or the full tile it grew into."""
        paths = [tile_path(level, tile, width)]
        if width < TILE_WIDTH:
            paths.append(tile_path(level, tile))
        for path in paths:
            if path in self._tiles:
                return self._tiles[path]
            try:
                data = self.store.get(self.prefix + path)
            except FileNotFoundError:
                continue
            except OSError as exc:  # not a file (a directory put in its place), unreadable
                raise TileError(f"tile {path} cannot be read: {exc.strerror}") from None
            self._keep(path, data)
            return data
        raise TileError(f"tile {paths[0]} is missing")

    def _keep(self, path: str, data: bytes) -> None:
        if len(self._tiles) >= CACHE_TILES:
            self._tiles.clear()  # what is still needed is read again, once
        self._tiles[path] = data

    # -- writing (the sequencer's) ------------------------------------------------------------

    def append(self, size: int, leaves: Sequence[bytes]) -> int:
        """Add `leaves` after the first `size` and write every tile they touch; the new size.
        The caller signs and stores the checkpoint afterwards: until then readers keep using
        the old one, whose tiles are unchanged."""
        if not leaves:
            return size
        self._write_level("entries", size, [encode_bundle([e]) for e in leaves], bundle=True)
        new = [merkle.leaf_hash(e) for e in leaves]
        count, level = size, 0
        while new:
            new = self._write_level(level, count, new, bundle=False)
            count >>= TILE_HEIGHT
            level += 1
        return size + len(leaves)

    def _write_level(
        self, level: int | str, count: int, new: list[bytes], bundle: bool
    ) -> list[bytes]:
        """Append `new` items after `count` at one level; the hashes of tiles completed."""
        first, offset = divmod(count, TILE_WIDTH)
        items: list[bytes] = []
        if offset:
            data = self._read(level, first, offset)
            if bundle:
                items = [encode_bundle([e]) for e in decode_bundle(data)[:offset]]
            else:
                items = [data[i : i + 32] for i in range(0, offset * 32, 32)]
        items += new
        parents = []
        for i in range(0, len(items), TILE_WIDTH):
            group = items[i : i + TILE_WIDTH]
            path = tile_path(level, first + i // TILE_WIDTH, len(group))
            data = b"".join(group)
            self.store.put(self.prefix + path, data)
            self._keep(path, data)
            if len(group) == TILE_WIDTH and not bundle:
                parents.append(merkle.root(merkle.list_nodes(group), TILE_WIDTH))
        return parents
