/*
 * test_object.c - randomised test of the object table (object.h): the
 * open-addressing hash by id, its backward-shift deletion and shrinking,
 * iteration, origin objects with their shared directory nodes, their
 * paths and REC_ORIGIN prefix coding, against a plain model.
 *
 * Key patterns: dense counter ids (what a store has), strides that are
 * powers of two (every id in one home slot's run: linear probing's worst
 * case) and random 64-bit ids.
 *
 * Randomised: the seed is printed; rerun with TEST_SEED=<seed>.
 */
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "cowfs/fs_impl.h"

static const char *phase = "start";

static void fail_exit(void)
{
	fprintf(stderr, "test_object: FAILED in phase '%s' (seed %" PRIu64
		", rerun with TEST_SEED=%" PRIu64 ")\n", phase, seed, seed);
	exit(1);
}

#define NKEYS 20000

static uint64_t keys[NKEYS];
static struct object *model[NKEYS];	/* live object of keys[i], or NULL */
static size_t nlive;

static void check_all(struct fs *fs)
{
	size_t seen = 0, it = 0;
	struct object *o;

	for (size_t i = 0; i < NKEYS; i++)
		CHECKF(obj_get(fs, keys[i]) == model[i], "key %" PRIu64, keys[i]);
	while ((o = obj_next(fs, &it))) {
		seen++;
		CHECK(obj_get(fs, o->id) == o);
	}
	CHECKF(seen == nlive && fs->objects.n == nlive, "seen %zu live %zu n %zu",
	       seen, nlive, fs->objects.n);
	/* at most 3/4 full, and shrunk after deletions */
	CHECK(fs->objects.n * 4 <= fs->objects.cap * 3);
	CHECK(fs->objects.cap <= 64 || fs->objects.n * 8 >= fs->objects.cap);
}

static void op(struct fs *fs, size_t i)
{
	if (model[i]) {
		obj_forget(fs, model[i]);
		model[i] = NULL;
		nlive--;
	} else {
		model[i] = obj_new(fs, keys[i], 0);
		CHECK(model[i] && model[i]->id == keys[i] && model[i]->fd == -1);
		nlive++;
	}
}

static void run_keys(const char *name, uint64_t base, uint64_t step, int random)
{
	struct fs *fs = calloc(1, sizeof(*fs));

	CHECK(fs);
	phase = name;
	printf(" keys: %s\n", name);
	for (size_t i = 0; i < NKEYS; i++)
		keys[i] = random ? rnd() | 1 : base + i * step;
	memset(model, 0, sizeof(model));
	nlive = 0;
	/* growth */
	for (size_t i = 0; i < NKEYS; i++)
		op(fs, i);
	check_all(fs);
	/* churn */
	for (int r = 0; r < 200000; r++)
		op(fs, rndn(NKEYS));
	check_all(fs);
	/* drain to a few, in random order: shrinking */
	for (size_t i = 0; i < NKEYS; i++) {
		size_t k = rndn(NKEYS);
		if (model[k] && nlive > 10)
			op(fs, k);
	}
	check_all(fs);
	obj_free_all(fs);
	CHECK(fs->objects.cap == 0 && fs->objects.n == 0);
	free(fs);
}

/* Origin objects: directory nodes shared and freed with their last
 * file, paths rebuilt exactly, records prefix-coded and decoded back. */
static void origins(void)
{
	static const char *dirs[] = { "", "/usr", "/usr/include",
				      "/usr/include/linux", "/a/b/c/d" };
	struct fs *fs = calloc(1, sizeof(*fs));
	struct object *o[600];
	char path[PATH_MAX], buf[PATH_MAX], prevpath[PATH_MAX] = "";
	const struct object *prev = NULL;
	struct rec r;

	CHECK(fs);
	phase = "origins";
	printf(" origins\n");
	for (int i = 0; i < 600; i++) {
		const char *d = dirs[rndn(5)];
		uint64_t dev = rndn(4) ? 42 : 7;	/* some on another device */
		snprintf(path, sizeof(path), "%s/f%04" PRIu64 "%s", d, rndn(300),
			 rndn(2) ? ".h" : "");
		o[i] = obj_new_origin(fs, 1000 + (uint64_t)i, path, dev, 5 + (uint64_t)i,
				      (uint64_t)i * 3, -1, (int64_t)i);
		CHECK(o[i] && o[i]->origin && obj_get(fs, 1000 + (uint64_t)i) == o[i]);
		CHECK(origin_path(o[i], buf) == strlen(path) && !strcmp(buf, path));
		struct origin *g = obj_origin(o[i]);
		CHECK(g->obj.odir->dev == dev && g->obj.host_ino == 5 + (uint64_t)i &&
		      g->obj.len == (uint64_t)i * 3 && g->mtime == -1);
		/* never dirty: its odir shares the slot of dirty_next */
		obj_mark_dirty(fs, o[i]);
		CHECK(!o[i]->dirty && !fs->dirty_objs && g->obj.odir->dev == dev);
		/* the record decodes to the same path against the previous */
		origin_to_rec(o[i], &r, &prev, buf);
		CHECK(prev == o[i] && r.u.origin.obj == o[i]->id &&
		      r.u.origin.dev == dev);
		CHECK(r.flags <= strlen(prevpath));
		memcpy(prevpath + r.flags, r.data, r.data_len);
		prevpath[r.flags + r.data_len] = 0;
		CHECKF(!strcmp(prevpath, path), "'%s' != '%s'", prevpath, path);
	}
	/* one node per (path component, device): "/", usr, include,
	 * linux, a, b, c, d on each of the two devices */
	CHECK(fs->objects.dn <= 16);
	for (int i = 0; i < 600; i++)
		for (int j = i + 1; j < 600; j += 37) {
			struct origin *a = obj_origin(o[i]), *b = obj_origin(o[j]);
			char pa[PATH_MAX], pb[PATH_MAX];
			origin_path(o[i], pa);
			origin_path(o[j], pb);
			*strrchr(pa, '/') = 0;
			*strrchr(pb, '/') = 0;
			CHECK((a->obj.odir == b->obj.odir) ==
			      (a->obj.odir->dev == b->obj.odir->dev &&
			       !strcmp(pa, pb)));
		}
	/* replay: an id named by extents first becomes an origin */
	struct object *s = obj_new(fs, 5000, 0);
	CHECK(s);
	s->nlive = 3;
	struct object *t = obj_new_origin(fs, 5000, "/x/y", 1, 2, 3, 4, 5);
	CHECK(t && t->origin && t->nlive == 3 && obj_get(fs, 5000) == t);
	/* but not one in use */
	t->pins = 1;
	CHECK(!obj_new_origin(fs, 5000, "/x/z", 1, 2, 3, 4, 5));
	t->pins = 0;
	obj_forget(fs, t);
	for (int i = 0; i < 600; i++)
		obj_forget(fs, o[i]);
	CHECK(fs->objects.n == 0 && fs->objects.dn == 0);
	obj_free_all(fs);
	free(fs);
}

/* Origins and directory nodes carved from chunks: many chunks' worth,
 * in a deep tree, with paths rebuilt exactly; dropped in a random order,
 * with new ones made meanwhile; in the end the chunk they are carved from
 * now is empty (and starts again), and every node is gone.  (The chunks that
 * emptied were unmapped: a sanitizer build catches a use of one.) */
static void carving(void)
{
	enum { N = 40000 };
	static struct object *o[N];
	struct fs *fs = calloc(1, sizeof(*fs));
	char path[PATH_MAX], buf[PATH_MAX];

	CHECK(fs);
	phase = "carving";
	printf(" carving\n");
	for (int round = 0; round < 3; round++) {
		for (int i = 0; i < N; i++) {
			if (o[i])
				continue;
			/* 40 directories, 3 levels deep, names of 20-80 bytes */
			int d = i % 40;
			snprintf(path, sizeof(path),
				 "/carve/level-%d/level-%d-%s/file-%06d-%.*s", d % 4, d,
				 d % 3 ? "" : "with-a-longer-component", i,
				 (int)rndn(60), "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
			uint64_t id = 10 + (uint64_t)round * N + (uint64_t)i;
			o[i] = obj_new_origin(fs, id, path, 9, id, 1, 2, 3);
			CHECK(o[i]);
			CHECK(origin_path(o[i], buf) == strlen(path) && !strcmp(buf, path));
		}
		/* drop about half of them, in a random order */
		for (int k = 0; k < N / 2; k++) {
			int i = (int)rndn(N);
			if (!o[i])
				continue;
			origin_path(o[i], buf);
			CHECK(obj_get(fs, o[i]->id) == o[i]);
			obj_forget(fs, o[i]);
			o[i] = NULL;
		}
	}
	for (int i = 0; i < N; i++) {
		if (!o[i])
			continue;
		CHECK(origin_path(o[i], buf) > 0 && buf[0] == '/');
		obj_forget(fs, o[i]);
		o[i] = NULL;
	}
	CHECK(fs->objects.n == 0 && fs->objects.dn == 0 && !fs->objects.dlast);
	/* the chunk carved from now emptied: carving starts it again */
	CHECK(fs->objects.ochunk &&
	      (size_t)(fs->objects.ocur - (char *)fs->objects.ochunk) <= 16);
	obj_free_all(fs);
	free(fs);
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	init_seed("test_object");
	run_keys("dense", 1, 1, 0);
	run_keys("stride 64", 7, 64, 0);
	run_keys("stride 4096", 3, 4096, 0);
	run_keys("random", 0, 0, 1);
	origins();
	carving();
	printf("test_object: all ok\n");
	return 0;
}
