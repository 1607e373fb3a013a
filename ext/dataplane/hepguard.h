/* hepguard.h: the switch-wide guard tables every worker shares (dedup, rate limits, call
 * decisions). Plain C, static inline, no allocation, no locks, no system calls: usable under
 * nogil, nothing can block. The supervisor creates and formats the file (run directory `guard`,
 * hepfast.dataplane.rundir); every worker maps it MAP_SHARED once and keeps it across reloads.
 *
 * Memory (uint64 words):
 *
 *   word 0          magic HEP_GUARD_MAGIC ("HEPGUAR1")
 *   word 1          dedup slots (a power of two, >= 8)
 *   word 2          call slots (a power of two, >= 8)
 *   HEP_GUARD_TAT   per rule slot, 8 words apart (one cache line each): the packet rate's TAT
 *   HEP_GUARD_CTAT  per rule slot, 8 words apart: the call rate's TAT
 *   dedup table     [dedup slots]
 *   call table      [call slots]
 *
 * Time: CLOCK_MONOTONIC, which all processes of one machine share (ns for the rate limits, ms
 * truncated to 28 bits in the tables: they wrap after 74 h; a difference that looks up to
 * HEP_GUARD_SKEW_MS "in the future" counts as now, since workers read the clock once per batch
 * and a slightly older reading must not take a fresh entry for an expired one).
 *
 * Tables: open addressing over buckets of 8 consecutive slots (one cache line); a key's bucket is
 * its hash's low bits, its tag the high bits. A slot is one 64-bit word, 0 = empty:
 *   dedup: [tag:36][time:28]           (time: when the identity was first seen)
 *   calls: [tag:35][rejected:1][time:28] (time: the call's last packet)
 * Lookup scans the bucket for a live entry of the tag; a miss claims the first empty or expired
 * slot with one compare-and-swap, and on a lost race scans again (at most HEP_GUARD_TRIES
 * times). Of any number of processes that look the same identity up at the same time, exactly
 * one claims it, the others find its entry (the claim is one CAS on the same word, since they
 * scan the same bucket in the same order; only an unrelated entry expiring between two scans can
 * make them pick different slots). A bucket with no empty or expired slot answers FULL: the
 * caller forwards and counts it, nothing waits.
 *
 * Rate limits: GCRA on a shared theoretical arrival time (TAT, ns) per rule slot, updated with
 * CAS: a packet at time t passes when max(TAT, t) - t <= tau, and moves TAT to max(TAT, t) + T
 * (T = 1e9 / rate, tau = (burst - 1) * T): at most rate * D + burst packets pass in any interval
 * D, over all workers together.
 */
#ifndef HEPGUARD_H
#define HEPGUARD_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define HEP_GUARD_MAGIC 0x3152415547504548ULL     /* "HEPGUAR1" little-endian */
#define HEP_GUARD_RULES 512                       /* = constants.MAX_RULE_SLOTS */
#define HEP_GUARD_TAT 64
#define HEP_GUARD_CTAT (HEP_GUARD_TAT + 8 * HEP_GUARD_RULES)
#define HEP_GUARD_TABLES (HEP_GUARD_CTAT + 8 * HEP_GUARD_RULES)
#define HEP_GUARD_TBITS 28
#define HEP_GUARD_TMASK ((1ULL << HEP_GUARD_TBITS) - 1)
#define HEP_GUARD_SKEW_MS 10000ULL
#define HEP_GUARD_TRIES 4
#define HEP_GUARD_GCRA_TRIES 64

/* answers of hep_dedup and hep_call */
#define HEP_G_NEW 0          /* dedup: first sighting (claimed); calls: admitted */
#define HEP_G_HIT 1          /* dedup: a duplicate; calls: rejected */
#define HEP_G_FULL 2         /* no room in the bucket: not remembered, forward */

typedef struct {
    uint64_t *base;
    uint64_t *dedup;
    uint64_t dmask;
    uint64_t *calls;
    uint64_t cmask;
} hep_guard;

static inline uint64_t hep_guard_words(uint64_t dslots, uint64_t cslots) {
    return HEP_GUARD_TABLES + dslots + cslots;
}

/* 0, or -1 when the mapping is not a formatted guard file of a size that holds its tables. */
static inline int hep_guard_attach(hep_guard *g, void *base, size_t len) {
    uint64_t *w = (uint64_t *)base;
    uint64_t ds, cs;
    memset(g, 0, sizeof(*g));
    if (base == NULL || len < HEP_GUARD_TABLES * 8 || w[0] != HEP_GUARD_MAGIC)
        return -1;
    ds = w[1];
    cs = w[2];
    if (ds < 8 || cs < 8 || (ds & (ds - 1)) || (cs & (cs - 1)) || ds > (1ULL << 32)
            || cs > (1ULL << 32) || hep_guard_words(ds, cs) * 8 > len)
        return -1;
    g->base = w;
    g->dedup = w + HEP_GUARD_TABLES;
    g->dmask = ds - 1;
    g->calls = w + HEP_GUARD_TABLES + ds;
    g->cmask = cs - 1;
    return 0;
}

static inline uint64_t hg_load(const uint64_t *p) {
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

static inline int hg_cas(uint64_t *p, uint64_t *expected, uint64_t desired) {
    return __atomic_compare_exchange_n(p, expected, desired, 0, __ATOMIC_ACQ_REL,
                                       __ATOMIC_ACQUIRE);
}

/* An entry written at `t` (28-bit ms) is younger than `window` ms at `tnow`. */
static inline int hg_live(uint64_t w, uint64_t tnow, uint64_t window) {
    uint64_t d = (tnow - (w & HEP_GUARD_TMASK)) & HEP_GUARD_TMASK;
    return d < window || d > HEP_GUARD_TMASK - HEP_GUARD_SKEW_MS;
}

/* Dedup: has identity h been seen within `window` ms? `expire` (>= window) is when any entry
 * of the table may be reused: the longest window of the plan. */
static inline int hep_dedup(hep_guard *g, uint64_t h, uint64_t now_ms, uint64_t window,
                            uint64_t expire) {
    uint64_t tag = (h >> HEP_GUARD_TBITS) | (1ULL << 35);       /* 36 bits, never 0 */
    uint64_t tnow = now_ms & HEP_GUARD_TMASK;
    uint64_t want = (tag << HEP_GUARD_TBITS) | tnow;
    uint64_t *b = g->dedup + ((h & g->dmask) & ~7ULL);
    uint64_t w, fw = 0;
    int k, free_at, attempt;
    for (attempt = 0; attempt < HEP_GUARD_TRIES; attempt++) {
        free_at = -1;
        for (k = 0; k < 8; k++) {
            w = hg_load(b + k);
            if (w != 0 && (w >> HEP_GUARD_TBITS) == tag && hg_live(w, tnow, window))
                return HEP_G_HIT;
            if (free_at < 0 && (w == 0 || !hg_live(w, tnow, expire))) {
                free_at = k;
                fw = w;
            }
        }
        if (free_at < 0)
            return HEP_G_FULL;
        if (hg_cas(b + free_at, &fw, want))
            return HEP_G_NEW;
    }
    return HEP_G_FULL;
}

/* Start loading the cache line hep_dedup(g, h, ...) will read (a worker prefetches a few
 * packets ahead: the table is larger than the caches). */
static inline void hep_dedup_prefetch(const hep_guard *g, uint64_t h) {
    __builtin_prefetch(g->dedup + ((h & g->dmask) & ~7ULL), 1, 3);
}

/* GCRA on the shared TAT *tat (ns): 1 = the packet passes (TAT moved), 0 = over the rate. */
static inline int hep_gcra(uint64_t *tat, uint64_t now_ns, uint64_t T, uint64_t tau) {
    uint64_t old, base;
    int k;
    old = hg_load(tat);
    for (k = 0; k < HEP_GUARD_GCRA_TRIES; k++) {
        base = old > now_ns ? old : now_ns;
        if (base - now_ns > tau)
            return 0;
        if (hg_cas(tat, &old, base + T))
            return 1;
        /* another worker moved it: `old` now holds its value, decide again */
    }
    return 0;
}

/* Give back the emission a hep_gcra pass took from *tat (T ns), when the packet it admitted
 * turned out not to need it (another worker decided the same call first). */
static inline void hep_gcra_refund(uint64_t *tat, uint64_t T) {
    uint64_t old = hg_load(tat);
    int k;
    for (k = 0; k < HEP_GUARD_GCRA_TRIES && old >= T; k++)
        if (hg_cas(tat, &old, old - T))
            return;
}

static inline uint64_t *hep_guard_tat(hep_guard *g, int rule_slot) {
    return g->base + HEP_GUARD_TAT + 8 * (uint64_t)rule_slot;
}

static inline uint64_t *hep_guard_ctat(hep_guard *g, int rule_slot) {
    return g->base + HEP_GUARD_CTAT + 8 * (uint64_t)rule_slot;
}

/* Calls: the decision for call h (already salted by rule) of rule_slot: HEP_G_NEW admitted,
 * HEP_G_HIT rejected, HEP_G_FULL not remembered (the caller forwards). A call seen before and
 * idle for less than `idle` ms keeps its decision (its entry's time is refreshed); a new one is
 * decided by the rule's call rate (GCRA: T, tau) and remembered. */
static inline int hep_call(hep_guard *g, int rule_slot, uint64_t h, uint64_t now_ns,
                           uint64_t T, uint64_t tau, uint64_t idle) {
    uint64_t tag = (h >> (HEP_GUARD_TBITS + 1)) | (1ULL << 34);   /* 35 bits, never 0 */
    uint64_t tnow = (now_ns / 1000000ULL) & HEP_GUARD_TMASK;
    uint64_t *b = g->calls + ((h & g->cmask) & ~7ULL);
    uint64_t w, fw = 0, rej = 2;
    int k, free_at, attempt;
    for (attempt = 0; attempt < HEP_GUARD_TRIES; attempt++) {
        free_at = -1;
        for (k = 0; k < 8; k++) {
            w = hg_load(b + k);
            if (w != 0 && (w >> (HEP_GUARD_TBITS + 1)) == tag && hg_live(w, tnow, idle)) {
                if ((w & HEP_GUARD_TMASK) != tnow)          /* refresh; a lost race is fine */
                    hg_cas(b + k, &w, (w & ~HEP_GUARD_TMASK) | tnow);
                if (rej == 0)
                    /* Another worker recorded this call between our look and our CAS: its
                     * decision stands, and the token we took for it goes back. */
                    hep_gcra_refund(hep_guard_ctat(g, rule_slot), T);
                return ((w >> HEP_GUARD_TBITS) & 1) ? HEP_G_HIT : HEP_G_NEW;
            }
            if (free_at < 0 && (w == 0 || !hg_live(w, tnow, idle))) {
                free_at = k;
                fw = w;
            }
        }
        if (free_at < 0)
            return HEP_G_FULL;
        if (rej == 2)
            rej = hep_gcra(hep_guard_ctat(g, rule_slot), now_ns, T, tau) ? 0 : 1;
        if (hg_cas(b + free_at, &fw, (tag << (HEP_GUARD_TBITS + 1)) | (rej << HEP_GUARD_TBITS)
                   | tnow))
            return rej ? HEP_G_HIT : HEP_G_NEW;
    }
    return HEP_G_FULL;
}

/* ---- XXH64 (the identity hash of dedup: 8 bytes per step, ~10x FNV-1a on payloads) ---- */

#define HG_P1 0x9E3779B185EBCA87ULL
#define HG_P2 0xC2B2AE3D27D4EB4FULL
#define HG_P3 0x165667B19E3779F9ULL
#define HG_P4 0x85EBCA77C2B2AE63ULL
#define HG_P5 0x27D4EB2F165667C5ULL

static inline uint64_t hg_rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

static inline uint64_t hg_rd64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

static inline uint32_t hg_rd32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap32(v);
#endif
    return v;
}

static inline uint64_t hg_round(uint64_t acc, uint64_t in) {
    acc += in * HG_P2;
    acc = hg_rotl(acc, 31);
    return acc * HG_P1;
}

static inline uint64_t hg_merge(uint64_t h, uint64_t v) {
    h ^= hg_round(0, v);
    return h * HG_P1 + HG_P4;
}

/* XXH64 of p[0:n] with `seed` (twin: hepfast.dataplane.guard.xxh64). */
static inline uint64_t hep_xxh64(const uint8_t *p, size_t n, uint64_t seed) {
    const uint8_t *end = p + n;
    uint64_t h, v1, v2, v3, v4;
    if (n >= 32) {
        v1 = seed + HG_P1 + HG_P2;
        v2 = seed + HG_P2;
        v3 = seed;
        v4 = seed - HG_P1;
        do {
            v1 = hg_round(v1, hg_rd64(p));
            v2 = hg_round(v2, hg_rd64(p + 8));
            v3 = hg_round(v3, hg_rd64(p + 16));
            v4 = hg_round(v4, hg_rd64(p + 24));
            p += 32;
        } while (p + 32 <= end);
        h = hg_rotl(v1, 1) + hg_rotl(v2, 7) + hg_rotl(v3, 12) + hg_rotl(v4, 18);
        h = hg_merge(h, v1);
        h = hg_merge(h, v2);
        h = hg_merge(h, v3);
        h = hg_merge(h, v4);
    } else {
        h = seed + HG_P5;
    }
    h += (uint64_t)n;
    while (p + 8 <= end) {
        h ^= hg_round(0, hg_rd64(p));
        h = hg_rotl(h, 27) * HG_P1 + HG_P4;
        p += 8;
    }
    if (p + 4 <= end) {
        h ^= (uint64_t)hg_rd32(p) * HG_P1;
        h = hg_rotl(h, 23) * HG_P2 + HG_P3;
        p += 4;
    }
    while (p < end) {
        h ^= (uint64_t)(*p) * HG_P5;
        h = hg_rotl(h, 11) * HG_P1;
        p++;
    }
    h ^= h >> 33;
    h *= HG_P2;
    h ^= h >> 29;
    h *= HG_P3;
    h ^= h >> 32;
    return h;
}

#endif
