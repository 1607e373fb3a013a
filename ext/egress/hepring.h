/* hepring.h: the bounded single-producer/single-consumer shared-memory ring between a worker
 * (producer) and an egress process (consumer). Plain C, static inline, no allocation, no locks,
 * no system calls: every function is usable under nogil and none can fail in a way that needs
 * errno.
 *
 * Memory (one mapping per ring, a memfd created and formatted by the supervisor, mapped
 * MAP_SHARED by both sides):
 *
 *   offset    0  u64 magic               HEP_RING_MAGIC ("HEPRING1"); written once, at format
 *   offset    8  u64 size                data bytes: a power of two, HEP_RING_MIN..HEP_RING_MAX
 *   offset   64  u64 head                bytes ever written and published (producer only)
 *   offset  128  u64 tail                bytes ever consumed (consumer only)
 *   offset  192  u64 records_pushed      producer stats (producer only)
 *   offset  200  u64 records_full        pushes refused because the ring was full
 *   offset  256  u64 records_consumed    consumer stats (consumer only)
 *   offset 4096  size data bytes
 *
 * head and tail are monotonic byte counters (never reduced modulo size): head - tail is the
 * number of bytes in flight, the position in the data area is counter & (size - 1). Each lives in
 * its own cache line, so the two sides never write the same line.
 *
 * Records: [u32 length, big-endian][u32 meta, host order][length bytes][pad to a multiple of 8].
 * The length header is the .hepraw record header as is, so a file destination writes it out
 * without rewriting anything. A record never wraps: when it does not fit before the end of the
 * data area the producer writes a wrap marker (length field HEP_RING_WRAP) if at least 8 bytes
 * remain and continues at offset 0; the consumer skips to the next multiple of size on a marker
 * or when fewer than 8 bytes remain. Because every record is a multiple of 8 bytes, positions are
 * always 8-aligned (so fewer than 8 bytes before the end cannot happen with this producer; the
 * consumer still accepts it). A record whose footprint (8 + padded length) exceeds size / 2 is
 * refused: with that bound an empty ring always accepts any permitted record, so a producer
 * never waits for space that cannot come.
 *
 * Ordering: the producer writes records into the data area with plain stores and makes them
 * visible with one release store of head (hep_ring_publish, once per worker batch); the consumer
 * reads head with an acquire load before touching the records. Symmetrically the consumer gives
 * space back with a release store of tail after it is done with the bytes, and the producer
 * re-reads tail (acquire) only when its cached copy says the ring is full.
 *
 * Neither side trusts the other's counter for memory safety: a span never goes past the end of
 * the data area and hep_ring_next refuses a length running past its span (HEP_RING_CORRUPT), so
 * a broken peer costs records, never an access outside the mapping.
 *
 * A hep_ring is a process-local handle used in one role:
 *   producer: head = local write position (published by hep_ring_publish), tail = cached tail;
 *   consumer: tail = local read position (stored by hep_ring_release), head = cached head.
 * A process that does both (tests, tools) uses two handles over the same mapping. Attaching
 * starts from the shared counters: records a previous producer handle pushed but never
 * published are dropped (publish before replacing a handle).
 */
#ifndef HEPRING_H
#define HEPRING_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* HEP_DEBUG (make debug) checks the ring's invariants on every call; off, they cost nothing. */
#ifdef HEP_DEBUG
#include <assert.h>
#define HEP_RING_CHECK(cond) assert(cond)
#else
#define HEP_RING_CHECK(cond) ((void)0)
#endif

#define HEP_RING_MAGIC      0x48455052494e4731ULL      /* "HEPRING1" */
#define HEP_RING_HDR_BYTES  4096u
#define HEP_RING_MIN_SIZE   (64ULL * 1024)
#define HEP_RING_MAX_SIZE   (4ULL * 1024 * 1024 * 1024)
#define HEP_RING_WRAP       0xFFFFFFFFu
#define HEP_RING_REC_HDR    8u

/* Return codes of hep_ring_push and hep_ring_next. */
#define HEP_RING_OK         0
#define HEP_RING_FULL       (-1)
#define HEP_RING_TOO_BIG    (-2)
#define HEP_RING_END        0
#define HEP_RING_RECORD     1
#define HEP_RING_CORRUPT    (-1)

typedef struct {
    uint64_t magic;                 /* 0 */
    uint64_t size;                  /* 8 */
    uint8_t _pad0[48];
    uint64_t head;                  /* 64 */
    uint8_t _pad1[56];
    uint64_t tail;                  /* 128 */
    uint8_t _pad2[56];
    uint64_t records_pushed;        /* 192 */
    uint64_t records_full;          /* 200 */
    uint8_t _pad3[48];
    uint64_t records_consumed;      /* 256 */
    uint8_t _pad4[HEP_RING_HDR_BYTES - 264];
} hep_ring_hdr;

#ifdef __cplusplus
#define HEP_RING_STATIC_ASSERT static_assert
#else
#define HEP_RING_STATIC_ASSERT _Static_assert
#endif
HEP_RING_STATIC_ASSERT(offsetof(hep_ring_hdr, size) == 8, "hepring.h layout");
HEP_RING_STATIC_ASSERT(offsetof(hep_ring_hdr, head) == 64, "hepring.h layout");
HEP_RING_STATIC_ASSERT(offsetof(hep_ring_hdr, tail) == 128, "hepring.h layout");
HEP_RING_STATIC_ASSERT(offsetof(hep_ring_hdr, records_pushed) == 192, "hepring.h layout");
HEP_RING_STATIC_ASSERT(offsetof(hep_ring_hdr, records_full) == 200, "hepring.h layout");
HEP_RING_STATIC_ASSERT(offsetof(hep_ring_hdr, records_consumed) == 256, "hepring.h layout");
HEP_RING_STATIC_ASSERT(sizeof(hep_ring_hdr) == HEP_RING_HDR_BYTES, "hepring.h layout");

typedef struct {
    hep_ring_hdr *hdr;
    uint8_t *data;                  /* hdr + HEP_RING_HDR_BYTES */
    uint64_t size;
    uint64_t mask;                  /* size - 1 */
    uint64_t head;                  /* see the role table above */
    uint64_t tail;
} hep_ring;

/* A walk over a span returned by hep_ring_peek. `off` is where the next record starts; after
 * HEP_RING_END it equals the span length (everything seen, including a trailing wrap marker), so
 * `off` is always the byte count to hand to hep_ring_release. */
typedef struct {
    const uint8_t *p;
    size_t n;
    size_t off;
} hep_ring_iter;

static inline uint32_t hep_ring_rd32be_(const uint8_t *p) {
    uint32_t v; memcpy(&v, p, 4); return __builtin_bswap32(v);
}

static inline uint64_t hep_ring_footprint(uint32_t len) {
    return HEP_RING_REC_HDR + (((uint64_t)len + 7u) & ~(uint64_t)7u);
}

/* Largest payload a ring of `size` data bytes accepts. */
static inline uint64_t hep_ring_max_record(uint64_t size) {
    return size / 2 - HEP_RING_REC_HDR;
}

static inline int hep_ring_valid_size(uint64_t size) {
    return size >= HEP_RING_MIN_SIZE && size <= HEP_RING_MAX_SIZE && (size & (size - 1)) == 0;
}

/* Initialise the header of a fresh (zero-filled) mapping; the creator calls it before any other
 * process attaches. Returns 0, or -1 when size or maplen are unusable. */
static inline int hep_ring_format(void *base, size_t maplen, uint64_t size) {
    hep_ring_hdr *h = (hep_ring_hdr *)base;
    if (base == NULL || ((uintptr_t)base & 63u) != 0 || !hep_ring_valid_size(size)
            || (uint64_t)maplen < HEP_RING_HDR_BYTES + size)
        return -1;
    memset(h, 0, sizeof(*h));
    h->size = size;
    __atomic_store_n(&h->magic, HEP_RING_MAGIC, __ATOMIC_RELEASE);
    return 0;
}

/* Bind a handle to a mapping; both roles use it. Validates magic, size, the mapping length and
 * head/tail consistency. Returns 0, or -1 (the handle is then unusable). */
static inline int hep_ring_attach(hep_ring *r, void *base, size_t maplen) {
    hep_ring_hdr *h = (hep_ring_hdr *)base;
    uint64_t size, head, tail;
    memset(r, 0, sizeof(*r));
    if (base == NULL || ((uintptr_t)base & 63u) != 0 || maplen < HEP_RING_HDR_BYTES)
        return -1;
    if (__atomic_load_n(&h->magic, __ATOMIC_ACQUIRE) != HEP_RING_MAGIC)
        return -1;
    size = h->size;
    if (!hep_ring_valid_size(size) || (uint64_t)maplen < HEP_RING_HDR_BYTES + size)
        return -1;
    tail = __atomic_load_n(&h->tail, __ATOMIC_ACQUIRE);
    head = __atomic_load_n(&h->head, __ATOMIC_ACQUIRE);
    if (head - tail > size || (head & 7u) != 0 || (tail & 7u) != 0)
        return -1;
    r->hdr = h;
    r->data = (uint8_t *)base + HEP_RING_HDR_BYTES;
    r->size = size;
    r->mask = size - 1;
    r->head = head;
    r->tail = tail;
    return 0;
}

/* ------------------------------------------------------------------------------ producer */

/* Append one record (not yet visible to the consumer: see hep_ring_publish). Returns HEP_RING_OK,
 * HEP_RING_FULL (counted in records_full; nothing written) or HEP_RING_TOO_BIG (not counted as
 * full: the caller counts it under its own reason). */
static inline int hep_ring_push(hep_ring *r, const uint8_t *data, uint32_t len, uint32_t meta) {
    hep_ring_hdr *h = r->hdr;
    uint64_t need = hep_ring_footprint(len);
    uint64_t pos, to_end, total;
    uint8_t *p;
    uint32_t be;

    if (need > r->size / 2)
        return HEP_RING_TOO_BIG;
    HEP_RING_CHECK((r->head & 7u) == 0 && r->head - r->tail <= r->size);
    pos = r->head & r->mask;
    to_end = r->size - pos;
    total = to_end < need ? to_end + need : need;
    if (total > r->size - (r->head - r->tail)) {
        r->tail = __atomic_load_n(&h->tail, __ATOMIC_ACQUIRE);
        if (total > r->size - (r->head - r->tail)) {
            __atomic_store_n(&h->records_full, h->records_full + 1, __ATOMIC_RELAXED);
            return HEP_RING_FULL;
        }
    }
    if (to_end < need) {
        if (to_end >= HEP_RING_REC_HDR) {
            be = HEP_RING_WRAP;
            memcpy(r->data + pos, &be, 4);
        }
        r->head += to_end;
        pos = 0;
    }
    p = r->data + pos;
    be = __builtin_bswap32(len);
    memcpy(p, &be, 4);
    memcpy(p + 4, &meta, 4);
    if (len)
        memcpy(p + HEP_RING_REC_HDR, data, len);
    r->head += need;
    __atomic_store_n(&h->records_pushed, h->records_pushed + 1, __ATOMIC_RELAXED);
    return HEP_RING_OK;
}

/* Make every record pushed so far visible to the consumer, at once. */
static inline void hep_ring_publish(hep_ring *r) {
    __atomic_store_n(&r->hdr->head, r->head, __ATOMIC_RELEASE);
}

/* Bytes published and not yet released by the consumer (wrap gaps included), from the shared
 * counters, so it is the same figure from either side. tail is read first: it never passes the
 * head read after it. */
static inline uint64_t hep_ring_used(const hep_ring *r) {
    uint64_t tail = __atomic_load_n(&r->hdr->tail, __ATOMIC_ACQUIRE);
    uint64_t head = __atomic_load_n(&r->hdr->head, __ATOMIC_ACQUIRE);
    return head - tail;
}

/* ------------------------------------------------------------------------------ consumer */

/* The longest contiguous span of complete records from the read position: up to the published
 * head or to the end of the data area, whichever comes first (a wrap marker at the read
 * position is skipped first). *n == 0 when the ring is empty. The span may end with a wrap
 * marker and the dead bytes after it; hep_ring_next stops there and covers them in `off`. */
static inline void hep_ring_peek(hep_ring *r, const uint8_t **p, size_t *n) {
    uint64_t head = __atomic_load_n(&r->hdr->head, __ATOMIC_ACQUIRE);
    uint64_t pos, to_end, avail;
    r->head = head;
    HEP_RING_CHECK((head & 7u) == 0 && head - r->tail <= r->size);
    if (r->tail == head) {
        *p = r->data;
        *n = 0;
        return;
    }
    pos = r->tail & r->mask;
    to_end = r->size - pos;
    if (to_end < HEP_RING_REC_HDR || hep_ring_rd32be_(r->data + pos) == HEP_RING_WRAP) {
        /* The producer wrote the marker and the record after it before one publish, so head is
         * past both: the span after the skip is never empty for a correct producer. */
        r->tail += to_end;
        __atomic_store_n(&r->hdr->tail, r->tail, __ATOMIC_RELEASE);
        if (r->tail == head) {
            *p = r->data;
            *n = 0;
            return;
        }
        pos = 0;
        to_end = r->size;
    }
    avail = head - r->tail;
    *p = r->data + pos;
    *n = (size_t)(avail < to_end ? avail : to_end);
}

static inline void hep_ring_iter_init(hep_ring_iter *it, const uint8_t *p, size_t n) {
    it->p = p;
    it->n = n;
    it->off = 0;
}

/* Next record of a span: HEP_RING_RECORD with *rec (payload), *len and *meta set; HEP_RING_END at
 * the end of the span or at a wrap marker (off = n); HEP_RING_CORRUPT when a length runs past the
 * span (off = n too, so releasing it gets the consumer past the damage). */
static inline int hep_ring_next(hep_ring_iter *it, const uint8_t **rec, uint32_t *len,
                                uint32_t *meta) {
    size_t left = it->n - it->off;
    const uint8_t *q;
    uint32_t l;
    if (left < HEP_RING_REC_HDR) {
        it->off = it->n;
        return HEP_RING_END;
    }
    q = it->p + it->off;
    l = hep_ring_rd32be_(q);
    if (l == HEP_RING_WRAP) {
        it->off = it->n;
        return HEP_RING_END;
    }
    if (hep_ring_footprint(l) > left) {
        it->off = it->n;
        return HEP_RING_CORRUPT;
    }
    memcpy(meta, q + 4, 4);
    *len = l;
    *rec = q + HEP_RING_REC_HDR;
    it->off += (size_t)hep_ring_footprint(l);
    return HEP_RING_RECORD;
}

/* Give `n` bytes (an `off` from hep_ring_next over the last peeked span) holding `records`
 * records back to the producer. */
static inline void hep_ring_release_records(hep_ring *r, size_t n, uint64_t records) {
    hep_ring_hdr *h = r->hdr;
    HEP_RING_CHECK(n <= r->head - r->tail);
    r->tail += n;
    __atomic_store_n(&h->tail, r->tail, __ATOMIC_RELEASE);
    if (records)
        __atomic_store_n(&h->records_consumed, h->records_consumed + records,
                         __ATOMIC_RELAXED);
}

/* Same, counting the records of the released bytes itself (one pass over the record headers of
 * bytes the consumer has just read). Prefer hep_ring_release_records when the count is known. */
static inline void hep_ring_release(hep_ring *r, size_t n) {
    hep_ring_iter it;
    const uint8_t *rec;
    uint32_t len, meta;
    uint64_t records = 0;
    hep_ring_iter_init(&it, r->data + (r->tail & r->mask), n);
    while (hep_ring_next(&it, &rec, &len, &meta) == HEP_RING_RECORD)
        records++;
    hep_ring_release_records(r, n, records);
}

#endif
