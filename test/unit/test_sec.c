/*
 * test_sec.c - out of memory in the middle of namespace operations and
 * clones: every failure leaves the state it found (no reference count
 * touched that the operation did not raise, nothing logged that did not
 * happen), and a store that went through a storm of such failures
 * reopens and passes fsck.
 *
 * malloc, calloc and realloc are replaced by versions that fail the Nth
 * call after arm(N).  Under AddressSanitizer (which owns malloc) the test
 * is skipped.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "cowfs/fs_impl.h"
#include "testutil.h"

#if defined(__SANITIZE_ADDRESS__)
#define NO_INJECTION 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define NO_INJECTION 1
#endif
#endif

#ifndef NO_INJECTION
extern void *__libc_malloc(size_t n);
extern void *__libc_calloc(size_t n, size_t k);
extern void *__libc_realloc(void *p, size_t n);

static long fail_at = -1;	/* allocations left before one fails */
static int failed;

static int take(void)
{
	if (fail_at < 0)
		return 0;
	if (fail_at-- == 0) {
		failed = 1;
		errno = ENOMEM;
		return 1;
	}
	return 0;
}

void *malloc(size_t n)
{
	return take() ? NULL : __libc_malloc(n);
}

void *calloc(size_t n, size_t k)
{
	return take() ? NULL : __libc_calloc(n, k);
}

void *realloc(void *p, size_t n)
{
	return take() ? NULL : __libc_realloc(p, n);
}

static void arm(long n)
{
	failed = 0;
	fail_at = n;
}

static void disarm(void)
{
	fail_at = -1;
}
#endif

static char tmpdir[] = "/tmp/cowfs-test-sec.XXXXXX";
static char store[160];
static struct fs *fs;
static const struct fs_ctx root = { .uid = 0, .gid = 0, .umask = 022,
				    .ngroups = -1 };

static void fail_exit(void)
{
	fprintf(stderr, "test_sec: failed (store %s, seed %" PRIu64 ")\n",
		store, seed);
	exit(1);
}

#ifdef NO_INJECTION
int main(void)
{
	(void)tmpdir;
	(void)fs;
	(void)root;
	(void)fail_exit;
	printf("test_sec: skipped under AddressSanitizer\n");
	return 77;
}
#else

static void open_fs(void)
{
	struct fs_options opt = { 0 };
	char err[512] = "";
	opt.commit_secs = 100000;
	int rc = fs_open(store, &opt, &fs, err, sizeof(err));
	CHECKF(rc == 0, "fs_open: %d %s", rc, err);
}

struct pat {
	unsigned char v;
};

static ssize_t fill(void *p, int fd, off_t pos, size_t len)
{
	struct pat *pt = p;
	unsigned char buf[4096];
	size_t done = 0;
	memset(buf, pt->v, sizeof(buf));
	while (done < len) {
		size_t n = len - done < sizeof(buf) ? len - done : sizeof(buf);
		ssize_t w = pwrite(fd, buf, n, pos + (off_t)done);
		if (w <= 0)
			return -EIO;
		done += (size_t)w;
	}
	return (ssize_t)done;
}

/* What a failed operation must leave unchanged. */
struct snap {
	uint64_t ninodes, nentries, next_cookie;
	size_t jlen, jrecs, nfrees;
	size_t rc_live;
	uint64_t rcsum;		/* sum of counts over the source's blocks */
};

static uint64_t src_ino, dir_ino;

static uint64_t rc_sum(void)
{
	struct inode *in;
	uint64_t sum = 0;
	INODE_FOREACH(in, fs)
		for (size_t i = 0; S_ISREG(in->mode) && i < extmap_n(&in->map); i++)
			for (uint64_t b = 0; b < extmap_at(&in->map, i).len; b++)
				sum += refcount_get(&fs->rc, extmap_at(&in->map, i).obj,
						    extmap_at(&in->map, i).pblk + b);
	return sum;
}

static void take_snap(struct snap *s)
{
	struct inode *root_in = inode_get(fs, FS_ROOT_INO);
	pthread_mutex_lock(&fs->lock);
	s->ninodes = fs->ninodes;
	s->nentries = dir_nentries(root_in);
	s->next_cookie = dir_next_cookie(root_in);
	s->jlen = fs->jlen;
	s->jrecs = fs->jrecs;
	s->nfrees = fs->nfrees;
	s->rc_live = fs->rc.live;
	s->rcsum = rc_sum();
	pthread_mutex_unlock(&fs->lock);
}

static void same_snap(const struct snap *a, const char *what, long n)
{
	struct snap b;
	take_snap(&b);
	CHECKF(a->ninodes == b.ninodes, "%s@%ld: inodes %" PRIu64 " -> %" PRIu64,
	       what, n, a->ninodes, b.ninodes);
	CHECKF(a->nentries == b.nentries, "%s@%ld: root entries", what, n);
	CHECKF(a->jlen == b.jlen && a->jrecs == b.jrecs,
	       "%s@%ld: journal %zu/%zu -> %zu/%zu", what, n, a->jlen, a->jrecs,
	       b.jlen, b.jrecs);
	CHECKF(a->nfrees == b.nfrees, "%s@%ld: %zu blocks queued to free", what,
	       n, b.nfrees - a->nfrees);
	CHECKF(a->rcsum == b.rcsum && a->rc_live == b.rc_live,
	       "%s@%ld: reference counts %" PRIu64 " -> %" PRIu64, what, n,
	       a->rcsum, b.rcsum);
}

/* Run op with the Nth allocation failing, for N = 0, 1, ... until it
 * succeeds; each failure must leave the snapshot unchanged. */
#define STORM(what, op)                                                      \
	do {                                                                 \
		long n_;                                                     \
		for (n_ = 0; n_ < 100000; n_++) {                            \
			struct snap s_;                                      \
			take_snap(&s_);                                      \
			arm(n_);                                             \
			int rc_ = (op);                                      \
			disarm();                                            \
			if (rc_ >= 0 && !failed)                             \
				break;                                       \
			if (rc_ >= 0)                                        \
				break;	/* a failure it could absorb */      \
			CHECKF(rc_ == -ENOMEM, "%s@%ld: %d", what, n_, rc_); \
			same_snap(&s_, what, n_);                            \
		}                                                            \
		printf("  %s: %ld failure points\n", what, n_);              \
	} while (0)

int main(int argc, char **argv)
{
	char err[512] = "";
	struct stat st;
	int rc;

	(void)argc;
	(void)argv;
	init_seed("test_sec");
	CHECK(mkdtemp(tmpdir));
	snprintf(store, sizeof(store), "%s/store", tmpdir);
	rc = fs_init_store(store, 12, err, sizeof(err));
	CHECKF(rc == 0, "init: %s", err);
	open_fs();

	/* a tree: dir/{a (600 blocks), b (shared with a), l -> a}, an ACL */
	CHECK(fs_mknod(fs, &root, FS_ROOT_INO, "dir", S_IFDIR | 0755, 0, &st) == 0);
	dir_ino = st.st_ino;
	CHECK(fs_mknod(fs, &root, dir_ino, "a", S_IFREG | 0644, 0, &st) == 0);
	src_ino = st.st_ino;
	struct pat p = { 0x5a };
	CHECK(fs_write(fs, src_ino, 0, 600 * 4096, fill, &p) == 600 * 4096);
	CHECK(fs_mknod(fs, &root, dir_ino, "b", S_IFREG | 0644, 0, &st) == 0);
	CHECK(fs_copy_range(fs, src_ino, 0, st.st_ino, 0, 300 * 4096) ==
	      300 * 4096);
	CHECK(fs_symlink(fs, &root, dir_ino, "l", "a", &st) == 0);
	CHECK(fs_mknod(fs, &root, FS_ROOT_INO, "dir2", S_IFDIR | 0755, 0, &st) == 0);
	static const unsigned char acl[] = {
		2, 0, 0, 0, 1, 0, 7, 0, 0, 0, 0, 0, 4, 0, 5, 0, 0, 0, 0, 0,
		0x10, 0, 5, 0, 0, 0, 0, 0, 0x20, 0, 5, 0, 0, 0, 0, 0,
		2, 0, 7, 0, 0xe8, 3, 0, 0 };
	CHECK(fs_setxattr(fs, dir_ino, "system.posix_acl_default", acl,
			  sizeof(acl), 0) == 0);
	CHECK(fs_fsync(fs, FS_ROOT_INO) == 0);

	/* clones: the undo never drops a reference it did not add */
	int k = 0;
	char name[32];
	STORM("clone file", (snprintf(name, sizeof(name), "cf%d", k++),
			     fs_clone(fs, &root, src_ino, FS_ROOT_INO, name, &st)));
	STORM("clone tree", (snprintf(name, sizeof(name), "ct%d", k++),
			     fs_clone(fs, &root, dir_ino, FS_ROOT_INO, name, &st)));
	/* namespace operations: nothing logged that did not happen */
	STORM("mknod", (snprintf(name, sizeof(name), "n%d", k++),
			fs_mknod(fs, &root, dir_ino, name, S_IFREG | 0600, 0, &st)));
	STORM("mkdir", (snprintf(name, sizeof(name), "m%d", k++),
			fs_mknod(fs, &root, dir_ino, name, S_IFDIR | 0700, 0, &st)));
	STORM("link", (snprintf(name, sizeof(name), "h%d", k++),
		       fs_link(fs, src_ino, FS_ROOT_INO, name, &st)));
	STORM("rename", fs_rename(fs, dir_ino, "l", FS_ROOT_INO, "moved", 0, NULL));
	STORM("rename over", fs_rename(fs, FS_ROOT_INO, "moved", dir_ino, "a", 0, NULL));
	STORM("exchange", fs_rename(fs, dir_ino, "a", FS_ROOT_INO, "dir2", 2, NULL));
	STORM("setxattr", fs_setxattr(fs, src_ino, "user.k", "value", 5, 0));
	STORM("removexattr", fs_removexattr(fs, src_ino, "user.k"));
	STORM("unlink", fs_unlink(fs, dir_ino, "b", NULL));

	/* the store as it is now survives a replay and passes fsck */
	CHECK(fs_fsync(fs, FS_ROOT_INO) == 0);
	struct snap before;
	take_snap(&before);
	/* an unclean stop: replay the journal, not the checkpoint */
	CHECK(fs_close(fs) == 0);
	open_fs();
	CHECK(fs_close(fs) == 0);
	fs = NULL;
	FILE *out = fopen("/dev/null", "w");
	rc = fs_fsck(store, 0, 1, out, err, sizeof(err));
	fclose(out);
	CHECKF(rc == 0, "fsck after the storm: %d %s", rc, err);
	printf("test_sec: ok\n");
	char cmd[256];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	if (system(cmd) != 0)
		return 1;
	return 0;
}
#endif
