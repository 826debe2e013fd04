"""Paged KV cache bookkeeping: a block pool and the per-sequence KV cache manager.

Shaped like vLLM v1. The `BlockPool` owns ref counts, the free queue and the prefix-cache
hash map; the `KVCacheManager` owns per-sequence block tables and decides which blocks a
sequence gets. Neither touches KV memory: the runner reads and writes the slots it is told.

Prefix caching: a FULL block of a sequence is identified by a chained hash,
`h_i = H(h_{i-1}, tokens of block i)`, so equal hashes mean equal whole prefixes. Full
blocks are registered in the hash map once their KV has been computed. When a block's ref
count drops to zero it stays in the map (its KV is still valid) and joins the free queue;
it is evicted (LRU) only when a fresh block is needed. Blocks that carry no hash are handed
out before cached ones.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

BlockHash = bytes


@dataclass
class KVBlock:
    """One fixed-size block of KV slots."""

    block_id: int
    ref_cnt: int = 0
    block_hash: BlockHash | None = None


def hash_block(parent: BlockHash | None, token_ids: Sequence[int]) -> BlockHash:
    """Chained hash of one full block: depends on every token before it."""
    h = hashlib.blake2b(digest_size=16)
    h.update(parent or b"root")
    h.update(np.asarray(token_ids, dtype=np.int64).tobytes())
    return h.digest()


class BlockPool:
    """Fixed set of blocks with ref counts, an LRU free queue and a hash -> block map."""

    def __init__(self, num_blocks: int) -> None:
        if num_blocks <= 0:
            raise ValueError("num_blocks must be > 0")
        self.blocks = [KVBlock(i) for i in range(num_blocks)]
        # Free blocks, evicted from the front. Values unused (OrderedDict as an ordered set).
        self._free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self._cached: dict[BlockHash, int] = {}

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free(self) -> int:
        """Blocks with no owner (including evictable cached ones)."""
        return len(self._free)

    @property
    def num_cached(self) -> int:
        return len(self._cached)

    def lookup(self, block_hash: BlockHash) -> KVBlock | None:
        """The cached block holding this hash, if any."""
        bid = self._cached.get(block_hash)
        return None if bid is None else self.blocks[bid]

    def get_new_blocks(self, n: int) -> list[KVBlock]:
        """Take n free blocks (evicting the least recently freed cached ones); ref_cnt = 1."""
        if n > len(self._free):
            raise RuntimeError(f"asked for {n} blocks, {len(self._free)} free")
        out = []
        for _ in range(n):
            bid, _ = self._free.popitem(last=False)
            blk = self.blocks[bid]
            if blk.block_hash is not None:
                if self._cached.get(blk.block_hash) == bid:
                    del self._cached[blk.block_hash]
                blk.block_hash = None
            blk.ref_cnt = 1
            out.append(blk)
        return out

    def touch(self, blocks: Sequence[KVBlock]) -> None:
        """Take a reference on (cached) blocks, pulling them out of the free queue."""
        for blk in blocks:
            if blk.ref_cnt == 0:
                self._free.pop(blk.block_id, None)
            blk.ref_cnt += 1

    def free_blocks(self, blocks: Sequence[KVBlock]) -> None:
        """Drop a reference; blocks reaching zero join the free queue.

        Callers pass a sequence's blocks tail first so that its last blocks are evicted
        before its first ones (a shared prefix lives longest).
        """
        for blk in blocks:
            if blk.ref_cnt <= 0:
                raise RuntimeError(f"block {blk.block_id} freed twice")
            blk.ref_cnt -= 1
            if blk.ref_cnt == 0:
                self._free[blk.block_id] = None
                if blk.block_hash is None:  # nothing worth keeping: hand it out first
                    self._free.move_to_end(blk.block_id, last=False)

    def cache_block(self, blk: KVBlock, block_hash: BlockHash) -> bool:
        """Register a computed full block under its hash. False if another holds it."""
        if blk.block_hash is not None:
            return blk.block_hash == block_hash
        if block_hash in self._cached:
            return False
        blk.block_hash = block_hash
        self._cached[block_hash] = blk.block_id
        return True

    def reset_prefix_cache(self) -> int:
        """Forget hashes of all free cached blocks; returns how many were dropped."""
        n = 0
        for bid in list(self._free):
            blk = self.blocks[bid]
            if blk.block_hash is not None:
                self._cached.pop(blk.block_hash, None)
                blk.block_hash = None
                n += 1
        return n


class SeqLike(Protocol):
    """What the KV manager needs from a sequence."""

    seq_id: int
    token_ids: list[int]
    num_computed_tokens: int


class KVCacheManager:
    """Per-sequence block tables over a `BlockPool`, with automatic prefix caching."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        if block_size <= 0:
            raise ValueError("block_size must be > 0")
        self.pool = BlockPool(num_blocks)
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self._tables: dict[int, list[KVBlock]] = {}
        self._hashes: dict[int, list[BlockHash]] = {}
        self._num_cached_blocks: dict[int, int] = {}
        self.prefix_queries = 0  # prompt tokens looked up in the prefix cache
        self.prefix_hits = 0  # of which found cached

    # -- queries ------------------------------------------------------------------------
    @property
    def num_blocks(self) -> int:
        return self.pool.num_blocks

    @property
    def num_used_blocks(self) -> int:
        return self.pool.num_blocks - self.pool.num_free

    @property
    def usage(self) -> float:
        return self.num_used_blocks / self.pool.num_blocks

    def block_table(self, seq_id: int) -> np.ndarray:
        """int32 block ids of a sequence, in position order."""
        return np.fromiter((b.block_id for b in self._tables.get(seq_id, ())), dtype=np.int32)

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def _block_hashes(self, seq: SeqLike, num_full: int) -> list[BlockHash]:
        hs = self._hashes.setdefault(seq.seq_id, [])
        bs = self.block_size
        while len(hs) < num_full:
            i = len(hs)
            hs.append(hash_block(hs[-1] if hs else None, seq.token_ids[i * bs : (i + 1) * bs]))
        return hs

    def get_computed_blocks(self, seq: SeqLike) -> tuple[list[KVBlock], int]:
        """Longest cached prefix of full blocks, leaving at least one token to compute.

        Returns the blocks and the number of tokens they cover. Takes no references:
        pass the blocks to `allocate_slots` in the same scheduling pass.
        """
        if not self.enable_prefix_caching:
            return [], 0
        max_full = (len(seq.token_ids) - 1) // self.block_size
        hits: list[KVBlock] = []
        for h in self._block_hashes(seq, max_full)[:max_full]:
            blk = self.pool.lookup(h)
            if blk is None:
                break
            hits.append(blk)
        return hits, len(hits) * self.block_size

    def note_prefix_lookup(self, queried: int, hit: int) -> None:
        """Count one admitted sequence's lookup in the hit-rate statistics."""
        self.prefix_queries += queried
        self.prefix_hits += hit

    # -- allocation ---------------------------------------------------------------------
    def allocate_slots(self, seq: SeqLike, num_new_tokens: int,
                       new_computed_blocks: Sequence[KVBlock] = ()) -> list[KVBlock] | None:
        """Make room for `num_new_tokens` more tokens of `seq`.

        `new_computed_blocks` are prefix-cache hits (from `get_computed_blocks`) that
        precede the new tokens. Returns the newly allocated blocks, or None (and changes
        nothing) when the pool cannot supply them: the caller should preempt.
        """
        table = self._tables.get(seq.seq_id, [])
        total = seq.num_computed_tokens + len(new_computed_blocks) * self.block_size + num_new_tokens
        n_new = self.blocks_needed(total) - len(table) - len(new_computed_blocks)
        # Cached hits with no owner sit in the free queue; taking them shrinks it.
        n_revived = sum(1 for b in new_computed_blocks if b.ref_cnt == 0)
        if n_new > self.pool.num_free - n_revived:
            return None
        self.pool.touch(new_computed_blocks)
        new = self.pool.get_new_blocks(max(n_new, 0))
        if seq.seq_id not in self._tables:
            self._tables[seq.seq_id] = table
            self._num_cached_blocks[seq.seq_id] = 0
        table.extend(new_computed_blocks)
        self._num_cached_blocks[seq.seq_id] += len(new_computed_blocks)
        table.extend(new)
        return new

    def cache_blocks(self, seq: SeqLike) -> None:
        """Register the sequence's newly computed full blocks in the prefix cache."""
        if not self.enable_prefix_caching or seq.seq_id not in self._tables:
            return
        num_full = min(seq.num_computed_tokens, len(seq.token_ids)) // self.block_size
        done = self._num_cached_blocks[seq.seq_id]
        if num_full <= done:
            return
        hashes = self._block_hashes(seq, num_full)
        table = self._tables[seq.seq_id]
        for i in range(done, num_full):
            self.pool.cache_block(table[i], hashes[i])
        self._num_cached_blocks[seq.seq_id] = num_full

    def trim(self, seq: SeqLike, num_tokens: int) -> int:
        """Give back the blocks past the first `num_tokens` tokens of `seq` (speculative decoding
        rolls back rejected positions this way); returns how many were freed.

        Call only with `num_tokens >= seq.num_computed_tokens`: computed KV is never dropped.
        Blocks past the computed tokens carry no prefix-cache hash (only full computed blocks
        are registered), so they go to the front of the free queue.
        """
        assert num_tokens >= seq.num_computed_tokens, "trim would drop computed KV"
        table = self._tables.get(seq.seq_id)
        if not table:
            return 0
        keep = self.blocks_needed(num_tokens)
        if len(table) <= keep:
            return 0
        tail = table[keep:]
        del table[keep:]
        self.pool.free_blocks(tail[::-1])
        return len(tail)

    def free(self, seq: SeqLike | int) -> None:
        """Release every block of a sequence (finish, cancel or preemption)."""
        seq_id = seq if isinstance(seq, int) else seq.seq_id
        table = self._tables.pop(seq_id, None)
        self._hashes.pop(seq_id, None)
        self._num_cached_blocks.pop(seq_id, None)
        if table:
            self.pool.free_blocks(table[::-1])

    def owns(self, seq_id: int) -> bool:
        return seq_id in self._tables
