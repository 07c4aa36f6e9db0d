/*
 * refcount.c - the shared-block reference count table (see refcount.h).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "cowfs/refcount.h"

void refcount_init(struct refcount *rc)
{
	memset(rc, 0, sizeof(*rc));
}

void refcount_release(struct refcount *rc)
{
	free(rc->slots);
	memset(rc, 0, sizeof(*rc));
}

static size_t hash(uint64_t obj, uint64_t pblk)
{
	uint64_t k[2] = { obj, pblk };
	return (size_t)XXH3_64bits(k, sizeof(k));
}

static struct rc_slot *find(const struct refcount *rc, uint64_t obj,
			    uint64_t pblk)
{
	if (!rc->cap)
		return NULL;
	size_t mask = rc->cap - 1;
	for (size_t i = hash(obj, pblk) & mask;; i = (i + 1) & mask) {
		struct rc_slot *s = &rc->slots[i];
		if (s->obj == 0 && !s->tomb)
			return NULL;
		if (!s->tomb && s->obj == obj && s->pblk == pblk)
			return s;
	}
}

static int grow(struct refcount *rc)
{
	size_t cap = rc->cap;
	if ((rc->used + 1) * 4 < rc->cap * 3)
		return 0;
	if (cap == 0)
		cap = 64;
	else if (rc->live * 2 >= rc->cap)
		cap = rc->cap * 2;
	struct rc_slot *n = calloc(cap, sizeof(*n));
	if (!n)
		return -ENOMEM;
	for (size_t i = 0; i < rc->cap; i++) {
		struct rc_slot *s = &rc->slots[i];
		if (s->obj == 0 || s->tomb)
			continue;
		size_t j = hash(s->obj, s->pblk) & (cap - 1);
		while (n[j].obj)
			j = (j + 1) & (cap - 1);
		n[j] = *s;
	}
	free(rc->slots);
	rc->slots = n;
	rc->cap = cap;
	rc->used = rc->live;
	return 0;
}

uint32_t refcount_get(const struct refcount *rc, uint64_t obj, uint64_t pblk)
{
	struct rc_slot *s = find(rc, obj, pblk);
	return s ? s->count : 1;
}

int refcount_set(struct refcount *rc, uint64_t obj, uint64_t pblk,
		 uint32_t count)
{
	struct rc_slot *s = find(rc, obj, pblk);
	if (s) {
		s->count = count;
		return 0;
	}
	if (grow(rc))
		return -ENOMEM;
	size_t mask = rc->cap - 1;
	size_t i = hash(obj, pblk) & mask;
	while (rc->slots[i].obj && !rc->slots[i].tomb)
		i = (i + 1) & mask;
	if (!rc->slots[i].tomb)
		rc->used++;
	rc->slots[i] = (struct rc_slot){ obj, pblk, count, 0 };
	rc->live++;
	return 0;
}

int refcount_inc(struct refcount *rc, uint64_t obj, uint64_t pblk)
{
	struct rc_slot *s = find(rc, obj, pblk);
	if (s) {
		s->count++;
		return 0;
	}
	return refcount_set(rc, obj, pblk, 2);
}

uint32_t refcount_dec(struct refcount *rc, uint64_t obj, uint64_t pblk)
{
	struct rc_slot *s = find(rc, obj, pblk);
	if (!s)
		return 0;
	if (--s->count > 1)
		return s->count;
	s->tomb = 1;
	s->obj = 0;
	rc->live--;
	return 1;
}

int refcount_next(const struct refcount *rc, size_t *i, uint64_t *obj,
		  uint64_t *pblk, uint32_t *count)
{
	for (; *i < rc->cap; (*i)++) {
		const struct rc_slot *s = &rc->slots[*i];
		if (s->obj && !s->tomb) {
			*obj = s->obj;
			*pblk = s->pblk;
			*count = s->count;
			(*i)++;
			return 1;
		}
	}
	return 0;
}
