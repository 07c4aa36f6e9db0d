/*
 * clone.c - tree and file clones, and space accounting (du, df).
 *
 * A clone copies inodes, directory entries, xattrs and extent maps, and
 * adds one reference to every block it maps; no data moves.  It is taken
 * with fs->data_lock held exclusively (no write half-done) and fs->lock
 * held (no namespace change), so it is a point-in-time copy; it is
 * journaled as one REC_CLONE record and replayed by the same code, so it
 * must be deterministic: directories are walked in cookie order, new
 * inode numbers are handed out in walk order from first_ino, and the new
 * entries keep their source's cookies.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cowfs/fs_impl.h"

struct link_node {
	RB_ENTRY(link_node) e;
	uint64_t src;
	struct inode *dst;
};

static int link_cmp(struct link_node *a, struct link_node *b)
{
	return (a->src < b->src) ? -1 : (a->src > b->src);
}
RB_HEAD(link_map, link_node);
RB_PROTOTYPE(link_map, link_node, e, link_cmp)
RB_GENERATE(link_map, link_node, e, link_cmp)

struct clone_ctx {
	struct fs *fs;
	uint64_t next;		/* next new inode number */
	struct timespec now;
	int override;		/* new owner is uid/gid */
	uint32_t uid, gid;
	struct link_map links;
	uint64_t count;
};

static int clone_one(struct clone_ctx *cc, struct inode *src, uint64_t parent,
		     struct inode **out);

static int clone_children(struct clone_ctx *cc, struct inode *src,
			  struct inode *dst)
{
	struct dirent_node *d;
	int rc;

	RB_FOREACH(d, dir_cookies, &src->cookies) {
		struct inode *child = inode_get(cc->fs, d->ino), *nc;
		if (!child)
			return -EIO;
		if ((rc = clone_one(cc, child, dst->ino, &nc)))
			return rc;
		if ((rc = dir_add(cc->fs, dst, d->name, nc->ino, d->cookie)))
			return rc;
		if (S_ISDIR(nc->mode))
			dst->nlink++;
	}
	return 0;
}

static int clone_one(struct clone_ctx *cc, struct inode *src, uint64_t parent,
		     struct inode **out)
{
	struct fs *fs = cc->fs;
	struct link_node *ln = NULL;
	struct inode *in;
	int rc;

	if (!S_ISDIR(src->mode) && src->nlink > 1) {
		struct link_node key = { .src = src->ino };
		ln = RB_FIND(link_map, &cc->links, &key);
		if (ln) {
			ln->dst->nlink++;
			*out = ln->dst;
			return 0;
		}
	}
	if (inode_get(fs, cc->next))
		return -EEXIST;	/* replay onto a state that does not fit */
	in = inode_new(fs, cc->next++);
	if (!in)
		return -ENOMEM;
	cc->count++;
	in->mode = src->mode;
	in->uid = cc->override ? cc->uid : src->uid;
	in->gid = cc->override ? cc->gid : src->gid;
	if (cc->override)
		in->mode &= ~(uint32_t)(S_ISUID | S_ISGID);
	in->rdev = src->rdev;
	in->size = src->size;
	in->flags = src->flags;
	in->atime = src->atime;
	in->mtime = src->mtime;
	in->ctime = cc->now;
	in->btime = cc->now;
	in->nlink = S_ISDIR(src->mode) ? 2 : 1;
	*out = in;
	for (struct xattr *x = src->xattrs; x; x = x->next)
		if ((rc = xattr_set(in, x->name, x->value, x->len)))
			return rc;
	if (src->target && !(in->target = strdup(src->target)))
		return -ENOMEM;
	if (S_ISREG(src->mode)) {
		if ((rc = extmap_copy(&in->map, &src->map)))
			return rc;
		for (size_t i = 0; i < in->map.n; i++) {
			struct extent *e = &in->map.v[i];
			for (uint64_t b = 0; b < e->len; b++)
				if (refcount_inc(&fs->rc, e->obj, e->pblk + b))
					return -ENOMEM;
		}
		/* invariant (1): the source's write object is shared now */
		if (in->map.n && src->wobj)
			file_retire_wobj_quiet(fs, src);
	}
	if (!S_ISDIR(src->mode) && src->nlink > 1) {
		ln = malloc(sizeof(*ln));
		if (!ln)
			return -ENOMEM;
		ln->src = src->ino;
		ln->dst = in;
		RB_INSERT(link_map, &cc->links, ln);
	}
	if (S_ISDIR(src->mode)) {
		in->parent = parent;
		in->next_cookie = src->next_cookie;
		return clone_children(cc, src, in);
	}
	return 0;
}

/* The clone itself, live or replayed.  fs->lock held. */
static int do_clone(struct fs *fs, const struct rec *r, struct inode **out)
{
	struct inode *src = inode_get(fs, r->u.clone.src_ino);
	struct inode *dir = inode_get(fs, r->u.clone.dst_parent);
	struct clone_ctx cc = { .fs = fs };
	char name[COWFS_NAME_MAX + 1];
	struct inode *top = NULL;
	int rc;

	if (!src || !dir || !S_ISDIR(dir->mode) || r->name_len > COWFS_NAME_MAX)
		return -EINVAL;
	memcpy(name, r->name, r->name_len);
	name[r->name_len] = 0;
	if (dir_find(dir, name))
		return -EEXIST;
	cc.next = r->u.clone.first_ino;
	cc.now.tv_sec = r->u.clone.time_sec;
	cc.now.tv_nsec = r->u.clone.time_nsec;
	cc.override = r->u.clone.flags & 1;
	cc.uid = r->u.clone.uid;
	cc.gid = r->u.clone.gid;
	RB_INIT(&cc.links);

	rc = clone_one(&cc, src, dir->ino, &top);
	if (!rc)
		rc = dir_add(fs, dir, name, top->ino, r->u.clone.cookie);
	if (rc) {
		/* Undo: free what was made (their references go with them). */
		for (uint64_t i = r->u.clone.first_ino; i < cc.next; i++) {
			struct inode *in = inode_get(fs, i);
			if (in)
				inode_free(fs, in);
		}
	} else {
		if (S_ISDIR(top->mode))
			dir->nlink++;
		dir->mtime = dir->ctime = cc.now;
		*out = top;
	}
	struct link_node *ln, *t;
	RB_FOREACH_SAFE(ln, link_map, &cc.links, t) {
		RB_REMOVE(link_map, &cc.links, ln);
		free(ln);
	}
	if (fs->next_ino < cc.next)
		fs->next_ino = cc.next;
	return rc;
}

int clone_apply(struct fs *fs, const struct rec *r)
{
	struct inode *top;
	return do_clone(fs, r, &top);
}

/* Can the caller read everything a clone of in would copy? */
static int may_read_tree(struct fs *fs, const struct fs_ctx *c, struct inode *in)
{
	struct dirent_node *d;
	if (c->uid == 0)
		return 1;
	if (S_ISREG(in->mode) && !inode_may(c, in, 4))
		return 0;
	if (S_ISDIR(in->mode)) {
		if (!inode_may(c, in, 5))
			return 0;
		RB_FOREACH(d, dir_cookies, &in->cookies) {
			struct inode *ch = inode_get(fs, d->ino);
			if (ch && !may_read_tree(fs, c, ch))
				return 0;
		}
	}
	return 1;
}

int fs_clone(struct fs *fs, const struct fs_ctx *c, uint64_t src_ino,
	     uint64_t dst_parent, const char *name, struct stat *st)
{
	struct inode *src, *dir, *top;
	struct rec r;
	int rc = 0;
	size_t n = strlen(name);

	if (fs->opt.ro)
		return -EROFS;
	if (n == 0 || strchr(name, '/') || !strcmp(name, ".") || !strcmp(name, ".."))
		return -EINVAL;
	if (n > COWFS_NAME_MAX)
		return -ENAMETOOLONG;
	pthread_rwlock_wrlock(&fs->data_lock);
	pthread_mutex_lock(&fs->lock);
	src = inode_get(fs, src_ino);
	dir = inode_get(fs, dst_parent);
	if (!src || !dir || src->nlink == 0) {
		rc = -ENOENT;
		goto out;
	}
	if (!S_ISDIR(dir->mode)) {
		rc = -ENOTDIR;
		goto out;
	}
	if (dir->nlink == 0) {
		rc = -ENOENT;
		goto out;
	}
	if (dir_find(dir, name)) {
		rc = -EEXIST;
		goto out;
	}
	if (!inode_may(c, dir, 3) || !may_read_tree(fs, c, src)) {
		rc = -EACCES;
		goto out;
	}
	/* The replayed clone must see the attributes we see now. */
	journal_flush_dirty(fs);
	memset(&r, 0, sizeof(r));
	r.type = REC_CLONE;
	r.u.clone.src_ino = src_ino;
	r.u.clone.dst_parent = dst_parent;
	r.u.clone.first_ino = fs->next_ino;
	r.u.clone.cookie = dir->next_cookie;
	struct timespec now;
	now_ts(&now);
	r.u.clone.time_sec = now.tv_sec;
	r.u.clone.time_nsec = (uint32_t)now.tv_nsec;
	if (c->uid != 0) {
		r.u.clone.flags = 1;
		r.u.clone.uid = c->uid;
		r.u.clone.gid = c->gid;
	}
	r.name = name;
	r.name_len = (uint32_t)n;
	rc = do_clone(fs, &r, &top);
	if (rc)
		goto out;
	rc = journal_log(fs, &r);
	if (rc) {
		fs_log(fs, "error: clone: journal: %s", strerror(-rc));
		fs->broken = 1;
		goto out;
	}
	inode_stat(fs, top, st);
out:
	pthread_mutex_unlock(&fs->lock);
	pthread_rwlock_unlock(&fs->data_lock);
	return rc;
}

/* ---- accounting ---- */

/*
 * Bytes a block really holds on the host: the whole block, except a file's
 * last block, which holds its bytes up to EOF rounded to 4 KiB pages (the
 * rest of the slot is a hole).  tails maps such blocks to bytes + 2.
 */
static void note_tail(struct fs *fs, struct refcount *tails, struct inode *in,
		      int *err)
{
	struct extent e;
	uint64_t tail = in->size & (fs->block_size - 1);

	if (!tail || !extmap_lookup(&in->map, in->size >> fs->block_shift, &e))
		return;
	tail = (tail + 4095) & ~(uint64_t)4095;
	uint32_t prev = refcount_get(tails, e.obj, e.pblk);
	if (prev == 1 || tail + 2 > prev)
		if (refcount_set(tails, e.obj, e.pblk, (uint32_t)tail + 2))
			*err = -ENOMEM;
}

static uint64_t block_bytes(struct fs *fs, struct refcount *tails,
			    uint64_t obj, uint64_t pblk)
{
	uint32_t v = refcount_get(tails, obj, pblk);
	return v == 1 ? fs->block_size : v - 2;
}

struct du_ctx {
	struct fs *fs;
	struct refcount tails;	/* partial last blocks */
	struct refcount local;	/* block -> references inside PATH, plus 1 */
	struct refcount seen;	/* inodes counted (obj = ino, pblk = 0) */
	struct fs_usage *u;
	int err;
};

static void du_walk(struct du_ctx *dc, struct inode *in)
{
	struct fs *fs = dc->fs;

	if (refcount_get(&dc->seen, in->ino, 0) > 1)
		return;	/* a hard link already counted */
	if (refcount_set(&dc->seen, in->ino, 0, 2)) {
		dc->err = -ENOMEM;
		return;
	}
	if (S_ISDIR(in->mode)) {
		struct dirent_node *d;
		dc->u->dirs++;
		RB_FOREACH(d, dir_cookies, &in->cookies) {
			struct inode *ch = inode_get(fs, d->ino);
			if (ch)
				du_walk(dc, ch);
		}
		return;
	}
	if (!S_ISREG(in->mode)) {
		dc->u->other++;
		return;
	}
	dc->u->files++;
	dc->u->logical += in->size;
	note_tail(fs, &dc->tails, in, &dc->err);
	for (size_t i = 0; i < in->map.n; i++) {
		struct extent *e = &in->map.v[i];
		for (uint64_t b = 0; b < e->len; b++) {
			uint32_t v = refcount_get(&dc->local, e->obj, e->pblk + b);
			if (refcount_set(&dc->local, e->obj, e->pblk + b, v + 1))
				dc->err = -ENOMEM;
		}
	}
}

int fs_du(struct fs *fs, uint64_t ino, struct fs_usage *u)
{
	struct du_ctx dc = { .fs = fs, .u = u };
	struct inode *in;
	size_t it = 0;
	uint64_t obj, pblk;
	uint32_t v;

	memset(u, 0, sizeof(*u));
	refcount_init(&dc.local);
	refcount_init(&dc.seen);
	refcount_init(&dc.tails);
	pthread_mutex_lock(&fs->lock);
	u->block_size = fs->block_size;
	in = inode_get(fs, ino);
	if (!in) {
		dc.err = -ENOENT;
		goto out;
	}
	du_walk(&dc, in);
	while (refcount_next(&dc.local, &it, &obj, &pblk, &v)) {
		uint64_t bytes = block_bytes(fs, &dc.tails, obj, pblk);
		if (refcount_get(&fs->rc, obj, pblk) > v - 1)
			u->shared += bytes;
		else
			u->exclusive += bytes;
	}
out:
	pthread_mutex_unlock(&fs->lock);
	refcount_release(&dc.local);
	refcount_release(&dc.seen);
	refcount_release(&dc.tails);
	return dc.err;
}

int fs_df(struct fs *fs, struct fs_usage *u)
{
	struct inode *in;
	struct object *o;
	struct stat st;
	size_t it = 0;
	uint64_t obj, pblk;
	uint32_t v;

	struct refcount tails;
	int err = 0;

	memset(u, 0, sizeof(*u));
	refcount_init(&tails);
	pthread_mutex_lock(&fs->lock);
	u->block_size = fs->block_size;
	RB_FOREACH(in, inode_tree, &fs->inodes) {
		if (S_ISREG(in->mode)) {
			u->files++;
			u->logical += in->size;
			note_tail(fs, &tails, in, &err);
		} else if (S_ISDIR(in->mode)) {
			u->dirs++;
		} else {
			u->other++;
		}
	}
	RB_FOREACH(o, object_tree, &fs->objects) {
		if (o->opath) {	/* read in place from the host: no store space */
			u->origin += o->nlive * fs->block_size;
			continue;
		}
		u->objects++;
		u->exclusive += o->nlive * fs->block_size;
	}
	while (refcount_next(&fs->rc, &it, &obj, &pblk, &v))
		u->shared += block_bytes(fs, &tails, obj, pblk);
	it = 0;
	while (refcount_next(&tails, &it, &obj, &pblk, &v)) {
		o = obj_get(fs, obj);
		uint64_t *sum = o && o->opath ? &u->origin : &u->exclusive;
		*sum -= fs->block_size - (v - 2);
	}
	pthread_mutex_unlock(&fs->lock);
	refcount_release(&tails);
	if (err)
		return err;
	if (fstatat(fs->store.dirfd, STORE_META, &st, 0) == 0)
		u->meta_bytes = (uint64_t)st.st_size;
	return 0;
}
