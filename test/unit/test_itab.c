/*
 * test_itab.c - the inode table, the dirty list and packed timestamps
 * (inode.c) against plain reference models:
 *
 *  - random inserts and deletes of inode numbers, dense and sparse (up to
 *    UINT64_MAX), checked against a sorted array: lookup, iteration in
 *    number order (INODE_FOREACH), INODE_FOREACH_SAFE freeing as it goes,
 *    the count, and that an emptied table frees its nodes;
 *  - the dirty list: each dirty inode is flushed once, in dirtying order,
 *    freed and cleaned ones are skipped;
 *  - timestamps: every value round-trips exactly, inside the int64
 *    nanosecond range, at its edges and far outside it, and a freed
 *    inode's side-table entries go (a new inode at its address reads its
 *    own times).
 */
#include <limits.h>
#include <stdlib.h>

#include "cowfs/fs_impl.h"
#include "testutil.h"

static void fail_exit(void)
{
	fprintf(stderr, "test_itab: failed (TEST_SEED=%" PRIu64 ")\n", seed);
	exit(1);
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return (x > y) - (x < y);
}

static struct fs fs;

/* The reference: a set of numbers. */
static uint64_t *ref;
static size_t nref, capref;

static bool ref_has(uint64_t ino)
{
	for (size_t i = 0; i < nref; i++)
		if (ref[i] == ino)
			return true;
	return false;
}

static void ref_add(uint64_t ino)
{
	if (nref == capref) {
		capref = capref ? capref * 2 : 256;
		ref = realloc(ref, capref * sizeof(*ref));
		CHECK(ref != NULL);
	}
	ref[nref++] = ino;
}

static void ref_del(size_t i)
{
	ref[i] = ref[--nref];
}

static void check_all(void)
{
	struct inode *in;
	size_t i = 0;

	qsort(ref, nref, sizeof(*ref), cmp_u64);
	CHECKF(fs.ninodes == nref, "ninodes %" PRIu64 ", want %zu",
	       fs.ninodes, nref);
	INODE_FOREACH(in, &fs) {
		CHECKF(i < nref && in->ino == ref[i],
		       "iteration: %" PRIu64 " at %zu", in->ino, i);
		CHECK(inode_get(&fs, in->ino) == in);
		i++;
	}
	CHECKF(i == nref, "iteration saw %zu of %zu", i, nref);
	for (size_t k = 0; k < nref; k++) {
		CHECK(inode_get(&fs, ref[k]) != NULL);
		if (ref[k] + 1 != 0 && (k + 1 == nref || ref[k + 1] != ref[k] + 1))
			CHECK(inode_get(&fs, ref[k] + 1) == NULL);
		/* inode_after from just below each member finds it */
		if (ref[k] > 0 && (k == 0 || ref[k - 1] != ref[k] - 1)) {
			in = inode_after(&fs, ref[k] - 1);
			CHECK(in && in->ino == ref[k]);
		}
	}
}

static uint64_t pick_ino(void)
{
	switch (rndn(4)) {
	case 0:
		return 1 + rndn(300);		/* dense, one leaf or a few */
	case 1:
		return 1 + rndn(100000);	/* a few levels */
	case 2:
		return UINT64_MAX - rndn(200);	/* the top of the range */
	default:
		return 1 + rnd() % (UINT64_MAX - 1);
	}
}

static void test_table(void)
{
	for (int round = 0; round < 10; round++) {
		for (int op = 0; op < 1000; op++) {
			if (nref && rndn(3) == 0) {
				size_t i = (size_t)rndn(nref);
				struct inode *in = inode_get(&fs, ref[i]);
				CHECK(in != NULL);
				inode_delete(&fs, in);
				ref_del(i);
			} else {
				uint64_t ino = pick_ino();
				if (ref_has(ino)) {
					CHECK(inode_get(&fs, ino) != NULL);
					continue;
				}
				struct inode *in = inode_new(&fs, ino);
				CHECK(in != NULL && in->ino == ino);
				ref_add(ino);
			}
		}
		check_all();
	}
	/* free everything while iterating; the table ends empty */
	struct inode *in, *t;
	INODE_FOREACH_SAFE(in, &fs, t)
		inode_delete(&fs, in);
	CHECK(fs.ninodes == 0);
	CHECK(fs.itab.root == NULL && fs.itab.height == 0);
	CHECK(inode_after(&fs, 0) == NULL);
	nref = 0;
}

static struct inode *flushed[64];
static size_t nflushed;

static void note_flush(struct fs *f, struct inode *in)
{
	(void)f;
	CHECK(nflushed < 64);
	flushed[nflushed++] = in;
}

static void test_dirty(void)
{
	struct inode *v[10];

	for (int i = 0; i < 10; i++)
		CHECK((v[i] = inode_new(&fs, (uint64_t)(100 + i))) != NULL);
	/* dirtied in the order 7 3 5 9 0, twice over; 5 cleaned; 9 freed */
	int order[] = { 7, 3, 5, 9, 0, 7, 3 };
	for (size_t i = 0; i < sizeof(order) / sizeof(order[0]); i++)
		inode_dirty(&fs, v[order[i]]);
	inode_undirty(&fs, v[5]);
	inode_delete(&fs, v[9]);
	nflushed = 0;
	inode_flush_dirty(&fs, note_flush);
	CHECK(nflushed == 3);
	CHECK(flushed[0] == v[7] && flushed[1] == v[3] && flushed[2] == v[0]);
	for (int i = 0; i < 9; i++)
		CHECK(!v[i]->dirty);
	nflushed = 0;
	inode_flush_dirty(&fs, note_flush);
	CHECK(nflushed == 0);
	/* cleaned, then dirtied again: flushed once */
	inode_dirty(&fs, v[1]);
	inode_undirty(&fs, v[1]);
	inode_dirty(&fs, v[1]);
	inode_flush_dirty(&fs, note_flush);
	CHECK(nflushed == 1 && flushed[0] == v[1]);
	for (int i = 0; i < 9; i++)
		inode_delete(&fs, v[i]);
	CHECK(fs.ninodes == 0);
}

static void check_time(struct inode *in, enum inode_time t, struct timespec ts)
{
	inode_set_time(in, t, ts);
	struct timespec got = inode_time(in, t);
	CHECKF(got.tv_sec == ts.tv_sec && got.tv_nsec == ts.tv_nsec,
	       "time %d: set %lld.%09ld, got %lld.%09ld", (int)t,
	       (long long)ts.tv_sec, ts.tv_nsec, (long long)got.tv_sec,
	       got.tv_nsec);
}

static void test_times(void)
{
	const int64_t NS = 1000000000;
	struct timespec edge[] = {
		{ 0, 0 },
		{ 0, 999999999 },
		{ -1, 0 },
		{ -1, 1 },
		{ INT64_MAX / NS, INT64_MAX % NS },		/* last packed */
		{ INT64_MAX / NS, INT64_MAX % NS + 1 },		/* first not */
		{ INT64_MIN / NS - 1, NS + INT64_MIN % NS },	/* first packed */
		{ INT64_MIN / NS - 1, NS + INT64_MIN % NS - 1 },	/* not */
		{ -11676096000LL, 0 },				/* 1600 */
		{ 16725225600LL, 500000000 },			/* 2500 */
		{ INT64_MAX, 999999999 },
		{ INT64_MIN, 0 },
		{ 5, 1000000000 },		/* not normal: kept as is */
		{ 5, 4294967295L },
	};
	struct inode *a = inode_new(&fs, 1), *b = inode_new(&fs, 2);

	CHECK(a && b);
	for (size_t i = 0; i < sizeof(edge) / sizeof(edge[0]); i++)
		for (unsigned t = 0; t < IT_N; t++) {
			check_time(a, t, edge[i]);
			/* the other inode's times are its own */
			check_time(b, t, edge[(i + 3) % (sizeof(edge) / sizeof(edge[0]))]);
			CHECK(inode_time(a, t).tv_sec == edge[i].tv_sec);
		}
	for (int i = 0; i < 100000; i++) {
		struct timespec ts = { (time_t)rnd(), (long)rndn(NS) };
		if (rndn(2))
			ts.tv_sec %= 20000000000LL;	/* mostly in range */
		check_time(a, (enum inode_time)rndn(IT_N), ts);
	}
	/* a is out of range everywhere; freed, its entries go with it */
	for (unsigned t = 0; t < IT_N; t++)
		inode_set_time(a, t, edge[9]);
	CHECK(a->xtimes == 0xf);
	inode_delete(&fs, a);
	struct inode *c = inode_new(&fs, 3);
	CHECK(c != NULL);
	for (unsigned t = 0; t < IT_N; t++) {
		CHECK(inode_time(c, t).tv_sec == 0 && inode_time(c, t).tv_nsec == 0);
		check_time(c, t, edge[9]);
		check_time(c, t, edge[1]);	/* back in range: entry dropped */
	}
	CHECK(c->xtimes == 0);
	inode_delete(&fs, c);
	inode_delete(&fs, b);
}

int main(void)
{
	init_seed("test_itab");
	test_table();
	test_dirty();
	test_times();
	inode_table_free(&fs);
	free(ref);
	printf("test_itab: ok\n");
	return 0;
}
