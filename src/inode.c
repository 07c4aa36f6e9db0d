/*
 * inode.c - the inode table and what hangs off one inode: the tree of
 * inodes by number, directory entries (by name and by readdir cookie),
 * extended attributes, the dirty list, the name check, and an inode's
 * record form.  Plain in-memory structures, all under fs->lock.
 *
 * Below file.c and journal.c, which look inodes up and encode them; it
 * calls nothing above it.  Freeing an inode (which drops its blocks) is
 * fs.c's inode_free().
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "cowfs/fs_impl.h"

static int ino_cmp(struct inode *a, struct inode *b)
{
	return (a->ino < b->ino) ? -1 : (a->ino > b->ino);
}
RB_GENERATE(inode_tree, inode, node, ino_cmp)

static int name_cmp(struct dirent_node *a, struct dirent_node *b)
{
	return strcmp(a->name, b->name);
}
RB_GENERATE(dir_names, dirent_node, by_name, name_cmp)

static int cookie_cmp(struct dirent_node *a, struct dirent_node *b)
{
	return (a->cookie < b->cookie) ? -1 : (a->cookie > b->cookie);
}
RB_GENERATE(dir_cookies, dirent_node, by_cookie, cookie_cmp)

unsigned fs_block_size(const struct fs *fs)
{
	return (unsigned)fs->block_size;
}

void now_ts(struct timespec *ts)
{
	clock_gettime(CLOCK_REALTIME, ts);
}

struct inode *inode_get(struct fs *fs, uint64_t ino)
{
	struct inode key = { .ino = ino };
	return RB_FIND(inode_tree, &fs->inodes, &key);
}

struct inode *inode_new(struct fs *fs, uint64_t ino)
{
	struct inode *in = calloc(1, sizeof(*in));

	if (!in)
		return NULL;
	in->ino = ino;
	RB_INIT(&in->names);
	RB_INIT(&in->cookies);
	in->next_cookie = 3;
	extmap_init(&in->map);
	pthread_mutex_init(&in->io_lock, NULL);
	RB_INSERT(inode_tree, &fs->inodes, in);
	fs->ninodes++;
	if (ino >= fs->next_ino)
		fs->next_ino = ino + 1;
	return in;
}

void inode_dirty(struct fs *fs, struct inode *in)
{
	if (in->dirty)
		return;
	in->dirty = true;
	TAILQ_INSERT_TAIL(&fs->dirty, in, dirty_link);
}

void inode_undirty(struct fs *fs, struct inode *in)
{
	if (!in->dirty)
		return;
	TAILQ_REMOVE(&fs->dirty, in, dirty_link);
	in->dirty = false;
}

void inode_stat(const struct fs *fs, const struct inode *in, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = in->ino;
	st->st_mode = in->mode;
	st->st_nlink = in->nlink;
	st->st_uid = in->uid;
	st->st_gid = in->gid;
	st->st_rdev = in->rdev;
	st->st_size = (off_t)in->size;
	st->st_blksize = (blksize_t)fs->block_size;
	st->st_atim = in->atime;
	st->st_mtim = in->mtime;
	st->st_ctim = in->ctime;
	if (S_ISREG(in->mode)) {
		/* Allocation as the host counts it: whole blocks, but the
		 * block holding EOF only up to EOF in 4 KiB pages. */
		uint64_t bytes = extmap_nblocks(&in->map) << fs->block_shift;
		uint64_t last = in->size ? (in->size - 1) >> fs->block_shift : 0;
		struct extent e;
		if (in->size && extmap_lookup(&in->map, last, &e)) {
			uint64_t tail = in->size - (last << fs->block_shift);
			tail = (tail + 4095) & ~(uint64_t)4095;
			if (tail < fs->block_size)
				bytes -= fs->block_size - tail;
		}
		st->st_blocks = (blkcnt_t)(bytes / 512);
	} else if (S_ISDIR(in->mode)) {
		st->st_size = (off_t)(in->nentries + 2) * 32;
		st->st_blocks = 8;
	} else if (S_ISLNK(in->mode)) {
		st->st_size = in->target ? (off_t)strlen(in->target) : 0;
	}
}

struct dirent_node *dir_find(struct inode *dir, const char *name)
{
	size_t n = strlen(name);
	char buf[sizeof(struct dirent_node) + COWFS_NAME_MAX + 1];
	struct dirent_node *key = (struct dirent_node *)buf;

	if (n > COWFS_NAME_MAX)
		return NULL;
	memcpy(key->name, name, n + 1);
	return RB_FIND(dir_names, &dir->names, key);
}

int fs_name_check(const char *name, size_t len)
{
	if (len == 0 || memchr(name, 0, len) || memchr(name, '/', len))
		return -EINVAL;
	if ((len == 1 && name[0] == '.') ||
	    (len == 2 && name[0] == '.' && name[1] == '.'))
		return -EINVAL;
	if (len > COWFS_NAME_MAX)
		return -ENAMETOOLONG;
	return 0;
}

/* A new, unlinked entry (caller owns; free() it or give it to
 * dir_insert()).  NULL: out of memory. */
struct dirent_node *dirent_new(const char *name, uint64_t ino,
				      uint64_t cookie)
{
	size_t n = strlen(name);
	struct dirent_node *d = malloc(sizeof(*d) + n + 1);

	if (!d)
		return NULL;
	memcpy(d->name, name, n + 1);
	d->ino = ino;
	d->cookie = cookie;
	return d;
}

/* Link d into dir; on failure d is still the caller's.  A bad name is
 * -EINVAL or -ENAMETOOLONG; a name or a cookie already in dir is
 * -EEXIST (a replayed record that does not fit: never two entries with
 * one cookie, which would corrupt the cookie tree). */
int dir_insert(struct inode *dir, struct dirent_node *d)
{
	int rc = fs_name_check(d->name, strlen(d->name));

	if (rc)
		return rc;
	/* 1 and 2 are "." and ".."; readdir offsets are signed */
	if (d->cookie < 3 || d->cookie >= (uint64_t)INT64_MAX)
		return -EINVAL;
	if (RB_FIND(dir_cookies, &dir->cookies, d))
		return -EEXIST;
	if (RB_INSERT(dir_names, &dir->names, d))
		return -EEXIST;
	RB_INSERT(dir_cookies, &dir->cookies, d);
	if (d->cookie >= dir->next_cookie)
		dir->next_cookie = d->cookie + 1;
	dir->nentries++;
	return 0;
}

int dir_add(struct fs *fs, struct inode *dir, const char *name, uint64_t ino,
	    uint64_t cookie)
{
	struct dirent_node *d = dirent_new(name, ino, cookie);
	int rc;

	(void)fs;
	if (!d)
		return -ENOMEM;
	if ((rc = dir_insert(dir, d)))
		free(d);
	return rc;
}

void dir_del(struct fs *fs, struct inode *dir, struct dirent_node *d)
{
	(void)fs;
	RB_REMOVE(dir_names, &dir->names, d);
	RB_REMOVE(dir_cookies, &dir->cookies, d);
	dir->nentries--;
	free(d);
}

struct xattr **xattr_find(struct inode *in, const char *name)
{
	struct xattr **p;
	for (p = &in->xattrs; *p; p = &(*p)->next)
		if (!strcmp((*p)->name, name))
			break;
	return p;
}

int xattr_set(struct inode *in, const char *name, const void *v, uint32_t len)
{
	struct xattr **p = xattr_find(in, name), *x = *p;
	void *val = malloc(len ? len : 1);

	if (!val)
		return -ENOMEM;
	memcpy(val, v, len);
	if (!x) {
		x = calloc(1, sizeof(*x));
		if (!x || !(x->name = strdup(name))) {
			free(x);
			free(val);
			return -ENOMEM;
		}
		*p = x;
	} else {
		free(x->value);
	}
	x->value = val;
	x->len = len;
	return 0;
}

int xattr_del(struct inode *in, const char *name)
{
	struct xattr **p = xattr_find(in, name), *x = *p;
	if (!x)
		return -ENODATA;
	*p = x->next;
	free(x->name);
	free(x->value);
	free(x);
	return 0;
}

void inode_to_rec(const struct inode *in, struct rec *r)
{
	memset(r, 0, sizeof(*r));
	r->type = REC_INODE;
	r->u.inode.ino = in->ino;
	r->u.inode.size = in->size;
	r->u.inode.wobj = in->wobj;
	r->u.inode.rdev = in->rdev;
	r->u.inode.next_cookie = in->next_cookie;
	r->u.inode.parent = in->parent;
	r->u.inode.mode = in->mode;
	r->u.inode.uid = in->uid;
	r->u.inode.gid = in->gid;
	r->u.inode.nlink = in->nlink;
	r->u.inode.flags = in->flags;
	r->u.inode.atime_sec = in->atime.tv_sec;
	r->u.inode.atime_nsec = (uint32_t)in->atime.tv_nsec;
	r->u.inode.mtime_sec = in->mtime.tv_sec;
	r->u.inode.mtime_nsec = (uint32_t)in->mtime.tv_nsec;
	r->u.inode.ctime_sec = in->ctime.tv_sec;
	r->u.inode.ctime_nsec = (uint32_t)in->ctime.tv_nsec;
	r->u.inode.btime_sec = in->btime.tv_sec;
	r->u.inode.btime_nsec = (uint32_t)in->btime.tv_nsec;
	if (in->target) {
		r->data = in->target;
		r->data_len = (uint32_t)strlen(in->target);
	}
}
