/*
 * extmap.h - a file's extent map: logical block runs mapped to runs of
 * blocks in objects.  A sorted array of non-overlapping extents; adjacent
 * extents that continue each other are merged.  Not thread-safe: the
 * owner (struct inode) is protected by fs->lock.
 *
 * The map is one pointer to a refcounted array (NULL: empty), so that a
 * clone shares its source's map: extmap_copy() takes a reference, and the
 * first extmap_set()/extmap_punch() on a shared array copies it first
 * (copy-on-write of the map itself).  A one-extent map is one allocation
 * of 56 bytes.
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
	struct extbuf *b;	/* NULL: no extent */
};

/* Called for every mapped piece that set/punch removes. */
typedef void (*extmap_drop_fn)(void *ctx, uint64_t obj, uint64_t pblk,
			       uint64_t len);

void extmap_init(struct extmap *m);
void extmap_release(struct extmap *m);

static inline size_t extmap_n(const struct extmap *m)
{
	return m->b ? m->b->n : 0;
}

/* The extents, extmap_n() of them; valid until the map changes. */
static inline const struct extent *extmap_v(const struct extmap *m)
{
	return m->b ? m->b->v : NULL;
}

static inline uint64_t extmap_nblocks(const struct extmap *m)
{
	return m->b ? m->b->nblocks : 0;
}

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

/* dst, initialised and empty, becomes a copy of src sharing its array
 * (copied on the first change of either).  Cannot fail; returns 0. */
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
 * joins p.  Out of memory: m stays as it is.  p may be NULL. */
void extmap_pool_share(struct extmap_pool *p, struct extmap *m);

/* Whether two maps share one array (for tests and figures). */
static inline int extmap_shared(const struct extmap *m)
{
	return m->b && m->b->refs > 1;
}

#endif
