/*
 * extmap.h - a file's extent map: logical block runs mapped to runs of
 * blocks in objects.  A sorted array of non-overlapping extents; adjacent
 * extents that continue each other are merged.  Not thread-safe: the
 * owner (struct inode) is protected by fs->lock.
 *
 * The map is one word.  A map of one extent that starts at block 0 of
 * both the file and the object (a file cloned by reference from the host,
 * a file written once from its start) is packed into the word itself:
 * no allocation at all.  Any other map is a pointer to a refcounted
 * array (0: empty), so that a clone shares its source's map:
 * extmap_copy() takes a reference, and the first extmap_set() /
 * extmap_punch() on a shared array copies it first (copy-on-write of the
 * map itself).  Read the extents with extmap_n() and extmap_at().
 */
#ifndef COWFS_EXTMAP_H
#define COWFS_EXTMAP_H

#include <stddef.h>
#include <stdint.h>

struct extent {
	uint64_t lblk;	/* first logical block */
	uint64_t len;	/* blocks */
	uint64_t obj;	/* object id */
	uint64_t pblk;	/* first block in the object */
};

/* The shared array: immutable while refs > 1. */
struct extbuf {
	uint32_t refs;		/* maps that point here */
	uint32_t n, cap;	/* extents used, allocated */
	uint64_t nblocks;	/* mapped blocks in all */
	struct extent v[];	/* sorted by lblk */
};

struct extmap {
	uint64_t w;	/* 0: no extent; low bit set: the packed extent
			 * {0, len, obj, 0} (EXTMAP_*); else a struct
			 * extbuf * (refcounted, n >= 1) */
};

/* The packed extent: bit 0 set, len in bits 1..27, obj in bits 28..63.
 * A larger file or object id takes an array. */
#define EXTMAP_LEN_BITS 27
#define EXTMAP_OBJ_BITS 36
#define EXTMAP_LEN_MAX ((1ull << EXTMAP_LEN_BITS) - 1)
#define EXTMAP_OBJ_MAX ((1ull << EXTMAP_OBJ_BITS) - 1)

static inline int extmap_packed(const struct extmap *m)
{
	return (int)(m->w & 1);
}

/* The array, or NULL (empty or packed). */
static inline struct extbuf *extmap_buf(const struct extmap *m)
{
	return m->w & 1 ? NULL : (struct extbuf *)(uintptr_t)m->w;
}

static inline uint64_t extmap_packed_len(const struct extmap *m)
{
	return (m->w >> 1) & EXTMAP_LEN_MAX;
}

static inline uint64_t extmap_packed_obj(const struct extmap *m)
{
	return m->w >> (1 + EXTMAP_LEN_BITS);
}

static inline size_t extmap_n(const struct extmap *m)
{
	if (extmap_packed(m))
		return 1;
	return m->w ? extmap_buf(m)->n : 0;
}

/* Extent i (< extmap_n()), by value. */
static inline struct extent extmap_at(const struct extmap *m, size_t i)
{
	if (extmap_packed(m)) {
		struct extent e = { 0, extmap_packed_len(m),
				    extmap_packed_obj(m), 0 };
		return e;
	}
	return extmap_buf(m)->v[i];
}

static inline uint64_t extmap_nblocks(const struct extmap *m)
{
	if (extmap_packed(m))
		return extmap_packed_len(m);
	return m->w ? extmap_buf(m)->nblocks : 0;
}

/* Called for every mapped piece that set/punch removes. */
typedef void (*extmap_drop_fn)(void *ctx, uint64_t obj, uint64_t pblk,
			       uint64_t len);

void extmap_init(struct extmap *m);
void extmap_release(struct extmap *m);

/*
 * Look up lblk.  Returns 1 and the mapped run starting at lblk (clipped) if
 * mapped; returns 0 if lblk is a hole, with out->len the number of hole
 * blocks up to the next mapped one (UINT64_MAX if none).
 */
int extmap_lookup(const struct extmap *m, uint64_t lblk, struct extent *out);

/* Map [lblk, lblk+len) to (obj, pblk...).  Returns 0 or -ENOMEM (map
 * unchanged). */
int extmap_set(struct extmap *m, uint64_t lblk, uint64_t len, uint64_t obj,
	       uint64_t pblk, extmap_drop_fn drop, void *ctx);

/* Unmap [lblk, lblk+len).  Returns 0 or -ENOMEM (map unchanged). */
int extmap_punch(struct extmap *m, uint64_t lblk, uint64_t len,
		 extmap_drop_fn drop, void *ctx);

/* dst becomes a copy of src sharing its array (copied on the first change
 * of either), or its packed word.  Cannot fail; returns 0. */
int extmap_copy(struct extmap *dst, const struct extmap *src);

/*
 * A pool of arrays by content, so that equal maps built apart (a
 * checkpoint's clones, loaded extent by extent) come to share one array.
 * The pool holds a reference to each array in it: an owner that changes
 * its map copies it first, so what the pool holds never changes.
 */
struct extmap_pool;
/* NULL: out of memory (no sharing, nothing else fails). */
struct extmap_pool *extmap_pool_new(void);
/* Drops the pool's references. */
void extmap_pool_free(struct extmap_pool *p);
/* m shares an equal array of p (its own goes), or its array (cut to size)
 * joins p.  Out of memory: m stays as it is.  p may be NULL.  A packed
 * map has no array: nothing to share. */
void extmap_pool_share(struct extmap_pool *p, struct extmap *m);

/* Whether two maps share one array (for tests and figures). */
static inline int extmap_shared(const struct extmap *m)
{
	const struct extbuf *b = extmap_buf(m);

	return b && b->refs > 1;
}

#endif
