/*
 * edgerun native kernels, internal: the repacked layout (a second copy of a Q4_0 / Q5_0 / Q8_0 /
 * Q4_K / Q6_K matrix laid out for the small-batch kernels), shared by its builders and registry
 * (repack.c) and its kernels (arch/x86/repack.c).
 *
 * Why: the gather16 kernels (arch/x86/gather16.c) decode the on-disk rows at every use: per 16
 * rows x 32 values they gather the 16 scales (and Q5_0's 16 high-bit words) and transpose 16 row
 * pieces. On the 0.5B at 8 sequences those gathers and shuffles, not the multiply-adds, set the
 * pace (perf: the instruction after the scale gather alone took 11% of the kernel). The serving
 * engine, which runs batches, can ask for this copy once at load (er_tiles_make / er_tiles_add);
 * the row-major matrix stays for one sequence, for prefill and for embedding lookups.
 *
 * Legacy layout, per tile of 16 rows (rows n0..n0+15, n0 a multiple of 16), per pair of blocks
 * 2p, 2p+1 (32 values each; a tile is nb/2 pairs, tiles follow each other):
 *   64 B  scales: 16 halves of block 2p (row order), then 16 of block 2p+1
 *   Q5_0: 2 x 64 B high-bit masks, block 2p then 2p+1: eight 64-bit masks per block, mask j bit
 *         4 * row + k = high bit of the value that byte 4 * row + k of vector j holds
 *   Q4_0 / Q5_0: 2 x 256 B nibbles: four 64-byte vectors per block, vector j dword `row` = bytes
 *         4j..4j+3 of that row's qs (low nibbles: values 4j..4j+3, high: 16+4j..16+4j+3)
 *   Q8_0: 2 x 512 B: eight vectors per block, vector j dword `row` = values 4j..4j+3 of the row,
 *         each + 128 (unsigned for VNNI)
 * A pair is 576 / 704 / 1088 bytes (9 / 11 / 17 cache lines), the same bytes as the 16 x 2 blocks
 * it replaces, so the copy is as large as the matrix. The K-quant layouts: ER_REPACK_Q4_K_TB and
 * ER_REPACK_Q6_K_TB below.
 */
#ifndef EDGERUN_REPACK_H
#define EDGERUN_REPACK_H

#include "common.h"

#define ER_REPACK_Q4_0_PAIR 576
#define ER_REPACK_Q5_0_PAIR 704
#define ER_REPACK_Q8_0_PAIR 1088

/* Q4_K: per tile of 16 rows and super-block of 256 values, 2368 bytes (37 cache lines; the 16 blocks
 * take 2304): 16 halves d, 16 halves dmin, the 8 six-bit sub-block scales as bytes (sub-block-major:
 * 16 rows each), the 8 mins as byte pairs (pair t: mins 2t, 2t+1 of each row, for int16 madds), then
 * the nibbles: per 64-value chunk c, eight vectors j whose dword `row` is bytes 32c+4j..+3 of that
 * row's qs (low nibbles: values 64c+4j.., sub-block 2c; high: 64c+32+4j.., sub-block 2c+1). */
#define ER_REPACK_Q4_K_TB 2368

/* Q6_K: per tile and super-block 3360 bytes (the 16 blocks' size): 16 halves d, the 16 int8
 * sub-block scales (sub-block-major: 16 rows each), then per vector v < 64 (values 4v..4v+3 of
 * each row, dword = row) two 64-bit lane masks (bit 4 and bit 5 of the 6-bit values), then 32
 * nibble vectors: k holds vector k's low four bits in its low nibbles and vector k + 32's in its
 * high ones. Values enter as u = q + 32 (0..63). */
#define ER_REPACK_Q6_K_TB 3360

/* the layout builders (portable C), one per type: W (N rows of rb bytes) -> out */
void repack_make_q4_0(const uint8_t *W, int64_t rb, int N, int K, uint8_t *out);
void repack_make_q5_0(const uint8_t *W, int64_t rb, int N, int K, uint8_t *out);
void repack_make_q8_0(const uint8_t *W, int64_t rb, int N, int K, uint8_t *out);
void repack_make_q4_K(const uint8_t *W, int64_t rb, int N, int K, uint8_t *out);
void repack_make_q6_K(const uint8_t *W, int64_t rb, int N, int K, uint8_t *out);

#endif
