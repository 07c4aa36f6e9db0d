/*
 * extmap.c - per-file extent maps (see extmap.h).  Sequential writes append
 * to the last extent, so the common case costs O(1); random changes cost a
 * memmove of the array, which stays short because runs merge.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cowfs/extmap.h"

void extmap_init(struct extmap *m)
{
	memset(m, 0, sizeof(*m));
}

void extmap_release(struct extmap *m)
{
	free(m->v);
	memset(m, 0, sizeof(*m));
}

/* Index of the first extent whose end is after lblk (n if none). */
static size_t first_after(const struct extmap *m, uint64_t lblk)
{
	size_t lo = 0, hi = m->n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (m->v[mid].lblk + m->v[mid].len <= lblk)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

int extmap_lookup(const struct extmap *m, uint64_t lblk, struct extent *out)
{
	size_t i = first_after(m, lblk);

	if (i < m->n && m->v[i].lblk <= lblk) {
		uint64_t d = lblk - m->v[i].lblk;
		out->lblk = lblk;
		out->len = m->v[i].len - d;
		out->obj = m->v[i].obj;
		out->pblk = m->v[i].pblk + d;
		return 1;
	}
	out->lblk = lblk;
	out->obj = 0;
	out->pblk = 0;
	out->len = i < m->n ? m->v[i].lblk - lblk : UINT64_MAX;
	return 0;
}

static int reserve(struct extmap *m, size_t extra)
{
	if (m->n + extra <= m->cap)
		return 0;
	size_t cap = m->cap ? m->cap * 2 : 4;
	while (cap < m->n + extra)
		cap *= 2;
	struct extent *v = realloc(m->v, cap * sizeof(*v));
	if (!v)
		return -ENOMEM;
	m->v = v;
	m->cap = cap;
	return 0;
}

static int continues(const struct extent *a, const struct extent *b)
{
	return a->lblk + a->len == b->lblk && a->obj == b->obj &&
	       a->pblk + a->len == b->pblk;
}

/*
 * Replace [lblk, lblk+len) by ins (NULL: a hole).  At most two pieces of
 * the old extents survive around the range, so 3 free slots suffice.
 */
static int replace(struct extmap *m, uint64_t lblk, uint64_t len,
		   const struct extent *ins, extmap_drop_fn drop, void *ctx)
{
	uint64_t end = lblk + len;
	size_t i0, i1;
	struct extent left = { 0 }, right = { 0 };
	int has_left = 0, has_right = 0;

	if (len == 0)
		return 0;
	/* Fast path: append right after the last extent. */
	if (ins && (m->n == 0 || m->v[m->n - 1].lblk + m->v[m->n - 1].len <= lblk)) {
		if (m->n && continues(&m->v[m->n - 1], ins)) {
			m->v[m->n - 1].len += len;
		} else {
			if (reserve(m, 1))
				return -ENOMEM;
			m->v[m->n++] = *ins;
		}
		m->nblocks += len;
		return 0;
	}
	if (reserve(m, 3))
		return -ENOMEM;

	i0 = first_after(m, lblk);
	i1 = i0;
	while (i1 < m->n && m->v[i1].lblk < end)
		i1++;
	/* extents [i0, i1) overlap the range */
	for (size_t i = i0; i < i1; i++) {
		struct extent *e = &m->v[i];
		uint64_t s = e->lblk > lblk ? e->lblk : lblk;
		uint64_t t = e->lblk + e->len < end ? e->lblk + e->len : end;
		if (i == i0 && e->lblk < lblk) {
			left = *e;
			left.len = lblk - e->lblk;
			has_left = 1;
		}
		if (i == i1 - 1 && e->lblk + e->len > end) {
			right = *e;
			right.lblk = end;
			right.pblk = e->pblk + (end - e->lblk);
			right.len = e->lblk + e->len - end;
			has_right = 1;
		}
		m->nblocks -= t - s;
		if (drop)
			drop(ctx, e->obj, e->pblk + (s - e->lblk), t - s);
	}

	struct extent pieces[3];
	size_t np = 0;
	if (has_left)
		pieces[np++] = left;
	if (ins) {
		pieces[np++] = *ins;
		m->nblocks += ins->len;
	}
	if (has_right)
		pieces[np++] = right;

	size_t removed = i1 - i0;
	memmove(&m->v[i0 + np], &m->v[i1], (m->n - i1) * sizeof(*m->v));
	memcpy(&m->v[i0], pieces, np * sizeof(*pieces));
	m->n = m->n - removed + np;

	/* Merge around the inserted run. */
	size_t lo = i0 ? i0 - 1 : 0, hi = i0 + np + 1 < m->n ? i0 + np + 1 : m->n;
	for (size_t i = lo; i + 1 < hi && i + 1 < m->n;) {
		if (continues(&m->v[i], &m->v[i + 1])) {
			m->v[i].len += m->v[i + 1].len;
			memmove(&m->v[i + 1], &m->v[i + 2],
				(m->n - i - 2) * sizeof(*m->v));
			m->n--;
			hi--;
		} else {
			i++;
		}
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
	if (src->n == 0)
		return 0;
	dst->v = malloc(src->n * sizeof(*src->v));
	if (!dst->v)
		return -ENOMEM;
	memcpy(dst->v, src->v, src->n * sizeof(*src->v));
	dst->n = dst->cap = src->n;
	dst->nblocks = src->nblocks;
	return 0;
}
