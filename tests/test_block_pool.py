"""Block pool and KV cache manager: ref counts, prefix-cache hashes, LRU eviction."""

from __future__ import annotations

import pytest

from edgerun.serving.block_pool import BlockPool, KVCacheManager, hash_block
from edgerun.serving.scheduler import Sequence


def seq(tokens: list[int]) -> Sequence:
    return Sequence(prompt_ids=list(tokens), max_tokens=8)


def compute(kv: KVCacheManager, s: Sequence, n: int, hits=()) -> None:
    assert kv.allocate_slots(s, n, hits) is not None
    s.num_computed_tokens += len(hits) * kv.block_size + n
    kv.cache_blocks(s)


def test_pool_refcounts_and_free_queue() -> None:
    pool = BlockPool(4)
    a, b = pool.get_new_blocks(2)
    assert (a.ref_cnt, b.ref_cnt, pool.num_free) == (1, 1, 2)
    pool.touch([a])
    assert a.ref_cnt == 2
    pool.free_blocks([a, b])
    assert (a.ref_cnt, b.ref_cnt, pool.num_free) == (1, 0, 3)
    pool.free_blocks([a])
    assert pool.num_free == 4
    with pytest.raises(RuntimeError):
        pool.free_blocks([a])
    with pytest.raises(RuntimeError):
        pool.get_new_blocks(5)


def test_chained_hash_depends_on_prefix() -> None:
    h1 = hash_block(None, [1, 2, 3, 4])
    assert hash_block(None, [1, 2, 3, 4]) == h1
    assert hash_block(h1, [5, 6, 7, 8]) != hash_block(hash_block(None, [0, 2, 3, 4]), [5, 6, 7, 8])


def test_block_table_and_allocation_failure() -> None:
    kv = KVCacheManager(num_blocks=4, block_size=4)
    s = seq(list(range(10)))
    new = kv.allocate_slots(s, 10)
    assert new is not None and len(new) == 3
    assert list(kv.block_table(s.seq_id)) == [b.block_id for b in new]
    t = seq(list(range(100, 110)))
    assert kv.allocate_slots(t, 10) is None  # needs 3, 1 free: nothing changes
    assert kv.num_used_blocks == 3 and not kv.owns(t.seq_id)
    s.num_computed_tokens = 10
    s.token_ids += [1, 2]
    assert kv.allocate_slots(s, 2) is not None and len(kv.block_table(s.seq_id)) == 3  # fits block 3
    s.num_computed_tokens = 12
    s.token_ids += [3]
    assert len(kv.allocate_slots(s, 1)) == 1 and kv.num_used_blocks == 4
    kv.free(s)
    assert kv.num_used_blocks == 0


def test_prefix_hits_share_blocks_and_leave_one_token() -> None:
    kv = KVCacheManager(num_blocks=16, block_size=4)
    a = seq(list(range(12)))
    compute(kv, a, 12)
    assert kv.pool.num_cached == 3
    b = seq(list(range(10)) + [99, 98])  # shares two full blocks
    hits, n = kv.get_computed_blocks(b)
    assert n == 8 and [h.block_id for h in hits] == list(kv.block_table(a.seq_id)[:2])
    compute(kv, b, 4, hits)
    assert [kv.pool.blocks[i].ref_cnt for i in kv.block_table(a.seq_id)] == [2, 2, 1]
    # Same prompt exactly: the last full block is recomputed so there are logits.
    c = seq(list(range(12)))
    hits, n = kv.get_computed_blocks(c)
    assert n == 8
    kv.free(a)
    kv.free(b)
    assert kv.num_used_blocks == 0 and kv.pool.num_cached == 4


def test_free_cached_blocks_survive_and_lru_evicts_oldest() -> None:
    kv = KVCacheManager(num_blocks=6, block_size=2)
    a = seq([1, 2, 3, 4, 5])
    compute(kv, a, 5)  # blocks [1,2] [3,4] cached, [5] partial
    kv.free(a)
    assert kv.pool.num_free == 6 and kv.pool.num_cached == 2
    # A hit on a free cached block takes it out of the free queue.
    b = seq([1, 2, 3, 4, 7])
    hits, n = kv.get_computed_blocks(b)
    assert n == 4
    compute(kv, b, 1, hits)
    assert kv.num_used_blocks == 3
    kv.free(b)
    # Fill the pool with unrelated work: uncached blocks go first, then the LRU cached ones.
    c = seq(list(range(50, 58)))
    assert kv.allocate_slots(c, 8) is not None  # 4 blocks: all free uncached ones
    assert kv.pool.num_cached == 2
    d = seq([60, 61, 62])
    assert kv.allocate_slots(d, 2) is not None  # evicts one cached: the tail [3,4] goes first
    assert kv.pool.lookup(hash_block(None, [1, 2])) is not None
    assert kv.pool.lookup(hash_block(hash_block(None, [1, 2]), [3, 4])) is None


def test_allocate_counts_revived_cached_blocks() -> None:
    kv = KVCacheManager(num_blocks=3, block_size=2)
    a = seq([1, 2, 3, 4, 5])
    compute(kv, a, 5)
    kv.free(a)
    b = seq([1, 2, 3, 4, 9, 9, 9])  # 2 hits (both free) + needs 2 new blocks: only 1 left
    hits, n = kv.get_computed_blocks(b)
    assert n == 4
    assert kv.allocate_slots(b, 3, hits) is None
    assert kv.pool.num_free == 3 and all(blk.ref_cnt == 0 for blk in kv.pool.blocks)


def test_prefix_caching_off() -> None:
    kv = KVCacheManager(num_blocks=8, block_size=2, enable_prefix_caching=False)
    a = seq([1, 2, 3, 4, 5])
    compute(kv, a, 5)
    assert kv.pool.num_cached == 0
    assert kv.get_computed_blocks(seq([1, 2, 3, 4, 5])) == ([], 0)
