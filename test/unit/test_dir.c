/*
 * test_dir.c - model-based randomised test of directories (struct dir,
 * the dir_* functions of inode.c).
 *
 * The model is a list of (name, ino, cookie) sorted by cookie.  Random
 * adds (in cookie order, out of order, onto a tombstone's cookie),
 * deletes, and the rename pattern (reserve, delete, add) run through
 * growth past the hash threshold, squeezing of tombstones and dead names,
 * and draining to empty.  After each step: every model entry is found by
 * name with its ino and cookie, absent names are not, a walk returns
 * exactly the model in cookie order, dir_seek() finds the first cookie at
 * or after any cookie, nentries and next_cookie agree, and the table (when
 * there is one) holds exactly the live entries.
 *
 * Randomised: the seed is printed; rerun with TEST_SEED=<seed>.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"
#include "cowfs/fs_impl.h"

static long op_no = -1;

static void fail_exit(void)
{
	fprintf(stderr, "test_dir: FAILED at op %ld (seed %" PRIu64
		", rerun with TEST_SEED=%" PRIu64 ")\n", op_no, seed, seed);
	exit(1);
}

struct ment {
	char *name;
	uint64_t ino, cookie;
};

static struct ment *model;
static size_t mn, mcap;
static uint64_t max_cookie;	/* the highest cookie ever added */

static size_t model_find(const char *name)
{
	for (size_t i = 0; i < mn; i++)
		if (!strcmp(model[i].name, name))
			return i;
	return SIZE_MAX;
}

static size_t model_seek(uint64_t cookie)
{
	size_t i = 0;
	while (i < mn && model[i].cookie < cookie)
		i++;
	return i;
}

static void model_add(const char *name, uint64_t ino, uint64_t cookie)
{
	size_t at = model_seek(cookie);

	if (mn == mcap) {
		mcap = mcap ? 2 * mcap : 256;
		model = realloc(model, mcap * sizeof(*model));
		CHECK(model != NULL);
	}
	memmove(&model[at + 1], &model[at], (mn - at) * sizeof(*model));
	model[at] = (struct ment){ strdup(name), ino, cookie };
	CHECK(model[at].name != NULL);
	mn++;
	if (cookie > max_cookie)
		max_cookie = cookie;
}

static void model_del(size_t i)
{
	free(model[i].name);
	memmove(&model[i], &model[i + 1], (mn - i - 1) * sizeof(*model));
	mn--;
}

/* A name: short, long (up to COWFS_NAME_MAX), or a prefix family whose
 * members differ in the last bytes only. */
static void rnd_name(char *buf)
{
	switch (rndn(4)) {
	case 0: {
		size_t len = 1 + rndn(COWFS_NAME_MAX);
		for (size_t i = 0; i < len; i++)
			buf[i] = (char)('a' + rndn(26));
		buf[len] = 0;
		break;
	}
	case 1:
		snprintf(buf, COWFS_NAME_MAX + 1, "file_%05" PRIu64 ".c", rndn(50000));
		break;
	default:
		snprintf(buf, COWFS_NAME_MAX + 1, "%" PRIu64, rndn(100000));
		break;
	}
}

static void check_all(struct inode *in)
{
	const struct dir *d = in->dir;
	struct dent *e;
	size_t i, k = 0;
	char buf[COWFS_NAME_MAX + 8];

	CHECKF(dir_nentries(in) == mn, "nentries %" PRIu64 ", model %zu",
	       dir_nentries(in), mn);
	CHECK(d->n <= d->cap && d->nlen <= d->ncap && d->dead <= d->nlen);
	CHECK(dir_next_cookie(in) > max_cookie);
	/* the walk: exactly the model, in cookie order */
	for (i = 0; (e = dir_next(in, &i)); i++, k++) {
		CHECKF(k < mn, "walk returns more than %zu entries", mn);
		CHECKF(e->ino == model[k].ino && e->cookie == model[k].cookie &&
		       !strcmp(dent_name(in, e), model[k].name) &&
		       e->len == strlen(model[k].name),
		       "walk entry %zu: '%s' ino %" PRIu64 " cookie %" PRIu64
		       ", model '%s' %" PRIu64 " %" PRIu64, k, dent_name(in, e),
		       e->ino, e->cookie, model[k].name, model[k].ino,
		       model[k].cookie);
	}
	CHECKF(k == mn, "walk returned %zu of %zu entries", k, mn);
	/* every name found, with its entry */
	for (k = 0; k < mn; k++) {
		e = dir_find(in, model[k].name);
		CHECKF(e && e->ino == model[k].ino && e->cookie == model[k].cookie,
		       "'%s' not found or wrong", model[k].name);
	}
	/* live entries in the table: exactly nentries slots */
	if (d->hash) {
		uint32_t used = 0;
		const uint32_t *slot = d->hash->slot;
		for (uint32_t h = 0; h < d->hcap; h++) {
			if (!slot[h])
				continue;
			used++;
			CHECK(slot[h] - 1 < d->n && d->v[slot[h] - 1].ino);
		}
		CHECKF(used == mn, "table holds %u, model %zu", used, mn);
		CHECK(4 * (uint64_t)used <= 3 * (uint64_t)d->hcap);
	}
	/* seeks */
	for (int t = 0; t < 8; t++) {
		uint64_t c = rndn(max_cookie + 3);
		size_t at = model_seek(c);
		i = dir_seek(in, c);
		e = dir_next(in, &i);
		if (at == mn)
			CHECK(e == NULL);
		else
			CHECKF(e && e->cookie == model[at].cookie,
			       "seek to %" PRIu64 " wrong", c);
	}
	/* absent names */
	for (int t = 0; t < 8; t++) {
		rnd_name(buf);
		strcat(buf, "!");	/* no generated name has one */
		CHECK(dir_find(in, buf) == NULL);
	}
}

static uint64_t next_ino = 100;

static void op_add(struct inode *in, int ordered)
{
	char name[COWFS_NAME_MAX + 1];
	uint64_t cookie = dir_next_cookie(in);
	int rc;

	rnd_name(name);
	if (!ordered && max_cookie > 3) {
		/* a cookie below the others; a live one must be refused */
		cookie = 3 + rndn(max_cookie - 2);
	}
	size_t at = model_seek(cookie);
	int clash = at < mn && model[at].cookie == cookie;
	int exists = model_find(name) != SIZE_MAX;
	rc = dir_add(NULL, in, name, next_ino, cookie);
	if (exists || clash) {
		CHECKF(rc == -EEXIST, "add of '%s' cookie %" PRIu64 ": %d, want "
		       "EEXIST", name, cookie, rc);
		return;
	}
	CHECKF(rc == 0, "add of '%s': %d", name, rc);
	model_add(name, next_ino++, cookie);
}

/* rename in place, as fs_rename: reserve, delete, add */
static void op_rename(struct inode *in)
{
	char name[COWFS_NAME_MAX + 1];
	size_t k = rndn(mn);
	uint64_t cookie = dir_next_cookie(in), ino;
	struct dent *e;

	rnd_name(name);
	if (model_find(name) != SIZE_MAX)
		return;
	CHECK(dir_reserve(in, strlen(name)) == 0);
	e = dir_find(in, model[k].name);
	CHECK(e != NULL);
	ino = e->ino;
	dir_del(NULL, in, e);
	model_del(k);
	CHECK(dir_add(NULL, in, name, ino, cookie) == 0);
	model_add(name, ino, cookie);
}

/* the exchange pattern of a replay: delete, then add on the same cookie */
static void op_readd(struct inode *in)
{
	size_t k = rndn(mn);
	struct ment m = model[k];
	struct dent *e = dir_find(in, m.name);
	char *name = strdup(m.name);

	CHECK(e != NULL && name != NULL);
	dir_del(NULL, in, e);
	model_del(k);
	CHECK(dir_add(NULL, in, name, m.ino + 1000000, m.cookie) == 0);
	model_add(name, m.ino + 1000000, m.cookie);
	free(name);
}

static void op_del(struct inode *in)
{
	size_t k = rndn(mn);
	struct dent *e = dir_find(in, model[k].name);

	CHECK(e != NULL);
	dir_del(NULL, in, e);
	model_del(k);
}

static void random_test(long nops, size_t target)
{
	struct inode in;

	memset(&in, 0, sizeof(in));
	max_cookie = 0;
	in.mode = S_IFDIR | 0755;
	CHECK(inode_make_dir(&in, 1) == 0);
	check_all(&in);
	for (op_no = 0; op_no < nops; op_no++) {
		/* grow to about target entries, then churn, then drain */
		int phase = (int)(op_no * 3 / nops);
		uint64_t k = rndn(100);
		uint64_t add_p = phase == 0 ? 70 : phase == 1 ? 45 : 15;
		if (mn > target && phase < 2)
			add_p = 30;
		if (k < add_p || mn == 0)
			op_add(&in, rndn(50) != 0);
		else if (k < add_p + 5)
			op_rename(&in);
		else if (k < add_p + 8)
			op_readd(&in);
		else
			op_del(&in);
		if (mn < 64 || op_no % 97 == 0)
			check_all(&in);
	}
	while (mn)
		op_del(&in);
	check_all(&in);
	/* an emptied directory takes entries again */
	op_add(&in, 1);
	check_all(&in);
	printf("  %ld ops up to ~%zu entries ok\n", nops, target);
	while (mn)
		model_del(0);
	dir_free(&in);
	CHECK(in.dir == NULL);
	op_no = -1;
}

/* A clone's directory sized by dir_prealloc() takes its source's entries
 * without growing. */
static void prealloc_case(void)
{
	struct inode a, b;
	char name[32];

	memset(&a, 0, sizeof(a));
	memset(&b, 0, sizeof(b));
	a.mode = b.mode = S_IFDIR | 0755;
	CHECK(inode_make_dir(&a, 1) == 0 && inode_make_dir(&b, 1) == 0);
	for (int i = 0; i < 1000; i++) {
		snprintf(name, sizeof(name), "n%d", i);
		CHECK(dir_add(NULL, &a, name, 10 + (uint64_t)i, 3 + 2 * (uint64_t)i) == 0);
	}
	for (int i = 0; i < 1000; i += 3) {
		snprintf(name, sizeof(name), "n%d", i);
		dir_del(NULL, &a, dir_find(&a, name));
	}
	CHECK(dir_prealloc(&b, &a) == 0);
	struct dent *e;
	for (size_t i = 0; (e = dir_next(&a, &i)); i++)
		CHECK(dir_add(NULL, &b, dent_name(&a, e), e->ino, e->cookie) == 0);
	CHECK(b.dir->n == a.dir->nentries && b.dir->cap == b.dir->n);
	CHECK(b.dir->nlen == b.dir->ncap);
	CHECK(dir_next_cookie(&b) == dir_next_cookie(&a));
	for (size_t i = 0; (e = dir_next(&a, &i)); i++) {
		struct dent *f = dir_find(&b, dent_name(&a, e));
		CHECK(f && f->ino == e->ino && f->cookie == e->cookie);
	}
	dir_free(&a);
	dir_free(&b);
	printf("  prealloc ok\n");
}

/* dir_presize(): n entries go in without moving the entries, the names
 * or the table; a non-directory has no directory part, whatever its
 * word of the union holds. */
static void presize_case(void)
{
	struct inode a, f;
	char name[32];
	size_t n = 700, bytes = 0;

	memset(&a, 0, sizeof(a));
	a.mode = S_IFDIR | 0755;
	CHECK(inode_make_dir(&a, 1) == 0);
	for (size_t i = 0; i < n; i++)
		bytes += (size_t)snprintf(name, sizeof(name), "p%zu", i) + 1;
	CHECK(dir_presize(&a, n, bytes) == 0);
	struct dent *v = a.dir->v;
	struct dnames *nm = a.dir->names;
	struct dhash *h = a.dir->hash;
	CHECK(v && nm && h && a.dir->cap == n && a.dir->ncap == bytes);
	CHECK(4 * n <= 3 * (size_t)a.dir->hcap && 4 * n > 3 * (size_t)a.dir->hcap / 2);
	CHECK(dir_presize(&a, n, bytes) == 0 && a.dir->v == v);	/* not new */
	for (size_t i = 0; i < n; i++) {
		snprintf(name, sizeof(name), "p%zu", i);
		CHECK(dir_add(NULL, &a, name, 10 + i, 3 + i) == 0);
	}
	CHECK(a.dir->v == v && a.dir->names == nm && a.dir->hash == h);
	CHECK(a.dir->nlen == a.dir->ncap && dir_nentries(&a) == n);
	for (size_t i = 0; i < n; i++) {
		snprintf(name, sizeof(name), "p%zu", i);
		struct dent *e = dir_find(&a, name);
		CHECK(e && e->ino == 10 + i && e->cookie == 3 + i);
	}
	CHECK(!dir_find(&a, "p700"));

	memset(&f, 0, sizeof(f));
	f.mode = S_IFREG | 0644;
	f.dir = a.dir;		/* what a file's map word might look like */
	size_t i = 0;
	CHECK(!inode_dir(&f) && !dir_find(&f, "p1") && !dir_next(&f, &i));
	CHECK(dir_nentries(&f) == 0 && dir_parent(&f) == 0 &&
	      dir_next_cookie(&f) == 3 && dir_presize(&f, 5, 10) == 0);
	CHECK(dir_add(NULL, &f, "q", 5, 3) == -EINVAL);
	dir_free(&f);		/* not a directory: nothing freed */
	CHECK(f.dir == a.dir);
	dir_free(&a);
	printf("  presize ok\n");
}

/* Xattrs live in inode.c's side table: many inodes, set, replace, delete
 * in a random order, each inode's list checked against what was set. */
static void xattr_case(void)
{
	enum { N = 300, K = 4 };
	static struct inode v[N];
	static int have[N][K];
	char name[32], val[32];

	memset(v, 0, sizeof(v));
	for (int i = 0; i < N; i++) {
		v[i].mode = S_IFREG | 0644;
		CHECK(!inode_xattrs(&v[i]) && !*xattr_find(&v[i], "user.a"));
		CHECK(xattr_del(&v[i], "user.a") == -ENODATA);
	}
	for (int step = 0; step < 20000; step++) {
		int i = (int)rndn(N), k = (int)rndn(K);
		snprintf(name, sizeof(name), "user.k%d", k);
		if (rndn(3)) {
			int n = snprintf(val, sizeof(val), "%d-%d", i, step);
			CHECK(xattr_set(&v[i], name, val, (uint32_t)n) == 0);
			have[i][k] = step + 1;
		} else {
			CHECK(xattr_del(&v[i], name) == (have[i][k] ? 0 : -ENODATA));
			have[i][k] = 0;
		}
	}
	for (int i = 0; i < N; i++) {
		int n = 0, want = 0;
		for (struct xattr *x = inode_xattrs(&v[i]); x; x = x->next)
			n++;
		for (int k = 0; k < K; k++) {
			snprintf(name, sizeof(name), "user.k%d", k);
			struct xattr *x = *xattr_find(&v[i], name);
			CHECK(!x == !have[i][k]);
			if (x) {
				int m = snprintf(val, sizeof(val), "%d-%d", i, have[i][k] - 1);
				CHECK(x->len == (uint32_t)m && !memcmp(x->value, val, x->len));
				want++;
			}
		}
		CHECK(n == want && v[i].has_xattrs == (want > 0));
	}
	for (int i = 0; i < N; i++)	/* the last one goes: so does the entry */
		for (int k = 0; k < K; k++) {
			snprintf(name, sizeof(name), "user.k%d", k);
			if (have[i][k])
				CHECK(xattr_del(&v[i], name) == 0);
		}
	for (int i = 0; i < N; i++)
		CHECK(!v[i].has_xattrs && !inode_xattrs(&v[i]));
	printf("  xattrs ok\n");
}

/* Models of two directories at once: the globals are the current one. */
struct mstate {
	struct ment *model;
	size_t mn, mcap;
	uint64_t max_cookie;
};

static void model_save(struct mstate *m)
{
	*m = (struct mstate){ model, mn, mcap, max_cookie };
}

static void model_load(const struct mstate *m)
{
	model = m->model;
	mn = m->mn;
	mcap = m->mcap;
	max_cookie = m->max_cookie;
}

static void model_copy_of(struct mstate *dst, const struct mstate *src)
{
	*dst = *src;
	dst->model = malloc(src->mcap * sizeof(*dst->model));
	CHECK(dst->model != NULL);
	for (size_t i = 0; i < src->mn; i++) {
		dst->model[i] = src->model[i];
		dst->model[i].name = strdup(src->model[i].name);
		CHECK(dst->model[i].name != NULL);
	}
}

/* One random change to in, with its model current. */
static void random_op(struct inode *in)
{
	uint64_t k = rndn(100);

	if (k < 45 || mn == 0)
		op_add(in, rndn(20) != 0);
	else if (k < 55)
		op_rename(in);
	else if (k < 60)
		op_readd(in);
	else
		op_del(in);
}

/*
 * Twins: b made from a by dir_clone_shape() (the clone's way; with
 * tombstones in a, entry by entry) or by loading the same entries and
 * dir_pool_share() (the checkpoint's way); then both change at random,
 * each against its own model: a change to one never shows in the other.
 */
static void twins_test(int how, size_t size)
{
	struct inode a, b;
	struct mstate ma, mb;
	struct dir_pool *pool = NULL;
	struct dent *e;

	memset(&a, 0, sizeof(a));
	memset(&b, 0, sizeof(b));
	a.mode = b.mode = S_IFDIR | 0755;
	CHECK(inode_make_dir(&a, 1) == 0 && inode_make_dir(&b, 1) == 0);
	max_cookie = 0;
	while (mn < size)
		op_add(&a, 1);
	if (how == 1)		/* some tombstones */
		for (int i = 0; i < 5 && mn > 1; i++)
			op_del(&a);
	check_all(&a);
	model_save(&ma);
	model_copy_of(&mb, &ma);
	if (how == 2) {
		/* b loaded apart with the same entries, then pooled */
		for (size_t i = 0; (e = dir_next(&a, &i)); i++)
			CHECK(dir_add(NULL, &b, dent_name(&a, e), e->ino, e->cookie) == 0);
		pool = dir_pool_new();
		CHECK(pool != NULL);
		dir_trim(&a);
		dir_trim(&b);
		dir_pool_share(pool, &a);
		dir_pool_share(pool, &b);
		CHECK(a.dir->names == b.dir->names);
		CHECK(a.dir->hash == b.dir->hash);
		CHECK(a.dir->names->refs == 3);	/* a, b, the pool */
	} else {
		int dead = a.dir->n != a.dir->nentries || a.dir->dead;
		int rc = dir_clone_shape(&b, &a);
		CHECK(rc == (dead && mn ? 1 : 0));
		if (rc == 1) {
			CHECK(dir_prealloc(&b, &a) == 0);
			for (size_t i = 0; (e = dir_next(&a, &i)); i++)
				CHECK(dir_add(NULL, &b, dent_name(&a, e), e->ino,
					      e->cookie) == 0);
		} else {
			CHECK(a.dir->names == b.dir->names);
			CHECK(a.dir->hash == b.dir->hash);
		}
	}
	model_load(&mb);
	check_all(&b);
	model_save(&mb);
	for (op_no = 0; op_no < 4000; op_no++) {
		int which = (int)rndn(2), check = op_no % 13 == 0 || op_no < 40;
		struct inode *x = which ? &a : &b, *y = which ? &b : &a;
		struct mstate *mx = which ? &ma : &mb, *my = which ? &mb : &ma;
		model_load(mx);
		random_op(x);
		if (check)
			check_all(x);
		model_save(mx);
		if (check) {
			model_load(my);
			check_all(y);
			model_save(my);
		}
	}
	model_load(&ma);
	check_all(&a);
	while (mn)
		model_del(0);
	free(model);
	model_load(&mb);
	check_all(&b);
	while (mn)
		model_del(0);
	free(model);
	model = NULL;
	mn = mcap = 0;
	dir_pool_free(pool);
	dir_free(&a);
	dir_free(&b);
	op_no = -1;
	printf("  twins (%s, %zu entries) ok\n",
	       how == 0 ? "clone" : how == 1 ? "clone with tombstones" : "pool",
	       size);
}

/* Bad input: names, cookies. */
static void fixed_cases(void)
{
	struct inode in;
	char longname[COWFS_NAME_MAX + 2];

	memset(&in, 0, sizeof(in));
	in.mode = S_IFDIR | 0755;
	CHECK(inode_make_dir(&in, 1) == 0);
	CHECK(dir_add(NULL, &in, "", 5, 3) == -EINVAL);
	CHECK(dir_add(NULL, &in, ".", 5, 3) == -EINVAL);
	CHECK(dir_add(NULL, &in, "..", 5, 3) == -EINVAL);
	CHECK(dir_add(NULL, &in, "a/b", 5, 3) == -EINVAL);
	memset(longname, 'x', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = 0;
	CHECK(dir_add(NULL, &in, longname, 5, 3) == -ENAMETOOLONG);
	CHECK(dir_add(NULL, &in, "a", 5, 2) == -EINVAL);
	CHECK(dir_add(NULL, &in, "a", 5, (uint64_t)INT64_MAX) == -EINVAL);
	CHECK(dir_add(NULL, &in, "a", 0, 3) == -EINVAL);
	CHECK(dir_add(NULL, &in, "a", 5, 3) == 0);
	CHECK(dir_add(NULL, &in, "a", 6, 4) == -EEXIST);
	CHECK(dir_add(NULL, &in, "b", 6, 3) == -EEXIST);
	CHECK(dir_next_cookie(&in) == 4 && dir_nentries(&in) == 1);
	longname[COWFS_NAME_MAX] = 0;
	CHECK(dir_add(NULL, &in, longname, 7, 10) == 0);
	CHECK(dir_find(&in, longname) && dir_next_cookie(&in) == 11);
	dir_free(&in);
	printf("  fixed cases ok\n");
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	init_seed("test_dir");
	fixed_cases();
	prealloc_case();
	presize_case();
	xattr_case();
	random_test(20000, 20);
	random_test(60000, 3000);
	free(model);
	model = NULL;
	mcap = 0;
	for (int how = 0; how < 3; how++) {
		twins_test(how, 5);
		twins_test(how, 300);
	}
	printf("test_dir: all ok\n");
	return 0;
}
