/*
 * extmap.h - a file's extent map: logical block runs mapped to runs of
 * blocks in objects.  A sorted array of non-overlapping extents; adjacent
 * extents that continue each other are merged.  Not thread-safe: the
 * owner (struct inode) is protected by fs->lock.
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

struct extmap {
	struct extent *v;	/* owned; sorted by lblk */
	size_t n, cap;
	uint64_t nblocks;	/* mapped blocks in all */
};

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

/* Deep copy; dst must be initialised and empty. 0 or -ENOMEM. */
int extmap_copy(struct extmap *dst, const struct extmap *src);

#endif
