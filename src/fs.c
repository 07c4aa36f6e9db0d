/*
 * fs.c - the namespace: the inode table, directories, symlinks, hard links,
 * attributes and extended attributes, and the records that change them.
 * File data lives in file.c, the metadata file in journal.c.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "cowfs/fs_sec.h"

#ifndef RENAME_NOREPLACE
#define RENAME_NOREPLACE (1 << 0)
#endif
#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE (1 << 1)
#endif

/* Free an inode and everything it holds (its blocks' references too). */
void inode_free(struct fs *fs, struct inode *in)
{
	if (S_ISREG(in->mode)) {
		file_map_punch(fs, in, 0, UINT64_MAX);
		file_retire_wobj(fs, in);
	}
	inode_undirty(fs, in);	/* last: retiring marks the inode dirty */
	dir_free(in);
	if (S_ISREG(in->mode))
		extmap_release(&in->map);
	else if (S_ISLNK(in->mode))
		free(in->target);
	inode_delete(fs, in);
}

/* An unlinked inode goes when the kernel forgets it and no handle is open. */
void inode_maybe_free(struct fs *fs, struct inode *in)
{
	if (in->nlink || in->nlookup || in->nopen || in->ino == FS_ROOT_INO)
		return;
	struct rec r = { .type = REC_INODE_DEL };
	r.u.del.ino = in->ino;
	/* Not logged (out of memory): keep it.  An inode without links is
	 * an orphan that the next mount frees. */
	if (journal_log(fs, &r) == 0)
		inode_free(fs, in);
}

#define ACL_USER_OBJ 0x01
#define ACL_USER 0x02
#define ACL_GROUP_OBJ 0x04
#define ACL_GROUP 0x08
#define ACL_MASK 0x10
#define ACL_OTHER 0x20

/* Might the caller be in groups that c does not list? */
static int groups_unknown(const struct fs_ctx *c)
{
	return c->ngroups < 0 || c->groups_cut;
}

static int in_group(const struct fs_ctx *c, uint32_t gid)
{
	if (c->gid == gid)
		return 1;
	for (int i = 0; i < c->ngroups && i < FS_CTX_GROUPS; i++)
		if (c->groups[i] == gid)
			return 1;
	return 0;
}

/*
 * posix_acl_permission() of the kernel: the entry that applies to the
 * caller (owner, named user, then any matching group entry that grants
 * want, then other), limited by the mask for named users and groups.
 * Returns 1 when the ACL grants want, 0 when not, -1 when it is
 * malformed (the mode bits decide then).
 */
static int acl_permits(const struct fs_ctx *c, const struct inode *in,
		       const unsigned char *p, size_t size, unsigned want)
{
	unsigned mask = 7, found_group = 0, user = 8, group_ok = 0, other = 0;
	unsigned group_all = 7;	/* what every group entry grants */
	int has_mask = 0;

	if (size < 4 || (size - 4) % 8 || (p[0] | p[1] << 8) != 2)
		return -1;
	for (size_t i = 4; i < size; i += 8) {
		unsigned tag = (unsigned)(p[i] | p[i + 1] << 8);
		unsigned perm = (unsigned)(p[i + 2] | p[i + 3] << 8) & 7;
		uint32_t id = (uint32_t)p[i + 4] | (uint32_t)p[i + 5] << 8 |
			      (uint32_t)p[i + 6] << 16 | (uint32_t)p[i + 7] << 24;
		switch (tag) {
		case ACL_USER_OBJ:
			if (c->uid == in->uid)
				return (perm & want) == want;
			break;
		case ACL_USER:
			if (c->uid == id && user == 8)
				user = perm;
			break;
		case ACL_GROUP_OBJ:
			id = in->gid;
			__attribute__((fallthrough));
		case ACL_GROUP:
			group_all &= perm;
			if (in_group(c, id)) {
				found_group = 1;
				if ((perm & want) == want)
					group_ok = 1;
			}
			break;
		case ACL_MASK:
			mask = perm;
			has_mask = 1;
			break;
		case ACL_OTHER:
			other = perm;
			break;
		default:
			return -1;
		}
	}
	if (user != 8)
		return (user & mask & want) == want;
	if (found_group)
		return group_ok && ((has_mask ? mask : 7) & want) == want;
	/* a group we do not know of might match an entry that denies */
	if (groups_unknown(c) &&
	    (group_all & (has_mask ? mask : 7) & want) != want)
		return 0;
	return (other & want) == want;
}

/* May the caller have the permission bits want (MAY_R|MAY_W|MAY_X) on
 * in?  As the kernel's generic_permission() with default_permissions:
 * root may read, write and search anything; others get the access ACL
 * if the inode has one, else owner, group (primary and supplementary)
 * or other bits.  A caller whose groups are not all known gets the other
 * bits only where the group bits grant them too (it could be in the
 * file's group, which the kernel would deny). */
int inode_may(const struct fs_ctx *c, const struct inode *in, unsigned want)
{
	unsigned bits;
	struct xattr *acl;

	if (c->uid == 0)
		return 1;
	acl = *xattr_find((struct inode *)in, "system.posix_acl_access");
	if (acl) {
		int ok = acl_permits(c, in, acl->value, acl->len, want);
		if (ok >= 0)
			return ok;
	}
	if (c->uid == in->uid)
		bits = (in->mode >> 6) & 7;
	else if (in_group(c, in->gid))
		bits = (in->mode >> 3) & 7;
	else if (groups_unknown(c))	/* in the file's group, maybe */
		bits = in->mode & (in->mode >> 3) & 7;
	else
		bits = in->mode & 7;
	return (bits & want) == want;
}

int fs_may_reach(struct fs *fs, const struct fs_ctx *c, struct inode *dir)
{
	uint64_t steps = 0;

	if (!S_ISDIR(dir->mode))
		return -ENOTDIR;
	for (struct inode *x = dir;; x = inode_get(fs, dir_parent(x))) {
		if (!x || !S_ISDIR(x->mode) || x->nlink == 0)
			return -ENOENT;
		if (!inode_may(c, x, MAY_X))
			return -EACCES;
		if (x->ino == FS_ROOT_INO)
			return 0;
		if (++steps > fs->ninodes)
			return -EIO;	/* a loop of parent pointers */
	}
}

int fs_may_create_in(struct fs *fs, const struct fs_ctx *c, struct inode *dir,
		     const char *name)
{
	int rc;

	if (!dir)
		return -ENOENT;
	if (!S_ISDIR(dir->mode))
		return -ENOTDIR;
	if (dir->nlink == 0)
		return -ENOENT;
	/* permissions first: what a directory holds is no answer to whom
	 * may not search it */
	if ((rc = fs_may_reach(fs, c, dir)))
		return rc;
	if (!inode_may(c, dir, MAY_W | MAY_X))
		return -EACCES;
	if (name && dir_find(dir, name))
		return -EEXIST;
	return 0;
}

/* ---- operations ---- */

static int check_name(const char *name)
{
	return fs_name_check(name, strlen(name));
}

static struct inode *get_dir(struct fs *fs, uint64_t ino, int *rc)
{
	struct inode *d = inode_get(fs, ino);
	if (!d)
		*rc = -ENOENT;
	else if (!S_ISDIR(d->mode)) {
		*rc = -ENOTDIR;
		d = NULL;
	}
	return d;
}

static void touch_mc(struct inode *in)
{
	inode_touch(in, IT_BIT(IT_MTIME) | IT_BIT(IT_CTIME), NULL);
}

int fs_lookup(struct fs *fs, uint64_t parent, const char *name, struct stat *st)
{
	int rc = 0;
	struct inode *dir, *in = NULL;

	lock_take(fs, LOCK_FS);
	dir = get_dir(fs, parent, &rc);
	if (!dir)
		goto out;
	if (!strcmp(name, ".")) {
		in = dir;
	} else if (!strcmp(name, "..")) {
		in = inode_get(fs, dir_parent(dir) ? dir_parent(dir) : FS_ROOT_INO);
	} else if (strlen(name) > COWFS_NAME_MAX) {
		rc = -ENAMETOOLONG;
		goto out;
	} else {
		struct dent *d = dir_find(dir, name);
		if (d)
			in = inode_get(fs, d->ino);
	}
	if (!in) {
		rc = -ENOENT;
		goto out;
	}
	inode_lookup_ref(in);
	inode_stat(fs, in, st);
out:
	lock_drop(fs, LOCK_FS);
	return rc;
}

void fs_forget(struct fs *fs, uint64_t ino, uint64_t nlookup)
{
	lock_take(fs, LOCK_FS);
	struct inode *in = inode_get(fs, ino);
	if (in) {
		inode_lookup_unref(in, nlookup);
		inode_maybe_free(fs, in);
	}
	lock_drop(fs, LOCK_FS);
}

int fs_getattr(struct fs *fs, uint64_t ino, struct stat *st)
{
	int rc = 0;
	lock_take(fs, LOCK_FS);
	struct inode *in = inode_get(fs, ino);
	if (in)
		inode_stat(fs, in, st);
	else
		rc = -ENOENT;
	lock_drop(fs, LOCK_FS);
	return rc;
}

int fs_mode(struct fs *fs, uint64_t ino, uint32_t *mode)
{
	int rc = 0;
	lock_take(fs, LOCK_FS);
	struct inode *in = inode_get(fs, ino);
	if (in)
		*mode = in->mode;
	else
		rc = -ENOENT;
	lock_drop(fs, LOCK_FS);
	return rc;
}

static int acl_chmod(struct fs *fs, struct inode *in, uint32_t mode);

int fs_setattr(struct fs *fs, const struct fs_ctx *c, uint64_t ino,
	       const struct stat *a, int to_set, struct stat *st)
{
	struct inode *in;
	int rc = 0;

	(void)c;
	if (fs->opt.ro)
		return -EROFS;
	if (to_set & FS_SET_SIZE) {
		lock_take_shared(fs);
		lock_take(fs, LOCK_FS);
		in = inode_get(fs, ino);
		if (!in || !S_ISREG(in->mode)) {
			rc = !in ? -ENOENT : S_ISDIR(in->mode) ? -EISDIR : -EINVAL;
			lock_drop(fs, LOCK_FS);
			lock_drop(fs, LOCK_DATA);
			return rc;
		}
		lock_drop(fs, LOCK_FS);
		lock_io_take(in);
		lock_take(fs, LOCK_FS);
		rc = file_truncate(fs, in, (uint64_t)a->st_size);
		if (!rc)
			touch_mc(in);
		lock_drop(fs, LOCK_FS);
		lock_io_drop(in);
		lock_drop(fs, LOCK_DATA);
		if (rc)
			return rc;
	}
	lock_take(fs, LOCK_FS);
	in = inode_get(fs, ino);
	if (!in) {
		rc = -ENOENT;
		goto out;
	}
	if (to_set & FS_SET_MODE) {
		uint32_t mode = (in->mode & S_IFMT) | (a->st_mode & 07777);
		if ((rc = acl_chmod(fs, in, mode)))
			goto out;
		in->mode = mode;
	}
	if (to_set & FS_SET_UID)
		in->uid = a->st_uid;
	if (to_set & FS_SET_GID)
		in->gid = a->st_gid;
	if ((to_set & FS_SET_KILL_SUIDGID) && !S_ISDIR(in->mode)) {
		in->mode &= ~(uint32_t)S_ISUID;
		if (in->mode & S_IXGRP)
			in->mode &= ~(uint32_t)S_ISGID;
	}
	if (to_set & FS_SET_ATIME_NOW)
		inode_touch(in, IT_BIT(IT_ATIME), NULL);
	else if (to_set & FS_SET_ATIME)
		inode_set_time(in, IT_ATIME, a->st_atim);
	if (to_set & FS_SET_MTIME_NOW)
		inode_touch(in, IT_BIT(IT_MTIME), NULL);
	else if (to_set & FS_SET_MTIME)
		inode_set_time(in, IT_MTIME, a->st_mtim);
	if (to_set & FS_SET_CTIME)
		inode_set_time(in, IT_CTIME, a->st_ctim);	/* the kernel's */
	else
		inode_touch(in, IT_BIT(IT_CTIME), NULL);
	inode_dirty(fs, in);
	inode_stat(fs, in, st);
out:
	lock_drop(fs, LOCK_FS);
	return rc;
}

static int inherit_acl(struct fs *fs, struct inode *dir, struct inode *in);
static int log_xattr(struct fs *fs, struct inode *in, const char *name,
		     const void *v, size_t size, int del);
static int log_dirent(struct fs *fs, int type, struct inode *dir,
		      const char *name, uint64_t ino, uint64_t cookie);

/* Make a new inode in dir under name; ino and attributes per the caller.
 * A NULL name makes an O_TMPFILE inode: no entry, no link, linkable (the
 * next mount frees it as an orphan unless fs_link() names it first).
 * Called with fs->lock held. */
static int make_node(struct fs *fs, const struct fs_ctx *c, struct inode *dir,
		     const char *name, mode_t mode, dev_t rdev,
		     const char *target, struct inode **out)
{
	struct inode *in;
	uint64_t cookie;
	struct jmark m;
	struct rec r;
	int rc;

	if (name && (rc = check_name(name)))
		return rc;
	if (dir->nlink == 0)
		return -ENOENT;
	if (name && dir_find(dir, name))
		return -EEXIST;
	/* With a default ACL the ACL decides, not the umask (POSIX.1e). */
	if (!S_ISLNK(mode) && !*xattr_find(dir, "system.posix_acl_default"))
		mode &= ~(c->umask & 0777);
	in = inode_new(fs, fs->next_ino);
	if (!in)
		return -ENOMEM;
	in->mode = mode;
	in->uid = c->uid;
	in->gid = c->gid;
	if (dir->mode & S_ISGID) {
		in->gid = dir->gid;
		if (S_ISDIR(mode))
			in->mode |= S_ISGID;
		else if ((mode & S_ISGID) && c->uid && c->gid != in->gid)
			in->mode &= ~(uint32_t)S_ISGID;	/* as inode_init_owner() */
	}
	inode_set_rdev(in, rdev);
	in->nlink = !name ? 0 : S_ISDIR(mode) ? 2 : 1;
	in->linkable = !name;
	inode_touch(in, IT_BIT(IT_N) - 1, NULL);
	if ((S_ISDIR(mode) && inode_make_dir(in, dir->ino)) ||
	    (target && !(in->target = strdup(target)))) {
		inode_free(fs, in);
		return -ENOMEM;
	}
	/* Inherit the default ACL before logging: the record carries the
	 * mode it makes. */
	if ((rc = inherit_acl(fs, dir, in))) {
		inode_free(fs, in);
		return rc;
	}
	cookie = dir->dir->next_cookie;
	if (name && (rc = dir_reserve(dir, strlen(name)))) {
		inode_free(fs, in);
		return rc;
	}
	jmark_save(fs, &m);
	inode_to_rec(in, &r);
	rc = journal_log(fs, &r);
	for (struct xattr *x = inode_xattrs(in); x && !rc; x = x->next)
		rc = log_xattr(fs, in, x->name, x->value, x->len, 0);
	if (!rc && name) {
		rc = log_dirent(fs, REC_DIRENT_ADD, dir, name, in->ino, cookie);
		if (!rc)
			rc = dir_add(fs, dir, name, in->ino, cookie);
	}
	if (rc) {
		jmark_restore(fs, &m);
		inode_undirty(fs, in);
		inode_free(fs, in);
		return rc;
	}
	inode_undirty(fs, in);	/* its record is the one just logged */
	if (S_ISDIR(mode))
		dir->nlink++;
	if (name) {	/* an O_TMPFILE leaves its directory as it was */
		touch_mc(dir);
		inode_dirty(fs, dir);
	}
	inode_lookup_ref(in);
	*out = in;
	return 0;
}


int fs_mknod(struct fs *fs, const struct fs_ctx *c, uint64_t parent,
	     const char *name, mode_t mode, dev_t rdev, struct stat *st)
{
	int rc = 0;
	struct inode *dir, *in;

	if (fs->opt.ro)
		return -EROFS;
	if (!S_ISREG(mode) && !S_ISDIR(mode) && !S_ISFIFO(mode) &&
	    !S_ISSOCK(mode) && !S_ISCHR(mode) && !S_ISBLK(mode))
		return -EINVAL;
	lock_take(fs, LOCK_FS);
	dir = get_dir(fs, parent, &rc);
	if (!dir)
		goto out;
	rc = make_node(fs, c, dir, name, mode, S_ISCHR(mode) || S_ISBLK(mode) ? rdev : 0,
		       NULL, &in);
	if (rc)
		goto out;
	inode_stat(fs, in, st);
out:
	lock_drop(fs, LOCK_FS);
	return rc;
}

int fs_tmpfile(struct fs *fs, const struct fs_ctx *c, uint64_t parent,
	       mode_t mode, struct stat *st)
{
	int rc = 0;
	struct inode *dir, *in;

	if (fs->opt.ro)
		return -EROFS;
	if (!S_ISREG(mode))
		return -EINVAL;
	lock_take(fs, LOCK_FS);
	dir = get_dir(fs, parent, &rc);
	if (!dir)
		goto out;
	rc = make_node(fs, c, dir, NULL, mode, 0, NULL, &in);
	if (!rc)
		inode_stat(fs, in, st);
out:
	lock_drop(fs, LOCK_FS);
	return rc;
}

int fs_symlink(struct fs *fs, const struct fs_ctx *c, uint64_t parent,
	       const char *name, const char *target, struct stat *st)
{
	int rc = 0;
	struct inode *dir, *in;

	if (fs->opt.ro)
		return -EROFS;
	if (strlen(target) >= 4096)
		return -ENAMETOOLONG;
	lock_take(fs, LOCK_FS);
	dir = get_dir(fs, parent, &rc);
	if (!dir)
		goto out;
	rc = make_node(fs, c, dir, name, S_IFLNK | 0777, 0, target, &in);
	if (!rc)
		inode_stat(fs, in, st);
out:
	lock_drop(fs, LOCK_FS);
	return rc;
}

int fs_readlink(struct fs *fs, uint64_t ino, char *buf, size_t size)
{
	int rc;
	lock_take(fs, LOCK_FS);
	struct inode *in = inode_get(fs, ino);
	if (!in)
		rc = -ENOENT;
	else if (!inode_target(in))
		rc = -EINVAL;
	else {
		rc = (int)strlcpy(buf, in->target, size);
	}
	lock_drop(fs, LOCK_FS);
	return rc;
}

static int log_dirent(struct fs *fs, int type, struct inode *dir,
		      const char *name, uint64_t ino, uint64_t cookie)
{
	struct rec r = { .type = (uint16_t)type, .name = name,
			 .name_len = (uint32_t)strlen(name) };
	r.u.dirent.parent = dir->ino;
	r.u.dirent.ino = ino;
	r.u.dirent.cookie = cookie;
	return journal_log(fs, &r);
}

/* Drop one link of in (its dirent already removed). */
static void drop_link(struct fs *fs, struct inode *in)
{
	if (S_ISDIR(in->mode))
		in->nlink = 0;
	else if (in->nlink)
		in->nlink--;
	inode_touch(in, IT_BIT(IT_CTIME), NULL);
	inode_dirty(fs, in);
	inode_maybe_free(fs, in);
}

static int do_remove(struct fs *fs, uint64_t parent, const char *name,
		     int isdir, uint64_t *kept)
{
	int rc = 0;
	struct inode *dir, *in;
	struct dent *d;

	if (kept)
		*kept = 0;
	if (fs->opt.ro)
		return -EROFS;
	lock_take(fs, LOCK_FS);
	dir = get_dir(fs, parent, &rc);
	if (!dir)
		goto out;
	d = dir_find(dir, name);
	if (!d) {
		rc = -ENOENT;
		goto out;
	}
	in = inode_get(fs, d->ino);
	if (!in) {
		rc = -EIO;
		goto out;
	}
	if (isdir && !S_ISDIR(in->mode)) {
		rc = -ENOTDIR;
		goto out;
	}
	if (!isdir && S_ISDIR(in->mode)) {
		rc = -EISDIR;
		goto out;
	}
	if (isdir && dir_nentries(in)) {
		rc = -ENOTEMPTY;
		goto out;
	}
	if ((rc = log_dirent(fs, REC_DIRENT_DEL, dir, name, in->ino, d->cookie)))
		goto out;
	dir_del(fs, dir, d);
	if (isdir)
		dir->nlink--;
	touch_mc(dir);
	inode_dirty(fs, dir);
	if (kept && !isdir && in->nlink > 1)
		*kept = in->ino;
	drop_link(fs, in);
out:
	lock_drop(fs, LOCK_FS);
	return rc;
}

int fs_unlink(struct fs *fs, uint64_t parent, const char *name,
	      uint64_t *kept)
{
	return do_remove(fs, parent, name, 0, kept);
}

int fs_rmdir(struct fs *fs, uint64_t parent, const char *name)
{
	return do_remove(fs, parent, name, 1, NULL);
}

/* Is a an ancestor of (or equal to) b? */
static int is_ancestor(struct fs *fs, struct inode *a, struct inode *b)
{
	for (struct inode *x = b; x; x = inode_get(fs, dir_parent(x))) {
		if (x == a)
			return 1;
		if (x->ino == FS_ROOT_INO)
			break;
	}
	return 0;
}

/* A directory moved from one parent to another: fix "..", nlinks. */
static void reparent(struct fs *fs, struct inode *in, struct inode *from,
		     struct inode *to)
{
	if (!S_ISDIR(in->mode) || from == to)
		return;
	in->dir->parent = to->ino;
	from->nlink--;
	to->nlink++;
	inode_dirty(fs, in);
}

int fs_rename(struct fs *fs, uint64_t parent, const char *name,
	      uint64_t newparent, const char *newname, unsigned flags,
	      uint64_t *kept)
{
	int rc = 0;
	struct inode *sdir, *ddir, *src, *dst = NULL;
	struct dent *sd, *dd;
	uint64_t cookie;
	struct jmark m;

	if (kept)
		*kept = 0;
	if (fs->opt.ro)
		return -EROFS;
	if (flags & ~(unsigned)(RENAME_NOREPLACE | RENAME_EXCHANGE))
		return -EINVAL;
	if ((flags & RENAME_NOREPLACE) && (flags & RENAME_EXCHANGE))
		return -EINVAL;
	if ((rc = check_name(newname)))
		return rc;
	lock_take(fs, LOCK_FS);
	jmark_save(fs, &m);
	sdir = get_dir(fs, parent, &rc);
	ddir = sdir ? get_dir(fs, newparent, &rc) : NULL;
	if (!ddir)
		goto out;
	/* Room for the new entry first: it moves ddir's entries, and what
	 * can fail comes before the records. */
	if (!(flags & RENAME_EXCHANGE) &&
	    (rc = dir_reserve(ddir, strlen(newname))))
		goto out;
	sd = dir_find(sdir, name);
	if (!sd) {
		rc = -ENOENT;
		goto out;
	}
	src = inode_get(fs, sd->ino);
	dd = dir_find(ddir, newname);
	if (dd)
		dst = inode_get(fs, dd->ino);
	if (!src || (dd && !dst)) {
		rc = -EIO;
		goto out;
	}
	if (S_ISDIR(src->mode) && src != ddir && is_ancestor(fs, src, ddir)) {
		rc = -EINVAL;
		goto out;
	}
	if (flags & RENAME_EXCHANGE) {
		if (!dst) {
			rc = -ENOENT;
			goto out;
		}
		if (S_ISDIR(dst->mode) && is_ancestor(fs, dst, sdir)) {
			rc = -EINVAL;
			goto out;
		}
		if ((rc = log_dirent(fs, REC_DIRENT_DEL, sdir, name, src->ino,
				     sd->cookie)) ||
		    (rc = log_dirent(fs, REC_DIRENT_DEL, ddir, newname, dst->ino,
				     dd->cookie)) ||
		    (rc = log_dirent(fs, REC_DIRENT_ADD, sdir, name, dst->ino,
				     sd->cookie)) ||
		    (rc = log_dirent(fs, REC_DIRENT_ADD, ddir, newname, src->ino,
				     dd->cookie))) {
			jmark_restore(fs, &m);
			goto out;
		}
		sd->ino = dst->ino;
		dd->ino = src->ino;
		reparent(fs, src, sdir, ddir);
		reparent(fs, dst, ddir, sdir);
		inode_touch(src, IT_BIT(IT_CTIME), NULL);
		inode_set_time(dst, IT_CTIME, inode_ctime(src));
		inode_dirty(fs, src);
		inode_dirty(fs, dst);
		goto touch;
	}
	if (dst) {
		if (dst == src) {
			rc = 0;	/* two links to one inode: nothing to do */
			goto out;
		}
		if (flags & RENAME_NOREPLACE) {
			rc = -EEXIST;
			goto out;
		}
		if (S_ISDIR(src->mode) && !S_ISDIR(dst->mode)) {
			rc = -ENOTDIR;
			goto out;
		}
		if (!S_ISDIR(src->mode) && S_ISDIR(dst->mode)) {
			rc = -EISDIR;
			goto out;
		}
		if (S_ISDIR(dst->mode) && dir_nentries(dst)) {
			rc = -ENOTEMPTY;
			goto out;
		}
	}
	/* Everything that can fail first: the room (above), the records. */
	cookie = ddir->dir->next_cookie;
	if ((dst && (rc = log_dirent(fs, REC_DIRENT_DEL, ddir, newname,
				     dst->ino, dd->cookie))) ||
	    (rc = log_dirent(fs, REC_DIRENT_DEL, sdir, name, src->ino,
			     sd->cookie)) ||
	    (rc = log_dirent(fs, REC_DIRENT_ADD, ddir, newname, src->ino,
			     cookie))) {
		jmark_restore(fs, &m);
		goto out;
	}
	if (dst) {
		dir_del(fs, ddir, dd);
		if (S_ISDIR(dst->mode))
			ddir->nlink--;
		else if (kept && dst->nlink > 1)
			*kept = dst->ino;
		drop_link(fs, dst);
	}
	dir_del(fs, sdir, sd);
	/* cannot fail: the name is free now, the room reserved */
	rc = dir_add(fs, ddir, newname, src->ino, cookie);
	if (rc) {
		fs_log(fs, "error: rename: adding '%s': %s", newname,
		       strerror(-rc));
		fs->broken = 1;
		goto out;
	}
	reparent(fs, src, sdir, ddir);
	inode_touch(src, IT_BIT(IT_CTIME), NULL);
	inode_dirty(fs, src);
touch:
	touch_mc(sdir);
	inode_dirty(fs, sdir);
	if (ddir != sdir) {
		struct timespec t = inode_mtime(sdir);
		inode_touch(ddir, IT_BIT(IT_MTIME) | IT_BIT(IT_CTIME), &t);
		inode_dirty(fs, ddir);
	}
out:
	lock_drop(fs, LOCK_FS);
	return rc;
}

int fs_link(struct fs *fs, uint64_t ino, uint64_t newparent,
	    const char *newname, struct stat *st)
{
	int rc = 0;
	struct inode *dir, *in;
	uint64_t cookie;
	struct jmark m;

	if (fs->opt.ro)
		return -EROFS;
	if ((rc = check_name(newname)))
		return rc;
	lock_take(fs, LOCK_FS);
	jmark_save(fs, &m);
	dir = get_dir(fs, newparent, &rc);
	if (!dir)
		goto out;
	in = inode_get(fs, ino);
	if (!in) {
		rc = -ENOENT;
		goto out;
	}
	if (S_ISDIR(in->mode)) {
		rc = -EPERM;
		goto out;
	}
	/* An unlinked file stays unlinked; an O_TMPFILE gets its first name
	 * (the kernel refuses one opened with O_EXCL itself). */
	if (in->nlink == 0 && !in->linkable) {
		rc = -ENOENT;
		goto out;
	}
	if (in->nlink >= 65000) {
		rc = -EMLINK;
		goto out;
	}
	if (dir_find(dir, newname)) {
		rc = -EEXIST;
		goto out;
	}
	if ((rc = dir_reserve(dir, strlen(newname))))
		goto out;
	cookie = dir->dir->next_cookie;
	if ((rc = log_dirent(fs, REC_DIRENT_ADD, dir, newname, ino, cookie)))
		goto out;
	if ((rc = dir_add(fs, dir, newname, ino, cookie))) {	/* checked above: cannot be */
		jmark_restore(fs, &m);
		goto out;
	}
	in->nlink++;
	in->linkable = false;
	inode_touch(in, IT_BIT(IT_CTIME), NULL);
	inode_dirty(fs, in);
	touch_mc(dir);
	inode_dirty(fs, dir);
	inode_lookup_ref(in);
	inode_stat(fs, in, st);
out:
	lock_drop(fs, LOCK_FS);
	return rc;
}

/* A regular file read in place from an origin: remember its host path
 * for prefetching.  fs->lock held. */
static void note_prefetch(struct fs *fs, struct inode *in,
			  struct pf_item **pf, size_t *n)
{
	struct object *o;

	if (!S_ISREG(in->mode) || extmap_n(&in->map) == 0 || *n >= 256)
		return;
	o = obj_get(fs, extmap_at(&in->map, 0).obj);
	if (!o || !o->origin || o->fd >= 0)
		return;
	if (!*pf && !(*pf = calloc(256, sizeof(**pf))))
		return;
	(*pf)[(*n)++].obj = o->id;
}

int fs_readdir(struct fs *fs, uint64_t ino, uint64_t off, int plus,
	       fs_emit_fn emit, void *ctx)
{
	struct pf_item *pf = NULL;
	size_t npf = 0;
	int rc = 0;
	struct inode *dir, *in;
	struct stat st;
	struct dent *d;
	size_t i;

	lock_take(fs, LOCK_FS);
	dir = get_dir(fs, ino, &rc);
	if (!dir)
		goto out;
	if (off < 1) {
		inode_stat(fs, dir, &st);
		if (emit(ctx, ".", &st, 1, 0))
			goto out;
	}
	if (off < 2) {
		in = inode_get(fs, dir_parent(dir) ? dir_parent(dir) : FS_ROOT_INO);
		inode_stat(fs, in ? in : dir, &st);
		if (emit(ctx, "..", &st, 2, 0))
			goto out;
	}
	for (i = dir_seek(dir, off + 1); (d = dir_next(dir, &i)); i++) {
		in = inode_get(fs, d->ino);
		if (!in)
			continue;
		inode_stat(fs, in, &st);
		/* in passthrough mode the kernel's size is the one that is
		 * right (it writes the object); ours may lag */
		int node = !(S_ISREG(in->mode) && in->pt);
		if (emit(ctx, dent_name(dir, d), &st, d->cookie, node))
			break;
		if (plus && node) {
			inode_lookup_ref(in);
			note_prefetch(fs, in, &pf, &npf);
		}
	}
out:
	lock_drop(fs, LOCK_FS);
	if (npf)
		origin_prefetch(fs, pf, npf);
	free(pf);
	return rc;
}

int fs_open_file(struct fs *fs, uint64_t ino, int flags)
{
	int rc = 0;
	(void)flags;
	lock_take(fs, LOCK_FS);
	struct inode *in = inode_get(fs, ino);
	if (!in)
		rc = -ENOENT;
	else
		in->nopen++;
	lock_drop(fs, LOCK_FS);
	return rc;
}

void fs_release(struct fs *fs, uint64_t ino)
{
	lock_take(fs, LOCK_FS);
	struct inode *in = inode_get(fs, ino);
	if (in && in->nopen) {
		in->nopen--;
		inode_maybe_free(fs, in);
	}
	lock_drop(fs, LOCK_FS);
}

int fs_fsync(struct fs *fs, uint64_t ino)
{
	(void)ino;
	if (fs->opt.ro)
		return 0;
	return journal_commit(fs);
}

int fs_statfs(struct fs *fs, struct statvfs *sv)
{
	if (fstatvfs(fs->store.dirfd, sv) < 0)
		return -errno;
	lock_take(fs, LOCK_FS);
	uint64_t n = fs->ninodes;
	lock_drop(fs, LOCK_FS);
	sv->f_files = sv->f_ffree + n;
	sv->f_namemax = COWFS_NAME_MAX;
	return 0;
}

/* ---- extended attributes ---- */

static int xattr_name_ok(const char *name)
{
	size_t n = strlen(name);
	if (n == 0 || n > 255)
		return -ERANGE;
	if (!strncmp(name, "user.", 5) || !strncmp(name, "trusted.", 8) ||
	    !strncmp(name, "security.", 9) ||
	    !strcmp(name, "system.posix_acl_access") ||
	    !strcmp(name, "system.posix_acl_default"))
		return 0;
	return -EOPNOTSUPP;
}

static int log_xattr(struct fs *fs, struct inode *in, const char *name,
		     const void *v, size_t size, int del)
{
	struct rec r = { .type = del ? REC_XATTR_DEL : REC_XATTR_SET,
			 .name = name, .name_len = (uint32_t)strlen(name),
			 .data = v, .data_len = (uint32_t)size };
	r.u.xattr.ino = in->ino;
	return journal_log(fs, &r);
}

/*
 * An access ACL sets the mode's permission bits (owner from USER_OBJ,
 * group from MASK if any else GROUP_OBJ, other from OTHER), as ext4's
 * posix_acl_update_mode() does.  Returns 1 when the ACL says no more than
 * the mode (nothing to store), 0 when it must be kept, -EINVAL if malformed.
 */
static int acl_to_mode(struct inode *in, const void *value, size_t size)
{
	const unsigned char *p = value;
	unsigned u = 0, g = 0, o = 0, m = 0;
	int has_mask = 0, extended = 0;

	if (size < 4 || (size - 4) % 8 || (p[0] | p[1] << 8) != 2)
		return -EINVAL;
	for (size_t i = 4; i < size; i += 8) {
		unsigned tag = (unsigned)(p[i] | p[i + 1] << 8);
		unsigned perm = (unsigned)(p[i + 2] | p[i + 3] << 8) & 7;
		switch (tag) {
		case ACL_USER_OBJ: u = perm; break;
		case ACL_GROUP_OBJ: g = perm; break;
		case ACL_OTHER: o = perm; break;
		case ACL_MASK: m = perm; has_mask = 1; break;
		case ACL_USER:
		case ACL_GROUP: extended = 1; break;
		default: return -EINVAL;
		}
	}
	in->mode = (in->mode & ~0777u) | u << 6 | (has_mask ? m : g) << 3 | o;
	return extended || has_mask ? 0 : 1;
}

int fs_setxattr(struct fs *fs, uint64_t ino, const char *name,
		const void *value, size_t size, int flags)
{
	int rc;
	struct inode *in;
	struct jmark m;

	if (fs->opt.ro)
		return -EROFS;
	if ((rc = xattr_name_ok(name)))
		return rc;
	if (size > COWFS_XATTR_MAX)
		return -E2BIG;
	lock_take(fs, LOCK_FS);
	in = inode_get(fs, ino);
	if (!in) {
		rc = -ENOENT;
		goto out;
	}
	if (!strncmp(name, "user.", 5) && !S_ISREG(in->mode) && !S_ISDIR(in->mode)) {
		rc = -EPERM;
		goto out;
	}
	if (!strcmp(name, "system.posix_acl_default") && !S_ISDIR(in->mode)) {
		rc = -EACCES;
		goto out;
	}
	int exists = *xattr_find(in, name) != NULL;
	if (!strcmp(name, "system.posix_acl_access")) {
		uint32_t mode = in->mode;
		rc = acl_to_mode(in, value, size);
		if (rc < 0)
			goto out;
		if (rc == 1) {
			/* equivalent to the mode bits: nothing to keep */
			if (exists && (rc = log_xattr(fs, in, name, NULL, 0, 1))) {
				in->mode = mode;
				goto out;
			}
			if (exists)
				xattr_del(in, name);
			inode_touch(in, IT_BIT(IT_CTIME), NULL);
			inode_dirty(fs, in);
			rc = 0;
			goto out;
		}
		in->mode = mode;	/* set below, with the ACL */
	}
	if ((flags & XATTR_CREATE) && exists) {
		rc = -EEXIST;
		goto out;
	}
	if ((flags & XATTR_REPLACE) && !exists) {
		rc = -ENODATA;
		goto out;
	}
	/* Log first: a record that cannot be logged changes nothing. */
	jmark_save(fs, &m);
	if ((rc = log_xattr(fs, in, name, value, size, 0)))
		goto out;
	if ((rc = xattr_set(in, name, value, (uint32_t)size))) {
		jmark_restore(fs, &m);
		goto out;
	}
	if (!strcmp(name, "system.posix_acl_access"))
		acl_to_mode(in, value, size);
	inode_touch(in, IT_BIT(IT_CTIME), NULL);
	inode_dirty(fs, in);
out:
	lock_drop(fs, LOCK_FS);
	return rc;
}

int fs_getxattr(struct fs *fs, uint64_t ino, const char *name, void *buf,
		size_t size)
{
	int rc;
	lock_take(fs, LOCK_FS);
	struct inode *in = inode_get(fs, ino);
	struct xattr *x;
	if (!in) {
		rc = -ENOENT;
		goto out;
	}
	x = *xattr_find(in, name);
	if (!x) {
		rc = -ENODATA;
		goto out;
	}
	rc = (int)x->len;
	if (size) {
		if (size < x->len)
			rc = -ERANGE;
		else
			memcpy(buf, x->value, x->len);
	}
out:
	lock_drop(fs, LOCK_FS);
	return rc;
}

int fs_listxattr(struct fs *fs, uint64_t ino, char *buf, size_t size)
{
	int rc = 0;
	size_t total = 0;
	lock_take(fs, LOCK_FS);
	struct inode *in = inode_get(fs, ino);
	if (!in) {
		rc = -ENOENT;
		goto out;
	}
	for (struct xattr *x = inode_xattrs(in); x; x = x->next) {
		size_t n = strlen(x->name) + 1;
		if (size && total + n <= size)
			memcpy(buf + total, x->name, n);
		total += n;
	}
	rc = (int)total;
	if (size && total > size)
		rc = -ERANGE;
out:
	lock_drop(fs, LOCK_FS);
	return rc;
}

int fs_removexattr(struct fs *fs, uint64_t ino, const char *name)
{
	int rc;
	if (fs->opt.ro)
		return -EROFS;
	lock_take(fs, LOCK_FS);
	struct inode *in = inode_get(fs, ino);
	if (!in) {
		rc = -ENOENT;
		goto out;
	}
	if (!*xattr_find(in, name)) {
		rc = -ENODATA;
		goto out;
	}
	if ((rc = log_xattr(fs, in, name, NULL, 0, 1)))
		goto out;
	xattr_del(in, name);
	inode_touch(in, IT_BIT(IT_CTIME), NULL);
	inode_dirty(fs, in);
out:
	lock_drop(fs, LOCK_FS);
	return rc;
}

/* chmod on a file with an access ACL rewrites the ACL's owner, mask (or
 * group) and other entries from the mode, as posix_acl_chmod() does.
 * The rewritten ACL is logged before it replaces the old one. */
static int acl_chmod(struct fs *fs, struct inode *in, uint32_t mode)
{
	struct xattr *x = *xattr_find(in, "system.posix_acl_access");
	unsigned char *p;
	int has_mask = 0, rc;

	if (!x || x->len < 4 || (x->len - 4) % 8)
		return 0;
	if (!(p = malloc(x->len)))
		return -ENOMEM;
	memcpy(p, x->value, x->len);
	for (size_t i = 4; i < x->len; i += 8)
		if ((p[i] | p[i + 1] << 8) == ACL_MASK)
			has_mask = 1;
	for (size_t i = 4; i < x->len; i += 8) {
		unsigned tag = (unsigned)(p[i] | p[i + 1] << 8);
		unsigned shift = tag == ACL_USER_OBJ ? 6 : tag == ACL_OTHER ? 0 :
				 (tag == ACL_MASK || (tag == ACL_GROUP_OBJ && !has_mask)) ? 3 : 99;
		if (shift == 99)
			continue;
		p[i + 2] = (unsigned char)((mode >> shift) & 7);
		p[i + 3] = 0;
	}
	if ((rc = log_xattr(fs, in, x->name, p, x->len, 0))) {
		free(p);
		return rc;
	}
	free(x->value);
	x->value = p;
	return 0;
}

/* ---- POSIX ACL inheritance (the kernel enforces, we must inherit) ----
 * xattr form: u32 version 2, then entries {u16 tag, u16 perm, u32 id}. */

/* The new inode in takes dir's default ACL (not logged: make_node logs
 * the inode's xattrs).  0 or -ENOMEM. */
static int inherit_acl(struct fs *fs, struct inode *dir, struct inode *in)
{
	struct xattr *def = *xattr_find(dir, "system.posix_acl_default");
	unsigned char *acl;
	size_t n;
	int has_mask = 0;

	(void)fs;
	if (!def || def->len < 4 || (def->len - 4) % 8 || S_ISLNK(in->mode))
		return 0;
	n = (def->len - 4) / 8;
	acl = malloc(def->len);
	if (!acl)
		return -ENOMEM;
	memcpy(acl, def->value, def->len);
	for (size_t i = 0; i < n; i++)
		if ((acl[4 + i * 8] | acl[5 + i * 8] << 8) == ACL_MASK)
			has_mask = 1;
	/* posix_acl_create_masq: the new mode limits the ACL's entries and the
	 * ACL limits the mode. The kernel applied no umask (default ACL). */
	mode_t mode = in->mode;
	for (size_t i = 0; i < n; i++) {
		unsigned char *e = acl + 4 + i * 8;
		unsigned tag = (unsigned)(e[0] | e[1] << 8);
		unsigned perm = (unsigned)(e[2] | e[3] << 8);
		unsigned shift = tag == ACL_USER_OBJ ? 6 : tag == ACL_OTHER ? 0 :
				 (tag == ACL_MASK || (tag == ACL_GROUP_OBJ && !has_mask)) ? 3 : 99;
		if (shift == 99)
			continue;
		perm &= (mode >> shift) & 7;
		mode = (mode & ~((mode_t)7 << shift)) | ((mode_t)perm << shift);
		e[2] = (unsigned char)perm;
		e[3] = 0;
	}
	in->mode = mode;
	int rc = xattr_set(in, "system.posix_acl_access", acl, (uint32_t)def->len);
	if (!rc && S_ISDIR(in->mode))
		rc = xattr_set(in, "system.posix_acl_default", def->value, def->len);
	free(acl);
	return rc;
}
