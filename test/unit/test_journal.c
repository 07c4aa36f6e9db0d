/*
 * test_journal.c - end-to-end tests of the metadata journal through the
 * core API (fs.h), without FUSE: a store in a temporary directory, files
 * and directories made with fs_mknod & co, data written with fs_write and
 * read back with fs_read_map.
 *
 *  (a) clean close + reopen keeps everything (names, inode numbers, sizes,
 *      contents, xattrs, nlink, times, readdir cookies), over many rounds;
 *  (b) replay after a crash: the metadata file copied right after an fsync,
 *      put back after the close, gives the committed state; also with a
 *      full crash image taken while uncommitted destructive operations
 *      (truncate, unlink) are pending, whose frees must not have happened;
 *  (c) a torn tail (garbage, half a record, whole records without COMMIT)
 *      is dropped: the mount succeeds with the last whole committed batch,
 *      and the file is rewritten;
 *  (d) a batch cut anywhere before its COMMIT is not applied;
 *  (e) a corrupt or foreign metadata file is refused with a message,
 *      leaving the file untouched, no fd leaked and the store unlocked;
 *  (f) a second fs_open of an open store fails with -EBUSY;
 *  (g) after a crash, bytes that an uncommitted append put past the
 *      committed EOF must read as zeros when the file grows again;
 *  (h) a write whose fill() fails leaves nothing visible past EOF.
 *
 * White-box checks (fs_impl.h) after every reopen: object live counts match
 * the extent maps, write objects are retired after an unclean stop, the
 * journal append offset matches the file.
 *
 * Randomised: the seed is printed; rerun with TEST_SEED=<seed>.  On failure
 * the temporary directory (with the store and cowfs.log) is kept.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"
#include "cowfs/format.h"
#include "cowfs/fs.h"
#include "cowfs/fs_impl.h"

#include <xxhash.h>

/* Linked with -Wl,--wrap=realloc (meson.build): the core's reallocs come
 * here, and fail_realloc makes the next one fail, once. */
void *__real_realloc(void *p, size_t n);
void *__wrap_realloc(void *p, size_t n);
static volatile int fail_realloc;

void *__wrap_realloc(void *p, size_t n)
{
	if (fail_realloc) {
		fail_realloc = 0;
		errno = ENOMEM;
		return NULL;
	}
	return __real_realloc(p, n);
}

static char tmpdir[64];
static const char *test_name = "setup";

static void fail_exit(void)
{
	fprintf(stderr, "test_journal: FAILED in %s (seed %" PRIu64
		", rerun with TEST_SEED=%" PRIu64 "); files kept in %s\n",
		test_name, seed, seed, tmpdir);
	exit(1);
}

/* An API call that must return 0 (or a count >= 0). */
#define OK(call)                                                            \
	do {                                                                \
		long rc_ = (long)(call);                                    \
		CHECKF(rc_ >= 0, "%s returned %ld (%s)", #call, rc_,        \
		       strerror((int)-rc_));                                \
	} while (0)

/* ---- host files ---- */

static unsigned char *slurp(const char *path, size_t *len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	CHECKF(fd >= 0, "%s: %s", path, strerror(errno));
	CHECK(fstat(fd, &st) == 0);
	unsigned char *b = malloc((size_t)st.st_size + 1);
	CHECK(b != NULL);
	size_t got = 0;
	while (got < (size_t)st.st_size) {
		ssize_t n = read(fd, b + got, (size_t)st.st_size - got);
		CHECK(n > 0);
		got += (size_t)n;
	}
	close(fd);
	*len = got;
	return b;
}

static void spit(const char *path, const void *buf, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	CHECKF(fd >= 0, "%s: %s", path, strerror(errno));
	const char *p = buf;
	while (len) {
		ssize_t n = write(fd, p, len);
		CHECK(n > 0);
		p += n;
		len -= (size_t)n;
	}
	CHECK(fsync(fd) == 0);
	close(fd);
}

static off_t file_size(const char *path)
{
	struct stat st;
	CHECKF(stat(path, &st) == 0, "%s: %s", path, strerror(errno));
	return st.st_size;
}

static int count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	int n = 0;
	CHECK(d != NULL);
	while (readdir(d))
		n++;
	closedir(d);
	return n;
}

static void rm_rf(const char *path)
{
	struct stat st;
	if (lstat(path, &st) < 0)
		return;
	if (S_ISDIR(st.st_mode)) {
		DIR *d = opendir(path);
		struct dirent *e;
		CHECK(d != NULL);
		while ((e = readdir(d))) {
			char sub[4096];
			if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
				continue;
			snprintf(sub, sizeof(sub), "%s/%s", path, e->d_name);
			rm_rf(sub);
		}
		closedir(d);
		rmdir(path);
	} else {
		unlink(path);
	}
}

static void copy_file(const char *from, const char *to)
{
	size_t len;
	unsigned char *b = slurp(from, &len);
	spit(to, b, len);
	free(b);
}

/* A crash image: the store's files as they are on disk right now. */
static void copy_store(const char *from, const char *to)
{
	char a[4096], b[4096];

	CHECK(mkdir(to, 0700) == 0);
	snprintf(a, sizeof(a), "%s/objects", to);
	CHECK(mkdir(a, 0700) == 0);
	snprintf(a, sizeof(a), "%s/cowfs.meta", from);
	snprintf(b, sizeof(b), "%s/cowfs.meta", to);
	copy_file(a, b);
	snprintf(b, sizeof(b), "%s/lock", to);
	spit(b, "", 0);
	for (int i = 0; i < 256; i++) {
		snprintf(a, sizeof(a), "%s/objects/%02x", from, i);
		snprintf(b, sizeof(b), "%s/objects/%02x", to, i);
		CHECK(mkdir(b, 0700) == 0);
		DIR *d = opendir(a);
		struct dirent *e;
		CHECK(d != NULL);
		while ((e = readdir(d))) {
			char fa[4096 + 300], fb[4096 + 300];
			if (e->d_name[0] == '.')
				continue;
			snprintf(fa, sizeof(fa), "%s/%s", a, e->d_name);
			snprintf(fb, sizeof(fb), "%s/%s", b, e->d_name);
			copy_file(fa, fb);
		}
		closedir(d);
	}
}

/* ---- the store ---- */

static struct fs *fs;
static char store[128], metapath[160], logpath[128];
static const struct fs_ctx ctx = { .uid = 0, .gid = 0, .umask = 022, .ngroups = -1 };

/* Whether the daemon log holds needle. */
static int log_has(const char *needle)
{
	size_t l;
	char *log = (char *)slurp(logpath, &l);

	log = realloc(log, l + 1);
	CHECK(log != NULL);
	log[l] = 0;
	int found = strstr(log, needle) != NULL;
	free(log);
	return found;
}

static void set_store(const char *name)
{
	snprintf(store, sizeof(store), "%s/%s", tmpdir, name);
	snprintf(metapath, sizeof(metapath), "%s/cowfs.meta", store);
}

static void new_store(const char *name, unsigned shift)
{
	char err[512] = "";
	set_store(name);
	int rc = fs_init_store(store, shift, err, sizeof(err));
	CHECKF(rc == 0, "fs_init_store: %d %s", rc, err);
}

static int try_open(struct fs **out, char *err, size_t errlen)
{
	struct fs_options opt = { 0 };
	opt.commit_secs = 100000;
	opt.logfile = logpath;
	err[0] = 0;
	return fs_open(store, &opt, out, err, errlen);
}

static void open_fs(void)
{
	char err[512];
	int rc = try_open(&fs, err, sizeof(err));
	CHECKF(rc == 0, "fs_open(%s): %d (%s): %s", store, rc, strerror(-rc), err);
}

static void close_fs(void)
{
	int rc = fs_close(fs);
	CHECKF(rc == 0, "fs_close: %d", rc);
	fs = NULL;
}

/* ---- the metadata file, read through format.h ---- */

struct metainfo {
	uint64_t ckpt_len, generation;
	size_t len;		/* file length */
	size_t jrecs;		/* journal records */
	size_t commits;
	uint64_t last_seq;
	size_t last_commit_end;	/* offset after the last COMMIT (or ckpt end) */
	size_t rec_off[4096];	/* journal record offsets, for cutting */
	uint16_t rec_type[4096];
};

/* Decode a metadata image that must be whole: header, checkpoint and a
 * journal of complete records. */
static void parse_meta(const unsigned char *m, size_t len, struct metainfo *mi)
{
	struct disk_header h;
	struct rec r;

	memset(mi, 0, sizeof(*mi));
	mi->len = len;
	CHECK(len >= COWFS_HDR_SIZE);
	const char *msg = format_header_decode(m, &h);
	CHECKF(msg == NULL, "header: %s", msg);
	mi->ckpt_len = h.ckpt_len;
	mi->generation = h.generation;
	CHECK(COWFS_HDR_SIZE + h.ckpt_len <= len);
	CHECK(format_csum(m + COWFS_HDR_SIZE, h.ckpt_len) == h.ckpt_csum);
	size_t off = COWFS_HDR_SIZE;
	int first = 1;
	/* the writer packs its records (REC_PACK) and says so */
	CHECK(h.incompat == COWFS_INCOMPAT_PACKED);
	while (off < COWFS_HDR_SIZE + h.ckpt_len) {
		long n = format_decode(m + off, COWFS_HDR_SIZE + h.ckpt_len - off, &r);
		CHECKF(n > 0, "checkpoint record at %zu: %ld", off, n);
		CHECKF(r.type == REC_PACK, "checkpoint record at %zu: type %u, "
		       "not packed", off, r.type);
		struct pack_reader rd;
		struct rec s;
		int k;
		format_pack_open(&rd, &r);
		while ((k = format_pack_next(&rd, &s)) > 0) {
			if (first)
				CHECK(s.type == REC_SUPER);
			first = 0;
			CHECK(s.type != REC_COMMIT && s.type != REC_CLONE);
			if (s.type == REC_EXT_SET)
				CHECK(s.flags == EXT_NOREF);
		}
		CHECKF(k == 0, "pack at %zu does not decode", off);
		off += (size_t)n;
	}
	mi->last_commit_end = off;
	while (off < len) {
		long n = format_decode(m + off, len - off, &r);
		CHECKF(n > 0, "journal record at %zu of %zu: %ld", off, len, n);
		if (mi->jrecs < 4096) {
			mi->rec_off[mi->jrecs] = off;
			mi->rec_type[mi->jrecs] = r.type;
		}
		mi->jrecs++;
		off += (size_t)n;
		if (r.type == REC_COMMIT) {
			if (mi->commits)
				CHECKF(r.u.commit.seq == mi->last_seq + 1,
				       "commit seq %" PRIu64 " after %" PRIu64,
				       r.u.commit.seq, mi->last_seq);
			mi->commits++;
			mi->last_seq = r.u.commit.seq;
			mi->last_commit_end = off;
		}
	}
	CHECK(off == len);
}

static void parse_meta_file(struct metainfo *mi)
{
	size_t len;
	unsigned char *m = slurp(metapath, &len);
	parse_meta(m, len, mi);
	free(m);
}

/* After an fsync: a journal that ends in a COMMIT. */
static void check_committed_journal(struct metainfo *mi)
{
	parse_meta_file(mi);
	CHECKF(mi->jrecs > 0, "fsync left an empty journal");
	CHECK(mi->commits > 0);
	CHECKF(mi->last_commit_end == mi->len, "journal does not end in COMMIT");
}

/* After a recovery or a close: the file is a checkpoint alone. */
static void check_checkpoint_only(void)
{
	struct metainfo mi;
	parse_meta_file(&mi);
	CHECKF(mi.len == COWFS_HDR_SIZE + mi.ckpt_len, "metadata file has %zu "
	       "bytes after the checkpoint (not rewritten)",
	       mi.len - (size_t)(COWFS_HDR_SIZE + mi.ckpt_len));
}

/* ---- white-box consistency (fs_impl.h) ---- */

static void check_internal(int after_unclean)
{
	struct inode *in;
	struct object *o;

	CHECKF(fs->meta_end == (uint64_t)file_size(metapath),
	       "meta_end %" PRIu64 " but the file has %lld bytes", fs->meta_end,
	       (long long)file_size(metapath));
	for (size_t it_ = 0; (o = obj_next(fs, &it_));) {
		uint64_t live = 0;
		INODE_FOREACH(in, fs) {
			for (size_t i = 0; S_ISREG(in->mode) && i < extmap_n(&in->map); i++) {
				const struct extent ev = extmap_at(&in->map, i), *e = &ev;
				if (e->obj != o->id)
					continue;
				for (uint64_t b = 0; b < e->len; b++)
					if (refcount_get(&fs->rc, e->obj, e->pblk + b) == 1)
						live++;
			}
		}
		size_t it = 0;
		uint64_t obj, pblk;
		uint32_t count;
		while (refcount_next(&fs->rc, &it, &obj, &pblk, &count))
			if (obj == o->id)
				live++;
		CHECKF(o->nlive == live, "object %" PRIu64 ": nlive %" PRIu64
		       ", extent maps say %" PRIu64, o->id, o->nlive, live);
		if (live)
			CHECKF(!o->doomed, "object %" PRIu64 " in use but doomed",
			       o->id);
	}
	INODE_FOREACH(in, fs) {
		for (size_t i = 0; S_ISREG(in->mode) && i < extmap_n(&in->map); i++) {
			o = obj_get(fs, extmap_at(&in->map, i).obj);
			CHECKF(o != NULL, "inode %" PRIu64 " maps unknown object %"
			       PRIu64, in->ino, extmap_at(&in->map, i).obj);
		}
		if (S_ISREG(in->mode) && in->wobj) {
			CHECKF(!after_unclean, "inode %" PRIu64 " kept write object %"
			       PRIu64 " after an unclean stop", in->ino, in->wobj);
			o = obj_get(fs, in->wobj);
			CHECKF(o && o->owner == in->ino, "inode %" PRIu64
			       ": write object %" PRIu64 " not owned", in->ino,
			       in->wobj);
		}
	}
}

/* ---- file data ---- */

struct fillbuf {
	const unsigned char *buf;
	size_t len;
	int calls;
};

static ssize_t fill_cb(void *p, int fd, off_t pos, size_t len)
{
	struct fillbuf *f = p;
	f->calls++;
	CHECK(fd >= 0);
	CHECKF(len == f->len, "fill asked for %zu bytes of %zu", len, f->len);
	size_t done = 0;
	while (done < len) {
		ssize_t n = pwrite(fd, f->buf + done, len - done, pos + (off_t)done);
		CHECK(n > 0);
		done += (size_t)n;
	}
	return (ssize_t)len;
}

/* Read [off, off+len) (clipped at EOF); returns the bytes read. */
static size_t read_range(uint64_t ino, uint64_t off, size_t len,
			 unsigned char *out)
{
	struct fs_seg *segs;
	int nseg;
	size_t got = 0;

	OK(fs_read_map(fs, ino, (off_t)off, len, &segs, &nseg));
	for (int i = 0; i < nseg; i++) {
		CHECK(segs[i].len > 0);
		CHECK(got + segs[i].len <= len);
		if (segs[i].fd < 0) {
			memset(out + got, 0, segs[i].len);
		} else {
			size_t done = 0;
			while (done < segs[i].len) {
				ssize_t n = pread(segs[i].fd, out + got + done,
						  segs[i].len - done,
						  segs[i].pos + (off_t)done);
				CHECKF(n > 0, "object %" PRIu64 " ends before the "
				       "file's EOF (pread at %lld: %zd)",
				       segs[i].obj,
				       (long long)(segs[i].pos + (off_t)done), n);
				done += (size_t)n;
			}
		}
		got += segs[i].len;
	}
	fs_read_done(fs, segs, nseg);
	return got;
}

static uint64_t fnv(const unsigned char *p, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ull;
	for (size_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 0x100000001b3ull;
	return h;
}

/* ---- the model of what the test did ---- */

#define MAXF 400
#define MAXE 800
#define MAXD 64

struct mfile {
	uint64_t ino;
	unsigned char *data;
	size_t size, cap;
	int fresh;	/* created in the current "safe" phase */
};

struct entry {
	uint64_t parent, ino;
	char name[COWFS_NAME_MAX + 1];
};

struct world {
	struct mfile f[MAXF];
	int nf;
	struct entry e[MAXE];
	int ne;
	uint64_t d[MAXD];
	int nd;
	unsigned seq;
};

static struct world W;

static void world_free(struct world *w)
{
	for (int i = 0; i < w->nf; i++)
		free(w->f[i].data);
	memset(w, 0, sizeof(*w));
}

static void world_copy(struct world *dst, const struct world *src)
{
	memcpy(dst, src, sizeof(*dst));
	for (int i = 0; i < src->nf; i++) {
		dst->f[i].data = malloc(src->f[i].cap ? src->f[i].cap : 1);
		CHECK(dst->f[i].data != NULL);
		if (src->f[i].size)
			memcpy(dst->f[i].data, src->f[i].data, src->f[i].size);
	}
}

static struct mfile *mf_get(struct world *w, uint64_t ino)
{
	for (int i = 0; i < w->nf; i++)
		if (w->f[i].ino == ino)
			return &w->f[i];
	return NULL;
}

static void mf_reserve(struct mfile *f, size_t n)
{
	if (n <= f->cap)
		return;
	size_t cap = f->cap ? f->cap : 4096;
	while (cap < n)
		cap *= 2;
	f->data = realloc(f->data, cap);
	CHECK(f->data != NULL);
	f->cap = cap;
}

static void mf_resize(struct mfile *f, size_t size)
{
	mf_reserve(f, size);
	if (size > f->size)
		memset(f->data + f->size, 0, size - f->size);
	f->size = size;
}

static int nlinks(const struct world *w, uint64_t ino)
{
	int n = 0;
	for (int i = 0; i < w->ne; i++)
		n += w->e[i].ino == ino;
	return n;
}

static void gen_name(struct world *w, char *buf)
{
	unsigned n = ++w->seq;
	if (rndn(12) == 0) {
		/* the longest name there is */
		int k = snprintf(buf, COWFS_NAME_MAX + 1, "long%u-", n);
		memset(buf + k, 'x', COWFS_NAME_MAX - (size_t)k);
		buf[COWFS_NAME_MAX] = 0;
	} else {
		snprintf(buf, COWFS_NAME_MAX + 1, "f%u", n);
	}
}

/* ---- operations: on the filesystem and the model ---- */

static void op_write(struct world *w, struct mfile *f, uint64_t off, size_t len)
{
	unsigned char *buf = malloc(len);
	CHECK(buf != NULL);
	rnd_bytes(buf, len);
	if (rndn(4) == 0)	/* some runs of zeros in the data */
		memset(buf, 0, len / 2);
	struct fillbuf fb = { buf, len, 0 };
	ssize_t n = fs_write(fs, f->ino, (off_t)off, len, fill_cb, &fb);
	CHECKF(n == (ssize_t)len, "fs_write(ino %" PRIu64 ", %" PRIu64 ", %zu): "
	       "%zd", f->ino, off, len, n);
	CHECK(fb.calls == 1);
	if (off + len > f->size)
		mf_resize(f, off + len);
	memcpy(f->data + off, buf, len);
	free(buf);
}

static void op_truncate(struct mfile *f, uint64_t size)
{
	struct stat in, st;
	memset(&in, 0, sizeof(in));
	in.st_size = (off_t)size;
	OK(fs_setattr(fs, &ctx, f->ino, &in, FS_SET_SIZE, &st));
	CHECK((uint64_t)st.st_size == size);
	mf_resize(f, size);
}

static struct mfile *op_create(struct world *w, uint64_t dir, int fresh)
{
	struct stat st;
	struct entry *e;

	CHECK(w->nf < MAXF && w->ne < MAXE);
	e = &w->e[w->ne];
	gen_name(w, e->name);
	OK(fs_mknod(fs, &ctx, dir, e->name, S_IFREG | 0644, 0, &st));
	CHECK(S_ISREG(st.st_mode) && st.st_nlink == 1 && st.st_size == 0);
	e->parent = dir;
	e->ino = st.st_ino;
	w->ne++;
	struct mfile *f = &w->f[w->nf++];
	memset(f, 0, sizeof(*f));
	f->ino = st.st_ino;
	f->fresh = fresh;
	return f;
}

static uint64_t op_mkdir_named(struct world *w, uint64_t parent, char *name)
{
	struct stat st;

	CHECK(w->nd < MAXD);
	gen_name(w, name);
	OK(fs_mknod(fs, &ctx, parent, name, S_IFDIR | 0755, 0, &st));
	CHECK(S_ISDIR(st.st_mode) && st.st_nlink == 2);
	w->d[w->nd++] = st.st_ino;
	return st.st_ino;
}

static uint64_t op_mkdir(struct world *w, uint64_t parent)
{
	char name[COWFS_NAME_MAX + 1];
	return op_mkdir_named(w, parent, name);
}

static void drop_entry(struct world *w, int i)
{
	uint64_t ino = w->e[i].ino;
	w->e[i] = w->e[--w->ne];
	if (nlinks(w, ino) == 0) {
		struct mfile *f = mf_get(w, ino);
		CHECK(f != NULL);
		free(f->data);
		*f = w->f[--w->nf];
		/* the kernel would forget it now, or keep it open */
		if (rndn(2))
			fs_forget(fs, ino, UINT64_MAX);
	}
}

static void op_unlink(struct world *w, int i)
{
	OK(fs_unlink(fs, w->e[i].parent, w->e[i].name, NULL));
	drop_entry(w, i);
}

static void op_link(struct world *w, int i, uint64_t dir)
{
	struct stat st;
	CHECK(w->ne < MAXE);
	struct entry *e = &w->e[w->ne];
	gen_name(w, e->name);
	OK(fs_link(fs, w->e[i].ino, dir, e->name, &st));
	e->parent = dir;
	e->ino = w->e[i].ino;
	w->ne++;
	CHECK(st.st_nlink == (nlink_t)nlinks(w, e->ino));
}

/* Rename entry i to a new name in dir, or over entry j (j >= 0), which must
 * name another inode. */
static void op_rename(struct world *w, int i, uint64_t dir, int j)
{
	struct entry ne;
	unsigned flags = 0;

	if (j >= 0) {
		CHECK(j != i && w->e[j].ino != w->e[i].ino);
		ne = w->e[j];
	} else {
		gen_name(w, ne.name);
		ne.parent = dir;
		if (rndn(2))
			flags = RENAME_NOREPLACE;
	}
	ne.ino = w->e[i].ino;
	OK(fs_rename(fs, w->e[i].parent, w->e[i].name, ne.parent, ne.name,
		     flags, NULL));
	w->e[i] = ne;
	if (j >= 0)
		drop_entry(w, j);
}

static int entry_of(const struct world *w, uint64_t ino)
{
	for (int i = 0; i < w->ne; i++)
		if (w->e[i].ino == ino)
			return i;
	CHECKF(0, "no entry for inode %" PRIu64, ino);
	return -1;
}

static void op_setxattr(uint64_t ino, int big)
{
	char name[32];
	size_t len = big ? COWFS_XATTR_MAX : rndn(4) == 0 ? 0 : rndn(3000);
	unsigned char *v = malloc(len ? len : 1);
	CHECK(v != NULL);
	rnd_bytes(v, len);
	snprintf(name, sizeof(name), "user.k%u", (unsigned)rndn(6));
	OK(fs_setxattr(fs, ino, name, v, len, 0));
	free(v);
}

static void op_removexattr(uint64_t ino)
{
	char name[32];
	snprintf(name, sizeof(name), "user.k%u", (unsigned)rndn(6));
	int rc = fs_removexattr(fs, ino, name);
	CHECKF(rc == 0 || rc == -ENODATA, "removexattr: %d", rc);
}

static void op_attr(uint64_t ino)
{
	struct stat in, st;
	memset(&in, 0, sizeof(in));
	in.st_mode = (mode_t)(0400 | rndn(0777));
	in.st_mtim.tv_sec = (time_t)rndn(2000000000);
	in.st_mtim.tv_nsec = (long)rndn(1000000000);
	in.st_atim.tv_sec = (time_t)rndn(2000000000);
	in.st_uid = (uid_t)rndn(5000);
	int set = FS_SET_MODE;
	if (rndn(2))
		set |= FS_SET_MTIME | FS_SET_ATIME;
	if (rndn(3) == 0)
		set |= FS_SET_UID;
	OK(fs_setattr(fs, &ctx, ino, &in, set, &st));
}

static void op_copy_range(struct mfile *src, struct mfile *dst)
{
	uint64_t B = fs_block_size(fs);
	uint64_t soff = rndn(src->size + 1), doff;
	size_t len = 1 + rndn(300000);

	/* often block aligned so that whole blocks are shared */
	if (rndn(2)) {
		soff &= ~(B - 1);
		doff = rndn(dst->size + B) & ~(B - 1);
	} else {
		doff = rndn(dst->size + 5000);
	}
	size_t want = soff >= src->size ? 0 :
		      src->size - soff < len ? src->size - soff : len;
	/* snapshot the source bytes before writing */
	unsigned char *tmp = malloc(want ? want : 1);
	CHECK(tmp != NULL);
	if (want)
		memcpy(tmp, src->data + soff, want);
	ssize_t n = fs_copy_range(fs, src->ino, (off_t)soff, dst->ino,
				  (off_t)doff, len);
	CHECKF(n == (ssize_t)want, "copy_range %" PRIu64 "@%" PRIu64 " -> %"
	       PRIu64 "@%" PRIu64 " len %zu: %zd, want %zu", src->ino, soff,
	       dst->ino, doff, len, n, want);
	if (want) {
		if (doff + want > dst->size)
			mf_resize(dst, doff + want);
		memcpy(dst->data + doff, tmp, want);
	}
	free(tmp);
}

static void op_clone_file(struct world *w, struct mfile *src, uint64_t dir)
{
	struct stat st;
	CHECK(w->nf < MAXF && w->ne < MAXE);
	struct entry *e = &w->e[w->ne];
	gen_name(w, e->name);
	OK(fs_clone(fs, &ctx, src->ino, dir, e->name, &st));
	CHECK(S_ISREG(st.st_mode) && (size_t)st.st_size == src->size);
	e->parent = dir;
	e->ino = st.st_ino;
	w->ne++;
	struct mfile *f = &w->f[w->nf++];
	memset(f, 0, sizeof(*f));
	f->ino = st.st_ino;
	mf_resize(f, src->size);
	if (src->size)
		memcpy(f->data, src->data, src->size);
}

static uint64_t rnd_dir(const struct world *w)
{
	return w->nd && rndn(4) ? w->d[rndn((uint64_t)w->nd)] : FS_ROOT_INO;
}

static uint64_t pick_off(const struct mfile *f)
{
	uint64_t B = fs_block_size(fs);
	switch (rndn(5)) {
	case 0:
		return f->size;				/* append */
	case 1:
		return f->size + rndn(3 * B);		/* past EOF: a gap */
	case 2:
		return rndn(f->size + 1) & ~(B - 1);	/* aligned */
	default:
		return rndn(f->size + 1);
	}
}

static size_t pick_len(void)
{
	uint64_t B = fs_block_size(fs);
	switch (rndn(4)) {
	case 0:
		return 1 + rndn(100);
	case 1:
		return B * (1 + rndn(4));
	case 2:
		return 1 + rndn(200000);
	default:
		return 1 + rndn(2 * B);
	}
}

/*
 * nops random operations.  safe: only operations that neither free a
 * block nor change a committed byte in place (new files and their data,
 * names, links, xattrs, attributes), so that cutting the batch they form
 * leaves a consistent earlier state.  cloning: allow clones and
 * copy_file_range (shared blocks, REC_CLONE, EXT_SHARE, REC_REFCNT).
 */
static void mutate(struct world *w, int nops, int safe, int cloning)
{
	for (int n = 0; n < nops; n++) {
		uint64_t k = rndn(100);
		if (w->nf < 3 || (k < 8 && w->nf < MAXF - 10 && w->ne < MAXE - 10)) {
			struct mfile *f = op_create(w, rnd_dir(w), safe);
			if (rndn(3))
				op_write(w, f, pick_off(f), pick_len());
		} else if (k < 40) {
			struct mfile *f = &w->f[rndn((uint64_t)w->nf)];
			if (safe && !f->fresh)
				continue;
			if (f->size > (4u << 20))
				op_truncate(f, 0);
			op_write(w, f, pick_off(f), pick_len());
		} else if (k < 48) {
			struct mfile *f = &w->f[rndn((uint64_t)w->nf)];
			if (safe)
				continue;
			uint64_t size = rndn(3) ? rndn(f->size + 1) :
					f->size + rndn(100000);
			if (rndn(4) == 0)
				size &= ~(uint64_t)(fs_block_size(fs) - 1);
			op_truncate(f, size);
		} else if (k < 55) {
			uint64_t ino = rndn(3) ? w->f[rndn((uint64_t)w->nf)].ino :
				       rnd_dir(w);
			op_setxattr(ino, rndn(15) == 0);
		} else if (k < 58) {
			if (safe)
				continue;
			op_removexattr(w->f[rndn((uint64_t)w->nf)].ino);
		} else if (k < 66) {
			int i = (int)rndn((uint64_t)w->ne);
			int j = -1;
			if (!safe && rndn(3) == 0) {
				j = (int)rndn((uint64_t)w->ne);
				/* the target must not be linked elsewhere */
				if (j == i || nlinks(w, w->e[j].ino) != 1 ||
				    w->e[j].ino == w->e[i].ino)
					j = -1;
			}
			op_rename(w, i, rnd_dir(w), j);
		} else if (k < 72) {
			if (w->ne < MAXE - 10)
				op_link(w, (int)rndn((uint64_t)w->ne), rnd_dir(w));
		} else if (k < 80) {
			int i = (int)rndn((uint64_t)w->ne);
			if (safe && !mf_get(w, w->e[i].ino)->fresh)
				continue;
			if (w->nf > 3 || nlinks(w, w->e[i].ino) > 1)
				op_unlink(w, i);
		} else if (k < 84) {
			if (w->nd < MAXD - 2)
				op_mkdir(w, rnd_dir(w));
		} else if (k < 90) {
			uint64_t ino = rndn(2) ? w->f[rndn((uint64_t)w->nf)].ino :
				       rnd_dir(w);
			op_attr(ino);
		} else if (k < 93) {
			struct stat st;
			char name[COWFS_NAME_MAX + 1], target[300];
			gen_name(w, name);
			snprintf(target, sizeof(target), "../target/%u",
				 (unsigned)rndn(100000));
			OK(fs_symlink(fs, &ctx, rnd_dir(w), name, target, &st));
		} else if (k < 95) {
			struct stat st;
			char name[COWFS_NAME_MAX + 1];
			gen_name(w, name);
			mode_t m = rndn(2) ? S_IFIFO | 0600 : S_IFCHR | 0600;
			OK(fs_mknod(fs, &ctx, rnd_dir(w), name, m,
				    makedev(rndn(256), rndn(256)), &st));
		} else if (k < 98) {
			if (!cloning || safe || w->nf < 2)
				continue;
			struct mfile *a = &w->f[rndn((uint64_t)w->nf)];
			struct mfile *b = &w->f[rndn((uint64_t)w->nf)];
			if (a != b)
				op_copy_range(a, b);
		} else {
			if (!cloning || w->nf >= MAXF - 10 || w->ne >= MAXE - 10)
				continue;
			op_clone_file(w, &w->f[rndn((uint64_t)w->nf)], rnd_dir(w));
		}
	}
}

/* Contents and names against the model. */
static void verify_world(struct world *w)
{
	struct stat st;
	unsigned char *buf = NULL;
	size_t cap = 0;

	for (int i = 0; i < w->nf; i++) {
		struct mfile *f = &w->f[i];
		OK(fs_getattr(fs, f->ino, &st));
		CHECKF((size_t)st.st_size == f->size, "ino %" PRIu64 ": size %lld, "
		       "model %zu", f->ino, (long long)st.st_size, f->size);
		CHECKF(st.st_nlink == (nlink_t)nlinks(w, f->ino),
		       "ino %" PRIu64 ": nlink %lu, model %d", f->ino,
		       (unsigned long)st.st_nlink, nlinks(w, f->ino));
		if (cap < f->size + 4096) {
			cap = f->size + 4096;
			buf = realloc(buf, cap);
			CHECK(buf != NULL);
		}
		size_t got = read_range(f->ino, 0, f->size + 4096, buf);
		CHECKF(got == f->size, "ino %" PRIu64 ": read %zu of %zu", f->ino,
		       got, f->size);
		if (f->size && memcmp(buf, f->data, f->size)) {
			size_t k = 0;
			while (buf[k] == f->data[k])
				k++;
			CHECKF(0, "ino %" PRIu64 " (size %zu): contents differ from "
			       "byte %zu (block %zu): got %02x want %02x", f->ino,
			       f->size, k, k / fs_block_size(fs), buf[k],
			       f->data[k]);
		}
		/* a few unaligned pieces */
		for (int r = 0; r < 3 && f->size; r++) {
			uint64_t off = rndn(f->size);
			size_t len = 1 + rndn(f->size - off + 100);
			size_t want = off + len > f->size ? f->size - off : len;
			got = read_range(f->ino, off, len, buf);
			CHECK(got == want);
			CHECKF(memcmp(buf, f->data + off, want) == 0,
			       "ino %" PRIu64 ": piece at %" PRIu64 "+%zu differs",
			       f->ino, off, want);
		}
		/* past EOF: nothing */
		CHECK(read_range(f->ino, f->size, 100, buf) == 0);
	}
	for (int i = 0; i < w->ne; i++) {
		OK(fs_lookup(fs, w->e[i].parent, w->e[i].name, &st));
		CHECKF(st.st_ino == w->e[i].ino, "%s: ino %lu, model %" PRIu64,
		       w->e[i].name, (unsigned long)st.st_ino, w->e[i].ino);
	}
	free(buf);
}

/* ---- snapshots: everything visible, as text ---- */

struct sbuf {
	char *s;
	size_t n, cap;
};

static void sb_add(struct sbuf *b, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void sb_add(struct sbuf *b, const char *fmt, ...)
{
	va_list ap;
	for (;;) {
		va_start(ap, fmt);
		int k = vsnprintf(b->s ? b->s + b->n : NULL,
				  b->s ? b->cap - b->n : 0, fmt, ap);
		va_end(ap);
		CHECK(k >= 0);
		if (b->s && b->n + (size_t)k < b->cap) {
			b->n += (size_t)k;
			return;
		}
		b->cap = b->cap ? b->cap * 2 : 65536;
		while (b->cap < b->n + (size_t)k + 1)
			b->cap *= 2;
		b->s = realloc(b->s, b->cap);
		CHECK(b->s != NULL);
	}
}

struct rdent {
	char name[COWFS_NAME_MAX + 1];
	uint64_t ino, off;
};

struct dlist {
	struct rdent *v;
	size_t n, cap;
};

static int emit_cb(void *p, const char *name, const struct stat *st,
		   uint64_t next_off, int node)
{
	(void)node;
	struct dlist *l = p;
	if (l->n == l->cap) {
		l->cap = l->cap ? l->cap * 2 : 16;
		l->v = realloc(l->v, l->cap * sizeof(*l->v));
		CHECK(l->v != NULL);
	}
	CHECK(strlen(name) <= COWFS_NAME_MAX);
	strcpy(l->v[l->n].name, name);
	l->v[l->n].ino = st->st_ino;
	l->v[l->n].off = next_off;
	l->n++;
	return 0;
}

static int str_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static void describe(struct sbuf *b, const char *path, const struct stat *st)
{
	sb_add(b, "%s ino=%lu mode=%o nlink=%lu uid=%u gid=%u size=%lld "
	       "blocks=%lld atime=%lld.%09ld mtime=%lld.%09ld ctime=%lld.%09ld",
	       path, (unsigned long)st->st_ino, st->st_mode,
	       (unsigned long)st->st_nlink, st->st_uid, st->st_gid,
	       (long long)st->st_size, (long long)st->st_blocks,
	       (long long)st->st_atim.tv_sec, st->st_atim.tv_nsec,
	       (long long)st->st_mtim.tv_sec, st->st_mtim.tv_nsec,
	       (long long)st->st_ctim.tv_sec, st->st_ctim.tv_nsec);
	if (S_ISCHR(st->st_mode) || S_ISBLK(st->st_mode))
		sb_add(b, " rdev=%lu", (unsigned long)st->st_rdev);
	if (S_ISREG(st->st_mode)) {
		size_t sz = (size_t)st->st_size;
		unsigned char *d = malloc(sz + 1);
		CHECK(d != NULL);
		CHECK(read_range(st->st_ino, 0, sz + 1, d) == sz);
		sb_add(b, " data=%016" PRIx64, fnv(d, sz));
		free(d);
	}
	if (S_ISLNK(st->st_mode)) {
		char t[4200];
		int n = fs_readlink(fs, st->st_ino, t, sizeof(t));
		CHECK(n >= 0);
		sb_add(b, " target=%s", t);
	}
	/* xattrs, sorted by name */
	int len = fs_listxattr(fs, st->st_ino, NULL, 0);
	CHECK(len >= 0);
	if (len > 0) {
		char *names = malloc((size_t)len), *v[256];
		int nv = 0;
		CHECK(names != NULL);
		CHECK(fs_listxattr(fs, st->st_ino, names, (size_t)len) == len);
		for (char *p = names; p < names + len; p += strlen(p) + 1) {
			CHECK(nv < 256);
			v[nv++] = p;
		}
		qsort(v, (size_t)nv, sizeof(*v), str_cmp);
		for (int i = 0; i < nv; i++) {
			int vl = fs_getxattr(fs, st->st_ino, v[i], NULL, 0);
			CHECK(vl >= 0);
			unsigned char *val = malloc((size_t)vl + 1);
			CHECK(val != NULL);
			CHECK(fs_getxattr(fs, st->st_ino, v[i], val, (size_t)vl + 1) == vl);
			sb_add(b, " x:%s=%d:%016" PRIx64, v[i], vl,
			       fnv(val, (size_t)vl));
			free(val);
		}
		free(names);
	}
	sb_add(b, "\n");
}

static void walk(struct sbuf *b, uint64_t dir, const char *path, int depth)
{
	struct dlist l = { 0 };
	struct stat st;

	CHECK(depth < 100);
	OK(fs_readdir(fs, dir, 0, 0, emit_cb, &l));
	CHECK(l.n >= 2);
	CHECK(!strcmp(l.v[0].name, ".") && l.v[0].off == 1 && l.v[0].ino == dir);
	CHECK(!strcmp(l.v[1].name, "..") && l.v[1].off == 2);
	sb_add(b, "%s/.. -> %" PRIu64 "\n", path, l.v[1].ino);
	for (size_t i = 2; i < l.n; i++) {
		char sub[8192];
		CHECK(l.v[i].off > 2);
		if (i > 2)
			CHECK(l.v[i].off > l.v[i - 1].off);
		int k = snprintf(sub, sizeof(sub), "%s/%s", path, l.v[i].name);
		CHECK(k > 0 && (size_t)k < sizeof(sub));
		OK(fs_lookup(fs, dir, l.v[i].name, &st));
		CHECKF(st.st_ino == l.v[i].ino, "%s: readdir ino %" PRIu64
		       ", lookup %lu", sub, l.v[i].ino, (unsigned long)st.st_ino);
		sb_add(b, "@%" PRIu64 " ", l.v[i].off);
		describe(b, sub, &st);
		if (S_ISDIR(st.st_mode))
			walk(b, st.st_ino, sub, depth + 1);
	}
	free(l.v);
}

static char *snapshot(void)
{
	struct sbuf b = { 0 };
	struct stat st;
	OK(fs_getattr(fs, FS_ROOT_INO, &st));
	describe(&b, "", &st);
	walk(&b, FS_ROOT_INO, "", 0);
	return b.s;
}

static void same_snapshot(const char *want, const char *got, const char *what)
{
	if (!strcmp(want, got))
		return;
	const char *a = want, *b = got;
	int line = 1;
	while (*a && *a == *b) {
		if (*a == '\n') {
			line++;
			want = a + 1;
			got = b + 1;
		}
		a++;
		b++;
	}
	fprintf(stderr, "%s: state differs from line %d:\n want: %.600s\n"
		"  got: %.600s\n", what, line, want, got);
	CHECK(!"state after reopen differs");
}

/* Largest inode number in a snapshot (new inodes must come after it). */
static uint64_t max_ino(const char *snap)
{
	uint64_t m = 0;
	for (const char *p = snap; (p = strstr(p, " ino=")); p += 5) {
		uint64_t v = strtoull(p + 5, NULL, 10);
		if (v > m)
			m = v;
	}
	return m;
}

/* A new inode gets a number nobody has. */
static void check_fresh_ino(const char *snap)
{
	struct stat st;
	char name[64];
	snprintf(name, sizeof(name), "probe-%" PRIu64, rnd());
	OK(fs_mknod(fs, &ctx, FS_ROOT_INO, name, S_IFIFO | 0600, 0, &st));
	CHECKF(st.st_ino > max_ino(snap), "new inode %lu reuses a number "
	       "(largest in use %" PRIu64 ")", (unsigned long)st.st_ino,
	       max_ino(snap));
	OK(fs_unlink(fs, FS_ROOT_INO, name, NULL));
	fs_forget(fs, st.st_ino, UINT64_MAX);
}

/* ---- (a) clean close and reopen ---- */

/* A fixed set of all the operations, with random data. */
static void fixed_scenario(struct world *w)
{
	struct stat st;
	char longname[COWFS_NAME_MAX + 1], d2name[COWFS_NAME_MAX + 1];

	uint64_t d1 = op_mkdir(w, FS_ROOT_INO);
	uint64_t d2 = op_mkdir_named(w, d1, d2name);
	uint64_t d3 = op_mkdir(w, FS_ROOT_INO);
	/* a long sequential file: one coalesced EXT_SET */
	struct mfile *f1 = op_create(w, FS_ROOT_INO, 0);
	for (int i = 0; i < 40; i++)
		op_write(w, f1, f1->size, 8192);
	uint64_t f1ino = f1->ino;
	/* a sparse file with unaligned pieces */
	struct mfile *f2 = op_create(w, d1, 0);
	for (int i = 0; i < 20; i++)
		op_write(w, f2, rndn(1 << 20), 1 + rndn(9000));
	uint64_t f2ino = f2->ino;
	/* a 255-byte name */
	memset(longname, 'n', COWFS_NAME_MAX);
	longname[COWFS_NAME_MAX] = 0;
	OK(fs_mknod(fs, &ctx, d2, longname, S_IFREG | 0600, 0, &st));
	CHECK(w->nf < MAXF && w->ne < MAXE);
	struct mfile *f3 = &w->f[w->nf++];
	memset(f3, 0, sizeof(*f3));
	f3->ino = st.st_ino;
	w->e[w->ne].parent = d2;
	w->e[w->ne].ino = st.st_ino;
	strcpy(w->e[w->ne].name, longname);
	w->ne++;
	op_write(w, f3, 0, 100);
	uint64_t f3ino = f3->ino;
	/* shrink (unaligned) and grow: the tail must read zeros */
	struct mfile *f4 = op_create(w, FS_ROOT_INO, 0);
	op_write(w, f4, 0, 50000);
	op_truncate(f4, 10000);
	op_truncate(f4, 70000);
	op_write(w, f4, 69999, 2);
	uint64_t f4ino = f4->ino;
	/* in-place overwrites */
	struct mfile *f5 = op_create(w, d3, 0);
	op_write(w, f5, 0, 30000);
	for (int i = 0; i < 10; i++)
		op_write(w, f5, rndn(30000), 1 + rndn(5000));
	uint64_t f5ino = f5->ino;
	/* special files and a symlink */
	OK(fs_mknod(fs, &ctx, FS_ROOT_INO, "fifo", S_IFIFO | 0640, 0, &st));
	OK(fs_mknod(fs, &ctx, FS_ROOT_INO, "null", S_IFCHR | 0666,
		    makedev(1, 3), &st));
	CHECK(st.st_rdev == makedev(1, 3));
	OK(fs_symlink(fs, &ctx, d1, "link", "../f1/some/where", &st));
	/* xattrs: small, empty, 64 KiB, replaced, removed, on a directory */
	unsigned char *big = malloc(COWFS_XATTR_MAX);
	CHECK(big != NULL);
	rnd_bytes(big, COWFS_XATTR_MAX);
	OK(fs_setxattr(fs, f1ino, "user.small", "v", 1, 0));
	OK(fs_setxattr(fs, f1ino, "user.empty", "", 0, 0));
	OK(fs_setxattr(fs, f1ino, "user.big", big, COWFS_XATTR_MAX, XATTR_CREATE));
	OK(fs_setxattr(fs, f1ino, "user.small", "second", 6, XATTR_REPLACE));
	OK(fs_setxattr(fs, d1, "user.dir", big, 1000, 0));
	OK(fs_setxattr(fs, f2ino, "trusted.gone", "x", 1, 0));
	OK(fs_removexattr(fs, f2ino, "trusted.gone"));
	CHECK(fs_getxattr(fs, f2ino, "trusted.gone", NULL, 0) == -ENODATA);
	free(big);
	/* hard links: one kept, one removed again */
	op_link(w, entry_of(w, f1ino), d2);
	op_link(w, entry_of(w, f2ino), FS_ROOT_INO);
	op_unlink(w, w->ne - 1);
	OK(fs_getattr(fs, f1ino, &st));
	CHECK(st.st_nlink == 2);
	OK(fs_getattr(fs, f2ino, &st));
	CHECK(st.st_nlink == 1);
	/* renames: within a directory, across, over a file */
	op_rename(w, entry_of(w, f4ino), FS_ROOT_INO, -1);
	op_rename(w, entry_of(w, f5ino), d2, -1);
	op_rename(w, entry_of(w, f3ino), d1, -1);
	struct mfile *victim = op_create(w, FS_ROOT_INO, 0);
	op_write(w, victim, 0, 20000);
	op_rename(w, entry_of(w, f5ino), FS_ROOT_INO, w->ne - 1);
	/* a directory to another parent: link counts follow */
	OK(fs_rename(fs, d1, d2name, d3, "d2-moved", 0, NULL));
	OK(fs_getattr(fs, d1, &st));
	CHECK(st.st_nlink == 2);
	OK(fs_getattr(fs, d3, &st));
	CHECK(st.st_nlink == 3);
	OK(fs_lookup(fs, d3, "d2-moved", &st));
	CHECK(st.st_ino == d2);
	OK(fs_lookup(fs, d2, "..", &st));
	CHECK(st.st_ino == d3);
	/* an unlinked file, and an empty directory come and gone */
	struct mfile *gone = op_create(w, d3, 0);
	op_write(w, gone, 0, 12345);
	op_unlink(w, w->ne - 1);
	OK(fs_mknod(fs, &ctx, FS_ROOT_INO, "emptydir", S_IFDIR | 0700, 0, &st));
	OK(fs_rmdir(fs, FS_ROOT_INO, "emptydir"));
	/* attributes */
	op_attr(f3ino);
	op_attr(d1);
}

static void test_clean_reopen(void)
{
	struct metainfo mi;

	test_name = "(a) clean reopen";
	new_store("a", 12);
	parse_meta_file(&mi);
	/* a new store: one pack of SUPER + root INODE, generation 1
	 * (format.md: 30 to 48 bytes, with the owner and the time) */
	CHECKF(mi.ckpt_len >= 30 && mi.ckpt_len <= 48 && mi.generation == 1 &&
	       mi.jrecs == 0, "ckpt_len %" PRIu64, mi.ckpt_len);
	open_fs();
	CHECK(fs_block_size(fs) == 4096);
	check_internal(0);
	world_free(&W);
	fixed_scenario(&W);
	verify_world(&W);
	check_internal(0);
	for (int round = 0; round < 8; round++) {
		char *before = snapshot();
		if (round % 3 == 1)
			OK(fs_fsync(fs, FS_ROOT_INO));	/* journal + checkpoint */
		parse_meta_file(&mi);
		uint64_t gen = mi.generation;
		close_fs();
		check_checkpoint_only();
		parse_meta_file(&mi);
		CHECK(mi.generation == gen + 1);
		size_t mlen;
		unsigned char *m = slurp(metapath, &mlen);
		open_fs();
		if (round & 1)
			OK(fs_start(fs));
		/* opening a clean store writes nothing but the mount mark;
		 * the clean close had cleared it */
		size_t mlen2;
		unsigned char *m2 = slurp(metapath, &mlen2);
		CHECK(mlen == mlen2 && memcmp(m + COWFS_HDR_SIZE,
					      m2 + COWFS_HDR_SIZE,
					      mlen - COWFS_HDR_SIZE) == 0);
		struct disk_header h1, h2;
		CHECK(format_header_decode(m, &h1) == NULL);
		CHECK(format_header_decode(m2, &h2) == NULL);
		CHECK(h1.flags == 0 && h2.flags == COWFS_HDR_MOUNTED);
		CHECK(format_header_set_mounted(m2, 0) == 0);
		CHECK(memcmp(m, m2, COWFS_HDR_SIZE) == 0);
		free(m);
		free(m2);
		check_internal(0);
		char *after = snapshot();
		same_snapshot(before, after, "clean reopen");
		verify_world(&W);
		check_fresh_ino(after);
		free(before);
		free(after);
		mutate(&W, 60, 0, round >= 4);
		verify_world(&W);
		check_internal(0);
	}
	close_fs();
	printf("  (a) clean close/reopen: 8 rounds ok\n");
}

/* ---- (b) replay after a crash ---- */

/* Copy cowfs.meta aside, close, put it back, reopen: replay. */
static void crash_and_recover(const unsigned char *meta, size_t len,
			      const char *want, const char *what)
{
	close_fs();
	spit(metapath, meta, len);
	open_fs();
	check_internal(1);
	check_checkpoint_only();
	char *got = snapshot();
	same_snapshot(want, got, what);
	free(got);
}

static void test_replay(unsigned shift, int rounds)
{
	struct metainfo mi;
	char name[32];

	test_name = "(b) replay";
	snprintf(name, sizeof(name), "b%u", shift);
	new_store(name, shift);
	open_fs();
	world_free(&W);
	for (int round = 0; round < rounds; round++) {
		mutate(&W, 50, 0, 1);
		OK(fs_fsync(fs, W.f[0].ino));
		check_committed_journal(&mi);
		/* nothing new: a second fsync writes nothing */
		OK(fs_fsync(fs, W.f[0].ino));
		CHECK((size_t)file_size(metapath) == mi.len);
		check_internal(0);
		char *want = snapshot();
		size_t len;
		unsigned char *m = slurp(metapath, &len);
		crash_and_recover(m, len, want, "replay");
		/* the model is the committed state: nothing after the fsync */
		verify_world(&W);
		check_fresh_ino(want);
		/* writes after recovery go to new write objects */
		mutate(&W, 20, 0, 0);
		verify_world(&W);
		check_internal(0);
		/* the next commit continues the sequence */
		OK(fs_fsync(fs, FS_ROOT_INO));
		struct metainfo mi2;
		parse_meta_file(&mi2);
		CHECK(mi2.commits == 1 && mi2.last_seq == mi.last_seq + 1);
		free(m);
		free(want);
	}
	close_fs();
	printf("  (b) replay after crash, block size %u: %d rounds ok\n",
	       1u << shift, rounds);
}

/*
 * A crash image taken while uncommitted operations are pending that free
 * committed blocks (truncates, unlinks): frees wait for the commit, so the
 * committed state reads back intact.  Also uncommitted new files and
 * renames vanish.
 */
static void test_crash_image(void)
{
	char img[64];

	test_name = "(b) crash image";
	new_store("bi", 12);
	open_fs();
	world_free(&W);
	for (int round = 0; round < 6; round++) {
		mutate(&W, 50, 0, 1);
		OK(fs_fsync(fs, FS_ROOT_INO));
		char *want = snapshot();
		struct world committed;
		world_copy(&committed, &W);
		/* uncommitted: block-aligned truncates, unlinks (forgotten),
		 * new files, renames */
		uint64_t B = fs_block_size(fs);
		for (int i = 0; i < W.nf && i < 10; i++)
			op_truncate(&W.f[i], (W.f[i].size / 2) & ~(B - 1));
		for (int i = 0; i < 5 && W.ne > 4; i++) {
			int k = (int)rndn((uint64_t)W.ne);
			OK(fs_unlink(fs, W.e[k].parent, W.e[k].name, NULL));
			uint64_t ino = W.e[k].ino;
			W.e[k] = W.e[--W.ne];
			if (nlinks(&W, ino) == 0) {
				fs_forget(fs, ino, UINT64_MAX);
				struct mfile *f = mf_get(&W, ino);
				free(f->data);
				*f = W.f[--W.nf];
			}
		}
		struct mfile *nf = op_create(&W, FS_ROOT_INO, 1);
		op_write(&W, nf, 0, 100000);
		op_rename(&W, 0, rnd_dir(&W), -1);
		snprintf(img, sizeof(img), "bi-crash%d", round);
		char img_path[160];
		snprintf(img_path, sizeof(img_path), "%s/%s", tmpdir, img);
		copy_store(store, img_path);
		close_fs();
		/* continue on the crash image */
		set_store(img);
		open_fs();
		check_internal(1);
		check_checkpoint_only();
		char *got = snapshot();
		same_snapshot(want, got, "crash image");
		free(got);
		free(want);
		world_free(&W);
		W = committed;
		verify_world(&W);
	}
	close_fs();
	printf("  (b) crash image with pending frees: 6 rounds ok\n");
}

/* ---- (c), (d): torn tails and uncommitted batches ---- */

static unsigned char *with_tail(const unsigned char *m, size_t len,
				const void *tail, size_t tlen, size_t *outlen)
{
	unsigned char *b = malloc(len + tlen + 1);
	CHECK(b != NULL);
	memcpy(b, m, len);
	if (tlen)
		memcpy(b + len, tail, tlen);
	*outlen = len + tlen;
	return b;
}

/* Put an image in place, open, compare with want and the model. */
static void recover_variant(const unsigned char *img, size_t len,
			    const char *want, struct world *model,
			    const char *what)
{
	spit(metapath, img, len);
	open_fs();
	check_internal(1);
	check_checkpoint_only();
	char *got = snapshot();
	same_snapshot(want, got, what);
	free(got);
	world_free(&W);
	world_copy(&W, model);
	verify_world(&W);
	close_fs();
}

static void test_torn_and_uncommitted(void)
{
	struct metainfo ma, mb;
	struct world wa, wb, w0;
	unsigned char rec[COWFS_REC_MAX];
	struct rec r;
	size_t len, vlen;
	unsigned char *v;
	char what[128];

	test_name = "(c)/(d) torn tail";
	new_store("c", 12);
	open_fs();
	world_free(&W);
	char *s0 = snapshot();
	world_copy(&w0, &W);
	/* batch A: anything */
	fixed_scenario(&W);
	mutate(&W, 60, 0, 1);
	OK(fs_fsync(fs, FS_ROOT_INO));
	check_committed_journal(&ma);
	CHECK(ma.commits == 1 && ma.last_seq == 1);
	char *sa = snapshot();
	world_copy(&wa, &W);
	for (int i = 0; i < W.nf; i++)
		W.f[i].fresh = 0;
	/* batch B: only operations that free nothing and overwrite nothing */
	mutate(&W, 80, 1, 0);
	OK(fs_fsync(fs, FS_ROOT_INO));
	check_committed_journal(&mb);
	CHECK(mb.commits == 2 && mb.last_seq == 2);
	CHECK(mb.jrecs > ma.jrecs + 1);
	CHECK(mb.jrecs < 4096);		/* metainfo keeps 4096 offsets */
	char *sb = snapshot();
	world_copy(&wb, &W);
	unsigned char *m = slurp(metapath, &len);
	CHECK(len == mb.len);
	close_fs();

	/* The whole file: both batches. */
	recover_variant(m, len, sb, &wb, "both batches");

	/* (c) garbage after the last COMMIT */
	for (int i = 0; i < 6; i++) {
		unsigned char junk[4096];
		size_t jl = i == 0 ? 1 : i == 1 ? 15 : i == 2 ? 16 :
			    i == 3 ? sizeof(junk) : 1 + rndn(300);
		if (i == 3)
			memset(junk, 0, sizeof(junk));
		else
			rnd_bytes(junk, jl);
		v = with_tail(m, len, junk, jl, &vlen);
		snprintf(what, sizeof(what), "%zu garbage bytes", jl);
		recover_variant(v, vlen, sb, &wb, what);
		free(v);
	}
	/* (c) part of a record: its length runs past EOF */
	memset(&r, 0, sizeof(r));
	r.type = REC_DIRENT_DEL;
	r.u.dirent.parent = wb.e[0].parent;
	r.u.dirent.ino = wb.e[0].ino;
	r.name = wb.e[0].name;
	r.name_len = (uint32_t)strlen(wb.e[0].name);
	size_t rl = format_encode(&r, rec);
	for (size_t cut = 1; cut < rl; cut += 1 + rl / 5) {
		v = with_tail(m, len, rec, cut, &vlen);
		snprintf(what, sizeof(what), "%zu of %zu bytes of a record", cut, rl);
		recover_variant(v, vlen, sb, &wb, what);
		free(v);
	}
	/* (c)/(d) whole records that would remove a name, but no COMMIT */
	v = with_tail(m, len, rec, rl, &vlen);
	recover_variant(v, vlen, sb, &wb, "a whole record without COMMIT");
	free(v);
	/* ... and a COMMIT whose checksum fails */
	{
		unsigned char two[2 * 200];
		struct rec c = { .type = REC_COMMIT };
		c.u.commit.seq = 3;
		c.u.commit.next_ino = 1000;
		c.u.commit.next_obj = 1000;
		memcpy(two, rec, rl);
		size_t cl = format_encode(&c, two + rl);
		two[rl + cl - 1] ^= 0x40;
		v = with_tail(m, len, two, rl + cl, &vlen);
		recover_variant(v, vlen, sb, &wb, "a record and a bad COMMIT");
		free(v);
	}

	/* (c) the last record (batch B's COMMIT) cut: back to batch A */
	size_t commit_b = mb.rec_off[mb.jrecs - 1];
	CHECK(mb.rec_type[mb.jrecs - 1] == REC_COMMIT);
	for (size_t k = 1; k <= len - commit_b; k += 1 + (len - commit_b) / 6) {
		snprintf(what, sizeof(what), "batch B cut %zu bytes short", k);
		recover_variant(m, len - k, sa, &wa, what);
	}
	/* (d) batch B cut at every record boundary, and inside records */
	size_t first_b = ma.len;
	CHECK(mb.rec_off[ma.jrecs] == first_b);
	int cuts = 0;
	for (size_t i = ma.jrecs; i < mb.jrecs && i < 4096; i++) {
		size_t off = mb.rec_off[i];
		size_t end = i + 1 < mb.jrecs ? mb.rec_off[i + 1] : len;
		if (i > ma.jrecs && (rndn(3) == 0 || i + 1 == mb.jrecs)) {
			snprintf(what, sizeof(what), "batch B cut at record %zu",
				 i - ma.jrecs);
			recover_variant(m, off, sa, &wa, what);
			cuts++;
		}
		if (rndn(4) == 0) {
			size_t mid = off + 1 + rndn(end - off - 1);
			snprintf(what, sizeof(what), "batch B cut inside record %zu",
				 i - ma.jrecs);
			recover_variant(m, mid, sa, &wa, what);
			cuts++;
		}
	}
	/* exactly at the end of batch A */
	recover_variant(m, first_b, sa, &wa, "cut after batch A");
	/* batch A cut: back to the empty store */
	recover_variant(m, ma.rec_off[ma.jrecs / 2], s0, &w0, "batch A cut");
	recover_variant(m, ma.len - 1, s0, &w0, "batch A's COMMIT cut");

	free(m);
	free(s0);
	free(sa);
	free(sb);
	world_free(&wa);
	world_free(&wb);
	world_free(&w0);
	world_free(&W);
	printf("  (c) torn tails and (d) uncommitted batches: %d cuts ok\n", cuts);
}

/* ---- (e) refused stores ---- */

struct mbuf {
	unsigned char *b;
	size_t n, cap;
};

static void mb_rec(struct mbuf *m, const struct rec *r)
{
	if (m->n + COWFS_REC_MAX > m->cap) {
		m->cap = m->n + 2 * COWFS_REC_MAX;
		m->b = realloc(m->b, m->cap);
		CHECK(m->b != NULL);
	}
	m->n += format_encode(r, m->b + m->n);
}

static void mb_super(struct mbuf *m)
{
	struct rec r = { .type = REC_SUPER };
	r.u.super.next_ino = 2;
	r.u.super.next_obj = 1;
	r.u.super.root_ino = 1;
	mb_rec(m, &r);
}

static void mb_inode(struct mbuf *m, uint64_t ino, uint32_t mode)
{
	struct rec r = { .type = REC_INODE };
	r.u.inode.ino = ino;
	r.u.inode.mode = mode;
	r.u.inode.nlink = S_ISDIR(mode) ? 2 : 1;
	r.u.inode.parent = S_ISDIR(mode) ? 1 : 0;
	r.u.inode.next_cookie = 3;
	r.u.inode.mtime_sec = 1000;
	mb_rec(m, &r);
}

static void mb_dirent(struct mbuf *m, int type, uint64_t parent, uint64_t ino,
		      const char *name, uint64_t cookie)
{
	struct rec r = { .type = (uint16_t)type, .name = name,
			 .name_len = (uint32_t)strlen(name) };
	r.u.dirent.parent = parent;
	r.u.dirent.ino = ino;
	r.u.dirent.cookie = cookie;
	mb_rec(m, &r);
}

static void mb_commit(struct mbuf *m, uint64_t seq)
{
	struct rec r = { .type = REC_COMMIT };
	r.u.commit.seq = seq;
	r.u.commit.next_ino = 10;
	r.u.commit.next_obj = 10;
	mb_rec(m, &r);
}

/* header + checkpoint (ck) + journal (j) */
static unsigned char *build_meta(const struct mbuf *ck, const struct mbuf *j,
				 size_t *len)
{
	struct disk_header h;
	size_t jl = j ? j->n : 0;
	unsigned char *b = malloc(COWFS_HDR_SIZE + ck->n + jl + 1);
	CHECK(b != NULL);
	format_header_init(&h, 12);
	h.generation = 5;
	format_header_encode(&h, ck->b, ck->n, b);
	memcpy(b + COWFS_HDR_SIZE, ck->b, ck->n);
	if (jl)
		memcpy(b + COWFS_HDR_SIZE + ck->n, j->b, jl);
	*len = COWFS_HDR_SIZE + ck->n + jl;
	return b;
}

static int soft_failures;

/* fs_open must fail with a message (containing sub, if given), change
 * nothing, leak no fd and leave the store unlocked.  A store that opens
 * anyway is a (soft) failure: it is reported and closed, and the test goes
 * on. */
static void expect_refused(const char *what, const char *sub)
{
	char err[1024];
	struct fs *f2 = NULL;
	size_t l1 = 0, l2 = 0;
	unsigned char *before = NULL, *after = NULL;
	struct stat st;
	int have = stat(metapath, &st) == 0 && S_ISREG(st.st_mode);

	if (have)
		before = slurp(metapath, &l1);
	int fds = count_fds();
	int rc = try_open(&f2, err, sizeof(err));
	if (rc >= 0) {
		fprintf(stderr, "FAIL (e) %s: fs_open returned %d instead of "
			"refusing the store (message: '%s')\n", what, rc, err);
		soft_failures++;
		if (rc == 0 && f2)
			fs_close(f2);
		free(before);
		return;
	}
	CHECKF(err[0] != 0, "%s: no message", what);
	if (sub)
		CHECKF(strstr(err, sub) != NULL, "%s: message '%s' lacks '%s'",
		       what, err, sub);
	CHECKF(count_fds() == fds, "%s: fs_open leaked %d fds", what,
	       count_fds() - fds);
	if (have) {
		after = slurp(metapath, &l2);
		CHECKF(l1 == l2 && memcmp(before, after, l1) == 0,
		       "%s: a refused open changed the metadata file", what);
	}
	free(before);
	free(after);
	printf("    refused %-38s %s\n", what, err);
}

static uint64_t le64(const unsigned char *p)
{
	uint64_t v = 0;
	for (int i = 0; i < 8; i++)
		v |= (uint64_t)p[i] << (8 * i);
	return v;
}

/* A record with a good checksum that does not decode (unknown type). */
static void mb_undecodable(struct mbuf *m)
{
	struct rec r = { .type = REC_INODE_DEL };
	r.u.del.ino = 2;
	size_t at = m->n;
	mb_rec(m, &r);
	unsigned char *p = m->b + at;
	uint32_t len = (uint32_t)(m->n - at);
	p[4] = 99;	/* type 99 */
	p[5] = 0;
	uint64_t s = (uint64_t)len | (uint64_t)99 << 32;
	uint64_t c = XXH3_64bits_withSeed(p + COWFS_REC_HDR_SIZE,
					  len - COWFS_REC_HDR_SIZE, s);
	for (int i = 0; i < 8; i++)
		p[8 + i] = (unsigned char)(c >> (8 * i));
}

/* Re-encode the good file's header with a change; the checkpoint stays. */
static void spit_header(const unsigned char *good, size_t len,
			void (*change)(struct disk_header *))
{
	struct disk_header h;
	unsigned char *v = malloc(len);
	CHECK(v != NULL);
	memcpy(v, good, len);
	CHECK(format_header_decode(good, &h) == NULL);
	change(&h);
	format_header_encode(&h, good + COWFS_HDR_SIZE, h.ckpt_len, v);
	spit(metapath, v, len);
	free(v);
}

static void h_version2(struct disk_header *h)
{
	h->version = 2;
}

static void h_incompat(struct disk_header *h)
{
	h->incompat = 1u << 3;
}

static void h_shift11(struct disk_header *h)
{
	h->block_shift = 11;
}

static void h_shift21(struct disk_header *h)
{
	h->block_shift = 21;
}

static void h_compat(struct disk_header *h)
{
	h->compat = 0x80000001u;	/* unknown compat bits: fine */
	h->reserved = 12345;
}

static void test_refused(void)
{
	struct metainfo mi;
	size_t len, vlen;
	unsigned char *v;
	char what[96];

	test_name = "(e) refused";
	int failed_before = soft_failures;
	new_store("e", 12);
	open_fs();
	world_free(&W);
	fixed_scenario(&W);
	char *want = snapshot();
	close_fs();
	unsigned char *good = slurp(metapath, &len);
	parse_meta(good, len, &mi);
	CHECK(mi.len == COWFS_HDR_SIZE + mi.ckpt_len);
	CHECK(le64(good + 24) == mi.ckpt_len);	/* ckpt_len: u64 LE at 24 */
	size_t ck = (size_t)mi.ckpt_len;

	/* a flipped byte anywhere in the checkpoint */
	size_t pos[16] = { COWFS_HDR_SIZE, COWFS_HDR_SIZE + ck - 1,
			   COWFS_HDR_SIZE + ck / 2, COWFS_HDR_SIZE + 8 };
	for (int i = 4; i < 16; i++)
		pos[i] = COWFS_HDR_SIZE + rndn(ck);
	for (int i = 0; i < 16; i++) {
		v = with_tail(good, len, NULL, 0, &vlen);
		v[pos[i]] ^= (unsigned char)(1u << rndn(8));
		spit(metapath, v, vlen);
		snprintf(what, sizeof(what), "checkpoint byte %zu flipped", pos[i]);
		expect_refused(what, "checkpoint checksum");
		free(v);
	}
	/* header fields, re-encoded with a good checksum */
	spit_header(good, len, h_version2);
	expect_refused("version 2", "version 2");
	spit_header(good, len, h_incompat);
	expect_refused("unknown incompat bit", "incompatible");
	spit_header(good, len, h_shift11);
	expect_refused("block_shift 11", "block size");
	spit_header(good, len, h_shift21);
	expect_refused("block_shift 21", "block size");
	/* header bytes flipped (checksum) and the magic */
	for (int i = 0; i < 12; i++) {
		size_t p = i < 4 ? (size_t)(56 + i) : 8 + rndn(56 - 8);
		v = with_tail(good, len, NULL, 0, &vlen);
		v[p] ^= (unsigned char)(1 + rndn(255));
		spit(metapath, v, vlen);
		snprintf(what, sizeof(what), "header byte %zu changed", p);
		expect_refused(what, "checksum");
		free(v);
	}
	v = with_tail(good, len, NULL, 0, &vlen);
	memcpy(v, "COWFSMD2", 8);
	spit(metapath, v, vlen);
	expect_refused("bad magic", "magic");
	free(v);
	/* truncations */
	static const size_t shorts[] = { 0, 1, 10, 63 };
	for (size_t i = 0; i < sizeof(shorts) / sizeof(*shorts); i++) {
		spit(metapath, good, shorts[i]);
		snprintf(what, sizeof(what), "file of %zu bytes", shorts[i]);
		expect_refused(what, "too short");
	}
	size_t cuts[] = { COWFS_HDR_SIZE, COWFS_HDR_SIZE + 1,
			  COWFS_HDR_SIZE + ck / 2, COWFS_HDR_SIZE + ck - 1 };
	for (size_t i = 0; i < sizeof(cuts) / sizeof(*cuts); i++) {
		spit(metapath, good, cuts[i]);
		snprintf(what, sizeof(what), "checkpoint cut to %zu bytes", cuts[i]);
		expect_refused(what, "truncated");
	}
	/* foreign files */
	const char *text = "#!/bin/sh\necho this is not a cowfs metadata file\n"
			   "exit 0\n# padding padding padding padding padding\n";
	spit(metapath, text, strlen(text));
	expect_refused("a shell script", "magic");
	{
		unsigned char junk[10000];
		rnd_bytes(junk, sizeof(junk));
		spit(metapath, junk, sizeof(junk));
		expect_refused("random bytes", "magic");
		size_t el;
		unsigned char *elf = slurp("/proc/self/exe", &el);
		spit(metapath, elf, el < 65536 ? el : 65536);
		expect_refused("an ELF file", "magic");
		free(elf);
	}
	unlink(metapath);
	expect_refused("no metadata file", "not a cowfs store");
	CHECK(mkdir(metapath, 0700) == 0);
	expect_refused("metadata file is a directory", NULL);
	CHECK(rmdir(metapath) == 0);

	/* hand-made checkpoints and journals (format.md's refusal table) */
	struct mbuf ckm = { 0 }, jm = { 0 };
	unsigned char *b;
	size_t bl;
#define RESET() (ckm.n = 0, jm.n = 0)
#define BUILD(what_, sub_)                                                  \
	do {                                                                \
		b = build_meta(&ckm, &jm, &bl);                             \
		spit(metapath, b, bl);                                      \
		free(b);                                                    \
		expect_refused(what_, sub_);                                \
	} while (0)
	RESET();
	mb_super(&ckm);
	BUILD("checkpoint without a root", "no root directory");
	RESET();
	mb_super(&ckm);
	mb_inode(&ckm, 1, S_IFREG | 0644);
	BUILD("root is a regular file", "no root directory");
	RESET();
	mb_super(&ckm);
	mb_inode(&ckm, 1, S_IFDIR | 0755);
	mb_commit(&ckm, 1);
	BUILD("COMMIT in the checkpoint", "corrupt checkpoint record");
	RESET();
	mb_super(&ckm);
	mb_inode(&ckm, 1, S_IFDIR | 0755);
	{
		struct rec r = { .type = REC_CLONE, .name = "c", .name_len = 1 };
		r.u.clone.src_ino = 1;
		r.u.clone.dst_parent = 1;
		r.u.clone.first_ino = 2;
		mb_rec(&ckm, &r);
	}
	BUILD("CLONE in the checkpoint", "corrupt checkpoint record");
	RESET();
	mb_super(&ckm);
	mb_inode(&ckm, 1, S_IFDIR | 0755);
	mb_inode(&ckm, 2, S_IFREG | 0644);
	{
		struct rec r = { .type = REC_EXT_SET, .flags = EXT_NEW };
		r.u.ext.ino = 2;
		r.u.ext.len = 1;
		r.u.ext.obj = 1;
		mb_rec(&ckm, &r);
	}
	BUILD("EXT_SET without NOREF in checkpoint", "corrupt checkpoint record");
	RESET();
	mb_super(&ckm);
	mb_inode(&ckm, 1, S_IFDIR | 0755);
	mb_dirent(&ckm, REC_DIRENT_ADD, 1, 77, "dangling", 3);
	BUILD("dirent to a missing inode", "inconsistent checkpoint record");
	RESET();
	mb_super(&ckm);
	mb_inode(&ckm, 1, S_IFDIR | 0755);
	{
		/* object 0 does not exist: origins must name a real id */
		struct rec r = { .type = REC_ORIGIN, .data = "/x", .data_len = 2 };
		r.u.origin.obj = 0;
		mb_rec(&ckm, &r);
	}
	BUILD("ORIGIN record for object 0", "inconsistent checkpoint record");
	RESET();
	mb_super(&ckm);
	mb_inode(&ckm, 1, S_IFDIR | 0755);
	mb_undecodable(&ckm);
	BUILD("undecodable checkpoint record", "corrupt checkpoint record");
	/* journals */
	RESET();
	mb_super(&ckm);
	mb_inode(&ckm, 1, S_IFDIR | 0755);
	mb_undecodable(&jm);
	mb_commit(&jm, 1);
	BUILD("undecodable journal record", "corrupt journal record");
	RESET();
	mb_super(&ckm);
	mb_inode(&ckm, 1, S_IFDIR | 0755);
	mb_dirent(&jm, REC_DIRENT_DEL, 1, 2, "nope", 3);
	mb_commit(&jm, 1);
	BUILD("committed DIRENT_DEL of nothing", "does not apply");
	RESET();
	mb_super(&ckm);
	mb_inode(&ckm, 1, S_IFDIR | 0755);
	{
		struct rec r = { .type = REC_INODE_DEL };
		r.u.del.ino = 1;
		mb_rec(&jm, &r);
	}
	mb_commit(&jm, 1);
	BUILD("committed delete of the root", "does not apply");
	RESET();
	mb_super(&ckm);
	mb_inode(&ckm, 1, S_IFDIR | 0755);
	{
		struct rec r = { .type = REC_XATTR_DEL, .name = "user.x",
				 .name_len = 6 };
		r.u.xattr.ino = 1;
		mb_rec(&jm, &r);
	}
	mb_commit(&jm, 1);
	BUILD("committed removal of an absent xattr", "does not apply");

	/* The loader trusts no length (issue 7).  A checksummed REC_REFCNT
	 * claiming 2^40 blocks made the loader allocate until memory ran out;
	 * a huge extent made reads loop forever. */
	RESET();
	mb_super(&ckm);
	mb_inode(&ckm, 1, S_IFDIR | 0755);
	{
		struct rec r = { .type = REC_REFCNT };
		r.u.refcnt.obj = 1;
		r.u.refcnt.pblk = 0;
		r.u.refcnt.len = (uint64_t)1 << 40;
		r.u.refcnt.count = 2;
		mb_rec(&ckm, &r);
	}
	BUILD("REFCNT run of 2^40 blocks", "refcount run longer");
	RESET();
	mb_super(&ckm);
	mb_inode(&ckm, 1, S_IFDIR | 0755);
	mb_inode(&ckm, 2, S_IFREG | 0644);
	mb_dirent(&ckm, REC_DIRENT_ADD, 1, 2, "f", 3);
	{
		struct rec r = { .type = REC_EXT_SET, .flags = EXT_NOREF };
		r.u.ext.ino = 2;
		r.u.ext.lblk = (uint64_t)1 << 60;	/* * 4096 > 2^62 */
		r.u.ext.len = 1;
		r.u.ext.obj = 1;
		mb_rec(&ckm, &r);
	}
	BUILD("extent at block 2^60", "extent beyond");
	RESET();
	mb_super(&ckm);
	mb_inode(&ckm, 1, S_IFDIR | 0755);
	mb_inode(&ckm, 2, S_IFREG | 0644);
	mb_dirent(&ckm, REC_DIRENT_ADD, 1, 2, "f", 3);
	{
		struct rec r = { .type = REC_EXT_SET, .flags = EXT_NOREF };
		r.u.ext.ino = 2;
		r.u.ext.lblk = 0;
		r.u.ext.len = 1;
		r.u.ext.obj = 1;
		r.u.ext.pblk = UINT64_MAX - 7;
		mb_rec(&ckm, &r);
	}
	BUILD("extent at object block 2^64-8", "corrupt checkpoint record");
	RESET();
	mb_super(&ckm);
	mb_inode(&ckm, 1, S_IFDIR | 0755);
	mb_inode(&ckm, 2, S_IFREG | 0644);
	mb_dirent(&ckm, REC_DIRENT_ADD, 1, 2, "f", 3);
	{
		struct rec r = { .type = REC_EXT_SET, .flags = EXT_SHARE };
		r.u.ext.ino = 2;
		r.u.ext.lblk = 5;
		r.u.ext.len = UINT64_MAX - 2;	/* lblk + len wraps */
		r.u.ext.obj = 1;
		mb_rec(&jm, &r);
	}
	mb_commit(&jm, 1);
	BUILD("journal extent whose end wraps", "corrupt journal record");
	RESET();
	mb_super(&ckm);
	mb_inode(&ckm, 1, S_IFDIR | 0755);
	{
		struct rec r = { .type = REC_INODE };
		r.u.inode.ino = 2;
		r.u.inode.mode = S_IFREG | 0644;
		r.u.inode.nlink = 1;
		r.u.inode.size = COWFS_MAX_FILE_SIZE + 1;
		mb_rec(&ckm, &r);
	}
	mb_dirent(&ckm, REC_DIRENT_ADD, 1, 2, "f", 3);
	BUILD("file size 2^62 + 1", "file size beyond");
	/* the namespace must be a tree hanging from the root */
	RESET();
	mb_super(&ckm);
	mb_inode(&ckm, 1, S_IFDIR | 0755);
	{
		struct rec r = { .type = REC_INODE };
		r.u.inode.mode = S_IFDIR | 0755;
		r.u.inode.nlink = 3;
		r.u.inode.ino = 2;
		r.u.inode.parent = 3;
		mb_rec(&ckm, &r);
		r.u.inode.ino = 3;
		r.u.inode.parent = 2;
		mb_rec(&ckm, &r);
	}
	mb_dirent(&ckm, REC_DIRENT_ADD, 2, 3, "down", 3);
	mb_dirent(&ckm, REC_DIRENT_ADD, 3, 2, "up", 3);
	BUILD("two directories naming each other", "does not reach the root");
	RESET();
	mb_super(&ckm);
	mb_inode(&ckm, 1, S_IFDIR | 0755);
	mb_inode(&ckm, 2, S_IFDIR | 0755);	/* parent 1 */
	mb_inode(&ckm, 3, S_IFDIR | 0755);
	mb_dirent(&ckm, REC_DIRENT_ADD, 1, 2, "a", 3);
	mb_dirent(&ckm, REC_DIRENT_ADD, 1, 3, "b", 4);
	mb_dirent(&ckm, REC_DIRENT_ADD, 3, 2, "again", 3);
	BUILD("a directory with two parents", "two parents");
	/* the same with sparse numbers: the check's flags are then in a
	 * table instead of a bitmap over the numbers */
	RESET();
	mb_super(&ckm);
	mb_inode(&ckm, 1, S_IFDIR | 0755);
	mb_inode(&ckm, 1ull << 40, S_IFDIR | 0755);	/* parent 1 */
	mb_inode(&ckm, 1ull << 41, S_IFDIR | 0755);
	mb_dirent(&ckm, REC_DIRENT_ADD, 1, 1ull << 40, "a", 3);
	mb_dirent(&ckm, REC_DIRENT_ADD, 1, 1ull << 41, "b", 4);
	mb_dirent(&ckm, REC_DIRENT_ADD, 1ull << 41, 1ull << 40, "again", 3);
	BUILD("a directory with two parents, sparse numbers", "two parents");
	RESET();
	mb_super(&ckm);
	mb_inode(&ckm, 1, S_IFDIR | 0755);
	mb_inode(&ckm, 1ull << 40, S_IFREG | 0644);
	BUILD("a linked inode in no directory, sparse numbers",
	      "in no directory");
	RESET();
	mb_super(&ckm);
	mb_inode(&ckm, 1, S_IFDIR | 0755);
	mb_inode(&ckm, 2, S_IFDIR | 0755);
	mb_dirent(&ckm, REC_DIRENT_ADD, 2, 2, "self", 3);
	BUILD("a directory naming itself", "corrupt namespace");
	RESET();
	mb_super(&ckm);
	mb_inode(&ckm, 1, S_IFDIR | 0755);
	mb_inode(&ckm, 2, S_IFREG | 0644);	/* nlink 1, named nowhere */
	BUILD("a linked inode in no directory", "in no directory");
	RESET();
	mb_super(&ckm);
	mb_inode(&ckm, 1, S_IFDIR | 0755);
	mb_inode(&ckm, 2, S_IFREG | 0644);
	mb_dirent(&ckm, REC_DIRENT_ADD, 1, 2, "f", 3);
	{
		struct rec r = { .type = REC_INODE_DEL };
		r.u.del.ino = 2;
		mb_rec(&jm, &r);
	}
	mb_commit(&jm, 1);
	BUILD("an entry naming a deleted inode", "names missing inode");
	RESET();
	mb_super(&ckm);
	mb_inode(&ckm, 1, S_IFDIR | 0755);
	mb_dirent(&ckm, REC_DIRENT_ADD, 1, 1, "root", 3);
	BUILD("the root named in a directory", "root");
	RESET();
	mb_super(&ckm);
	mb_inode(&ckm, 1, S_IFDIR | 0755);
	{
		struct rec r = { .type = REC_INODE };
		r.u.inode.ino = 2;
		r.u.inode.mode = S_IFREG | 0644;
		r.u.inode.nlink = 0;	/* an orphan, yet named */
		mb_rec(&ckm, &r);
	}
	mb_dirent(&ckm, REC_DIRENT_ADD, 1, 2, "f", 3);
	BUILD("an entry naming an inode with nlink 0", "link count is 0");

	/* A bad record in the middle of the journal, a valid COMMIT after:
	 * corruption, with the offset, not a torn tail (issue 7). */
	RESET();
	mb_super(&ckm);
	mb_inode(&ckm, 1, S_IFDIR | 0755);
	mb_inode(&jm, 2, S_IFREG | 0640);
	mb_dirent(&jm, REC_DIRENT_ADD, 1, 2, "one", 3);
	mb_commit(&jm, 1);
	size_t bad_at = jm.n;
	mb_inode(&jm, 3, S_IFREG | 0640);
	mb_dirent(&jm, REC_DIRENT_ADD, 1, 3, "two", 4);
	mb_commit(&jm, 2);
	jm.b[bad_at + COWFS_REC_HDR_SIZE + 3] ^= 0x20;
	{
		char sub[64];
		snprintf(sub, sizeof(sub), "offset %zu is bad but 1 committed",
			 COWFS_HDR_SIZE + ckm.n + bad_at);
		BUILD("a bad record before a valid COMMIT", sub);
	}

	/* Accepted: the same bad record without its COMMIT is never applied */
	RESET();
	mb_super(&ckm);
	mb_inode(&ckm, 1, S_IFDIR | 0755);
	mb_dirent(&jm, REC_DIRENT_DEL, 1, 2, "nope", 3);
	b = build_meta(&ckm, &jm, &bl);
	spit(metapath, b, bl);
	free(b);
	open_fs();
	check_checkpoint_only();
	close_fs();
	/* Accepted: a hand-made committed batch is replayed */
	RESET();
	mb_super(&ckm);
	mb_inode(&ckm, 1, S_IFDIR | 0755);
	mb_inode(&jm, 2, S_IFREG | 0640);
	mb_dirent(&jm, REC_DIRENT_ADD, 1, 2, "hello", 3);
	mb_commit(&jm, 1);
	b = build_meta(&ckm, &jm, &bl);
	spit(metapath, b, bl);
	free(b);
	open_fs();
	{
		struct stat st;
		OK(fs_lookup(fs, FS_ROOT_INO, "hello", &st));
		CHECK(st.st_ino == 2 && st.st_mode == (S_IFREG | 0640));
		CHECK(st.st_size == 0 && st.st_mtim.tv_sec == 1000);
	}
	check_checkpoint_only();
	close_fs();
	free(ckm.b);
	free(jm.b);
#undef RESET
#undef BUILD

	/* unknown compat bits and the reserved field are ignored */
	spit_header(good, len, h_compat);
	open_fs();
	{
		char *got = snapshot();
		same_snapshot(want, got, "compat bits");
		free(got);
	}
	close_fs();
	/* and the good file still opens, unchanged in content */
	spit(metapath, good, len);
	open_fs();
	{
		char *got = snapshot();
		same_snapshot(want, got, "after the refusals");
		free(got);
	}
	verify_world(&W);
	close_fs();
	free(good);
	free(want);
	world_free(&W);
	if (soft_failures == failed_before)
		printf("  (e) corrupt and foreign metadata refused ok\n");
	else
		printf("  (e) corrupt and foreign metadata: %d store(s) NOT "
		       "refused: FAILED\n", soft_failures - failed_before);
}

/* ---- (e2) packed and unpacked checkpoints ---- */

/* Image m with its checkpoint re-encoded: every record plain (as a cowfs
 * before REC_PACK wrote it), and incompat set as given; the journal is
 * kept. */
static unsigned char *unpack_image(const unsigned char *m, size_t len,
				   uint32_t incompat, size_t *outlen)
{
	struct disk_header h;
	struct mbuf ck = { 0 };
	struct rec r, s;
	size_t end, off;

	CHECK(format_header_decode(m, &h) == NULL);
	end = COWFS_HDR_SIZE + (size_t)h.ckpt_len;
	for (off = COWFS_HDR_SIZE; off < end;) {
		long n = format_decode(m + off, end - off, &r);
		CHECK(n > 0);
		if (r.type == REC_PACK) {
			struct pack_reader rd;
			int k;
			format_pack_open(&rd, &r);
			while ((k = format_pack_next(&rd, &s)) > 0)
				mb_rec(&ck, &s);
			CHECK(k == 0);
		} else {
			mb_rec(&ck, &r);
		}
		off += (size_t)n;
	}
	unsigned char *b = malloc(COWFS_HDR_SIZE + ck.n + (len - end) + 1);
	CHECK(b != NULL);
	h.incompat = incompat;
	format_header_encode(&h, ck.b, ck.n, b);
	memcpy(b + COWFS_HDR_SIZE, ck.b, ck.n);
	memcpy(b + COWFS_HDR_SIZE + ck.n, m + end, len - end);
	*outlen = COWFS_HDR_SIZE + ck.n + (len - end);
	free(ck.b);
	return b;
}

/* A REC_PACK with the given payload. */
static void mb_pack(struct mbuf *m, const void *payload, size_t n)
{
	struct rec r = { .type = REC_PACK, .data = payload,
			 .data_len = (uint32_t)n };
	mb_rec(m, &r);
}

/* build_meta() with the PACKED feature bit. */
static void build_packed(struct mbuf *ck, struct mbuf *j, const char *what,
			 const char *sub)
{
	struct disk_header h;
	size_t bl;
	unsigned char *b = build_meta(ck, j, &bl);
	CHECK(format_header_decode(b, &h) == NULL);
	h.incompat = COWFS_INCOMPAT_PACKED;
	format_header_encode(&h, b + COWFS_HDR_SIZE, h.ckpt_len, b);
	spit(metapath, b, bl);
	free(b);
	expect_refused(what, sub);
}

static void test_packed_compat(void)
{
	size_t len, vlen;
	unsigned char *good, *v;
	struct metainfo mi;

	test_name = "(e2) packed and unpacked checkpoints";
	int failed_before = soft_failures;
	new_store("e2", 12);
	open_fs();
	world_free(&W);
	fixed_scenario(&W);
	char *want = snapshot();
	close_fs();
	good = slurp(metapath, &len);
	parse_meta(good, len, &mi);	/* packed, PACKED bit set */

	/* a store written before packs: plain records, no feature bit */
	v = unpack_image(good, len, 0, &vlen);
	CHECK(vlen > len);
	spit(metapath, v, vlen);
	free(v);
	open_fs();
	check_internal(0);
	char *got = snapshot();
	same_snapshot(want, got, "unpacked checkpoint");
	free(got);
	verify_world(&W);
	close_fs();
	parse_meta_file(&mi);		/* written back packed */
	/* plain records under the bit load too (the writer's fallback) */
	v = unpack_image(good, len, COWFS_INCOMPAT_PACKED, &vlen);
	spit(metapath, v, vlen);
	free(v);
	open_fs();
	got = snapshot();
	same_snapshot(want, got, "plain records, PACKED bit");
	free(got);
	close_fs();

	/* refusals */
	v = malloc(len);
	CHECK(v != NULL);
	{
		struct disk_header h;
		memcpy(v, good, len);
		CHECK(format_header_decode(v, &h) == NULL);
		h.incompat = 0;
		format_header_encode(&h, v + COWFS_HDR_SIZE, h.ckpt_len, v);
		spit(metapath, v, len);
		expect_refused("packs without the PACKED bit", "does not say");
	}
	free(v);
	struct mbuf ckm = { 0 }, jm = { 0 };
	static const unsigned char super[] = { 0x01, 0x02, 0x01, 0x01 };
	static const unsigned char trunc[] = { 0x01, 0x02, 0x80 };
	static const unsigned char badname[] = {	/* 256-byte name */
		0x04, 0x02, 0x02, 0x04, 0x00, 0x80, 0x02 };
	static const unsigned char newext[] = {	/* EXT_SET, EXT_NEW */
		0x16, 0x00, 0x00, 0x01, 0x02, 0x00 };
	mb_super(&ckm);
	mb_inode(&ckm, 1, S_IFDIR | 0755);
	mb_pack(&ckm, trunc, sizeof(trunc));
	build_packed(&ckm, NULL, "pack with a truncated varint", "not decode");
	ckm.n = 0;
	mb_super(&ckm);
	mb_inode(&ckm, 1, S_IFDIR | 0755);
	mb_pack(&ckm, badname, sizeof(badname));
	build_packed(&ckm, NULL, "pack with a 256-byte name", "not decode");
	ckm.n = 0;
	mb_pack(&ckm, super, sizeof(super));
	mb_inode(&ckm, 1, S_IFDIR | 0755);
	mb_inode(&ckm, 2, S_IFREG | 0644);
	mb_pack(&ckm, newext, sizeof(newext));
	build_packed(&ckm, NULL, "packed EXT_SET without NOREF",
		     "corrupt checkpoint record");
	ckm.n = 0;
	mb_pack(&ckm, super, sizeof(super));
	mb_inode(&ckm, 1, S_IFDIR | 0755);
	mb_pack(&jm, super, sizeof(super));
	mb_commit(&jm, 1);
	build_packed(&ckm, &jm, "a pack in the journal", "outside the checkpoint");
	/* a good hand-made one: a pack, then plain records */
	jm.n = 0;
	{
		struct disk_header h;
		size_t bl;
		unsigned char *b = build_meta(&ckm, &jm, &bl);
		CHECK(format_header_decode(b, &h) == NULL);
		h.incompat = COWFS_INCOMPAT_PACKED;
		format_header_encode(&h, b + COWFS_HDR_SIZE, h.ckpt_len, b);
		spit(metapath, b, bl);
		free(b);
		open_fs();
		struct stat st;
		OK(fs_getattr(fs, FS_ROOT_INO, &st));
		CHECK(S_ISDIR(st.st_mode));
		close_fs();
	}
	free(ckm.b);
	free(jm.b);
	free(good);
	free(want);
	world_free(&W);
	if (soft_failures == failed_before)
		printf("  (e2) unpacked checkpoints load, bad packs refused ok\n");
	else
		printf("  (e2) packed checkpoints: %d store(s) NOT refused: "
		       "FAILED\n", soft_failures - failed_before);
}

/* ---- (f) a store is opened once ---- */

static void test_busy(void)
{
	char err[512], pid[32];
	struct fs *f2 = NULL;

	test_name = "(f) busy";
	new_store("f", 12);
	open_fs();
	OK(fs_start(fs));
	int fds = count_fds();
	int rc = try_open(&f2, err, sizeof(err));
	CHECKF(rc == -EBUSY, "second open: %d (%s)", rc, err);
	CHECK(f2 == NULL);
	CHECK(err[0] != 0);
	snprintf(pid, sizeof(pid), "%d", (int)getpid());
	CHECKF(strstr(err, pid) != NULL, "message '%s' lacks the pid", err);
	CHECK(count_fds() == fds);
	/* the first one is unharmed */
	world_free(&W);
	struct mfile *f = op_create(&W, FS_ROOT_INO, 0);
	op_write(&W, f, 0, 10000);
	rc = try_open(&f2, err, sizeof(err));
	CHECK(rc == -EBUSY && f2 == NULL);
	close_fs();
	open_fs();
	verify_world(&W);
	close_fs();
	world_free(&W);
	printf("  (f) second open: -EBUSY ok (%s)\n", err);
}

/* ---- (g), (h): bytes past EOF ---- */

/* The bytes [from, to) of ino must be zeros (soft check). */
static int zeros_between(uint64_t ino, uint64_t from, uint64_t to,
			 const char *what)
{
	size_t n = (size_t)(to - from);
	unsigned char *buf = malloc(n);
	CHECK(buf != NULL);
	CHECK(read_range(ino, from, n, buf) == n);
	size_t k = 0;
	while (k < n && buf[k] == 0)
		k++;
	free(buf);
	if (k == n)
		return 1;
	fprintf(stderr, "FAIL %s: byte %" PRIu64 " past the old EOF is not "
		"zero (bytes [%" PRIu64 ", %" PRIu64 ") should be zeros)\n", what,
		from + k, from, to);
	soft_failures++;
	return 0;
}

/*
 * (g) A crash after an append that was not committed: the committed size
 * stands, and when the file later grows (truncate up, or a write further
 * on in the same block) the bytes past the committed EOF read as zeros.
 */
static void test_uncommitted_append(void)
{
	uint64_t ino;
	size_t len;

	test_name = "(g) uncommitted append";
	new_store("g", 12);
	open_fs();
	world_free(&W);
	struct mfile *f = op_create(&W, FS_ROOT_INO, 0);
	ino = f->ino;
	op_write(&W, f, 0, 5000);	/* block 1 holds 904 bytes */
	struct mfile *g = op_create(&W, FS_ROOT_INO, 0);
	op_write(&W, g, 0, 5000);
	OK(fs_fsync(fs, ino));
	unsigned char *m = slurp(metapath, &len);
	char *want = snapshot();
	/* appended in place (block 1) and in a new block, never committed */
	unsigned char junk[3000];
	memset(junk, 0xee, sizeof(junk));
	struct fillbuf fb = { junk, sizeof(junk), 0 };
	CHECK(fs_write(fs, ino, 5000, sizeof(junk), fill_cb, &fb) == 3000);
	fb.calls = 0;
	CHECK(fs_write(fs, g->ino, 5000, sizeof(junk), fill_cb, &fb) == 3000);
	/* crash: the data reached the object file, the metadata did not */
	crash_and_recover(m, len, want, "uncommitted append");
	verify_world(&W);
	struct stat in, st;
	memset(&in, 0, sizeof(in));
	in.st_size = 9000;
	OK(fs_setattr(fs, &ctx, ino, &in, FS_SET_SIZE, &st));
	int ok = zeros_between(ino, 5000, 9000, "(g) truncate up after a crash");
	unsigned char one = 1;
	fb = (struct fillbuf){ &one, 1, 0 };
	CHECK(fs_write(fs, g->ino, 7000, 1, fill_cb, &fb) == 1);
	ok &= zeros_between(g->ino, 5000, 7000,
			    "(g) write past EOF after a crash");
	close_fs();
	free(m);
	free(want);
	world_free(&W);
	printf("  (g) uncommitted append after a crash: %s\n",
	       ok ? "ok" : "FAILED");
}

struct failfill {
	size_t len;
	int rc;
};

static ssize_t fill_fail(void *p, int fd, off_t pos, size_t len)
{
	struct failfill *f = p;
	unsigned char junk[8192];
	CHECK(len <= sizeof(junk));
	memset(junk, 0xdd, len);
	/* part of the data gets there, then an error (EFAULT, EIO...) */
	CHECK(pwrite(fd, junk, len, pos) == (ssize_t)len);
	f->len = len;
	return f->rc;
}

/* (h) A write that fails in fill() changes nothing that can be read,
 * including past EOF once the file grows. */
static void test_failed_write(void)
{
	test_name = "(h) failed write";
	new_store("h", 12);
	open_fs();
	world_free(&W);
	struct mfile *f = op_create(&W, FS_ROOT_INO, 0);
	op_write(&W, f, 0, 5000);
	struct failfill ff = { 0, -EIO };
	ssize_t n = fs_write(fs, f->ino, 5000, 3000, fill_fail, &ff);
	CHECKF(n == -EIO, "failed write returned %zd", n);
	verify_world(&W);
	check_internal(0);
	op_truncate(f, 9000);
	int ok = zeros_between(f->ino, 5000, 9000, "(h) truncate up after a "
			       "failed write");
	/* the data written before the failure is still fine, and a later
	 * write works */
	op_write(&W, f, 100, 5000);
	if (ok)
		verify_world(&W);
	OK(fs_fsync(fs, f->ino));
	close_fs();
	open_fs();
	if (ok)
		verify_world(&W);
	check_internal(0);
	close_fs();
	world_free(&W);
	printf("  (h) failed write: %s\n", ok ? "ok" : "FAILED");
}


/* ---- (i)..(m): issue 7 ---- */

/*
 * (i) A crash before the first commit after a mount is an unclean stop:
 * the mount mark (set before anything changes) says so, though the
 * journal is empty.  The write object is retired, so a partial write into
 * a hole that the lost write had filled shows zeros, not pre-crash bytes.
 */
static void test_mount_mark(void)
{
	char img[192];
	uint64_t B;

	test_name = "(i) mount mark";
	new_store("i", 12);
	open_fs();
	B = fs_block_size(fs);
	world_free(&W);
	struct mfile *f = op_create(&W, FS_ROOT_INO, 0);
	uint64_t ino = f->ino;
	op_write(&W, f, 0, (size_t)B);
	close_fs();			/* clean: the mark is cleared */
	struct metainfo mi;
	parse_meta_file(&mi);
	{
		size_t l;
		unsigned char *m = slurp(metapath, &l);
		CHECK(le64(m + 48) == 0);	/* flags u32 + reserved u32 */
		free(m);
	}
	open_fs();			/* clean stop: keeps its write object */
	check_internal(0);
	{
		size_t l;
		unsigned char *m = slurp(metapath, &l);
		CHECK((le64(m + 48) & 0xffffffffu) == COWFS_HDR_MOUNTED);
		CHECK(l == COWFS_HDR_SIZE + mi.ckpt_len);	/* no journal */
		free(m);
	}
	CHECK(inode_get(fs, ino)->wobj != 0);
	/* block 2 written in place into the write object; never committed */
	unsigned char junk[4096];
	memset(junk, 0xee, sizeof(junk));
	struct fillbuf fb = { junk, (size_t)B, 0 };
	CHECK(fs_write(fs, ino, (off_t)(2 * B), (size_t)B, fill_cb, &fb) ==
	      (ssize_t)B);
	snprintf(img, sizeof(img), "%s/i-crash", tmpdir);
	copy_store(store, img);		/* the crash image: empty journal */
	close_fs();
	set_store("i-crash");
	open_fs();
	check_internal(1);		/* write objects retired */
	unsigned char one = 1;
	fb = (struct fillbuf){ &one, 1, 0 };
	CHECK(fs_write(fs, ino, (off_t)(2 * B + 100), 1, fill_cb, &fb) == 1);
	{
		struct stat sx;
		OK(fs_getattr(fs, ino, &sx));
		CHECKF((uint64_t)sx.st_size == 2 * B + 101, "size %lld",
		       (long long)sx.st_size);
	}
	int ok = zeros_between(ino, B, 2 * B + 100, "(i) hole after a crash");
	{
		struct stat sin, sx;
		memset(&sin, 0, sizeof(sin));
		sin.st_size = (off_t)(3 * B);
		OK(fs_setattr(fs, &ctx, ino, &sin, FS_SET_SIZE, &sx));
	}
	ok &= zeros_between(ino, 2 * B + 101, 3 * B, "(i) block after a crash");
	close_fs();
	world_free(&W);
	printf("  (i) crash before the first commit is unclean: %s\n",
	       ok ? "ok" : "FAILED");
}

/*
 * (j) A block is punched only when no read holds its object: a read that
 * mapped blocks before a truncate freed them (and a commit made that
 * durable) still reads their bytes; the punch happens at a later commit.
 */
static void test_punch_waits_for_reads(void)
{
	test_name = "(j) punch waits for reads";
	new_store("j", 12);
	open_fs();
	world_free(&W);
	uint64_t B = fs_block_size(fs);
	struct mfile *f = op_create(&W, FS_ROOT_INO, 0);
	uint64_t ino = f->ino;
	unsigned char *data = malloc(4 * B), *got = malloc(2 * B);
	CHECK(data && got);
	memset(data, 0xab, 4 * B);
	struct fillbuf fb = { data, (size_t)(4 * B), 0 };
	CHECK(fs_write(fs, ino, 0, (size_t)(4 * B), fill_cb, &fb) ==
	      (ssize_t)(4 * B));
	OK(fs_fsync(fs, ino));
	/* a read maps blocks 2 and 3 and holds their object */
	struct fs_seg *segs;
	int nseg;
	OK(fs_read_map(fs, ino, (off_t)(2 * B), (size_t)(2 * B), &segs, &nseg));
	CHECK(nseg == 1 && segs[0].fd >= 0);
	/* meanwhile: truncate to 2 blocks, committed */
	struct stat in, st;
	memset(&in, 0, sizeof(in));
	in.st_size = (off_t)(2 * B);
	OK(fs_setattr(fs, &ctx, ino, &in, FS_SET_SIZE, &st));
	OK(fs_fsync(fs, ino));
	OK(fs_fsync(fs, FS_ROOT_INO));
	CHECK(pread(segs[0].fd, got, (size_t)(2 * B), segs[0].pos) ==
	      (ssize_t)(2 * B));
	int ok = memcmp(got, data, (size_t)(2 * B)) == 0;
	if (!ok) {
		fprintf(stderr, "FAIL (j): a read holding the object read "
			"punched blocks (zeros)\n");
		soft_failures++;
	}
	uint64_t obj = segs[0].obj;
	fs_read_done(fs, segs, nseg);
	/* the next commit returns the space */
	OK(fs_fsync(fs, FS_ROOT_INO));
	char op[512];
	snprintf(op, sizeof(op), "%s/objects/%02x/%016" PRIx64, store,
		 (unsigned)(obj & 0xff), obj);
	int fd = open(op, O_RDONLY | O_CLOEXEC);
	CHECKF(fd >= 0, "%s: %s", op, strerror(errno));
	off_t d = lseek(fd, (off_t)(2 * B), SEEK_DATA);
	CHECKF(d < 0 && errno == ENXIO, "blocks 2..3 not punched after the "
	       "read ended (data at %lld)", (long long)d);
	close(fd);
	close_fs();
	free(data);
	free(got);
	world_free(&W);
	printf("  (j) punch waits for reads: %s\n", ok ? "ok" : "FAILED");
}

/* (k) Once the store is broken, nothing is committed, and fs_close()
 * says the changes are lost. */
static void test_broken(void)
{
	struct stat st;

	test_name = "(k) broken";
	new_store("k", 12);
	open_fs();
	OK(fs_mknod(fs, &ctx, FS_ROOT_INO, "kept", S_IFREG | 0644, 0, &st));
	OK(fs_fsync(fs, FS_ROOT_INO));
	OK(fs_mknod(fs, &ctx, FS_ROOT_INO, "lost", S_IFREG | 0644, 0, &st));
	pthread_mutex_lock(&fs->lock);
	fs->broken = 1;
	pthread_mutex_unlock(&fs->lock);
	CHECK(fs_fsync(fs, FS_ROOT_INO) == -EIO);
	CHECK(fs_close(fs) == -EIO);
	fs = NULL;
	open_fs();
	CHECK(fs_lookup(fs, FS_ROOT_INO, "kept", &st) == 0);
	CHECK(fs_lookup(fs, FS_ROOT_INO, "lost", &st) == -ENOENT);
	close_fs();
	CHECK(log_has("marked broken"));
	printf("  (k) broken store commits nothing: ok\n");
}

/*
 * (l) fs_close() returns -errno when the final save fails (checkpoint and
 * commit both refused), and logs it; the next open recovers what was
 * committed and sees the stop as unclean.
 */
static void test_close_fails(void)
{
	struct stat st;

	test_name = "(l) close fails";
	new_store("l", 12);
	open_fs();
	OK(fs_mknod(fs, &ctx, FS_ROOT_INO, "kept", S_IFREG | 0644, 0, &st));
	OK(fs_fsync(fs, FS_ROOT_INO));
	OK(fs_mknod(fs, &ctx, FS_ROOT_INO, "lost", S_IFREG | 0644, 0, &st));
	/* no more writes: the store directory and the metadata fd become a
	 * read-only regular file */
	int ro = open(metapath, O_RDONLY | O_CLOEXEC);
	CHECK(ro >= 0);
	CHECK(dup2(ro, fs->metafd) == fs->metafd);
	CHECK(dup2(ro, fs->store.dirfd) == fs->store.dirfd);
	close(ro);
	int rc = fs_close(fs);
	fs = NULL;
	CHECKF(rc < 0, "fs_close returned %d after a failed final save", rc);
	CHECK(log_has("could not write metadata at unmount"));
	open_fs();
	check_internal(1);
	CHECK(fs_lookup(fs, FS_ROOT_INO, "kept", &st) == 0);
	CHECK(fs_lookup(fs, FS_ROOT_INO, "lost", &st) == -ENOENT);
	close_fs();
	printf("  (l) failed final save: fs_close %d (%s): ok\n", rc,
	       strerror(-rc));
}

/*
 * (m) A bad record in the middle of the journal: the mount is refused
 * (the later committed batches are not dropped silently); fsck says
 * where; fsck --repair cuts there, says what it drops, and the store then
 * mounts with the batches before the bad record.
 */
static void test_bad_middle(void)
{
	struct stat st;
	struct metainfo mi;
	char err[1024], name[16];

	test_name = "(m) bad record in the middle";
	new_store("m", 12);
	open_fs();
	for (int i = 0; i < 4; i++) {
		snprintf(name, sizeof(name), "f%d", i);
		OK(fs_mknod(fs, &ctx, FS_ROOT_INO, name, S_IFREG | 0644, 0, &st));
		OK(fs_fsync(fs, FS_ROOT_INO));
	}
	size_t len;
	unsigned char *m = slurp(metapath, &len);
	close_fs();
	parse_meta(m, len, &mi);
	CHECK(mi.commits == 4);
	/* damage the first record of batch 2 (after the first COMMIT) */
	size_t k = 0;
	while (mi.rec_type[k] != REC_COMMIT)
		k++;
	size_t bad = mi.rec_off[k + 1];
	m[bad + COWFS_REC_HDR_SIZE + 1] ^= 0x55;
	spit(metapath, m, len);
	snprintf(name, sizeof(name), "offset %zu", bad);
	expect_refused("bad record in batch 2 of 4", name);
	/* fsck without --repair: refuses too, says where, changes nothing */
	FILE *out = tmpfile();
	CHECK(out != NULL);
	int rc = fs_fsck(store, 0, 0, out, err, sizeof(err));
	CHECKF(rc < 0 && strstr(err, name), "fsck: %d %s", rc, err);
	size_t l2;
	unsigned char *m2 = slurp(metapath, &l2);
	CHECK(l2 == len && memcmp(m, m2, len) == 0);
	free(m2);
	/* --repair: cut at the end of batch 1 */
	rewind(out);
	CHECK(ftruncate(fileno(out), 0) == 0);
	rc = fs_fsck(store, 1, 0, out, err, sizeof(err));
	CHECKF(rc == 0, "fsck --repair: %d %s", rc, err);
	fflush(out);
	rewind(out);
	char text[4096] = "";
	size_t tn = fread(text, 1, sizeof(text) - 1, out);
	text[tn] = 0;
	fclose(out);
	CHECKF(strstr(text, "journal cut at offset") && strstr(text, "dropped"),
	       "fsck --repair output: %s", text);
	open_fs();
	CHECK(fs_lookup(fs, FS_ROOT_INO, "f0", &st) == 0);
	for (int i = 1; i < 4; i++) {
		snprintf(name, sizeof(name), "f%d", i);
		CHECK(fs_lookup(fs, FS_ROOT_INO, name, &st) == -ENOENT);
	}
	check_internal(1);
	close_fs();
	free(m);
	printf("  (m) bad record in the middle refused, fsck --repair cuts: ok\n");
}

/*
 * (n) An inode record that the commit cannot log (no memory for the
 * journal) breaks the store instead of committing the entries logged
 * before it without it: an O_TMPFILE named by fs_link() must not commit
 * as an entry naming a link count of 0, which would refuse the next mount.
 */
static void test_lost_dirty_record(void)
{
	struct stat st, named;
	char img[64], img_path[160];

	test_name = "(n) lost dirty record";
	new_store("n", 12);
	open_fs();
	OK(fs_tmpfile(fs, &ctx, FS_ROOT_INO, S_IFREG | 0600, &st));
	CHECK(st.st_nlink == 0);
	OK(fs_fsync(fs, FS_ROOT_INO));		/* the inode, link count 0 */
	OK(fs_link(fs, st.st_ino, FS_ROOT_INO, "named", &named));
	CHECK(named.st_nlink == 1);
	CHECK(fs_link(fs, st.st_ino, FS_ROOT_INO, "again", &named) == 0);
	OK(fs_unlink(fs, FS_ROOT_INO, "again", NULL));
	/* the entry is in the journal; the link count waits for the commit,
	 * whose first journal growth fails */
	pthread_mutex_lock(&fs->lock);
	fs->jcap = fs->jlen;
	fail_realloc = 1;
	pthread_mutex_unlock(&fs->lock);
	int rc = fs_fsync(fs, FS_ROOT_INO);
	fail_realloc = 0;
	CHECKF(rc == -EIO, "commit after a lost inode record: %d", rc);
	snprintf(img, sizeof(img), "n-crash");
	snprintf(img_path, sizeof(img_path), "%s/%s", tmpdir, img);
	copy_store(store, img_path);		/* a crash now */
	CHECK(fs_close(fs) == -EIO);
	fs = NULL;
	set_store(img);
	open_fs();				/* mounts: nothing committed */
	check_internal(1);
	CHECK(fs_lookup(fs, FS_ROOT_INO, "named", &named) == -ENOENT);
	CHECK(fs_getattr(fs, st.st_ino, &named) == -ENOENT);	/* orphan, freed */
	close_fs();
	CHECK(log_has("cannot log its attributes"));
	/* an O_TMPFILE is named once: unlinked again, it stays unnamed */
	new_store("n2", 12);
	open_fs();
	OK(fs_tmpfile(fs, &ctx, FS_ROOT_INO, S_IFREG | 0600, &st));
	OK(fs_link(fs, st.st_ino, FS_ROOT_INO, "a", &named));
	OK(fs_unlink(fs, FS_ROOT_INO, "a", NULL));
	CHECK(fs_link(fs, st.st_ino, FS_ROOT_INO, "b", &named) == -ENOENT);
	fs_forget(fs, st.st_ino, 2);	/* the tmpfile's and the link's */
	CHECK(fs_getattr(fs, st.st_ino, &named) == -ENOENT);
	close_fs();
	printf("  (n) lost inode record breaks the store; O_TMPFILE named "
	       "once: ok\n");
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	init_seed("test_journal");
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/cowfs-unit-XXXXXX");
	CHECK(mkdtemp(tmpdir) != NULL);
	snprintf(logpath, sizeof(logpath), "%s/cowfs.log", tmpdir);
	printf("test_journal: working in %s\n", tmpdir);

	test_clean_reopen();
	test_replay(12, 10);
	test_replay(16, 4);
	test_crash_image();
	test_torn_and_uncommitted();
	test_refused();
	test_packed_compat();
	test_busy();
	test_uncommitted_append();
	test_failed_write();
	test_mount_mark();
	test_punch_waits_for_reads();
	test_broken();
	test_close_fails();
	test_bad_middle();
	test_lost_dirty_record();

	if (soft_failures) {
		fprintf(stderr, "test_journal: %d FAILED check(s) (seed %" PRIu64
			"); files kept in %s\n", soft_failures, seed, tmpdir);
		return 1;
	}
	rm_rf(tmpdir);
	printf("test_journal: all ok\n");
	return 0;
}
