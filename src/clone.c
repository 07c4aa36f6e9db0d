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
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cowfs/fs_sec.h"

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

struct clone_frame {
	struct inode *src, *dst;
	size_t next;		/* index of the next source entry to clone */
	int shaped;		/* dst has src's entries (dir_clone_shape) */
};

struct clone_ctx {
	struct fs *fs;
	uint64_t next;		/* next new inode number */
	struct timespec now;
	int override;		/* new owner is uid/gid */
	uint32_t uid, gid;
	struct link_map links;
	uint64_t count, limit;
	/* live clones only: copies of files in passthrough mode, which
	 * get their bytes copied once the tree is made (file_pt_unshare) */
	struct inode **pt;
	size_t npt;
};

/* Add one reference to every block of map; on failure, take back the
 * ones added and fail (an undo must never drop a reference it did not
 * add). */
static int ref_map(struct fs *fs, const struct extmap *map)
{
	size_t i;
	uint64_t b = 0;

	for (i = 0; i < extmap_n(map); i++) {
		const struct extent ev = extmap_at(map, i), *e = &ev;
		for (b = 0; b < e->len; b++)
			if (refcount_inc(&fs->rc, e->obj, e->pblk + b))
				goto undo;
	}
	return 0;
undo:
	for (;;) {
		const struct extent ev = extmap_at(map, i), *e = &ev;
		while (b-- > 0)
			refcount_dec(&fs->rc, e->obj, e->pblk + b);
		if (i-- == 0)
			break;
		b = extmap_at(map, i).len;
	}
	return -ENOMEM;
}

/* Copy one inode (not a directory's entries).  A file hard-linked to
 * one already copied gets that copy, with one more link. */
static int clone_node(struct clone_ctx *cc, struct inode *src, uint64_t parent,
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
	if (++cc->count > cc->limit)
		return -EIO;	/* more inodes than the store has: a loop */
	if (inode_get(fs, cc->next))
		return -EEXIST;	/* replay onto a state that does not fit */
	in = inode_new(fs, cc->next++);
	if (!in)
		return -ENOMEM;
	in->mode = src->mode;
	in->uid = cc->override ? cc->uid : src->uid;
	in->gid = cc->override ? cc->gid : src->gid;
	if (cc->override)
		in->mode &= ~(uint32_t)(S_ISUID | S_ISGID);
	inode_set_rdev(in, inode_rdev(src));
	in->size = src->size;
	in->flags = src->flags;
	inode_set_time(in, IT_ATIME, inode_atime(src));
	inode_set_time(in, IT_MTIME, inode_mtime(src));
	inode_touch(in, IT_BIT(IT_CTIME) | IT_BIT(IT_BTIME), &cc->now);
	in->nlink = S_ISDIR(src->mode) ? 2 : 1;
	*out = in;
	for (struct xattr *x = inode_xattrs(src); x; x = x->next) {
		/* a new owner loses file capabilities, as chown(2) takes
		 * them (and setting them needs CAP_SETFCAP) */
		if (cc->override && !strcmp(x->name, "security.capability"))
			continue;
		if ((rc = xattr_set(in, x->name, x->value, x->len)))
			return rc;
	}
	if (inode_target(src) && !(in->target = strdup(src->target)))
		return -ENOMEM;
	if (S_ISREG(src->mode)) {
		struct extmap map;
		extmap_init(&map);
		if ((rc = extmap_copy(&map, &src->map)))
			return rc;
		if ((rc = ref_map(fs, &map))) {
			extmap_release(&map);
			return rc;
		}
		/* the map is in->map only with its references taken */
		extmap_release(&in->map);
		in->map = map;
		/* invariant (1): the source's write object is shared now;
		 * but a file in passthrough mode keeps it and the copy gets
		 * the bytes instead (the same record replayed retires it) */
		if (src->pt) {
			struct inode **v = realloc(cc->pt, (cc->npt + 1) * 2 *
						   sizeof(*v));
			if (!v)
				return -ENOMEM;
			cc->pt = v;
			v[cc->npt * 2] = src;
			v[cc->npt * 2 + 1] = in;
			cc->npt++;
		} else if (extmap_n(&in->map) && src->wobj) {
			file_retire_wobj_quiet(fs, src);
		}
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
		/* src's entries, sharing its names and table; or, if it
		 * has tombstones, room for them (no growing, no slack) */
		if ((rc = inode_make_dir(in, parent)) ||
		    ((rc = dir_clone_shape(in, src)) == 1 &&
		     (rc = dir_prealloc(in, src))))
			return rc;
	}
	return 0;
}

/*
 * Copy src and, for a directory, its tree: depth first, entries in
 * cookie order, so that inode numbers are handed out in the same order
 * at every replay.  Iterative, with the stack on the heap: any depth.
 */
static int clone_tree(struct clone_ctx *cc, struct inode *src, uint64_t parent,
		      struct inode **top)
{
	struct fs *fs = cc->fs;
	struct clone_frame *st = NULL;
	size_t depth = 0, cap = 0;
	int rc;

	if ((rc = clone_node(cc, src, parent, top)) || !S_ISDIR(src->mode))
		return rc;
	for (struct inode *s = src, *d = *top; s;) {
		/* push (s, d) */
		if (depth == cap) {
			size_t ncap = cap ? cap * 2 : 64;
			struct clone_frame *n = realloc(st, ncap * sizeof(*n));
			if (!n) {
				rc = -ENOMEM;
				break;
			}
			st = n;
			cap = ncap;
		}
		st[depth++] = (struct clone_frame){ s, d, 0,
						    dir_nentries(d) != 0 };
		s = NULL;
		/* run until a subdirectory is to be pushed, or the end */
		while (depth && !s && !rc) {
			struct clone_frame *f = &st[depth - 1];
			struct dent *e = dir_next(f->src, &f->next);
			struct inode *child, *nc;
			if (!e) {
				depth--;
				continue;
			}
			f->next++;
			if (!(child = inode_get(fs, e->ino))) {
				rc = -EIO;
				break;
			}
			if ((rc = clone_node(cc, child, f->dst->ino, &nc)))
				break;
			if (f->shaped) {
				/* the same entry at the same index */
				struct dent *de = &f->dst->dir->v[f->next - 1];
				if (de->cookie != e->cookie) {
					rc = -EIO;
					break;
				}
				de->ino = nc->ino;
			} else if ((rc = dir_add(fs, f->dst, dent_name(f->src, e),
						 nc->ino, e->cookie))) {
				break;
			}
			if (S_ISDIR(nc->mode)) {
				f->dst->nlink++;
				s = child;
				d = nc;
			}
		}
		if (rc)
			break;
	}
	free(st);
	return rc;
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

	if (!src || !dir || !S_ISDIR(dir->mode))
		return -EINVAL;
	if ((rc = fs_name_check(r->name, r->name_len)))
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
	cc.limit = fs->ninodes;
	RB_INIT(&cc.links);

	rc = clone_tree(&cc, src, dir->ino, &top);
	for (size_t i = 0; i < cc.npt && !rc; i++)
		rc = file_pt_unshare(fs, cc.pt[2 * i], cc.pt[2 * i + 1]);
	free(cc.pt);
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
		inode_touch(dir, IT_BIT(IT_MTIME) | IT_BIT(IT_CTIME), &cc.now);
		*out = top;
	}
	struct link_node *ln, *t;
	RB_FOREACH_SAFE(ln, link_map, &cc.links, t) {
		RB_REMOVE(link_map, &cc.links, ln);
		free(ln);
	}
	if (!rc && fs->next_ino < cc.next)
		fs->next_ino = cc.next;
	return rc;
}

int clone_apply(struct fs *fs, const struct rec *r)
{
	struct inode *top;
	return do_clone(fs, r, &top);
}

/*
 * Visit top and every inode under it, depth first in cookie order:
 * visit() returns < 0 to stop with that error, 0 to go on (into a
 * directory's entries), 1 to skip a directory's entries.  Iterative, with
 * a heap stack of cursors: any depth.  fs->lock held.
 */
static int tree_walk(struct fs *fs, struct inode *top,
		     int (*visit)(void *ctx, struct inode *in), void *ctx)
{
	struct walk_pos {
		struct inode *dir;
		size_t i;	/* index of the next entry */
	} *st = NULL, cur;
	size_t depth = 0, cap = 0;
	uint64_t seen = 0;
	struct dent *d;
	int rc;

	if ((rc = visit(ctx, top)) != 0 || !S_ISDIR(top->mode))
		return rc < 0 ? rc : 0;
	cur = (struct walk_pos){ top, 0 };
	for (;;) {
		if (!(d = dir_next(cur.dir, &cur.i))) {
			if (depth == 0)
				break;
			cur = st[--depth];
			continue;
		}
		struct inode *ch = inode_get(fs, d->ino);
		cur.i++;
		if (!ch || ++seen > fs->ninodes) {
			rc = -EIO;	/* a dangling entry, or a loop */
			break;
		}
		if ((rc = visit(ctx, ch)) < 0)
			break;
		if (rc == 1 || !S_ISDIR(ch->mode) || dir_nentries(ch) == 0)
			continue;
		if (depth == cap) {
			size_t ncap = cap ? cap * 2 : 64;
			struct walk_pos *n = realloc(st, ncap * sizeof(*n));
			if (!n) {
				rc = -ENOMEM;
				break;
			}
			st = n;
			cap = ncap;
		}
		st[depth++] = cur;	/* where to go on in this directory */
		cur = (struct walk_pos){ ch, 0 };
	}
	free(st);
	return rc < 0 ? rc : 0;
}

struct may_ctx {
	const struct fs_ctx *c;
	int files;		/* read on regular files too */
};

static int may_visit(void *ctx, struct inode *in)
{
	struct may_ctx *m = ctx;

	/* a copy of a device node would be the caller's: mknod(2) of a
	 * device needs CAP_MKNOD (the whiteout 0:0 does not) */
	if (m->files && inode_rdev(in))
		return -EPERM;
	if (S_ISDIR(in->mode))
		return inode_may(m->c, in, MAY_R | MAY_X) ? 0 : -EACCES;
	if (m->files && S_ISREG(in->mode) && !inode_may(m->c, in, MAY_R))
		return -EACCES;
	return 0;
}

/* May the caller list every directory under in (read and search), and
 * read every regular file (files)?  0 or -EACCES; with files, -EPERM for
 * a device node (a non-root caller).  fs->lock held. */
static int may_read_tree(struct fs *fs, const struct fs_ctx *c,
			 struct inode *in, int files)
{
	struct may_ctx m = { c, files };

	if (c->uid == 0)
		return 0;
	return tree_walk(fs, in, may_visit, &m);
}

/* fs->lock held.  The checks of a clone request; 0 or -errno. */
static int clone_check(struct fs *fs, const struct fs_ctx *c,
		       struct inode *src, struct inode *dir, const char *name)
{
	int rc;

	if (!src || !dir || src->nlink == 0)
		return -ENOENT;
	if ((rc = fs_may_create_in(fs, c, dir, name)))
		return rc;
	return may_read_tree(fs, c, src, 1);
}

/* fs->lock and data_lock (exclusive) held. */
static int clone_locked(struct fs *fs, const struct fs_ctx *c,
			struct inode *src, struct inode *dir, const char *name,
			struct stat *st)
{
	struct inode *top;
	struct jmark m;
	struct rec r;
	int rc;

	/* The replayed clone must see the attributes we see now. */
	journal_flush_dirty(fs);
	memset(&r, 0, sizeof(r));
	r.type = REC_CLONE;
	r.u.clone.src_ino = src->ino;
	r.u.clone.dst_parent = dir->ino;
	r.u.clone.first_ino = fs->next_ino;
	r.u.clone.cookie = dir->dir->next_cookie;
	struct timespec now;
	now_ts(&now);
	r.u.clone.time_sec = now.tv_sec;
	r.u.clone.time_nsec = (uint32_t)now.tv_nsec;
	if (c->uid != 0) {
		r.u.clone.flags = 1;
		r.u.clone.uid = c->uid;
		/* a setgid directory gives new entries its group */
		r.u.clone.gid = dir->mode & S_ISGID ? dir->gid : c->gid;
	}
	r.name = name;
	r.name_len = (uint32_t)strlen(name);
	/* Logged first: a clone that cannot be logged is not made. */
	jmark_save(fs, &m);
	if ((rc = journal_log(fs, &r)))
		return rc;
	if ((rc = do_clone(fs, &r, &top))) {
		jmark_restore(fs, &m);
		return rc;
	}
	inode_stat(fs, top, st);
	return 0;
}

int fs_clone(struct fs *fs, const struct fs_ctx *c, uint64_t src_ino,
	     uint64_t dst_parent, const char *name, struct stat *st)
{
	struct inode *src, *dir;
	int rc;

	if (fs->opt.ro)
		return -EROFS;
	if ((rc = fs_name_check(name, strlen(name))))
		return rc;
	lock_take(fs, LOCK_DATA);
	file_pt_sync_all(fs);	/* what the kernel wrote, mapped */
	lock_take(fs, LOCK_FS);
	src = inode_get(fs, src_ino);
	dir = inode_get(fs, dst_parent);
	if (!(rc = clone_check(fs, c, src, dir, name)))
		rc = clone_locked(fs, c, src, dir, name, st);
	lock_drop(fs, LOCK_FS);
	lock_drop(fs, LOCK_DATA);
	return rc;
}

int fs_clone_at(struct fs *fs, const struct fs_ctx *c, uint64_t src_parent,
		const char *src_name, uint64_t src_ino, uint64_t dst_parent,
		const char *name, struct stat *st)
{
	struct inode *src = NULL, *sdir, *dir;
	struct dent *d;
	int rc;

	if (fs->opt.ro)
		return -EROFS;
	if ((rc = fs_name_check(name, strlen(name))))
		return rc;
	if (src_parent == 0 && (*src_name || src_ino != FS_ROOT_INO))
		return -EINVAL;
	if (src_parent && (rc = fs_name_check(src_name, strlen(src_name))))
		return rc;
	lock_take(fs, LOCK_DATA);
	file_pt_sync_all(fs);	/* what the kernel wrote, mapped */
	lock_take(fs, LOCK_FS);
	dir = inode_get(fs, dst_parent);
	if (src_parent == 0) {
		/* the root: reached by anyone who reaches the mount */
		src = inode_get(fs, FS_ROOT_INO);
		sdir = src;
	} else {
		/* SRC must be what src_parent names src_name now, and
		 * src_parent reachable from the root by the caller */
		sdir = inode_get(fs, src_parent);
		if (!sdir) {
			rc = -ENOENT;
			goto out;
		}
		if (!S_ISDIR(sdir->mode)) {
			rc = -ENOTDIR;
			goto out;
		}
		/* search permission before the name is looked up: no
		 * probing of names in a directory the caller may not search */
		if ((rc = fs_may_reach(fs, c, sdir)))
			goto out;
		d = dir_find(sdir, src_name);
		if (!d || d->ino != src_ino) {
			rc = -ENOENT;
			goto out;
		}
		src = inode_get(fs, src_ino);
	}
	if (src == sdir && (rc = fs_may_reach(fs, c, sdir)))
		goto out;	/* the root */
	if (!(rc = clone_check(fs, c, src, dir, name)))
		rc = clone_locked(fs, c, src, dir, name, st);
out:
	lock_drop(fs, LOCK_FS);
	lock_drop(fs, LOCK_DATA);
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
	const struct fs_ctx *c;
	struct refcount tails;	/* partial last blocks */
	struct refcount local;	/* block -> references inside PATH, plus 1 */
	struct refcount seen;	/* inodes counted (obj = ino, pblk = 0) */
	struct fs_usage *u;
};

static int du_visit(void *ctx, struct inode *in)
{
	struct du_ctx *dc = ctx;
	struct fs *fs = dc->fs;
	int err = 0;

	if (refcount_get(&dc->seen, in->ino, 0) > 1)
		return 1;	/* a hard link already counted */
	if (refcount_set(&dc->seen, in->ino, 0, 2))
		return -ENOMEM;
	if (S_ISDIR(in->mode)) {
		/* what du(1) would list: read and search on each directory */
		if (dc->c->uid && !inode_may(dc->c, in, MAY_R | MAY_X))
			return -EACCES;
		dc->u->dirs++;
		return 0;
	}
	if (!S_ISREG(in->mode)) {
		dc->u->other++;
		return 0;
	}
	dc->u->files++;
	dc->u->logical += in->size;
	note_tail(fs, &dc->tails, in, &err);
	for (size_t i = 0; i < extmap_n(&in->map) && !err; i++) {
		const struct extent ev = extmap_at(&in->map, i), *e = &ev;
		for (uint64_t b = 0; b < e->len; b++) {
			uint32_t v = refcount_get(&dc->local, e->obj, e->pblk + b);
			if (refcount_set(&dc->local, e->obj, e->pblk + b, v + 1))
				err = -ENOMEM;
		}
	}
	return err;
}

/*
 * Host bytes: what the store's object files really take on the host,
 * st_blocks * 512, which holes (never written parts of slots, punched
 * blocks) keep below the block figures, and leaked or partly written
 * slots above them.  The ids are collected under fs->lock and the files
 * statted after it is dropped; an object unlinked meanwhile counts 0.
 */
struct host_obj {
	uint64_t id;
	uint64_t k;	/* du: blocks of it that PATH references */
	uint64_t nlive;	/* its referenced blocks (at collection) */
};

struct host_objs {
	struct host_obj *v;
	size_t n, cap;
};

/* fs->lock held. */
static int host_add(struct host_objs *h, uint64_t id, uint64_t k,
		    uint64_t nlive)
{
	if (h->n == h->cap) {
		size_t cap = h->cap ? h->cap * 2 : 256;
		struct host_obj *v = realloc(h->v, cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		h->v = v;
		h->cap = cap;
	}
	h->v[h->n++] = (struct host_obj){ id, k, nlive };
	return 0;
}

/* st_blocks * 512 of object id, or 0 when it is gone.  Without fs->lock. */
static uint64_t host_bytes_of(struct fs *fs, uint64_t id)
{
	char name[40];
	struct stat st;

	LOCK_ASSERT_UNLOCKED_FS();
	snprintf(name, sizeof(name), "%02x/%016" PRIx64,
		 (unsigned)(id & 0xff), id);
	if (fstatat(fs->store.objfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return 0;
	return (uint64_t)st.st_blocks * 512;
}

/*
 * du: each object's host bytes spread evenly over its referenced blocks,
 * times the blocks PATH references in it.  An object that PATH alone uses
 * counts whole; a block PATH shares with outside counts in full, as it
 * does in shared + exclusive, so host can be read beside that sum.
 */
static uint64_t host_share(struct fs *fs, const struct host_objs *h)
{
	uint64_t sum = 0;

	for (size_t i = 0; i < h->n; i++) {
		const struct host_obj *x = &h->v[i];
		uint64_t b = host_bytes_of(fs, x->id);
		if (x->k >= x->nlive)
			sum += b;
		else
			sum += (uint64_t)((unsigned __int128)b * x->k / x->nlive);
	}
	return sum;
}

/* du: the store objects PATH's blocks (the keys of local) live in, with
 * how many of their blocks PATH references.  fs->lock held. */
static int du_host_objs(struct fs *fs, const struct refcount *local,
			struct host_objs *h)
{
	struct refcount per;	/* (obj, 0) -> blocks in PATH, plus 1 */
	size_t it = 0;
	uint64_t obj, pblk;
	uint32_t v;
	int rc = 0;

	refcount_init(&per);
	while (!rc && refcount_next(local, &it, &obj, &pblk, &v)) {
		struct object *o = obj_get(fs, obj);
		if (!o || o->origin)	/* origins are host files, not the store's */
			continue;
		rc = refcount_set(&per, obj, 0, refcount_get(&per, obj, 0) + 1);
	}
	it = 0;
	while (!rc && refcount_next(&per, &it, &obj, &pblk, &v)) {
		struct object *o = obj_get(fs, obj);
		rc = host_add(h, obj, v - 1, o ? o->nlive : 0);
	}
	refcount_release(&per);
	return rc;
}

int fs_du(struct fs *fs, const struct fs_ctx *c, uint64_t ino,
	  struct fs_usage *u)
{
	struct du_ctx dc = { .fs = fs, .c = c, .u = u };
	struct host_objs h = { 0 };
	struct inode *in;
	size_t it = 0;
	uint64_t obj, pblk;
	uint32_t v;
	int rc;

	memset(u, 0, sizeof(*u));
	refcount_init(&dc.local);
	refcount_init(&dc.seen);
	refcount_init(&dc.tails);
	if (fs->npt) {	/* a racy peek: a file may be entering the mode */
		lock_take(fs, LOCK_DATA);
		file_pt_sync_all(fs);	/* what the kernel wrote, counted */
		lock_drop(fs, LOCK_DATA);
	}
	lock_take(fs, LOCK_FS);
	u->block_size = fs->block_size;
	in = inode_get(fs, ino);
	if (!in) {
		rc = -ENOENT;
		goto out;
	}
	/* A directory is measured only by whom could walk to it; a file
	 * was opened by the caller, which the kernel checked. */
	if (S_ISDIR(in->mode) && (rc = fs_may_reach(fs, c, in)))
		goto out;
	if ((rc = tree_walk(fs, in, du_visit, &dc)))
		goto out;
	while (refcount_next(&dc.local, &it, &obj, &pblk, &v)) {
		uint64_t bytes = block_bytes(fs, &dc.tails, obj, pblk);
		if (refcount_get(&fs->rc, obj, pblk) > v - 1)
			u->shared += bytes;
		else
			u->exclusive += bytes;
	}
	rc = du_host_objs(fs, &dc.local, &h);
out:
	lock_drop(fs, LOCK_FS);
	refcount_release(&dc.local);
	refcount_release(&dc.seen);
	refcount_release(&dc.tails);
	if (!rc)
		u->host = host_share(fs, &h);
	free(h.v);
	if (rc)
		memset(u, 0, sizeof(*u));
	return rc;
}

int fs_df(struct fs *fs, struct fs_usage *u)
{
	struct inode *in;
	struct object *o;
	struct stat st;
	struct host_objs h = { 0 };
	size_t it = 0;
	uint64_t obj, pblk;
	uint32_t v;

	struct refcount tails;
	int err = 0;

	memset(u, 0, sizeof(*u));
	refcount_init(&tails);
	if (fs->npt) {	/* a racy peek, as in fs_du */
		lock_take(fs, LOCK_DATA);
		file_pt_sync_all(fs);
		lock_drop(fs, LOCK_DATA);
	}
	lock_take(fs, LOCK_FS);
	u->block_size = fs->block_size;
	INODE_FOREACH(in, fs) {
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
	for (size_t it_ = 0; (o = obj_next(fs, &it_));) {
		if (o->origin) {	/* read in place from the host: no store space */
			u->origin += o->nlive * fs->block_size;
			continue;
		}
		u->objects++;
		u->exclusive += o->nlive * fs->block_size;
		if (!err)
			err = host_add(&h, o->id, 0, 0);
	}
	while (refcount_next(&fs->rc, &it, &obj, &pblk, &v))
		u->shared += block_bytes(fs, &tails, obj, pblk);
	it = 0;
	while (refcount_next(&tails, &it, &obj, &pblk, &v)) {
		o = obj_get(fs, obj);
		uint64_t *sum = o && o->origin ? &u->origin : &u->exclusive;
		*sum -= fs->block_size - (v - 2);
	}
	lock_drop(fs, LOCK_FS);
	refcount_release(&tails);
	/* every object file, retired ones not yet unlinked included */
	for (size_t i = 0; !err && i < h.n; i++)
		u->host += host_bytes_of(fs, h.v[i].id);
	free(h.v);
	if (err)
		return err;
	if (fstatat(fs->store.dirfd, STORE_META, &st, 0) == 0)
		u->meta_bytes = (uint64_t)st.st_size;
	return 0;
}
