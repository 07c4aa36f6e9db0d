/*
 * test_extmap.c - model-based randomised test of extent maps (extmap.h).
 *
 * The model is a flat array: for each logical block of a small address
 * space, hole or (obj, pblk).  After every extmap_set / extmap_punch the
 * map must agree with the model block by block, be sorted, non-overlapping,
 * made of non-empty extents with no two adjacent ones that continue each
 * other, and count nblocks right; the drop callback must have reported
 * exactly the (obj, pblk) blocks that the range mapped before.
 *
 * Randomised: the seed is printed; rerun with TEST_SEED=<seed>.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"
#include "cowfs/extmap.h"

static long op_no = -1;

static void fail_exit(void)
{
	fprintf(stderr, "test_extmap: FAILED at op %ld (seed %" PRIu64
		", rerun with TEST_SEED=%" PRIu64 ")\n", op_no, seed, seed);
	exit(1);
}

/* ---- the model ---- */

#define NB 512

struct mblk {
	int mapped;
	uint64_t obj, pblk;
};

static struct mblk model[NB];

/* ---- drop recording ---- */

struct blk {
	uint64_t obj, pblk;
};

struct drops {
	struct blk *v;
	size_t n, cap;
	size_t calls;
};

static void drop_cb(void *ctx, uint64_t obj, uint64_t pblk, uint64_t len)
{
	struct drops *d = ctx;

	d->calls++;
	CHECKF(len > 0, "drop of an empty piece (obj %" PRIu64 ")", obj);
	CHECKF(len <= NB, "drop of %" PRIu64 " blocks, more than ever mapped", len);
	CHECK(obj != 0);
	for (uint64_t i = 0; i < len; i++) {
		if (d->n == d->cap) {
			d->cap = d->cap ? d->cap * 2 : 256;
			d->v = realloc(d->v, d->cap * sizeof(*d->v));
			CHECK(d->v != NULL);
		}
		d->v[d->n++] = (struct blk){ obj, pblk + i };
	}
}

static int blk_cmp(const void *a, const void *b)
{
	const struct blk *x = a, *y = b;
	if (x->obj != y->obj)
		return x->obj < y->obj ? -1 : 1;
	if (x->pblk != y->pblk)
		return x->pblk < y->pblk ? -1 : 1;
	return 0;
}

/* ---- checks ---- */

static int continues(const struct extent *a, const struct extent *b)
{
	return a->lblk + a->len == b->lblk && a->obj == b->obj &&
	       a->pblk + a->len == b->pblk;
}

static void dump(const struct extmap *m)
{
	fprintf(stderr, "map: n=%zu cap=%zu nblocks=%" PRIu64 "\n", extmap_n(m),
		(size_t)(extmap_buf(m) ? extmap_buf(m)->cap : 0), extmap_nblocks(m));
	for (size_t i = 0; i < extmap_n(m) && i < 200; i++)
		fprintf(stderr, "  [%" PRIu64 ", +%" PRIu64 ") -> obj %" PRIu64
			" pblk %" PRIu64 "\n", extmap_at(m, i).lblk, extmap_at(m, i).len,
			extmap_at(m, i).obj, extmap_at(m, i).pblk);
}

#define MCHECK(m, cond, ...)                                                \
	do {                                                                \
		if (!(cond)) {                                              \
			dump(m);                                            \
			CHECKF(cond, __VA_ARGS__);                          \
		}                                                           \
	} while (0)

/* The array itself: sorted, disjoint, non-empty, merged, counted. */
static void check_shape(const struct extmap *m)
{
	uint64_t sum = 0;

	const struct extbuf *b = extmap_buf(m);

	MCHECK(m, !b || (b->n <= b->cap && b->n > 0 && b->refs > 0),
	       "bad array header");
	/* a map that fits in its word is packed, never an array */
	if (b && b->n == 1)
		MCHECK(m, b->v[0].lblk != 0 || b->v[0].pblk != 0 ||
		       b->v[0].len > EXTMAP_LEN_MAX || b->v[0].obj > EXTMAP_OBJ_MAX,
		       "a one-extent array that should be packed");
	for (size_t i = 0; i < extmap_n(m); i++) {
		const struct extent ev = extmap_at(m, i), *e = &ev;
		MCHECK(m, e->len > 0, "extent %zu empty", i);
		MCHECK(m, e->lblk < NB && e->len <= NB - e->lblk,
		       "extent %zu outside the blocks ever mapped", i);
		MCHECK(m, e->obj != 0, "extent %zu obj 0", i);
		if (i + 1 < extmap_n(m)) {
			MCHECK(m, e->lblk + e->len <= extmap_at(m, i + 1).lblk,
			       "extents %zu and %zu unsorted or overlapping", i,
			       i + 1);
			struct extent next = extmap_at(m, i + 1);
			MCHECK(m, !continues(e, &next),
			       "extents %zu and %zu continue each other but are "
			       "not merged", i, i + 1);
		}
		sum += e->len;
	}
	MCHECK(m, sum == extmap_nblocks(m), "nblocks %" PRIu64 " but extents sum to %"
	       PRIu64, extmap_nblocks(m), sum);
}

/* Every block (and a few far beyond) against the model. */
static void check_model(const struct extmap *m)
{
	uint64_t count = 0;
	struct extent e;

	check_shape(m);
	for (uint64_t b = 0; b < NB; b++) {
		memset(&e, 0x77, sizeof(e));
		int r = extmap_lookup(m, b, &e);
		if (model[b].mapped) {
			count++;
			/* the maximal continuing run from b in the model */
			uint64_t run = 1;
			while (b + run < NB && model[b + run].mapped &&
			       model[b + run].obj == model[b].obj &&
			       model[b + run].pblk == model[b].pblk + run)
				run++;
			MCHECK(m, r == 1, "block %" PRIu64 " should be mapped", b);
			MCHECK(m, e.lblk == b && e.obj == model[b].obj &&
			       e.pblk == model[b].pblk,
			       "block %" PRIu64 ": got obj %" PRIu64 " pblk %" PRIu64
			       ", want obj %" PRIu64 " pblk %" PRIu64, b, e.obj,
			       e.pblk, model[b].obj, model[b].pblk);
			MCHECK(m, e.len == run, "block %" PRIu64 ": run %" PRIu64
			       ", model says %" PRIu64, b, e.len, run);
		} else {
			uint64_t hole = 1;
			while (b + hole < NB && !model[b + hole].mapped)
				hole++;
			if (b + hole == NB)
				hole = UINT64_MAX;
			MCHECK(m, r == 0, "block %" PRIu64 " should be a hole", b);
			MCHECK(m, e.len == hole, "hole at %" PRIu64 ": len %" PRIu64
			       ", model says %" PRIu64, b, e.len, hole);
		}
	}
	static const uint64_t far[] = { NB, NB + 1, 1000, 1ull << 40,
					UINT64_MAX - 1, UINT64_MAX };
	for (size_t i = 0; i < sizeof(far) / sizeof(*far); i++) {
		MCHECK(m, extmap_lookup(m, far[i], &e) == 0, "far block mapped");
		MCHECK(m, e.len == UINT64_MAX, "far hole len %" PRIu64, e.len);
	}
	MCHECK(m, count == extmap_nblocks(m), "nblocks %" PRIu64 ", model has %" PRIu64,
	       extmap_nblocks(m), count);
}

/* ---- operations, applied to both ---- */

static struct drops drops;

static void expect_drops(uint64_t lblk, uint64_t len, struct blk **exp,
			 size_t *nexp)
{
	static struct blk v[NB];
	size_t n = 0;
	for (uint64_t b = lblk; b < NB && b - lblk < len; b++)
		if (model[b].mapped)
			v[n++] = (struct blk){ model[b].obj, model[b].pblk };
	*exp = v;
	*nexp = n;
}

static void compare_drops(const struct extmap *m, int with_cb, uint64_t lblk,
			  uint64_t len)
{
	struct blk *exp;
	size_t nexp;

	expect_drops(lblk, len, &exp, &nexp);
	if (!with_cb) {
		CHECK(drops.n == 0 && drops.calls == 0);
		return;
	}
	qsort(exp, nexp, sizeof(*exp), blk_cmp);
	qsort(drops.v, drops.n, sizeof(*drops.v), blk_cmp);
	if (drops.n != nexp || (nexp && memcmp(exp, drops.v, nexp * sizeof(*exp)))) {
		dump(m);
		fprintf(stderr, "range [%" PRIu64 ", +%" PRIu64 "): dropped %zu "
			"blocks, expected %zu\n", lblk, len, drops.n, nexp);
		for (size_t i = 0; i < drops.n || i < nexp; i++) {
			if (i < drops.n)
				fprintf(stderr, "  got  %" PRIu64 ":%" PRIu64,
					drops.v[i].obj, drops.v[i].pblk);
			else
				fprintf(stderr, "  got  -");
			if (i < nexp)
				fprintf(stderr, "   want %" PRIu64 ":%" PRIu64 "\n",
					exp[i].obj, exp[i].pblk);
			else
				fprintf(stderr, "   want -\n");
			if (i > 40)
				break;
		}
		CHECK(!"drop callback reported the wrong blocks");
	}
}

static void do_set(struct extmap *m, uint64_t lblk, uint64_t len, uint64_t obj,
		   uint64_t pblk)
{
	int with_cb = rndn(8) != 0;

	drops.n = drops.calls = 0;
	CHECK(extmap_set(m, lblk, len, obj, pblk, with_cb ? drop_cb : NULL,
			 with_cb ? &drops : NULL) == 0);
	compare_drops(m, with_cb, lblk, len);
	for (uint64_t i = 0; i < len; i++)
		model[lblk + i] = (struct mblk){ 1, obj, pblk + i };
	check_model(m);
}

static void do_punch(struct extmap *m, uint64_t lblk, uint64_t len)
{
	int with_cb = rndn(8) != 0;

	drops.n = drops.calls = 0;
	CHECK(extmap_punch(m, lblk, len, with_cb ? drop_cb : NULL,
			   with_cb ? &drops : NULL) == 0);
	compare_drops(m, with_cb, lblk, len);
	for (uint64_t b = lblk; b < NB && b - lblk < len; b++)
		model[b].mapped = 0;
	check_model(m);
}

/* Pick a run length for a range starting at lblk within NB. */
static uint64_t pick_len(uint64_t lblk, int phase)
{
	uint64_t room = NB - lblk;
	uint64_t max = phase == 0 ? 8 : phase == 1 ? 64 : room;
	if (max > room)
		max = room;
	return 1 + rndn(max);
}

/* A copy shares the array; changing either copies it first, so the other
 * never sees the change. */
static void check_copy(struct extmap *m)
{
	struct extmap c;
	/* the snapshots of random_test may share m's array too */
	const struct extbuf *b = extmap_buf(m);
	uint32_t refs = b ? b->refs : 0;

	extmap_init(&c);
	CHECK(extmap_n(&c) == 0 && extmap_nblocks(&c) == 0);
	CHECK(extmap_copy(&c, m) == 0);
	CHECK(extmap_n(&c) == extmap_n(m) &&
	      extmap_nblocks(&c) == extmap_nblocks(m));
	CHECK(c.w == m->w && (!b || b->refs == refs + 1));
	check_model(&c);
	/* Changing the copy leaves the original alone. */
	CHECK(extmap_punch(&c, 0, UINT64_MAX, NULL, NULL) == 0);
	CHECK(extmap_n(&c) == 0 && extmap_nblocks(&c) == 0 && c.w == 0);
	CHECK(!b || b->refs == refs);
	CHECK(extmap_copy(&c, m) == 0);
	CHECK(extmap_set(&c, 3, 7, 99, 1234, NULL, NULL) == 0);
	CHECK(c.w != m->w && (!b || b->refs == refs) &&
	      !extmap_shared(&c));
	check_model(m);
	extmap_release(&c);
	CHECK(c.w == 0 && extmap_n(&c) == 0 &&
	      extmap_nblocks(&c) == 0);
	/* Changing the original leaves the copy alone (checked by the
	 * snapshots of random_test too). */
	CHECK(extmap_copy(&c, m) == 0);
	if (extmap_n(m)) {
		struct extent first = extmap_at(m, 0);
		CHECK(extmap_punch(m, first.lblk, 1, NULL, NULL) == 0);
		CHECK(c.w != m->w && extmap_at(&c, 0).lblk == first.lblk &&
		      extmap_at(&c, 0).len == first.len);
		/* put it back */
		CHECK(extmap_set(m, first.lblk, 1, first.obj, first.pblk, NULL,
				 NULL) == 0);
		check_model(m);
		check_model(&c);
	}
	extmap_release(&c);
}

/* Copies kept while the original goes on changing, each with the model
 * it had; they share arrays with the original and with each other. */
#define NSNAP 4
static struct snap {
	int live;
	struct extmap map;
	struct mblk model[NB];
} snaps[NSNAP];

static void check_snaps(void)
{
	static struct mblk saved[NB];

	memcpy(saved, model, sizeof(model));
	for (int i = 0; i < NSNAP; i++) {
		if (!snaps[i].live)
			continue;
		memcpy(model, snaps[i].model, sizeof(model));
		check_model(&snaps[i].map);
	}
	memcpy(model, saved, sizeof(model));
}

static void snap_op(struct extmap *m)
{
	struct snap *s = &snaps[rndn(NSNAP)];
	int k = (int)rndn(4);

	if (k == 0 || !s->live) {
		/* take a copy of m, or of another snapshot */
		struct snap *o = &snaps[rndn(NSNAP)];
		int from_snap = o != s && o->live && rndn(2);
		extmap_release(&s->map);
		CHECK(extmap_copy(&s->map, from_snap ? &o->map : m) == 0);
		memcpy(s->model, from_snap ? o->model : model, sizeof(model));
		s->live = 1;
	} else if (k == 1) {
		extmap_release(&s->map);
		s->live = 0;
	} else {
		/* change the snapshot: m and the others must not see it */
		uint64_t lblk = rndn(NB), len = 1 + rndn(NB - lblk);
		if (k == 2) {
			uint64_t obj = 1 + rndn(3);
			CHECK(extmap_set(&s->map, lblk, len, obj, lblk, NULL,
					 NULL) == 0);
			for (uint64_t i = 0; i < len; i++)
				s->model[lblk + i] = (struct mblk){ 1, obj, lblk + i };
		} else {
			CHECK(extmap_punch(&s->map, lblk, len, NULL, NULL) == 0);
			for (uint64_t i = 0; i < len; i++)
				s->model[lblk + i].mapped = 0;
		}
		check_model(m);
	}
	check_snaps();
}

static void random_test(long nops)
{
	struct extmap m;
	long sets = 0, punches = 0, merged = 0, packed = 0;

	memset(model, 0, sizeof(model));
	extmap_init(&m);
	check_model(&m);
	check_copy(&m);
	for (op_no = 0; op_no < nops; op_no++) {
		int phase = (int)((op_no / 1000) % 3);
		uint64_t k = rndn(100);
		if (k < 55) {
			uint64_t lblk, len, obj = 1 + rndn(3), pblk;
			if (k < 10) {
				/* sequential append after the last mapped block */
				uint64_t end = NB;
				while (end > 0 && !model[end - 1].mapped)
					end--;
				if (end >= NB)
					end = rndn(NB);
				lblk = end;
			} else {
				lblk = rndn(NB);
			}
			len = pick_len(lblk, phase);
			switch (rndn(4)) {
			case 0:		/* write object style: block i at slot i */
				pblk = lblk;
				break;
			case 1:		/* continue what the block before maps */
				if (lblk > 0 && model[lblk - 1].mapped) {
					obj = model[lblk - 1].obj;
					pblk = model[lblk - 1].pblk + 1;
					merged++;
				} else {
					pblk = lblk + obj * 1000;
				}
				break;
			case 2:		/* fixed offset per object: often merges */
				pblk = lblk + obj * 1000;
				break;
			default:
				pblk = rndn(1ull << 40);
				break;
			}
			do_set(&m, lblk, len, obj, pblk);
			sets++;
		} else if (k < 95) {
			uint64_t lblk = rndn(NB + 16), len;
			switch (rndn(5)) {
			case 0:		/* to the end, as truncate does; often
					 * near the start, which leaves one
					 * run from block 0 (packed) */
				if (rndn(2))
					lblk = rndn(8);
				len = UINT64_MAX - lblk;
				break;
			case 1:
				len = 1 + rndn(4);
				break;
			case 2:
				len = 1 + rndn(NB);
				break;
			default:
				len = lblk < NB ? pick_len(lblk, phase) : 1 + rndn(8);
				break;
			}
			do_punch(&m, lblk, len);
			punches++;
		} else if (k < 97) {
			/* zero-length operations change nothing */
			uint64_t lblk = rndn(NB);
			drops.n = drops.calls = 0;
			CHECK(extmap_set(&m, lblk, 0, 5, 5, drop_cb, &drops) == 0);
			CHECK(extmap_punch(&m, lblk, 0, drop_cb, &drops) == 0);
			CHECK(drops.calls == 0);
			check_model(&m);
		} else if (k < 98) {
			/* set over exactly what is mapped: same map, and the
			 * old references are reported dropped */
			uint64_t lblk = rndn(NB);
			if (model[lblk].mapped) {
				struct extent e;
				CHECK(extmap_lookup(&m, lblk, &e) == 1);
				size_t n = extmap_n(&m);
				do_set(&m, lblk, e.len, e.obj, e.pblk);
				CHECK(extmap_n(&m) == n);
			}
		} else if (k < 99) {
			if (rndn(4))
				snap_op(&m);
			else
				check_copy(&m);
		} else if (rndn(20) == 0) {
			do_punch(&m, 0, UINT64_MAX);
			CHECK(extmap_n(&m) == 0 && extmap_nblocks(&m) == 0);
		}
		if (op_no % 16 == 0)
			check_snaps();
		packed += extmap_packed(&m);
	}
	CHECKF(packed > 0, "no op left a packed map (of %ld)", nops);
	for (int i = 0; i < NSNAP; i++) {
		extmap_release(&snaps[i].map);
		snaps[i].live = 0;
	}
	printf("  %ld ops (%ld sets, %ld punches, %ld continuing sets, "
	       "%ld packed), final %zu extents / %" PRIu64 " blocks ok\n", nops, sets, punches,
	       merged, packed, extmap_n(&m), extmap_nblocks(&m));
	extmap_release(&m);
	op_no = -1;
}

/* Deterministic cases, including block numbers near the top of the range. */
static void fixed_cases(void)
{
	struct extmap m;
	struct extent e;
	const uint64_t top = 1ull << 63;

	memset(model, 0, sizeof(model));
	extmap_init(&m);

	/* Sequential appends merge into one extent. */
	for (uint64_t b = 0; b < 100; b++)
		CHECK(extmap_set(&m, b, 1, 7, b, NULL, NULL) == 0);
	CHECK(extmap_n(&m) == 1 && extmap_at(&m, 0).len == 100 && extmap_nblocks(&m) == 100);
	/* A run that does not continue splits; putting the original back
	 * merges the three pieces again. */
	CHECK(extmap_set(&m, 40, 10, 8, 40, NULL, NULL) == 0);
	CHECK(extmap_n(&m) == 3 && extmap_nblocks(&m) == 100);
	CHECK(extmap_set(&m, 40, 10, 7, 40, NULL, NULL) == 0);
	CHECK(extmap_n(&m) == 1 && extmap_at(&m, 0).len == 100);
	/* A hole in the middle, then filled from both sides. */
	CHECK(extmap_punch(&m, 10, 80, NULL, NULL) == 0);
	CHECK(extmap_n(&m) == 2 && extmap_nblocks(&m) == 20);
	CHECK(extmap_lookup(&m, 10, &e) == 0 && e.len == 80);
	CHECK(extmap_set(&m, 89, 1, 7, 89, NULL, NULL) == 0);
	CHECK(extmap_n(&m) == 2);
	CHECK(extmap_set(&m, 10, 79, 7, 10, NULL, NULL) == 0);
	CHECK(extmap_n(&m) == 1 && extmap_nblocks(&m) == 100);
	/* Continuing in pblk but not in lblk does not merge. */
	CHECK(extmap_punch(&m, 0, UINT64_MAX, NULL, NULL) == 0);
	CHECK(extmap_set(&m, 0, 4, 1, 0, NULL, NULL) == 0);
	CHECK(extmap_set(&m, 5, 4, 1, 4, NULL, NULL) == 0);
	CHECK(extmap_n(&m) == 2);
	CHECK(extmap_set(&m, 9, 4, 2, 9, NULL, NULL) == 0);
	CHECK(extmap_n(&m) == 3);

	/* Near the top of the block range. */
	CHECK(extmap_punch(&m, 0, UINT64_MAX, NULL, NULL) == 0);
	CHECK(extmap_set(&m, top, 10, 3, 0, NULL, NULL) == 0);
	CHECK(extmap_lookup(&m, 0, &e) == 0 && e.len == top);
	CHECK(extmap_lookup(&m, top + 5, &e) == 1 && e.len == 5 && e.pblk == 5);
	CHECK(extmap_lookup(&m, top + 10, &e) == 0 && e.len == UINT64_MAX);
	drops.n = drops.calls = 0;
	CHECK(extmap_punch(&m, top + 2, UINT64_MAX - (top + 2), drop_cb,
			   &drops) == 0);
	CHECK(drops.n == 8 && extmap_nblocks(&m) == 2);
	CHECK(extmap_set(&m, UINT64_MAX - 5, 5, 4, 100, NULL, NULL) == 0);
	CHECK(extmap_lookup(&m, UINT64_MAX - 1, &e) == 1 && e.len == 1 &&
	      e.pblk == 104);
	CHECK(extmap_lookup(&m, top + 2, &e) == 0 && e.len == UINT64_MAX - 5 -
	      (top + 2));
	CHECK(extmap_n(&m) == 2 && extmap_nblocks(&m) == 7);
	drops.n = drops.calls = 0;
	CHECK(extmap_punch(&m, 0, UINT64_MAX, drop_cb, &drops) == 0);
	CHECK(drops.n == 7 && extmap_n(&m) == 0 && extmap_nblocks(&m) == 0);

	extmap_release(&m);
	/* Release of a map that never held anything, twice. */
	extmap_init(&m);
	extmap_release(&m);
	extmap_release(&m);
	printf("  fixed cases ok\n");
}

/* A map of one extent from block 0 to block 0 lives in its word: no array
 * until the map takes another shape, and back in the word when it returns
 * to that shape; the limits of the packed fields take an array. */
static void packed_cases(void)
{
	struct extmap m, c;
	struct extent e;

	memset(model, 0, sizeof(model));
	extmap_init(&m);
	extmap_init(&c);
	/* a file cloned by reference: one run of its origin object */
	CHECK(extmap_set(&m, 0, 10, 42, 0, NULL, NULL) == 0);
	CHECK(extmap_packed(&m) && !extmap_buf(&m) && extmap_n(&m) == 1 &&
	      extmap_nblocks(&m) == 10);
	e = extmap_at(&m, 0);
	CHECK(e.lblk == 0 && e.len == 10 && e.obj == 42 && e.pblk == 0);
	CHECK(extmap_lookup(&m, 3, &e) == 1 && e.len == 7 && e.pblk == 3 &&
	      e.obj == 42);
	CHECK(extmap_lookup(&m, 10, &e) == 0 && e.len == UINT64_MAX);
	/* appends that continue it stay packed */
	CHECK(extmap_set(&m, 10, 5, 42, 10, NULL, NULL) == 0);
	CHECK(extmap_packed(&m) && extmap_nblocks(&m) == 15);
	/* a copy is the word itself; changing it leaves m alone */
	CHECK(extmap_copy(&c, &m) == 0 && c.w == m.w && !extmap_shared(&c));
	CHECK(extmap_set(&c, 3, 1, 7, 100, NULL, NULL) == 0);
	CHECK(!extmap_packed(&c) && extmap_n(&c) == 3);
	CHECK(extmap_packed(&m) && extmap_nblocks(&m) == 15);
	/* putting the block back packs it again (the array goes) */
	CHECK(extmap_set(&c, 3, 1, 42, 3, NULL, NULL) == 0);
	CHECK(extmap_packed(&c) && c.w == m.w);
	/* a write to the middle unpacks; the drops are the packed blocks */
	drops.n = drops.calls = 0;
	CHECK(extmap_set(&m, 4, 2, 9, 4, drop_cb, &drops) == 0);
	CHECK(drops.n == 2 && drops.v[0].obj == 42 && drops.v[0].pblk == 4 &&
	      drops.v[1].pblk == 5);
	CHECK(!extmap_packed(&m) && extmap_n(&m) == 3 && extmap_nblocks(&m) == 15);
	/* truncate to 4 blocks: one run from 0 again, packed */
	CHECK(extmap_punch(&m, 4, UINT64_MAX - 4, NULL, NULL) == 0);
	CHECK(extmap_packed(&m) && extmap_nblocks(&m) == 4);
	/* a hole before the run, or a run not at pblk 0: an array */
	CHECK(extmap_punch(&m, 0, 1, NULL, NULL) == 0);
	CHECK(!extmap_packed(&m) && extmap_n(&m) == 1 && extmap_at(&m, 0).lblk == 1);
	CHECK(extmap_punch(&m, 0, UINT64_MAX, NULL, NULL) == 0 && m.w == 0);
	CHECK(extmap_set(&m, 0, 4, 42, 1, NULL, NULL) == 0 && !extmap_packed(&m));
	/* punching the whole packed map drops it all and empties it */
	CHECK(extmap_punch(&m, 0, UINT64_MAX, NULL, NULL) == 0);
	CHECK(extmap_set(&m, 0, 6, 42, 0, NULL, NULL) == 0 && extmap_packed(&m));
	drops.n = drops.calls = 0;
	CHECK(extmap_punch(&m, 0, UINT64_MAX, drop_cb, &drops) == 0);
	CHECK(drops.n == 6 && drops.calls == 1 && m.w == 0 && extmap_n(&m) == 0);
	/* the limits: the largest length and object id pack, one more
	 * takes an array, and coming back under the limit packs again */
	CHECK(extmap_set(&m, 0, EXTMAP_LEN_MAX, EXTMAP_OBJ_MAX, 0, NULL, NULL) == 0);
	CHECK(extmap_packed(&m) && extmap_nblocks(&m) == EXTMAP_LEN_MAX);
	e = extmap_at(&m, 0);
	CHECK(e.obj == EXTMAP_OBJ_MAX && e.len == EXTMAP_LEN_MAX);
	CHECK(extmap_set(&m, EXTMAP_LEN_MAX, 1, EXTMAP_OBJ_MAX, EXTMAP_LEN_MAX,
			 NULL, NULL) == 0);
	CHECK(!extmap_packed(&m) && extmap_n(&m) == 1 &&
	      extmap_nblocks(&m) == EXTMAP_LEN_MAX + 1);
	CHECK(extmap_lookup(&m, EXTMAP_LEN_MAX, &e) == 1 && e.len == 1 &&
	      e.obj == EXTMAP_OBJ_MAX);
	CHECK(extmap_punch(&m, 5, UINT64_MAX - 5, NULL, NULL) == 0);
	CHECK(extmap_packed(&m) && extmap_nblocks(&m) == 5);
	CHECK(extmap_punch(&m, 0, UINT64_MAX, NULL, NULL) == 0);
	CHECK(extmap_set(&m, 0, 3, EXTMAP_OBJ_MAX + 1, 0, NULL, NULL) == 0);
	CHECK(!extmap_packed(&m) && extmap_at(&m, 0).obj == EXTMAP_OBJ_MAX + 1);
	/* a pool has nothing to share of a packed map */
	struct extmap_pool *p = extmap_pool_new();
	CHECK(p != NULL);
	CHECK(extmap_punch(&m, 0, UINT64_MAX, NULL, NULL) == 0);
	CHECK(extmap_set(&m, 0, 3, 5, 0, NULL, NULL) == 0);
	uint64_t w = m.w;
	extmap_pool_share(p, &m);
	CHECK(m.w == w);
	extmap_pool_free(p);
	extmap_release(&m);
	extmap_release(&c);
	CHECK(m.w == 0 && c.w == 0);
	printf("  packed ok\n");
}

/* Equal maps built apart come to share one array through a pool; a
 * change to one of them shows in none of the others. */
static void pool_cases(void)
{
	enum { N = 300 };
	static struct extmap m[N];
	struct extmap_pool *p = extmap_pool_new();
	struct extent e;

	CHECK(p != NULL);
	for (int i = 0; i < N; i++) {
		extmap_init(&m[i]);
		/* three kinds of content: i % 3; kind 2 has 3 extents */
		uint64_t obj = 1 + (uint64_t)(i % 3);
		CHECK(extmap_set(&m[i], 0, 4, obj, 10, NULL, NULL) == 0);
		if (i % 3 == 2) {
			CHECK(extmap_set(&m[i], 10, 2, 9, 0, NULL, NULL) == 0);
			CHECK(extmap_set(&m[i], 20, 2, 9, 5, NULL, NULL) == 0);
		}
		extmap_pool_share(p, &m[i]);
		CHECK(extmap_buf(&m[i])->cap == extmap_buf(&m[i])->n);	/* cut to size */
	}
	for (int i = 3; i < N; i++)
		CHECK(m[i].w == m[i % 3].w);
	CHECK(m[0].w != m[1].w && m[1].w != m[2].w);
	/* the pool's own reference: the arrays are shared even for one map */
	CHECK(extmap_buf(&m[0])->refs == N / 3 + 1);
	extmap_pool_share(p, &m[0]);	/* twice: no change */
	CHECK(extmap_buf(&m[0])->refs == N / 3 + 1);
	CHECK(extmap_set(&m[5], 1, 1, 7, 7, NULL, NULL) == 0);
	CHECK(m[5].w != m[2].w && extmap_n(&m[5]) == 5);
	CHECK(extmap_lookup(&m[2], 1, &e) == 1 && e.obj == 3 && e.pblk == 11);
	CHECK(extmap_lookup(&m[8], 1, &e) == 1 && e.obj == 3 && e.pblk == 11);
	extmap_pool_free(p);
	CHECK(extmap_buf(&m[0])->refs == N / 3);
	extmap_pool_share(NULL, &m[1]);	/* no pool: nothing */
	for (int i = 0; i < N; i++)
		extmap_release(&m[i]);
	printf("  pool ok\n");
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	init_seed("test_extmap");
	fixed_cases();
	packed_cases();
	pool_cases();
	random_test(30000);
	free(drops.v);
	printf("test_extmap: all ok\n");
	return 0;
}
