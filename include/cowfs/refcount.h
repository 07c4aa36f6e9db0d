/*
 * refcount.h - reference counts of physical blocks (obj, pblk).
 *
 * Only shared blocks (count >= 2) are stored: a block that some extent map
 * references and that is absent here has count 1.  So the table stays empty
 * until something is cloned, and the write path never consults it.
 * Open-addressing hash table; not thread-safe (protected by fs->lock).
 */
#ifndef COWFS_REFCOUNT_H
#define COWFS_REFCOUNT_H

#include <stddef.h>
#include <stdint.h>

struct rc_slot {
	uint64_t obj;	/* 0: empty slot */
	uint64_t pblk;
	uint32_t count;
	uint32_t tomb;	/* deleted marker */
};

struct refcount {
	struct rc_slot *slots;	/* owned */
	size_t cap, used, live;
};

void refcount_init(struct refcount *rc);
void refcount_release(struct refcount *rc);

/* Count of a referenced block: stored value, else 1. */
uint32_t refcount_get(const struct refcount *rc, uint64_t obj, uint64_t pblk);

/* One more reference to a block already referenced.  0 or -ENOMEM. */
int refcount_inc(struct refcount *rc, uint64_t obj, uint64_t pblk);

/* One reference less; returns the new count (0 means the block is free). */
uint32_t refcount_dec(struct refcount *rc, uint64_t obj, uint64_t pblk);

/* Store an exact count >= 2 (checkpoint load).  0 or -ENOMEM. */
int refcount_set(struct refcount *rc, uint64_t obj, uint64_t pblk,
		 uint32_t count);

/* Iterate stored (shared) entries: i from 0 while it returns 1. */
int refcount_next(const struct refcount *rc, size_t *i, uint64_t *obj,
		  uint64_t *pblk, uint32_t *count);

#endif
