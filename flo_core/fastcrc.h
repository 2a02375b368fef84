/* CRC-32 with zlib's polynomial and zlib's calling convention, faster on x86-64.
 *
 * flo_crc32(crc, buf, len) returns exactly what zlib's crc32(crc, buf, len) returns
 * (tests/unit/test_frame.py checks every length up to 1 KiB against zlib). Whole
 * 16-byte blocks are folded with carry-less multiplication (PCLMULQDQ: four lanes from
 * 64 bytes on), then Barrett-reduced, as in Intel's white paper "Fast CRC Computation
 * for Generic Polynomials Using PCLMULQDQ Instruction"; the last < 16 bytes take one
 * 1 KiB-table step each; from 256 bytes on, CPUs with VPCLMULQDQ fold 16 lanes at once
 * (flo_crc32_fold_wide; FLO_CRC_NARROW=1 turns that off). Why: zlib 1.2's braided CRC walks 16 KiB of tables, which the
 * KV store's cache misses keep evicting; a GET at K=16 spent 16 % of its time there.
 * CPUs without PCLMULQDQ use zlib for everything.
 */
#ifndef FLO_FASTCRC_H
#define FLO_FASTCRC_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <zlib.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define FLO_CRC_FOLDING 1

/* x^(k) mod P(x) constants of the bit-reflected CRC-32 (P = 0x104C11DB7). */
#define FLO_K1 0x154442bd4ULL /* fold by 4 x 128 bits */
#define FLO_K2 0x1c6e41596ULL
#define FLO_K3 0x1751997d0ULL /* fold by 128 bits */
#define FLO_K4 0x0ccaa009eULL
#define FLO_K5 0x163cd6124ULL /* 64 -> 32 bits */
#define FLO_P 0x1db710641ULL  /* P(x), reflected */
#define FLO_MU 0x1f7011641ULL /* floor(x^64 / P(x)), reflected */
#define FLO_K2048_LO 0x11542778aULL /* fold by 2048 bits (16 lanes: 4 x 512-bit registers) */
#define FLO_K2048_HI 0x1322d1430ULL

static int flo_crc_wide = 0; /* the CPU has AVX-512F + VPCLMULQDQ (flo_crc_probe) */

/* The first ``n`` bytes (a multiple of 256, >= 256) folded 512 bits at a time across four 512-bit
 * registers (16 lanes of 128 bits: 256 bytes a step), then into four 128-bit lanes: ``out[0..3]``
 * is the state the 4-lane loop of flo_crc32_fold would have after the same bytes. ``crc`` already
 * inverted. Why: VPCLMULQDQ folds four lanes per instruction, and four registers keep the
 * multiplier busy; a 4 KiB value's CRC takes about a third of the time. */
__attribute__((target("avx512f,vpclmulqdq,pclmul"))) static void flo_crc32_fold_wide(
    const uint8_t *p, size_t n, uint32_t crc, __m128i *out) {
    const __m512i k2048 = _mm512_broadcast_i32x4(_mm_set_epi64x((long long)FLO_K2048_HI, (long long)FLO_K2048_LO));
    const __m512i k512 = _mm512_broadcast_i32x4(_mm_set_epi64x((long long)FLO_K2, (long long)FLO_K1));
    __m512i z0, z1, z2, z3;
#define FLO_FOLD512(x, k, next) \
    _mm512_ternarylogic_epi64(_mm512_clmulepi64_epi128((x), (k), 0x11), _mm512_clmulepi64_epi128((x), (k), 0x00), \
                              (next), 0x96)
    z0 = _mm512_xor_si512(_mm512_loadu_si512((const void *)p), _mm512_castsi128_si512(_mm_cvtsi32_si128((int)crc)));
    z1 = _mm512_loadu_si512((const void *)(p + 64));
    z2 = _mm512_loadu_si512((const void *)(p + 128));
    z3 = _mm512_loadu_si512((const void *)(p + 192));
    p += 256;
    n -= 256;
    while (n >= 256) {
        z0 = FLO_FOLD512(z0, k2048, _mm512_loadu_si512((const void *)p));
        z1 = FLO_FOLD512(z1, k2048, _mm512_loadu_si512((const void *)(p + 64)));
        z2 = FLO_FOLD512(z2, k2048, _mm512_loadu_si512((const void *)(p + 128)));
        z3 = FLO_FOLD512(z3, k2048, _mm512_loadu_si512((const void *)(p + 192)));
        p += 256;
        n -= 256;
    }
    /* each register's lanes lie 512 bits before the next register's: fold them forward into z3 */
    z1 = FLO_FOLD512(z0, k512, z1);
    z2 = FLO_FOLD512(z1, k512, z2);
    z3 = FLO_FOLD512(z2, k512, z3);
#undef FLO_FOLD512
    out[0] = _mm512_extracti32x4_epi32(z3, 0);
    out[1] = _mm512_extracti32x4_epi32(z3, 1);
    out[2] = _mm512_extracti32x4_epi32(z3, 2);
    out[3] = _mm512_extracti32x4_epi32(z3, 3);
}

/* ``crc`` already inverted (zlib's pre-conditioning); ``n`` >= 16 and a multiple of 16.
 * Returns the CRC before zlib's final inversion. */
__attribute__((target("pclmul,sse4.1"))) static uint32_t flo_crc32_fold(const uint8_t *p, size_t n,
                                                                         uint32_t crc) {
    const __m128i k12 = _mm_set_epi64x((long long)FLO_K2, (long long)FLO_K1);
    const __m128i k34 = _mm_set_epi64x((long long)FLO_K4, (long long)FLO_K3);
    const __m128i mask32 = _mm_setr_epi32(-1, 0, -1, 0);
    __m128i a, b, c, d, t;
#define FLO_FOLD(x, k, next) \
    (_mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128((x), (k), 0x11), _mm_clmulepi64_si128((x), (k), 0x00)), (next)))

    if (n >= 256 && flo_crc_wide) {
        __m128i lanes[4];
        size_t wide = n & ~(size_t)255;
        flo_crc32_fold_wide(p, wide, crc, lanes);
        p += wide;
        n -= wide;
        a = lanes[0];
        b = lanes[1];
        c = lanes[2];
        d = lanes[3];
        goto four_lanes;
    }
    a = _mm_xor_si128(_mm_loadu_si128((const __m128i *)p), _mm_cvtsi32_si128((int)crc));
    p += 16;
    n -= 16;
    if (n >= 48) {
        /* four lanes of 128 bits, each folded 512 bits forward, then into one */
        b = _mm_loadu_si128((const __m128i *)p);
        c = _mm_loadu_si128((const __m128i *)(p + 16));
        d = _mm_loadu_si128((const __m128i *)(p + 32));
        p += 48;
        n -= 48;
    four_lanes:
        while (n >= 64) {
            a = FLO_FOLD(a, k12, _mm_loadu_si128((const __m128i *)p));
            b = FLO_FOLD(b, k12, _mm_loadu_si128((const __m128i *)(p + 16)));
            c = FLO_FOLD(c, k12, _mm_loadu_si128((const __m128i *)(p + 32)));
            d = FLO_FOLD(d, k12, _mm_loadu_si128((const __m128i *)(p + 48)));
            p += 64;
            n -= 64;
        }
        a = FLO_FOLD(a, k34, b);
        a = FLO_FOLD(a, k34, c);
        a = FLO_FOLD(a, k34, d);
    }
    while (n >= 16) {
        a = FLO_FOLD(a, k34, _mm_loadu_si128((const __m128i *)p));
        p += 16;
        n -= 16;
    }
#undef FLO_FOLD
    /* 128 -> 64 bits */
    t = _mm_clmulepi64_si128(a, k34, 0x10);
    a = _mm_xor_si128(_mm_srli_si128(a, 8), t);
    /* 64 -> 32 bits */
    t = _mm_srli_si128(a, 4);
    a = _mm_clmulepi64_si128(_mm_and_si128(a, mask32), _mm_set_epi64x(0, (long long)FLO_K5), 0x00);
    a = _mm_xor_si128(a, t);
    /* Barrett reduction */
    {
        const __m128i pmu = _mm_set_epi64x((long long)FLO_MU, (long long)FLO_P);
        t = _mm_clmulepi64_si128(_mm_and_si128(a, mask32), pmu, 0x10);
        t = _mm_clmulepi64_si128(_mm_and_si128(t, mask32), pmu, 0x00);
        a = _mm_xor_si128(a, t);
    }
    return (uint32_t)_mm_extract_epi32(a, 1);
}

static int flo_crc_folding = -1; /* -1 not probed yet; then whether the CPU has PCLMULQDQ + SSE4.1 */
static uint32_t flo_crc_bytes[256]; /* one-byte steps for the < 16 bytes folding leaves: 1 KiB */

static void flo_crc_probe(void) {
    uint32_t i, c;
    int k;
    for (i = 0; i < 256; i++) {
        c = i;
        for (k = 0; k < 8; k++)
            c = (c >> 1) ^ (0xEDB88320U & (0U - (c & 1U)));
        flo_crc_bytes[i] = c;
    }
    __builtin_cpu_init();
    flo_crc_folding = __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
    flo_crc_wide = flo_crc_folding && __builtin_cpu_supports("avx512f") &&
                   __builtin_cpu_supports("vpclmulqdq") && !getenv("FLO_CRC_NARROW");
}
#endif

static inline unsigned long flo_crc32(unsigned long crc, const unsigned char *buf, size_t len) {
#ifdef FLO_CRC_FOLDING
    uint32_t c;
    if (flo_crc_folding < 0)
        flo_crc_probe();
    if (flo_crc_folding) {
        c = ~(uint32_t)crc;
        if (len >= 16) {
            size_t chunk = len & ~(size_t)15;
            c = flo_crc32_fold(buf, chunk, c);
            buf += chunk;
            len -= chunk;
        }
        while (len--)
            c = flo_crc_bytes[(c ^ *buf++) & 0xFF] ^ (c >> 8);
        return (unsigned long)(~c);
    }
#endif
    return crc32(crc, buf, (uInt)len);
}

#endif /* FLO_FASTCRC_H */
