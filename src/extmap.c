/*
 * extmap.c - per-file extent maps (see extmap.h).  Sequential writes append
 * to the last extent, so the common case costs O(1); random changes cost a
 * memmove of the array, which stays short because runs merge.  The array
 * is shared between clones and copied by the first change (make_room()).
 * A map of one extent from block 0 to block 0 is packed into its word
 * (pack()): a file cloned by reference from the host costs no array.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cowfs/extmap.h"

void extmap_init(struct extmap *m)
{
	m->w = 0;
}

void extmap_release(struct extmap *m)
{
	struct extbuf *b = extmap_buf(m);

	if (b && --b->refs == 0)
		free(b);
	m->w = 0;
}

static void set_buf(struct extmap *m, struct extbuf *b)
{
	m->w = (uint64_t)(uintptr_t)b;
}

/* Whether e alone can be the packed word. */
static int can_pack(const struct extent *e)
{
	return e->lblk == 0 && e->pblk == 0 && e->len > 0 &&
	       e->len <= EXTMAP_LEN_MAX && e->obj <= EXTMAP_OBJ_MAX;
}

static uint64_t pack(const struct extent *e)
{
	return e->obj << (1 + EXTMAP_LEN_BITS) | e->len << 1 | 1;
}

/* m's extents as an array, *n of them: a packed map's one is put in
 * *one.  Valid until m changes. */
static const struct extent *view(const struct extmap *m, struct extent *one,
				 size_t *n)
{
	const struct extbuf *b = extmap_buf(m);

	if (extmap_packed(m)) {
		*one = extmap_at(m, 0);
		*n = 1;
		return one;
	}
	*n = b ? b->n : 0;
	return b ? b->v : NULL;
}

static size_t buf_size(size_t cap)
{
	return sizeof(struct extbuf) + cap * sizeof(struct extent);
}

/* Index of the first extent whose end is after lblk (n if none). */
static size_t first_after(const struct extent *v, size_t n, uint64_t lblk)
{
	size_t lo = 0, hi = n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (v[mid].lblk + v[mid].len <= lblk)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

int extmap_lookup(const struct extmap *m, uint64_t lblk, struct extent *out)
{
	struct extent one;
	size_t n;
	const struct extent *v = view(m, &one, &n);
	size_t i = first_after(v, n, lblk);

	if (i < n && v[i].lblk <= lblk) {
		uint64_t d = lblk - v[i].lblk;
		out->lblk = lblk;
		out->len = v[i].len - d;
		out->obj = v[i].obj;
		out->pblk = v[i].pblk + d;
		return 1;
	}
	out->lblk = lblk;
	out->obj = 0;
	out->pblk = 0;
	out->len = i < n ? v[i].lblk - lblk : UINT64_MAX;
	return 0;
}

/*
 * Make m's array its own (copy a shared one) with room for need extents.
 * Small arrays are sized exactly: most files have one extent, and a clone's
 * copy is made when it first changes.  A packed map is unpacked into an
 * array.  -ENOMEM: m unchanged.
 */
static int make_room(struct extmap *m, size_t need)
{
	struct extbuf *b = extmap_buf(m), *nb;
	size_t cap;

	if (need > UINT32_MAX)
		return -ENOMEM;
	if (b && b->refs == 1) {
		if (need <= b->cap)
			return 0;
		cap = b->cap < 4 || need > 2 * (size_t)b->cap ? need : 2 * (size_t)b->cap;
		nb = realloc(b, buf_size(cap));
		if (!nb)
			return -ENOMEM;
	} else {
		cap = need;
		nb = malloc(buf_size(cap));
		if (!nb)
			return -ENOMEM;
		if (b) {
			memcpy(nb, b, buf_size(b->n));
			b->refs--;
		} else if (extmap_packed(m)) {
			nb->n = 1;
			nb->v[0] = extmap_at(m, 0);
			nb->nblocks = nb->v[0].len;
		} else {
			nb->n = 0;
			nb->nblocks = 0;
		}
		nb->refs = 1;
	}
	nb->cap = (uint32_t)cap;
	set_buf(m, nb);
	return 0;
}

static int continues(const struct extent *a, const struct extent *b)
{
	return a->lblk + a->len == b->lblk && a->obj == b->obj &&
	       a->pblk + a->len == b->pblk;
}

/* Append ins after the last extent (which ends at or before it). */
static int append(struct extmap *m, const struct extent *ins)
{
	struct extent one;
	size_t n;
	const struct extent *v = view(m, &one, &n);
	int merge = n && continues(&v[n - 1], ins);

	if (n == 0 && can_pack(ins)) {
		m->w = pack(ins);
		return 0;
	}
	if (merge && extmap_packed(m)) {
		one.len += ins->len;
		if (can_pack(&one)) {
			m->w = pack(&one);
			return 0;
		}
	}
	if (make_room(m, merge ? n : n + 1))
		return -ENOMEM;
	struct extbuf *b = extmap_buf(m);
	if (merge)
		b->v[n - 1].len += ins->len;
	else
		b->v[b->n++] = *ins;
	b->nblocks += ins->len;
	return 0;
}

/* Unmap everything: the drops come from the array as it is, shared or
 * not, and the map lets go of it (a clone's delete copies nothing). */
static void drop_all(struct extmap *m, extmap_drop_fn drop, void *ctx)
{
	struct extent one;
	size_t n;
	const struct extent *v = view(m, &one, &n);

	for (size_t i = 0; drop && i < n; i++)
		drop(ctx, v[i].obj, v[i].pblk, v[i].len);
	extmap_release(m);
}

/*
 * Replace [lblk, lblk+len) by ins (NULL: a hole).  At most two pieces of
 * the old extents survive around the range.  Everything that can fail
 * (making room) comes before the first drop.
 */
static int replace(struct extmap *m, uint64_t lblk, uint64_t len,
		   const struct extent *ins, extmap_drop_fn drop, void *ctx)
{
	uint64_t end = lblk + len;
	struct extent one;
	size_t n, i0, i1;
	const struct extent *v = view(m, &one, &n);
	int has_left, has_right;

	if (len == 0)
		return 0;
	/* Fast path: append right after the last extent. */
	if (ins && (n == 0 || v[n - 1].lblk + v[n - 1].len <= lblk))
		return append(m, ins);

	i0 = first_after(v, n, lblk);
	i1 = i0;
	while (i1 < n && v[i1].lblk < end)
		i1++;
	/* extents [i0, i1) overlap the range */
	if (i0 == i1 && !ins)
		return 0;	/* a hole already: a shared map stays shared */
	has_left = i0 < i1 && v[i0].lblk < lblk;
	has_right = i0 < i1 && v[i1 - 1].lblk + v[i1 - 1].len > end;
	if (!ins && i0 == 0 && i1 == n && !has_left && !has_right) {
		drop_all(m, drop, ctx);
		return 0;
	}

	size_t np = (size_t)has_left + (ins != NULL) + (size_t)has_right;
	size_t after = n - (i1 - i0) + np;
	if (make_room(m, after > n ? after : n))
		return -ENOMEM;

	struct extbuf *b = extmap_buf(m);
	struct extent pieces[3];
	size_t k = 0;
	if (has_left) {
		pieces[k] = b->v[i0];
		pieces[k++].len = lblk - b->v[i0].lblk;
	}
	if (ins)
		pieces[k++] = *ins;
	if (has_right) {
		const struct extent *e = &b->v[i1 - 1];
		pieces[k].lblk = end;
		pieces[k].obj = e->obj;
		pieces[k].pblk = e->pblk + (end - e->lblk);
		pieces[k++].len = e->lblk + e->len - end;
	}
	for (size_t i = i0; i < i1; i++) {
		const struct extent *e = &b->v[i];
		uint64_t s = e->lblk > lblk ? e->lblk : lblk;
		uint64_t t = e->lblk + e->len < end ? e->lblk + e->len : end;
		b->nblocks -= t - s;
		if (drop)
			drop(ctx, e->obj, e->pblk + (s - e->lblk), t - s);
	}
	if (ins)
		b->nblocks += ins->len;

	memmove(&b->v[i0 + np], &b->v[i1], (n - i1) * sizeof(*b->v));
	memcpy(&b->v[i0], pieces, np * sizeof(*pieces));
	n = after;

	/* Merge around the inserted run. */
	size_t lo = i0 ? i0 - 1 : 0, hi = i0 + np + 1 < n ? i0 + np + 1 : n;
	for (size_t i = lo; i + 1 < hi && i + 1 < n;) {
		if (continues(&b->v[i], &b->v[i + 1])) {
			b->v[i].len += b->v[i + 1].len;
			memmove(&b->v[i + 1], &b->v[i + 2],
				(n - i - 2) * sizeof(*b->v));
			n--;
			hi--;
		} else {
			i++;
		}
	}
	b->n = (uint32_t)n;
	if (n == 0) {
		extmap_release(m);
	} else if (n == 1 && can_pack(&b->v[0])) {
		struct extent e = b->v[0];	/* b is m's own (make_room) */
		extmap_release(m);
		m->w = pack(&e);
	}
	return 0;
}

int extmap_set(struct extmap *m, uint64_t lblk, uint64_t len, uint64_t obj,
	       uint64_t pblk, extmap_drop_fn drop, void *ctx)
{
	struct extent e = { lblk, len, obj, pblk };
	return replace(m, lblk, len, &e, drop, ctx);
}

int extmap_punch(struct extmap *m, uint64_t lblk, uint64_t len,
		 extmap_drop_fn drop, void *ctx)
{
	return replace(m, lblk, len, NULL, drop, ctx);
}

int extmap_copy(struct extmap *dst, const struct extmap *src)
{
	struct extbuf *b = extmap_buf(src);

	extmap_release(dst);
	if (b)
		b->refs++;
	dst->w = src->w;
	return 0;
}

struct extmap_pool {
	struct extbuf **slot;	/* open addressing, linear probing */
	size_t cap, n;		/* cap a power of 2, at most half full */
};

/* The pool stops taking new arrays at this many slots (32 MiB): a store
 * of millions of distinct maps gains little from it. */
#define POOL_MAX_SLOTS ((size_t)1 << 22)

struct extmap_pool *extmap_pool_new(void)
{
	return calloc(1, sizeof(struct extmap_pool));
}

void extmap_pool_free(struct extmap_pool *p)
{
	if (!p)
		return;
	for (size_t i = 0; i < p->cap; i++) {
		struct extmap m;
		set_buf(&m, p->slot[i]);
		extmap_release(&m);
	}
	free(p->slot);
	free(p);
}

/* A word at a time: millions of maps are hashed at every mount. */
static size_t buf_hash(const struct extbuf *b)
{
	uint64_t h = 0x9e3779b97f4a7c15ull;

	for (size_t i = 0; i < b->n; i++) {
		const struct extent *e = &b->v[i];
		uint64_t w[4] = { e->lblk, e->len, e->obj, e->pblk };
		for (int k = 0; k < 4; k++) {
			h = (h ^ w[k]) * 0xff51afd7ed558ccdull;
			h ^= h >> 32;
		}
	}
	return (size_t)(h ^ (h >> 29));
}

static int buf_equal(const struct extbuf *a, const struct extbuf *b)
{
	return a->n == b->n && !memcmp(a->v, b->v, a->n * sizeof(*a->v));
}

static int pool_grow(struct extmap_pool *p)
{
	size_t cap = p->cap ? 2 * p->cap : 1024;
	struct extbuf **slot = calloc(cap, sizeof(*slot));

	if (!slot)
		return -ENOMEM;
	for (size_t i = 0; i < p->cap; i++) {
		if (!p->slot[i])
			continue;
		size_t h = buf_hash(p->slot[i]) & (cap - 1);
		while (slot[h])
			h = (h + 1) & (cap - 1);
		slot[h] = p->slot[i];
	}
	free(p->slot);
	p->slot = slot;
	p->cap = cap;
	return 0;
}

void extmap_pool_share(struct extmap_pool *p, struct extmap *m)
{
	struct extbuf *b = extmap_buf(m);
	int full = 0;
	size_t h;

	if (!p || !b)
		return;
	if (2 * (p->n + 1) > p->cap &&
	    (p->cap >= POOL_MAX_SLOTS || pool_grow(p)))
		full = 1;	/* look up only */
	if (!p->cap)
		return;
	for (h = buf_hash(b) & (p->cap - 1); p->slot[h]; h = (h + 1) & (p->cap - 1)) {
		if (p->slot[h] == b)
			return;
		if (buf_equal(p->slot[h], b)) {
			extmap_release(m);
			set_buf(m, p->slot[h]);
			p->slot[h]->refs++;
			return;
		}
	}
	if (full)
		return;
	if (b->refs == 1 && b->cap > b->n) {
		/* it will not grow any more: cut it to size */
		struct extbuf *nb = realloc(b, buf_size(b->n));
		if (nb) {
			nb->cap = nb->n;
			set_buf(m, nb);
			b = nb;
		}
	}
	b->refs++;
	p->slot[h] = b;
	p->n++;
}
