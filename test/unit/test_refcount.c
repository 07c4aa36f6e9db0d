/*
 * test_refcount.c - randomised test of the shared-block reference count
 * table (refcount.h) against a plain array model.
 *
 * Model: for each key (obj, pblk) of a fixed key space, the stored count
 * (0: not stored, i.e. a count of 1).  Checked: inc/dec/get/set results,
 * that only counts >= 2 are stored and refcount_next iterates exactly those,
 * through growth to tens of thousands of entries, long insert/delete churn
 * (tombstones) and draining to empty.
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
#include "cowfs/refcount.h"

static const char *phase = "start";

static void fail_exit(void)
{
	fprintf(stderr, "test_refcount: FAILED in phase '%s' (seed %" PRIu64
		", rerun with TEST_SEED=%" PRIu64 ")\n", phase, seed, seed);
	exit(1);
}

/* ---- key space and model ---- */

#define KBITS 18
#define NKEYS (1u << KBITS)	/* 262144 keys */
#define PBITS 10		/* pblks per object in the key space */

struct keyspace {
	const char *name;
	uint64_t obj_base, obj_step;
	uint64_t pblk_base, pblk_step;
};

static const struct keyspace spaces[] = {
	/* small ids, as a fresh store hands out */
	{ "small", 1, 1, 0, 1 },
	/* big, sparse ids near the top of the range */
	{ "large", 0xfffffff000000001ull, 0x10001, 0xffff000000000000ull, 7 },
	/* one object, many blocks; another with consecutive objects */
	{ "dense", 42, 1, 1ull << 32, 1 },
};

static const struct keyspace *ks;
static uint32_t model[NKEYS];	/* 0: not stored */
static size_t model_live;
static unsigned char seen[NKEYS];

static uint64_t key_obj(uint32_t k)
{
	return ks->obj_base + (uint64_t)(k >> PBITS) * ks->obj_step;
}

static uint64_t key_pblk(uint32_t k)
{
	return ks->pblk_base + (uint64_t)(k & ((1u << PBITS) - 1)) * ks->pblk_step;
}

/* Map an (obj, pblk) back to its key; -1 if it is not in the key space. */
static long key_of(uint64_t obj, uint64_t pblk)
{
	uint64_t o = obj - ks->obj_base, p = pblk - ks->pblk_base;
	if (o % ks->obj_step || p % ks->pblk_step)
		return -1;
	o /= ks->obj_step;
	p /= ks->pblk_step;
	if (o >= (NKEYS >> PBITS) || p >= (1u << PBITS))
		return -1;
	return (long)(o << PBITS | p);
}

/* ---- operations on both ---- */

static void op_inc(struct refcount *rc, uint32_t k)
{
	CHECK(refcount_inc(rc, key_obj(k), key_pblk(k)) == 0);
	if (model[k] == 0) {
		model[k] = 2;
		model_live++;
	} else {
		model[k]++;
	}
}

static void op_dec(struct refcount *rc, uint32_t k)
{
	uint32_t want, got = refcount_dec(rc, key_obj(k), key_pblk(k));
	if (model[k] == 0) {
		want = 0;		/* count 1 -> 0: the block is free */
	} else if (model[k] == 2) {
		want = 1;
		model[k] = 0;
		model_live--;
	} else {
		want = --model[k];
	}
	CHECKF(got == want, "dec key %u: got %u want %u", k, got, want);
}

static void op_set(struct refcount *rc, uint32_t k, uint32_t count)
{
	CHECK(count >= 2);
	CHECK(refcount_set(rc, key_obj(k), key_pblk(k), count) == 0);
	if (model[k] == 0)
		model_live++;
	model[k] = count;
}

static void check_get(const struct refcount *rc, uint32_t k)
{
	uint32_t got = refcount_get(rc, key_obj(k), key_pblk(k));
	uint32_t want = model[k] ? model[k] : 1;
	CHECKF(got == want, "get key %u (obj %" PRIx64 " pblk %" PRIx64
	       "): got %u want %u", k, key_obj(k), key_pblk(k), got, want);
}

/* The table's own bookkeeping, as far as the header exposes it. */
static void check_table(const struct refcount *rc)
{
	CHECKF(rc->live == model_live, "live %zu, model %zu", rc->live,
	       model_live);
	if (rc->cap) {
		CHECK(rc->slots != NULL);
		CHECKF((rc->cap & (rc->cap - 1)) == 0, "cap %zu", rc->cap);
		/* an empty slot must remain, or a failed lookup never ends */
		CHECKF(rc->used < rc->cap, "used %zu cap %zu", rc->used, rc->cap);
		CHECK(rc->live <= rc->used);
	} else {
		CHECK(rc->live == 0);
	}
}

/* refcount_next yields exactly the stored entries, each once. */
static void check_iter(const struct refcount *rc)
{
	size_t i = 0, n = 0;
	uint64_t obj, pblk;
	uint32_t count;

	memset(seen, 0, sizeof(seen));
	while (refcount_next(rc, &i, &obj, &pblk, &count)) {
		long k = key_of(obj, pblk);
		CHECKF(k >= 0, "iteration yields unknown obj %" PRIx64 " pblk %"
		       PRIx64, obj, pblk);
		CHECKF(!seen[k], "key %ld yielded twice", k);
		seen[k] = 1;
		CHECKF(count >= 2, "key %ld stored with count %u", k, count);
		CHECKF(model[k] == count, "key %ld: iter count %u, model %u", k,
		       count, model[k]);
		n++;
		CHECKF(n <= NKEYS, "iteration does not end");
	}
	CHECKF(n == model_live, "iterated %zu entries, model has %zu", n,
	       model_live);
	/* Iterating again from the end yields nothing. */
	CHECK(refcount_next(rc, &i, &obj, &pblk, &count) == 0);
}

static void check_all(const struct refcount *rc)
{
	check_table(rc);
	for (uint32_t k = 0; k < NKEYS; k++)
		check_get(rc, k);
	check_iter(rc);
}

static void reset_model(void)
{
	memset(model, 0, sizeof(model));
	model_live = 0;
}

/* ---- phases ---- */

static void empty_table(void)
{
	struct refcount rc;
	size_t i = 0;
	uint64_t obj, pblk;
	uint32_t count;

	phase = "empty";
	refcount_init(&rc);
	CHECK(refcount_get(&rc, 1, 0) == 1);
	CHECK(refcount_dec(&rc, 1, 0) == 0);
	CHECK(refcount_next(&rc, &i, &obj, &pblk, &count) == 0);
	CHECK(rc.live == 0);
	/* inc -> 2, dec -> 1 (gone), dec -> 0 */
	CHECK(refcount_inc(&rc, 1, 0) == 0);
	CHECK(refcount_get(&rc, 1, 0) == 2);
	CHECK(refcount_get(&rc, 1, 1) == 1);
	CHECK(refcount_get(&rc, 2, 0) == 1);
	CHECK(refcount_dec(&rc, 1, 0) == 1);
	CHECK(refcount_get(&rc, 1, 0) == 1);
	CHECK(rc.live == 0);
	i = 0;
	CHECK(refcount_next(&rc, &i, &obj, &pblk, &count) == 0);
	CHECK(refcount_dec(&rc, 1, 0) == 0);
	/* set over a tombstone, set over an entry */
	CHECK(refcount_set(&rc, 1, 0, 7) == 0);
	CHECK(refcount_get(&rc, 1, 0) == 7);
	CHECK(refcount_set(&rc, 1, 0, 3) == 0);
	CHECK(refcount_get(&rc, 1, 0) == 3 && rc.live == 1);
	CHECK(refcount_dec(&rc, 1, 0) == 2);
	CHECK(refcount_dec(&rc, 1, 0) == 1);
	CHECK(rc.live == 0);
	/* pblk 0 and UINT64_MAX, obj UINT64_MAX */
	CHECK(refcount_inc(&rc, UINT64_MAX, UINT64_MAX) == 0);
	CHECK(refcount_inc(&rc, UINT64_MAX, 0) == 0);
	CHECK(refcount_get(&rc, UINT64_MAX, UINT64_MAX) == 2);
	CHECK(refcount_get(&rc, UINT64_MAX, 0) == 2);
	CHECK(refcount_get(&rc, UINT64_MAX, 1) == 1);
	/* large counts */
	CHECK(refcount_set(&rc, 5, 5, 0xfffffff0u) == 0);
	CHECK(refcount_inc(&rc, 5, 5) == 0);
	CHECK(refcount_get(&rc, 5, 5) == 0xfffffff1u);
	CHECK(refcount_dec(&rc, 5, 5) == 0xfffffff0u);
	refcount_release(&rc);
	CHECK(rc.slots == NULL && rc.cap == 0 && rc.live == 0);
	refcount_release(&rc);
	printf("  empty table ok\n");
}

/* Random ops on a small hot set: high counts, constant churn. */
static void hot_keys(struct refcount *rc, long nops)
{
	uint32_t hot[300];

	phase = "hot keys";
	for (size_t i = 0; i < sizeof(hot) / sizeof(*hot); i++)
		hot[i] = (uint32_t)rndn(NKEYS);
	for (long n = 0; n < nops; n++) {
		uint32_t k = hot[rndn(sizeof(hot) / sizeof(*hot))];
		uint64_t r = rndn(100);
		if (r < 45)
			op_inc(rc, k);
		else if (r < 90)
			op_dec(rc, k);
		else if (r < 95)
			op_set(rc, k, 2 + (uint32_t)rndn(rndn(2) ? 3 : 100000));
		check_get(rc, k);
		if (n % 5000 == 0) {
			check_table(rc);
			check_iter(rc);
		}
	}
	check_all(rc);
	printf("  hot keys: %ld ops, %zu stored ok\n", nops, model_live);
}

/* Tens of thousands of distinct entries. */
static void growth(struct refcount *rc, size_t target)
{
	size_t steps = 0;

	phase = "growth";
	while (model_live < target) {
		uint32_t k = (uint32_t)rndn(NKEYS);
		if (rndn(4))
			op_inc(rc, k);
		else
			op_set(rc, k, 2 + (uint32_t)rndn(10));
		if (rndn(10) == 0)
			op_dec(rc, (uint32_t)rndn(NKEYS));
		if (++steps % 20000 == 0) {
			check_table(rc);
			check_iter(rc);
		}
	}
	check_all(rc);
	printf("  growth: %zu entries (cap %zu) ok\n", model_live, rc->cap);
}

/* Insert/delete cycles of fresh keys while a resident set stays: the
 * table fills with tombstones that must be recycled. */
static void churn(struct refcount *rc, long cycles)
{
	size_t max_cap = rc->cap, start_cap = rc->cap;

	phase = "churn";
	for (long n = 0; n < cycles; n++) {
		uint32_t k = (uint32_t)rndn(NKEYS);
		if (model[k] == 0) {
			op_inc(rc, k);
			check_get(rc, k);
			if (rndn(2))
				op_inc(rc, k);
			while (model[k])
				op_dec(rc, k);
			check_get(rc, k);
		} else {
			/* a resident key: bump and put back */
			op_inc(rc, k);
			op_dec(rc, k);
			check_get(rc, k);
		}
		if (rc->cap > max_cap)
			max_cap = rc->cap;
		if (n % 50000 == 0) {
			check_table(rc);
			check_iter(rc);
		}
	}
	check_all(rc);
	/* Churn must not make the table grow without bound (it need not
	 * shrink either). */
	CHECKF(max_cap <= start_cap || max_cap <= 16 * (model_live + 64) + 1024,
	       "cap reached %zu with %zu live entries", max_cap, model_live);
	printf("  churn: %ld cycles, %zu resident, max cap %zu ok\n", cycles,
	       model_live, max_cap);
}

/* Remove everything. */
static void drain(struct refcount *rc)
{
	phase = "drain";
	for (uint32_t k = 0; k < NKEYS; k++) {
		while (model[k])
			op_dec(rc, k);
		if (k % 16384 == 0)
			check_table(rc);
	}
	CHECK(model_live == 0);
	check_all(rc);
	printf("  drain ok\n");
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	init_seed("test_refcount");
	empty_table();
	for (size_t s = 0; s < sizeof(spaces) / sizeof(*spaces); s++) {
		struct refcount rc;
		ks = &spaces[s];
		printf(" key space %s\n", ks->name);
		reset_model();
		refcount_init(&rc);
		hot_keys(&rc, 100000);
		growth(&rc, 40000 + rndn(30000));
		churn(&rc, 300000);
		/* a small resident set: churn with mostly tombstones */
		drain(&rc);
		for (int i = 0; i < 500; i++)
			op_inc(&rc, (uint32_t)rndn(NKEYS));
		churn(&rc, 300000);
		/* and back up again after the churn */
		growth(&rc, 60000);
		drain(&rc);
		refcount_release(&rc);
	}
	printf("test_refcount: all ok\n");
	return 0;
}
