/*
 * origin.c - clones by reference of host trees ("origins").
 *
 * A host file cloned by reference becomes an origin object: its blocks are
 * read in place from the host file (block k at byte k*B, as in any
 * object) and never written, punched or unlinked; a write copies the block
 * into the store (invariant 3).  The file's identity (device, inode, size,
 * mtime and ctime in ns) is recorded; when the file no longer matches, its
 * reads fail with EIO and one log line names it.
 *
 * The host tree is walked outside fs->lock with the caller's credentials
 * (fsuid, fsgid, groups of the calling thread), then materialized under
 * the lock as ordinary journal records in one batch.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/magic.h>
#include <sys/fsuid.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "cowfs/fs_sec.h"

#define ORIGIN_XATTR "trusted.cowfs.origin"

static int64_t ts_ns(const struct timespec *t)
{
	return (int64_t)t->tv_sec * 1000000000 + t->tv_nsec;
}

int origin_apply(struct fs *fs, const struct rec *r)
{
	char path[PATH_MAX];
	size_t k = r->flags, have = 0;
	struct object *o;

	if (fs->opath_load)
		have = origin_path(fs->opath_load, path);
	if (r->u.origin.obj == 0 || k > have || k + r->data_len == 0 ||
	    k + r->data_len >= PATH_MAX)
		return -EINVAL;
	memcpy(path + k, r->data, r->data_len);
	path[k + r->data_len] = 0;
	if (path[0] != '/')
		return -EINVAL;
	o = obj_new_origin(fs, r->u.origin.obj, path, r->u.origin.dev,
			   r->u.origin.ino, r->u.origin.size,
			   r->u.origin.mtime_ns, r->u.origin.ctime_ns);
	if (!o)
		return errno == EINVAL ? -EINVAL : -ENOMEM;
	fs->opath_load = o;
	return 0;
}

/* ---- walking a host tree ---- */

#ifndef FUSE_SUPER_MAGIC
#define FUSE_SUPER_MAGIC 0x65735546
#endif
#ifndef FUSECTL_SUPER_MAGIC
#define FUSECTL_SUPER_MAGIC 0x65735543
#endif
#ifndef CONFIGFS_MAGIC
#define CONFIGFS_MAGIC 0x62656570
#endif
#ifndef MQUEUE_MAGIC
#define MQUEUE_MAGIC 0x19800202
#endif
#ifndef RPC_PIPEFS_MAGIC
#define RPC_PIPEFS_MAGIC 0x67596969
#endif

/* The deepest host tree a clone by reference walks: the walk keeps one
 * directory fd per level, and a regular file deeper than this could not
 * have a path under PATH_MAX anyway. */
#define WALK_MAX_DEPTH 2048

int origin_fs_refused(int fd, const char **what)
{
	static const struct { unsigned long magic; const char *name; } pseudo[] = {
		{ PROC_SUPER_MAGIC, "procfs" }, { SYSFS_MAGIC, "sysfs" },
		{ DEBUGFS_MAGIC, "debugfs" }, { TRACEFS_MAGIC, "tracefs" },
		{ SECURITYFS_MAGIC, "securityfs" }, { SELINUX_MAGIC, "selinuxfs" },
		{ SMACK_MAGIC, "smackfs" }, { CGROUP_SUPER_MAGIC, "cgroup" },
		{ CGROUP2_SUPER_MAGIC, "cgroup2" }, { DEVPTS_SUPER_MAGIC, "devpts" },
		{ BPF_FS_MAGIC, "bpf" }, { CONFIGFS_MAGIC, "configfs" },
		{ PSTOREFS_MAGIC, "pstore" }, { EFIVARFS_MAGIC, "efivarfs" },
		{ BINFMTFS_MAGIC, "binfmt_misc" }, { NSFS_MAGIC, "nsfs" },
		{ FUSECTL_SUPER_MAGIC, "fusectl" }, { MQUEUE_MAGIC, "mqueue" },
		{ RPC_PIPEFS_MAGIC, "rpc_pipefs" }, { AUTOFS_SUPER_MAGIC, "autofs" },
		{ OPENPROM_SUPER_MAGIC, "openpromfs" },
		{ USBDEVICE_SUPER_MAGIC, "usbdevfs" },
		{ RDTGROUP_SUPER_MAGIC, "resctrl" },
		{ BINDERFS_SUPER_MAGIC, "binderfs" },
	};
	struct statfs sf;

	*what = NULL;
	if (fstatfs(fd, &sf) < 0)
		return -errno;
	if ((unsigned long)sf.f_type == FUSE_SUPER_MAGIC) {
		*what = "a FUSE filesystem (clones share blocks only within one "
			"store)";
		return -EXDEV;
	}
	for (size_t i = 0; i < sizeof(pseudo) / sizeof(pseudo[0]); i++)
		if ((unsigned long)sf.f_type == pseudo[i].magic) {
			*what = pseudo[i].name;
			return -EOPNOTSUPP;
		}
	return 0;
}

struct hx {			/* one xattr */
	char *name;
	void *value;
	uint32_t len;
};

struct hent {
	long parent;		/* index of the parent entry, -1: top */
	const char *name;	/* the walk's (a frame's name, or the top's) */
	char *path;		/* in the arena: host path of a regular file */
	char *target;		/* in the arena: symlink target */
	struct stat st;		/* from fstat of the fd the entry was read by */
	struct hx *x;
	int nx;
	uint64_t *ranges;	/* in the arena: block runs (first, count) pairs */
	int nranges;
	uint64_t ino;		/* new inode number, set when materialized */
	uint64_t obj;		/* its origin object, once materialized */
	long link_of;		/* an earlier entry this is a hard link of, or -1 */
};

/* A directory being walked: its entries, read and sorted when entered. */
struct wframe {
	DIR *dir;		/* dirfd() is the parent fd of the entries */
	char **names;		/* owned; the names are in the arena */
	size_t n, i;
	long idx;		/* its entry, -1: the top (contents only) */
	dev_t dev;
	size_t plen;		/* length of its host path in walk.path */
};

/*
 * The walk's memory: everything it keeps until the clone is materialized
 * (names, paths, symlink targets, xattrs, block runs, the entries) comes
 * from mappings of its own, unmapped as a whole at the end.  From the
 * heap, it would sit under the inodes and objects that materializing
 * allocates, and glibc could not give it back: a clone of /usr would keep
 * twice the memory its inodes need.
 */
#define ARENA_CHUNK (1u << 20)

struct achunk {
	struct achunk *next;
	size_t size;
};

struct arena {
	struct achunk *chunks;
	char *cur, *end;
};

static void *arena_alloc(struct arena *a, size_t n)
{
	n = (n + 15) & ~(size_t)15;
	if (n > (size_t)(a->end - a->cur)) {
		size_t hdr = (sizeof(struct achunk) + 15) & ~(size_t)15;
		size_t size = n + hdr > ARENA_CHUNK ?
			      (n + hdr + 4095) & ~(size_t)4095 : ARENA_CHUNK;
		struct achunk *c = mmap(NULL, size, PROT_READ | PROT_WRITE,
					MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (c == MAP_FAILED)
			return NULL;
		c->next = a->chunks;
		c->size = size;
		a->chunks = c;
		a->cur = (char *)c + hdr;
		a->end = (char *)c + size;
	}
	void *p = a->cur;
	a->cur += n;
	return p;
}

static void *arena_dup(struct arena *a, const void *src, size_t n)
{
	void *p = arena_alloc(a, n);
	if (p)
		memcpy(p, src, n);
	return p;
}

static char *arena_strdup(struct arena *a, const char *s)
{
	return arena_dup(a, s, strlen(s) + 1);
}

static void arena_free(struct arena *a)
{
	while (a->chunks) {
		struct achunk *c = a->chunks;
		a->chunks = c->next;
		munmap(c, c->size);
	}
	a->cur = a->end = NULL;
}

struct walk {
	struct fs *fs;
	struct arena a;		/* the entries' names, paths, ... */
	struct hent *v;		/* mapped: grows with mremap */
	long n, cap;
	uint64_t skipped;
	int is_root;		/* the caller may make device nodes */
	char *path;		/* host path of the directory walked (heap) */
	size_t plen, pcap;
	struct wframe *st;	/* the directories being walked */
	size_t depth, scap;
	uint64_t *runs;		/* read_ranges()' scratch (heap) */
	size_t rcap;
};

static void free_walk(struct walk *w)
{
	if (w->v)
		munmap(w->v, (size_t)w->cap * sizeof(*w->v));
	while (w->depth) {
		struct wframe *f = &w->st[--w->depth];
		closedir(f->dir);
		free(f->names);
	}
	free(w->st);
	free(w->path);
	free(w->runs);
	arena_free(&w->a);
}

static struct hent *add_ent(struct walk *w)
{
	if (w->n == w->cap) {
		long cap = w->cap ? w->cap * 2 : 1024;
		size_t old = (size_t)w->cap * sizeof(*w->v);
		size_t size = (size_t)cap * sizeof(*w->v);
		struct hent *v = w->v ? mremap(w->v, old, size, MREMAP_MAYMOVE) :
				 mmap(NULL, size, PROT_READ | PROT_WRITE,
				      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (v == MAP_FAILED)
			return NULL;
		w->v = v;
		w->cap = cap;
	}
	struct hent *e = &w->v[w->n++];
	memset(e, 0, sizeof(*e));
	e->link_of = -1;
	return e;
}

/* Set w->path to its first len bytes plus "/name" (name NULL: just cut). */
static int path_set(struct walk *w, size_t len, const char *name)
{
	size_t n = name ? strlen(name) + 1 : 0;

	if (len + n + 1 > w->pcap) {
		size_t cap = (len + n + 1) * 2;
		char *p = realloc(w->path, cap);
		if (!p)
			return -ENOMEM;
		w->path = p;
		w->pcap = cap;
	}
	w->plen = len;
	if (name) {
		w->path[len] = '/';
		memcpy(w->path + len + 1, name, n);
		w->plen += n;
	}
	w->path[w->plen] = 0;
	return 0;
}

/* A host xattr a clone copies: user.*, security.* and the POSIX ACLs;
 * trusted.* only for root (the daemon could read them for anyone: it
 * keeps CAP_SYS_ADMIN while it takes the caller's fsuid), and never
 * cowfs's own trusted.cowfs.*; security.capability only for root. */
static int want_xattr(const char *n, int is_root)
{
	if (!strncmp(n, "trusted.", 8))
		return is_root && strncmp(n, "trusted.cowfs.", 14);
	/* file capabilities: setting them needs CAP_SETFCAP, and the
	 * copy is the caller's */
	if (!strcmp(n, "security.capability"))
		return is_root;
	return !strncmp(n, "user.", 5) || !strncmp(n, "security.", 9) ||
	       !strcmp(n, "system.posix_acl_access") ||
	       !strcmp(n, "system.posix_acl_default");
}

/* Read xattrs through fd (or path for symlinks, fd < 0). */
static int read_xattrs(struct walk *w, struct hent *e, int fd,
		       const char *path, int is_root)
{
	char *names = malloc(65536), *val = NULL;
	ssize_t n;
	int rc = 0;

	if (!names)
		return -ENOMEM;
	n = fd >= 0 ? flistxattr(fd, names, 65536) : llistxattr(path, names, 65536);
	if (n < 0) {
		rc = errno == ENOTSUP || errno == ENAMETOOLONG ? 0 : -errno;
		goto out;
	}
	for (char *p = names; p < names + n; p += strlen(p) + 1) {
		if (!want_xattr(p, is_root))
			continue;
		if (!val && !(val = malloc(COWFS_XATTR_MAX))) {
			rc = -ENOMEM;
			goto out;
		}
		ssize_t len = fd >= 0 ? fgetxattr(fd, p, val, COWFS_XATTR_MAX) :
					lgetxattr(path, p, val, COWFS_XATTR_MAX);
		if (len < 0)
			continue;
		/* rare: the array is copied to grow, in the arena */
		struct hx *x = arena_alloc(&w->a, (size_t)(e->nx + 1) * sizeof(*x));
		if (!x) {
			rc = -ENOMEM;
			goto out;
		}
		if (e->nx)
			memcpy(x, e->x, (size_t)e->nx * sizeof(*x));
		e->x = x;
		x[e->nx].name = arena_strdup(&w->a, p);
		x[e->nx].value = arena_dup(&w->a, val, (size_t)len);
		x[e->nx].len = (uint32_t)len;
		if (!x[e->nx].name || (len && !x[e->nx].value)) {
			rc = -ENOMEM;
			goto out;
		}
		e->nx++;
	}
out:
	free(val);
	free(names);
	return rc;
}

/* Block runs that hold data (holes stay holes). */
static int read_ranges(struct walk *w, struct hent *e, int fd)
{
	unsigned shift = w->fs->block_shift;
	off_t pos = 0, end;

	if (e->st.st_size == 0)
		return 0;
	e->ranges = w->runs;
	for (;;) {
		pos = lseek(fd, pos, SEEK_DATA);
		if (pos < 0) {
			if (errno == ENXIO)
				break;
			/* no SEEK_DATA: all data */
			pos = 0;
			end = e->st.st_size;
		} else {
			end = lseek(fd, pos, SEEK_HOLE);
			if (end < 0)
				end = e->st.st_size;
		}
		uint64_t first = (uint64_t)pos >> shift;
		uint64_t last = ((uint64_t)end - 1) >> shift;
		if (e->nranges && e->ranges[2 * (e->nranges - 1)] +
				  e->ranges[2 * (e->nranges - 1) + 1] > first) {
			/* continues the previous run's last block */
			uint64_t *r = &e->ranges[2 * (e->nranges - 1)];
			if (last + 1 > r[0] + r[1])
				r[1] = last + 1 - r[0];
		} else {
			if ((size_t)e->nranges == w->rcap) {
				size_t cap = w->rcap ? w->rcap * 2 : 16;
				uint64_t *r = realloc(w->runs, cap * 2 * sizeof(*r));
				if (!r) {
					e->ranges = NULL;
					e->nranges = 0;
					return -ENOMEM;
				}
				e->ranges = w->runs = r;
				w->rcap = cap;
			}
			e->ranges[2 * e->nranges] = first;
			e->ranges[2 * e->nranges + 1] = last - first + 1;
			e->nranges++;
		}
		if (end >= e->st.st_size)
			break;
		pos = end;
	}
	/* the scratch array is the next file's */
	if (e->nranges &&
	    !(e->ranges = arena_dup(&w->a, e->ranges,
				    (size_t)e->nranges * 2 * sizeof(*e->ranges)))) {
		e->nranges = 0;
		return -ENOMEM;
	}
	return 0;
}

static int name_sort(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Enter directory fd (consumed) as entry idx, at path w->path: read and
 * sort its names and push it. */
static int push_dir(struct walk *w, int fd, long idx, dev_t dev)
{
	struct wframe *f;
	struct dirent *de;
	DIR *d;

	if (w->depth >= WALK_MAX_DEPTH) {
		close(fd);
		fs_log(w->fs, "clone: '%s': deeper than %d levels", w->path,
		       WALK_MAX_DEPTH);
		return -ENAMETOOLONG;
	}
	if (w->depth == w->scap) {
		size_t cap = w->scap ? w->scap * 2 : 64;
		struct wframe *n = realloc(w->st, cap * sizeof(*n));
		if (!n) {
			close(fd);
			return -ENOMEM;
		}
		w->st = n;
		w->scap = cap;
	}
	if (!(d = fdopendir(fd))) {
		int e = -errno;
		close(fd);
		return e;
	}
	f = &w->st[w->depth++];
	memset(f, 0, sizeof(*f));
	f->dir = d;
	f->idx = idx;
	f->dev = dev;
	f->plen = w->plen;
	size_t cap = 0;
	errno = 0;
	while ((de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		if (f->n == cap) {
			cap = cap ? cap * 2 : 16;
			char **nn = realloc(f->names, cap * sizeof(*nn));
			if (!nn)
				return -ENOMEM;
			f->names = nn;
		}
		if (!(f->names[f->n] = arena_strdup(&w->a, de->d_name)))
			return -ENOMEM;
		f->n++;
	}
	if (errno)
		return -errno;
	qsort(f->names, f->n, sizeof(*f->names), name_sort);
	return 0;
}

/*
 * One entry named name in directory dfd (of device pdev; host path
 * w->path).  Its type is the one fstat() gives for the fd it is read
 * through, opened relative to dfd without following symlinks, never an
 * earlier lstat or d_type: a file swapped for a directory meanwhile
 * (RENAME_EXCHANGE) is read as what it is when opened.  A directory's
 * fd is returned in *dirfd_out (-1 otherwise) to be walked.
 */
static int walk_one(struct walk *w, int dfd, dev_t pdev, const char *name,
		    long parent, int *dirfd_out)
{
	struct hent *e;
	struct stat st, pst;
	const char *what;
	int pfd = -1, fd = -1, rc = 0, tries = 0;

	*dirfd_out = -1;
	if ((rc = fs_name_check(name, strlen(name)))) {
		fs_log(w->fs, "clone: '%s/%.40s...': cannot be a name in cowfs",
		       w->path, name);
		return rc;
	}
again:
	if (pfd >= 0)
		close(pfd);
	if (fd >= 0)
		close(fd);
	pfd = fd = -1;
	if (++tries > 16) {
		fs_log(w->fs, "clone: '%s/%s' keeps changing type", w->path, name);
		return -EAGAIN;
	}
	pfd = openat(dfd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
	if (pfd < 0)
		return errno == ENOENT ? 0 : -errno;	/* vanished: skip */
	if (fstat(pfd, &pst) < 0) {
		rc = -errno;
		goto out;
	}
	st = pst;
	if (S_ISREG(pst.st_mode) || S_ISDIR(pst.st_mode)) {
		int fl = O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY |
			 O_CLOEXEC | O_NOATIME |
			 (S_ISDIR(pst.st_mode) ? O_DIRECTORY : 0);
		fd = openat(dfd, name, fl);
		if (fd < 0 && errno == EPERM)
			fd = openat(dfd, name, fl & ~O_NOATIME);
		if (fd < 0) {
			if (errno == ENOENT)
				goto out;	/* vanished: skip */
			if (errno == ENOTDIR || errno == ELOOP)
				goto again;	/* swapped meanwhile */
			rc = -errno;
			fs_log(w->fs, "clone: '%s/%s': %s", w->path, name,
			       strerror(errno));
			goto out;
		}
		if (fstat(fd, &st) < 0) {
			rc = -errno;
			goto out;
		}
		if ((st.st_mode & S_IFMT) != (pst.st_mode & S_IFMT))
			goto again;	/* swapped between the two opens */
	}
	if (st.st_dev != pdev &&
	    (rc = origin_fs_refused(fd >= 0 ? fd : pfd, &what))) {
		if (rc != -EXDEV && rc != -EOPNOTSUPP)
			goto out;
		fs_log(w->fs, "clone: '%s/%s' is on %s: not cloned by "
		       "reference", w->path, name, what);
		goto out;
	}
	if (S_ISSOCK(st.st_mode) ||
	    ((S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode)) && !w->is_root)) {
		w->skipped++;
		fs_log(w->fs, "clone: skipped '%s/%s' (%s)", w->path, name,
		       S_ISSOCK(st.st_mode) ? "a socket" : "a device node");
		goto out;
	}
	if (!(e = add_ent(w))) {
		rc = -ENOMEM;
		goto out;
	}
	e->parent = parent;
	e->st = st;
	/* the names the frame read live as long as the walk */
	e->name = name;
	if (S_ISLNK(st.st_mode)) {
		char buf[PATH_MAX];
		ssize_t n = readlinkat(pfd, "", buf, PATH_MAX - 1);
		if (n < 0) {
			rc = -errno;
			goto out;
		}
		buf[n] = 0;
		if (!(e->target = arena_dup(&w->a, buf, (size_t)n + 1))) {
			rc = -ENOMEM;
			goto out;
		}
		/* user.* xattrs cannot be on symlinks: only root's walk reads
		 * theirs, by path (a symlink cannot be opened) */
		if (w->is_root && (rc = path_set(w, w->plen, name)) == 0) {
			size_t len = w->plen - strlen(name) - 1;
			rc = read_xattrs(w, e, -1, w->path, 1);
			int rc2 = path_set(w, len, NULL);
			rc = rc ? rc : rc2;
		}
		goto out;
	}
	if (fd >= 0 && (rc = read_xattrs(w, e, fd, NULL, w->is_root)))
		goto out;
	if (S_ISREG(st.st_mode)) {
		size_t plen = w->plen + strlen(name) + 2;
		if (plen > PATH_MAX) {
			fs_log(w->fs, "clone: '%s/%.40s...': path too long for an "
			       "origin", w->path, name);
			rc = -ENAMETOOLONG;
			goto out;
		}
		if (!(e->path = arena_alloc(&w->a, plen))) {
			rc = -ENOMEM;
			goto out;
		}
		snprintf(e->path, plen, "%s/%s", w->path, name);
		rc = read_ranges(w, e, fd);
	} else if (S_ISDIR(st.st_mode)) {
		*dirfd_out = fd;
		fd = -1;
	}
out:
	if (fd >= 0)
		close(fd);
	if (pfd >= 0)
		close(pfd);
	return rc;
}

/* Walk what is pushed, depth first; each directory's names in order. */
static int walk_run(struct walk *w)
{
	int rc = 0;

	while (w->depth && !rc) {
		struct wframe *f = &w->st[w->depth - 1];
		int cfd;
		if (f->i == f->n) {
			closedir(f->dir);
			free(f->names);
			w->depth--;
			if (w->depth)
				path_set(w, w->st[w->depth - 1].plen, NULL);
			continue;
		}
		const char *name = f->names[f->i++];
		long parent = f->idx;
		rc = walk_one(w, dirfd(f->dir), f->dev, name, parent, &cfd);
		if (rc || cfd < 0)
			continue;
		/* f may move when the stack grows: nothing of it is used */
		struct stat *cst = &w->v[w->n - 1].st;
		if ((rc = path_set(w, w->plen, name))) {
			close(cfd);
			break;
		}
		rc = push_dir(w, cfd, w->n - 1, cst->st_dev);
	}
	return rc;
}
/* Become the caller for file access on this thread, and back. */
struct creds {
	uid_t uid;
	gid_t gid;
	int ngroups;
	gid_t groups[64];
};

/* Returns 0, or -EPERM when this thread cannot take the caller's
 * identity (a daemon that is not root, serving another user, or a
 * caller whose groups are not all known). */
static int creds_enter(const struct fs_ctx *c, struct creds *save)
{
	save->uid = (uid_t)setfsuid((uid_t)-1);
	save->gid = (gid_t)setfsgid((gid_t)-1);
	save->ngroups = getgroups(64, save->groups);
	if (c->uid == 0 || (c->uid == save->uid && geteuid() != 0))
		return 0;	/* root, or the daemon's own user */
	/* without all its groups, the caller could read what a group of
	 * its own denies it (mode 0604 and the like) */
	if (c->ngroups < 0 || c->groups_cut)
		return -EPERM;
	/* the raw syscall changes this thread only */
	syscall(SYS_setgroups, c->ngroups > 0 ? c->ngroups : 0, c->groups);
	setfsgid(c->gid);
	setfsuid(c->uid);
	if ((uid_t)setfsuid((uid_t)-1) != c->uid ||
	    (gid_t)setfsgid((gid_t)-1) != c->gid)
		return -EPERM;
	return 0;
}

static void creds_leave(const struct fs_ctx *c, const struct creds *save)
{
	if (c->uid == 0)
		return;
	setfsuid(save->uid);
	setfsgid(save->gid);
	syscall(SYS_setgroups, save->ngroups > 0 ? save->ngroups : 0, save->groups);
}

/* Open the top of the walk's parent (or the top itself, contents_only)
 * and refuse pseudo and FUSE filesystems there. */
static int walk_top(struct walk *w, const char *host, int contents_only)
{
	const char *what;
	struct stat st;
	int fd, cfd, rc;

	if (contents_only) {
		fd = open(host, O_RDONLY | O_DIRECTORY | O_NOATIME | O_CLOEXEC);
		if (fd < 0 && errno == EPERM)
			fd = open(host, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (fd < 0)
			return -errno;
		if ((rc = origin_fs_refused(fd, &what)) || fstat(fd, &st) < 0) {
			rc = rc ? rc : -errno;
			goto refused;
		}
		if ((rc = path_set(w, strlen(host), NULL)) == 0) {
			memcpy(w->path, host, w->plen + 1);
			/* "/" as the top: its entries are "/x", not "//x" */
			if (w->plen == 1)
				path_set(w, 0, NULL);
			return push_dir(w, fd, -1, st.st_dev);
		}
		close(fd);
		return rc;
	}
	const char *slash = strrchr(host, '/');
	const char *base = slash + 1;
	size_t dlen = (size_t)(slash - host);
	if (!*base)
		return -EINVAL;		/* "/" or a trailing slash */
	if ((rc = path_set(w, dlen ? dlen : 1, NULL)))
		return rc;
	memcpy(w->path, dlen ? host : "/", w->plen);
	w->path[w->plen] = 0;
	/* search permission is enough for the parent */
	fd = open(w->path, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if ((rc = origin_fs_refused(fd, &what)) || fstat(fd, &st) < 0) {
		rc = rc ? rc : -errno;
		goto refused;
	}
	if (!dlen)
		path_set(w, 0, NULL);	/* entries of "/" are "/x" */
	rc = walk_one(w, fd, st.st_dev, base, -1, &cfd);
	close(fd);
	if (rc)
		return rc;
	if (w->n == 0)
		return -EOPNOTSUPP;	/* a socket or device itself */
	if (cfd >= 0) {
		dev_t dev = w->v[0].st.st_dev;
		if (!(rc = path_set(w, w->plen, base)))
			rc = push_dir(w, cfd, 0, dev);
		else
			close(cfd);
	}
	return rc;
refused:
	if (what)
		fs_log(w->fs, "clone: '%s' is on %s: not cloned by reference",
		       host, what);
	close(fd);
	return rc;
}

static int walk_host(struct fs *fs, const struct fs_ctx *c, const char *host,
		     int contents_only, struct walk *w)
{
	struct creds save;
	int rc;

	memset(w, 0, sizeof(*w));
	w->fs = fs;
	w->is_root = c->uid == 0;
	rc = creds_enter(c, &save);
	if (rc) {
		creds_leave(c, &save);
		fs_log(fs, "clone: cannot take uid %u's identity to read '%s'",
		       (unsigned)c->uid, host);
		return rc;
	}
	rc = walk_top(w, host, contents_only);
	if (!rc)
		rc = walk_run(w);
	creds_leave(c, &save);
	return rc;
}

/* ---- materializing ---- */

/* A clone whose batch is at least this big is committed at once. */
#define CLONE_COMMIT_BYTES (1u << 20)

struct link_key {
	dev_t dev;
	ino_t ino;
	long idx;
};

static int link_cmp(const void *a, const void *b)
{
	const struct link_key *x = a, *y = b;
	if (x->dev != y->dev)
		return x->dev < y->dev ? -1 : 1;
	if (x->ino != y->ino)
		return x->ino < y->ino ? -1 : 1;
	return (x->idx > y->idx) - (x->idx < y->idx);
}

/* Hard links inside the walked tree: later entries point to the first. */
static int find_links(struct walk *w)
{
	long n = 0;
	struct link_key *k = malloc((size_t)(w->n ? w->n : 1) * sizeof(*k));
	if (!k)
		return -ENOMEM;
	for (long i = 0; i < w->n; i++)
		if (!S_ISDIR(w->v[i].st.st_mode) && w->v[i].st.st_nlink > 1)
			k[n++] = (struct link_key){ w->v[i].st.st_dev, w->v[i].st.st_ino, i };
	qsort(k, (size_t)n, sizeof(*k), link_cmp);
	for (long i = 1; i < n; i++)
		if (k[i].dev == k[i - 1].dev && k[i].ino == k[i - 1].ino)
			w->v[k[i].idx].link_of = w->v[k[i - 1].idx].link_of >= 0 ?
						 w->v[k[i - 1].idx].link_of : k[i - 1].idx;
	free(k);
	return 0;
}

static void set_attrs(struct inode *in, const struct stat *st,
		      const struct fs_ctx *c, const struct timespec *now)
{
	in->mode = st->st_mode;
	in->uid = c->uid ? c->uid : st->st_uid;
	in->gid = c->uid ? c->gid : st->st_gid;
	if (c->uid)
		in->mode &= ~(uint32_t)(S_ISUID | S_ISGID);
	inode_set_rdev(in, st->st_rdev);
	in->size = S_ISREG(st->st_mode) ? (uint64_t)st->st_size : 0;
	inode_set_time(in, IT_ATIME, st->st_atim);
	inode_set_time(in, IT_MTIME, st->st_mtim);
	inode_touch(in, IT_BIT(IT_CTIME) | IT_BIT(IT_BTIME), now);
}

static int log_xattrs(struct fs *fs, struct inode *in, struct hent *e)
{
	for (int k = 0; k < e->nx; k++) {
		struct hx *x = &e->x[k];
		int rc = xattr_set(in, x->name, x->value, x->len);
		if (rc)
			return rc;
		struct rec r = { .type = REC_XATTR_SET, .name = x->name,
				 .name_len = (uint32_t)strlen(x->name),
				 .data = x->value, .data_len = x->len };
		r.u.xattr.ino = in->ino;
		if ((rc = journal_log(fs, &r)))
			return rc;
	}
	return 0;
}

/* fs->lock held.  Size each new directory for the entries pass 2 of
 * materialize() gives it, as a mount's load sizes them: arrays grown by
 * doubling would leave their slack, and the holes of their old copies
 * between the long-lived objects, to the daemon's RSS. */
static int presize_dirs(struct fs *fs, struct walk *w)
{
	size_t *cnt = arena_alloc(&w->a, 2 * (size_t)w->n * sizeof(*cnt));

	if (!cnt)
		return 0;	/* only an optimisation */
	size_t *bytes = cnt + w->n;
	memset(cnt, 0, 2 * (size_t)w->n * sizeof(*cnt));
	for (long i = 0; i < w->n; i++) {
		long p = w->v[i].parent;
		if (p >= 0) {
			cnt[p]++;
			bytes[p] += strlen(w->v[i].name) + 1;
		}
	}
	for (long i = 0; i < w->n; i++) {
		struct hent *e = &w->v[i];
		if (e->link_of >= 0 || !S_ISDIR(e->st.st_mode) || !cnt[i])
			continue;
		int rc = dir_presize(inode_get(fs, e->ino), cnt[i], bytes[i]);
		if (rc)
			return rc;
	}
	return 0;
}

/* fs->lock held.  Make the walked entries under dir (top entries named
 * as walked, or 'name' for a single top entry). */
static int materialize(struct fs *fs, const struct fs_ctx *c, struct walk *w,
		       struct inode *dir, const char *name)
{
	char pbuf[PATH_MAX];
	struct timespec now;
	struct rec r;
	int rc = 0;

	now_ts(&now);
	/* pass 1: inodes, attributes, origin objects, extents */
	for (long i = 0; i < w->n && !rc; i++) {
		struct hent *e = &w->v[i];
		if (e->link_of >= 0) {
			e->ino = w->v[e->link_of].ino;
			inode_get(fs, e->ino)->nlink++;
			continue;
		}
		struct inode *in = inode_new(fs, fs->next_ino);
		if (!in)
			return -ENOMEM;
		e->ino = in->ino;
		set_attrs(in, &e->st, c, &now);
		in->nlink = S_ISDIR(e->st.st_mode) ? 2 : 1;
		if (e->target && !(in->target = strdup(e->target)))
			return -ENOMEM;
		if (S_ISDIR(in->mode) &&
		    inode_make_dir(in, e->parent >= 0 ? w->v[e->parent].ino : dir->ino))
			return -ENOMEM;
		inode_to_rec(in, &r);
		if ((rc = journal_log(fs, &r)) || (rc = log_xattrs(fs, in, e)))
			return rc;
		if (e->nranges) {
			uint64_t id = fs->next_obj;
			struct object *o = obj_new_origin(fs, id, e->path,
				e->st.st_dev, e->st.st_ino, (uint64_t)e->st.st_size,
				ts_ns(&e->st.st_mtim), ts_ns(&e->st.st_ctim));
			if (!o)
				return -ENOMEM;
			e->obj = id;
			origin_to_rec(o, &r, &fs->opath_prev, pbuf);
			if ((rc = journal_log(fs, &r)))
				return rc;
			for (int k = 0; k < e->nranges && !rc; k++) {
				uint64_t b = e->ranges[2 * k], n = e->ranges[2 * k + 1];
				rc = file_map_set(fs, in, b, n, id, b, EXT_NEW);
				r = (struct rec){ .type = REC_EXT_SET, .flags = EXT_NEW };
				r.u.ext.ino = in->ino;
				r.u.ext.lblk = b;
				r.u.ext.len = n;
				r.u.ext.obj = id;
				r.u.ext.pblk = b;
				if (!rc)
					rc = journal_log(fs, &r);
			}
		}
	}
	/* the new directories sized for their entries: no growing */
	if (!rc && (rc = presize_dirs(fs, w)))
		return rc;
	/* pass 2: directory entries, parents first (walk order) */
	for (long i = 0; i < w->n && !rc; i++) {
		struct hent *e = &w->v[i];
		struct inode *p = e->parent >= 0 ? inode_get(fs, w->v[e->parent].ino) : dir;
		struct inode *in = inode_get(fs, e->ino);
		const char *nm = e->parent < 0 && name ? name : e->name;
		if (dir_find(p, nm))
			return -EEXIST;
		if ((rc = dir_add(fs, p, nm, e->ino, p->dir->next_cookie)))
			return rc;
		r = (struct rec){ .type = REC_DIRENT_ADD, .name = nm,
				  .name_len = (uint32_t)strlen(nm) };
		r.u.dirent.parent = p->ino;
		r.u.dirent.ino = e->ino;
		r.u.dirent.cookie = p->dir->next_cookie - 1;
		if ((rc = journal_log(fs, &r)))
			return rc;
		if (S_ISDIR(in->mode) && e->link_of < 0)
			p->nlink++;
		if (e->link_of >= 0)
			inode_dirty(fs, in);	/* its nlink grew after its record */
		if (S_ISDIR(in->mode) || p == dir)
			inode_dirty(fs, p);	/* nlink, times */
	}
	inode_touch(dir, IT_BIT(IT_MTIME) | IT_BIT(IT_CTIME), &now);
	inode_dirty(fs, dir);
	return rc;
}

/* fs->lock held.  Take back a materialize() that failed: the records
 * (m), the entries made in dir, the inodes and the origin objects. */
static void unmaterialize(struct fs *fs, struct walk *w, struct inode *dir,
			  const char *name, const struct jmark *m,
			  uint32_t nlink)
{
	jmark_restore(fs, m);
	for (long i = 0; i < w->n; i++) {
		struct hent *e = &w->v[i];
		const char *nm = name ? name : e->name;
		struct dent *d;
		if (e->parent >= 0 || !e->ino)
			continue;
		if ((d = dir_find(dir, nm)) && d->ino == e->ino)
			dir_del(fs, dir, d);
	}
	dir->nlink = nlink;
	for (long i = w->n - 1; i >= 0; i--) {
		struct hent *e = &w->v[i];
		struct inode *in;
		if (e->link_of >= 0 || !e->ino || !(in = inode_get(fs, e->ino)))
			continue;
		in->nlink = 0;
		inode_free(fs, in);	/* drops its origin blocks */
	}
	for (long i = 0; i < w->n; i++) {
		struct object *o;
		if (w->v[i].obj && (o = obj_get(fs, w->v[i].obj)))
			obj_maybe_doom(fs, o);
	}
}

static int clone_host_locked(struct fs *fs, const struct fs_ctx *c,
			     struct walk *w, uint64_t dst_parent, const char *name)
{
	struct inode *dir = inode_get(fs, dst_parent);
	struct jmark m;
	int rc;

	if ((rc = fs_may_create_in(fs, c, dir, name)))
		return rc;
	uint32_t nlink = dir->nlink;
	jmark_save(fs, &m);
	rc = materialize(fs, c, w, dir, name);
	if (rc)
		unmaterialize(fs, w, dir, name, &m, nlink);
	return rc;
}

int fs_clone_host(struct fs *fs, const struct fs_ctx *c, const char *host,
		  uint64_t dst_parent, const char *name, uint64_t *skipped)
{
	struct walk w;
	bool big = false;
	int rc;

	if (skipped)
		*skipped = 0;
	if (fs->opt.ro)
		return -EROFS;
	if (host[0] != '/' || strlen(host) >= PATH_MAX)
		return -EINVAL;
	if (name && (rc = fs_name_check(name, strlen(name))))
		return rc;
	rc = walk_host(fs, c, host, name == NULL, &w);
	if (!rc)
		rc = find_links(&w);
	if (!rc) {
		lock_take(fs, LOCK_FS);
		rc = clone_host_locked(fs, c, &w, dst_parent, name);
		big = fs->jlen >= CLONE_COMMIT_BYTES;
		lock_drop(fs, LOCK_FS);
	}
	if (skipped)
		*skipped = w.skipped;
	free_walk(&w);
	/* A big clone's records (some 300 bytes an entry) would hold their
	 * memory until the next periodic commit: commit them now.  A
	 * failure is the periodic commit's to report, as for any batch. */
	if (!rc && big)
		journal_commit(fs);
	return rc;
}

/* ---- detach ---- */

struct copy_src {
	int fd;
	off_t pos;
};

static bool page_is_zero(const char *p, size_t n)
{
	return n == 0 || (p[0] == 0 && !memcmp(p, p + 1, n - 1));
}

/*
 * Copy origin bytes into the write object.  Every block detach writes is
 * mapped to the origin, so its slot is a fresh hole (invariant 2): a 4 KiB
 * page of zeros (a hole of a sparse origin file, most often) is skipped
 * rather than written, and the object is extended to cover the range, as
 * cp(1) keeps a sparse file sparse.
 */
static ssize_t fill_copy(void *ctx, int fd, off_t pos, size_t len)
{
	struct copy_src *s = ctx;
	char buf[65536];
	size_t done = 0;
	bool skipped = false;
	struct stat st;

	while (done < len) {
		size_t n = len - done < sizeof(buf) ? len - done : sizeof(buf);
		ssize_t got = pread(s->fd, buf, n, s->pos + (off_t)done);
		if (got < 0)
			return -errno;
		if (got < (ssize_t)n)
			memset(buf + got, 0, n - (size_t)got);
		for (size_t i = 0; i < n;) {
			/* pages of the file (and of the object: same offsets) */
			off_t at = pos + (off_t)(done + i);
			size_t k = 4096 - (size_t)(at & 4095);
			if (k > n - i)
				k = n - i;
			if (page_is_zero(buf + i, k)) {
				skipped = true;
			} else {
				ssize_t put = pwrite(fd, buf + i, k, at);
				if (put < 0)
					return -errno;
				if (put != (ssize_t)k)	/* a regular file: full */
					return -ENOSPC;
			}
			i += k;
		}
		done += n;
	}
	if (skipped) {
		off_t end = pos + (off_t)len;
		if (fstat(fd, &st) < 0)
			return -errno;
		if (st.st_size < end && ftruncate(fd, end) < 0)
			return -errno;
	}
	return (ssize_t)done;
}

int64_t fs_detach(struct fs *fs, const struct fs_ctx *c, uint64_t ino)
{
	int64_t total = 0;
	int rc = 0;
	struct inode *in;

	if (fs->opt.ro)
		return -EROFS;
	lock_take_shared(fs);
	lock_take(fs, LOCK_FS);
	in = inode_get(fs, ino);
	if (!in || !S_ISREG(in->mode) || !inode_may(c, in, MAY_R)) {
		rc = !in ? -ENOENT : S_ISDIR(in->mode) ? -EISDIR :
		     !S_ISREG(in->mode) ? 0 : -EACCES;
		lock_drop(fs, LOCK_FS);
		lock_drop(fs, LOCK_DATA);
		return rc;
	}
	lock_drop(fs, LOCK_FS);
	lock_io_take(in);
	for (;;) {
		struct extent run = { 0 };
		struct object *o = NULL;
		lock_take(fs, LOCK_FS);
		for (size_t i = 0; i < extmap_n(&in->map); i++) {
			const struct extent ev = extmap_at(&in->map, i), *e = &ev;
			struct object *x = obj_get(fs, e->obj);
			if (x && x->origin) {
				run = *e;
				o = x;
				break;
			}
		}
		if (o && (rc = obj_pin(fs, o)))
			o = NULL;
		lock_drop(fs, LOCK_FS);
		if (!o)
			break;
		if (run.len > 16)
			run.len = 16;
		uint64_t off = run.lblk << fs->block_shift;
		uint64_t len = run.len << fs->block_shift;
		if (off + len > in->size)
			len = in->size > off ? in->size - off : 0;
		struct copy_src src = { o->fd, (off_t)(run.pblk << fs->block_shift) };
		lock_take(fs, LOCK_FS);
		struct timespec mt = inode_mtime(in), ct = inode_ctime(in);
		lock_drop(fs, LOCK_FS);
		ssize_t n = len ? file_write_locked(fs, in, (off_t)off, len, fill_copy, &src)
				: 0;
		/* the content is the same: so are its times */
		lock_take(fs, LOCK_FS);
		inode_set_time(in, IT_MTIME, mt);
		inode_set_time(in, IT_CTIME, ct);
		lock_drop(fs, LOCK_FS);
		if (n == 0 && len == 0) {
			/* mapped past EOF: unmap it */
			lock_take(fs, LOCK_FS);
			rc = file_map_punch(fs, in, run.lblk, run.len);
			lock_drop(fs, LOCK_FS);
		}
		lock_take(fs, LOCK_FS);
		obj_unpin(fs, o);
		lock_drop(fs, LOCK_FS);
		if (n < 0) {
			rc = (int)n;
			break;
		}
		if (rc)
			break;
		total += n;
	}
	lock_io_drop(in);
	lock_drop(fs, LOCK_DATA);
	return rc ? rc : total;
}

/* ---- the --origin root ---- */

int fs_origin_root(struct fs *fs, char **dir)
{
	char buf[PATH_MAX];
	int n = fs_getxattr(fs, FS_ROOT_INO, ORIGIN_XATTR, buf, sizeof(buf) - 1);
	if (n < 0)
		return n;
	buf[n] = 0;
	*dir = strdup(buf);
	return *dir ? 0 : -ENOMEM;
}

int fs_attach_origin(struct fs *fs, const char *dir, char *err, size_t errlen)
{
	char *have = NULL;
	struct stat st;
	int rc;

	if (fs_origin_root(fs, &have) == 0) {
		rc = strcmp(have, dir) ? -EEXIST : 0;
		if (rc)
			snprintf(err, errlen, "this store is a clone of '%s', not "
				 "of '%s'", have, dir);
		free(have);
		return rc;
	}
	lock_take(fs, LOCK_FS);
	struct inode *root = inode_get(fs, FS_ROOT_INO);
	int empty = root && dir_nentries(root) == 0;
	lock_drop(fs, LOCK_FS);
	if (!empty) {
		snprintf(err, errlen, "--origin needs a new or empty store; this one "
			 "has files and no origin");
		return -ENOTEMPTY;
	}
	if (fs->opt.ro) {
		snprintf(err, errlen, "--origin needs a writable mount the first time");
		return -EROFS;
	}
	if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
		rc = errno ? -errno : -ENOTDIR;
		snprintf(err, errlen, "'%s': %s", dir,
			 S_ISDIR(st.st_mode) ? strerror(errno) : strerror(ENOTDIR));
		return rc;
	}
	struct fs_ctx c = { .uid = 0, .gid = 0, .ngroups = -1 };
	uint64_t skipped = 0;
	rc = fs_clone_host(fs, &c, dir, FS_ROOT_INO, NULL, &skipped);
	if (rc == -EXDEV)
		snprintf(err, errlen, "'%s': on a FUSE filesystem: an origin must "
			 "be a host directory (%s)", dir, strerror(-rc));
	else if (rc == -EOPNOTSUPP)
		snprintf(err, errlen, "'%s': on a pseudo filesystem (procfs, "
			 "sysfs, ...): not an origin", dir);
	else if (rc)
		snprintf(err, errlen, "'%s': cloning by reference: %s", dir,
			 strerror(-rc));
	if (rc)
		return rc;
	/* the root takes the origin directory's attributes */
	lock_take(fs, LOCK_FS);
	root = inode_get(fs, FS_ROOT_INO);
	root->mode = st.st_mode;
	root->uid = st.st_uid;
	root->gid = st.st_gid;
	inode_set_time(root, IT_ATIME, st.st_atim);
	inode_set_time(root, IT_MTIME, st.st_mtim);
	inode_dirty(fs, root);
	lock_drop(fs, LOCK_FS);
	rc = fs_setxattr(fs, FS_ROOT_INO, ORIGIN_XATTR, dir, strlen(dir), 0);
	if (!rc)
		rc = journal_commit(fs);
	if (rc)
		snprintf(err, errlen, "recording the origin: %s", strerror(-rc));
	return rc;
}
