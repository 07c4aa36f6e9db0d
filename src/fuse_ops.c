/*
 * fuse_ops.c - the libfuse low-level operations: decode a request, call
 * the core, reply.  No policy lives here.  Inode numbers are the store's
 * own (FS_ROOT_INO is FUSE_ROOT_ID).
 */
#ifndef FUSE_USE_VERSION	/* meson sets it from the libfuse it builds with */
#define FUSE_USE_VERSION 314
#endif
#include <errno.h>
#include <fcntl.h>
#include <fuse_log.h>
#include <fuse_lowlevel.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cowfs/fs.h"
#include "cowfs/fuse_ops.h"
#include "cowfs/ioctl.h"
#include "cowfs/status.h"

/* The daemon is the only writer of the namespace: the kernel may cache. */
#define ENTRY_TIMEOUT 3600.0
#define ATTR_TIMEOUT 3600.0
#define ZERO_BUF (1u << 20)
/* the mount's share of the dirty page limit, percent (see bdi_tune) */
#define BDI_MAX_RATIO "50"

static char *zero_buf;
static struct fuse_session *session;	/* for cache invalidation */
static int wb_want = 1;			/* -o nowriteback_cache clears it */
static int wb_on;			/* the kernel took it (op_init) */
static int kp2_on;			/* FUSE_CAP_HANDLE_KILLPRIV_V2 */
static int no_opendir;			/* FUSE_CAP_NO_OPENDIR_SUPPORT */

/* FUSE passthrough ("Passthrough" in docs/design.md): pt_want with
 * -o passthrough; pt_on once the kernel agreed at init.  Then every open
 * is answered (fh PT_FH: a passthrough one). */
#define PT_FH 1
static int pt_want;
static int pt_on;

/*
 * COWFS_TEST_SETATTR_FAIL=SIZE (debug builds only): a SETATTR that sets
 * the size to SIZE fails with EIO after fs_setattr() made its changes, as
 * one failing on a later attribute would.  test_passthrough checks with it
 * that such a SETATTR leaves nothing changed.
 */
static long long test_setattr_fail = -1;

static struct fs *FS(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

static void get_ctx(fuse_req_t req, struct fs_ctx *c)
{
	const struct fuse_ctx *fc = fuse_req_ctx(req);
	c->uid = fc->uid;
	c->gid = fc->gid;
	c->umask = fc->umask;
	c->ngroups = -1;
	c->groups_cut = 0;
}

/*
 * The caller's supplementary groups too (for reading host trees).  Read
 * from /proc ourselves: libfuse 3.14's fuse_req_getgroups() runs strstr()
 * on a buffer it never NUL-terminates (AddressSanitizer finds it).
 */
static void get_ctx_groups(fuse_req_t req, struct fs_ctx *c)
{
	const struct fuse_ctx *fc = fuse_req_ctx(req);
	char path[64], *buf, *p;
	size_t len = 0, cap = 65536;
	ssize_t n;
	int fd;

	get_ctx(req, c);
	snprintf(path, sizeof(path), "/proc/%d/task/%d/status", (int)fc->pid,
		 (int)fc->pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	buf = malloc(cap);
	while (buf && (n = read(fd, buf + len, cap - 1 - len)) > 0) {
		len += (size_t)n;
		if (len == cap - 1) {
			char *nb = cap < (1u << 22) ? realloc(buf, cap * 2) : NULL;
			if (!nb)
				break;
			buf = nb;
			cap *= 2;
		}
	}
	close(fd);
	if (!buf)
		return;
	buf[len] = 0;
	p = strstr(buf, "\nGroups:");
	if (!p) {
		free(buf);
		return;
	}
	p += 8;
	c->ngroups = 0;
	for (;;) {
		char *end;
		unsigned long g = strtoul(p, &end, 10);
		if (end == p)
			break;
		if (c->ngroups == FS_CTX_GROUPS) {
			c->groups_cut = 1;	/* more than we keep */
			break;
		}
		c->groups[c->ngroups++] = (gid_t)g;
		p = end;
	}
	if (!strchr(p, '\n'))
		c->groups_cut = 1;	/* the line was cut */
	free(buf);
}

/* trusted.cowfs.* holds cowfs's own state: not for users. */
static int private_xattr(const char *name)
{
	return !strncmp(name, "trusted.cowfs.", 14);
}

/*
 * How long the kernel may keep an inode's attributes.  Not at all for a
 * file with several names: after an UNLINK (or a RENAME over one of its
 * names) the kernel lowers its cached link count by one itself
 * (fuse_entry_unlinked()), also when a reply to a concurrent request has
 * already brought the count after that unlink, and with the writeback
 * cache nothing makes it ask again: a stat would show one link too few,
 * down to 0 for a file that still has a name, for ATTR_TIMEOUT.  The
 * last name but one going is op_unlink()'s and op_rename()'s to mend.
 */
static double attr_timeout(const struct stat *st)
{
	return !S_ISDIR(st->st_mode) && st->st_nlink > 1 ? 0.0 : ATTR_TIMEOUT;
}

/* An entry for the kernel to cache: LOOKUP, LINK, MKNOD, CREATE and
 * READDIRPLUS replies. */
static struct fuse_entry_param entry_of(const struct stat *st)
{
	struct fuse_entry_param e;

	memset(&e, 0, sizeof(e));
	e.ino = st->st_ino;
	e.attr = *st;
	e.attr_timeout = attr_timeout(st);
	e.entry_timeout = ENTRY_TIMEOUT;
	return e;
}

static void reply_entry(fuse_req_t req, const struct stat *st)
{
	struct fuse_entry_param e = entry_of(st);
	struct fs *fs = FS(req);
	if (fuse_reply_entry(req, &e) == -ENOENT)
		fs_forget(fs, st->st_ino, 1);	/* interrupted */
}

/* Whether process pid (0: this one) has capability cap in effect, from
 * /proc/PID/status; 0 when it cannot be read. */
static int has_cap(pid_t pid, unsigned cap)
{
	char path[64], line[256];
	unsigned long long eff = 0;
	FILE *f;

	if (pid)
		snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	else
		strlcpy(path, "/proc/self/status", sizeof(path));
	f = fopen(path, "re");
	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "CapEff: %llx", &eff) == 1)
			break;
	fclose(f);
	return (int)((eff >> cap) & 1);
}

/*
 * FUSE passthrough: the kernel reads and writes an eligible file's write
 * object itself (fs_pt_open).  It needs libfuse >= 3.16, the kernel's
 * offer (>= 6.9), and CAP_SYS_ADMIN for FUSE_DEV_IOC_BACKING_OPEN; it
 * excludes the writeback cache on the connection.  Without it opens stay
 * in no-open mode (op_open).
 */

static void pt_init(void *ud, struct fuse_conn_info *conn)
{
	struct fs *fs = ud;
	const char *why = NULL;

#ifdef COWFS_HAVE_PASSTHROUGH
	if (!pt_want)
		return;
	if (!(conn->capable & FUSE_CAP_PASSTHROUGH))
		why = "the kernel does not offer it";
	else if (!has_cap(0, 21) && geteuid() != 0)	/* CAP_SYS_ADMIN */
		why = "the daemon lacks CAP_SYS_ADMIN";
	if (!why) {
		conn->want |= FUSE_CAP_PASSTHROUGH;
		conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
		conn->max_backing_stack_depth = 1;
		pt_on = 1;
		wb_on = 0;
		fs_log(fs, "FUSE passthrough on (so no writeback cache)");
		return;
	}
#else
	(void)conn;
	why = "built with libfuse < 3.16";
#endif
	if (pt_want)
		fs_log(fs, "FUSE passthrough off: %s", why);
}

static void op_init(void *ud, struct fuse_conn_info *conn)
{
	struct fs *fs = ud;

	/* The kernel's writeback cache: writes land in the page cache and
	 * reach the daemon in the background, merged into big requests
	 * where pages are contiguous.  The kernel then owns a regular
	 * file's size, mtime and ctime while it has the inode: it sends
	 * them back with setattr (op_setattr) and ignores ours.  Nothing
	 * the daemon does changes a cached file's bytes or size behind the
	 * kernel's back (see "Kernel caching" in docs/design.md). */
	if (wb_want && (conn->capable & FUSE_CAP_WRITEBACK_CACHE)) {
		conn->want |= FUSE_CAP_WRITEBACK_CACHE;
		wb_on = 1;
		fs_log(fs, "kernel writeback cache on");
	} else {
		conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
		fs_log(fs, "kernel writeback cache off%s", wb_want ?
		       " (the kernel does not offer it)" : "");
	}
	if (conn->capable & FUSE_CAP_SPLICE_WRITE)
		conn->want |= FUSE_CAP_SPLICE_WRITE;
	/* No splice for requests: it costs every request a splice and a
	 * copy out of the pipe (two system calls, not one read), which small
	 * requests pay for nothing, and it allocates a thread's request
	 * buffer only at its first small request (under memory pressure a
	 * failed allocation there ends libfuse's session).  Measured:
	 * creating 5,000 files, tar x and dd write were no faster with it. */
	conn->want &= ~FUSE_CAP_SPLICE_READ;
	if (conn->capable & FUSE_CAP_POSIX_ACL)
		conn->want |= FUSE_CAP_POSIX_ACL;
	if (conn->capable & FUSE_CAP_DONT_MASK)
		conn->want |= FUSE_CAP_DONT_MASK;
	/* No OPEN/RELEASE round trip per file: open answers ENOSYS, and the
	 * kernel then keeps its page cache across opens (FOPEN_KEEP_CACHE is
	 * the no-open default) and truncates for O_TRUNC with a setattr.
	 * An open file keeps its inode looked up, which is all the core
	 * needs to keep an unlinked file alive. */
	conn->want &= ~FUSE_CAP_ATOMIC_O_TRUNC;
	/* Let the kernel clear setuid/setgid on write and chown. */
	conn->want &= ~FUSE_CAP_HANDLE_KILLPRIV;
	/* Always READDIRPLUS, not only for the first getdents of a
	 * directory: find, ls -l and git walk a whole directory before they
	 * stat it, and the attributes then come with the names instead of a
	 * LOOKUP per file (cold stat of 30,000 files: 0.85 s -> 0.13 s). */
	conn->want &= ~FUSE_CAP_READDIRPLUS_AUTO;
	if (conn->capable & FUSE_CAP_NO_OPENDIR_SUPPORT) {	/* op_opendir */
		conn->want |= FUSE_CAP_NO_OPENDIR_SUPPORT;
		no_opendir = 1;
	}
	conn->max_write = 1u << 20;
	/* big sequential reads: let the kernel read ahead in 1 MiB requests,
	 * and keep many in flight (the loop is multithreaded) */
	conn->max_readahead = 1u << 20;
	conn->max_background = 64;
	conn->congestion_threshold = 48;
	pt_init(ud, conn);
	/* Without HANDLE_KILLPRIV_V2 the kernel asks for security.capability
	 * before every write(2), a GETXATTR round trip each that bounded 4 KiB
	 * random writes at about 23k IOPS (42k in passthrough mode).  With it
	 * the superblock is NOSEC: the answer is cached per inode, and the
	 * daemon clears setuid and setgid itself on write, truncate and chown
	 * (write_kills_suidgid, op_setattr).  Passthrough writes do not pass
	 * here: a file with those bits is opened plain (pt_eligible), and for
	 * one given them while in passthrough mode, the kernel's SETATTR
	 * before each write does it (op_setattr). */
#ifdef FUSE_CAP_HANDLE_KILLPRIV_V2
	if (conn->capable & FUSE_CAP_HANDLE_KILLPRIV_V2) {
		conn->want |= FUSE_CAP_HANDLE_KILLPRIV_V2;
		kp2_on = 1;
	}
#endif
}

/* A file in passthrough mode: the size the kernel wrote, not the daemon's
 * lagging one, which the kernel would cache for ATTR_TIMEOUT. */
static void pt_fresh_attr(fuse_req_t req, struct stat *st)
{
	uint64_t blocks = UINT64_MAX;
	struct stat now;

	if (fs_pt_sync(FS(req), st->st_ino, 0, &blocks) ||
	    blocks == UINT64_MAX || fs_getattr(FS(req), st->st_ino, &now))
		return;
	*st = now;
	st->st_blocks = (blkcnt_t)blocks;
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct stat st;
	int rc = fs_lookup(FS(req), parent, name, &st);
	if (!rc && pt_on && S_ISREG(st.st_mode))
		pt_fresh_attr(req, &st);
	if (rc == -ENOENT) {
		/* negative entry, cached: the daemon is the only writer */
		struct fuse_entry_param e;
		memset(&e, 0, sizeof(e));
		e.entry_timeout = ENTRY_TIMEOUT;
		fuse_reply_entry(req, &e);
	} else if (rc) {
		fuse_reply_err(req, -rc);
	} else {
		reply_entry(req, &st);
	}
}

static void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t n)
{
	fs_forget(FS(req), ino, n);
	fuse_reply_none(req);
}

static void op_forget_multi(fuse_req_t req, size_t count,
			    struct fuse_forget_data *f)
{
	for (size_t i = 0; i < count; i++)
		fs_forget(FS(req), f[i].ino, f[i].nlookup);
	fuse_reply_none(req);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct stat st;
	/* a file in passthrough mode: what the kernel wrote first, and the
	 * object's blocks (a punched range stays mapped meanwhile) */
	uint64_t blocks = UINT64_MAX;
	int rc = pt_on ? fs_pt_sync(FS(req), ino, 0, &blocks) : 0;
	if (!rc)
		rc = fs_getattr(FS(req), ino, &st);
	if (!rc && blocks != UINT64_MAX)
		st.st_blocks = (blkcnt_t)blocks;
	(void)fi;
	if (rc)
		fuse_reply_err(req, -rc);
	else
		fuse_reply_attr(req, &st, attr_timeout(&st));
}

static int write_kills_suidgid(fuse_req_t req, fuse_ino_t ino);

static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr,
		       int to_set, struct fuse_file_info *fi)
{
	struct stat st;
	struct fs_ctx c;
	int set = 0, rc, backing = 0;

	(void)fi;
	get_ctx(req, &c);
	if (to_set & FUSE_SET_ATTR_MODE)
		set |= FS_SET_MODE;
	if (to_set & FUSE_SET_ATTR_UID)
		set |= FS_SET_UID;
	if (to_set & FUSE_SET_ATTR_GID)
		set |= FS_SET_GID;
	if (to_set & FUSE_SET_ATTR_SIZE)
		set |= FS_SET_SIZE;
	if (to_set & FUSE_SET_ATTR_ATIME)
		set |= FS_SET_ATIME;
	if (to_set & FUSE_SET_ATTR_MTIME)
		set |= FS_SET_MTIME;
	if (to_set & FUSE_SET_ATTR_ATIME_NOW)
		set |= FS_SET_ATIME_NOW;
	if (to_set & FUSE_SET_ATTR_MTIME_NOW)
		set |= FS_SET_MTIME_NOW;
	/* With the writeback cache the kernel keeps a file's times and sends
	 * them (mtime without _NOW, and ctime) when it writes the inode back
	 * or truncates: they are stored exactly. */
	if (to_set & FUSE_SET_ATTR_CTIME)
		set |= FS_SET_CTIME;
	/* HANDLE_KILLPRIV_V2: a truncate by a caller without CAP_FSETID comes
	 * with KILL_SUIDGID; a chown of a file always clears them.  A
	 * SETATTR with no attribute at all is the kernel's file_remove_privs
	 * (before a write, a truncate, ...: what it would clear is left to
	 * us, and only ATTR_FORCE is left to send): cleared as for a write.
	 * It is what clears them for a file in passthrough mode, whose
	 * writes never reach op_write_buf ("Passthrough" in design.md).
	 * A SETATTR of the ctime alone is a chown that changes no id
	 * (chown(f, -1, -1)): with the writeback cache the kernel keeps the
	 * times and sends nothing else, and no other call sends the ctime
	 * alone (utimensat with both times UTIME_OMIT returns early).  It
	 * clears the bits as any chown does, root's too, as ext4 does. */
	if ((to_set & FUSE_SET_ATTR_KILL_SUID) ||
	    (kp2_on && (set & (FS_SET_UID | FS_SET_GID))) ||
	    (kp2_on && to_set == FUSE_SET_ATTR_CTIME) ||
	    (kp2_on && !to_set && write_kills_suidgid(req, ino)))
		set |= FS_SET_KILL_SUIDGID;
	/* passthrough: the size the kernel made first; a shrink committed
	 * and the object cut before the kernel may write again, and a size
	 * change undone if the SETATTR fails (fs_pt_setattr_done) */
	rc = pt_on ? fs_pt_sync(FS(req), ino, 0, NULL) : 0;
	if (!rc) {
		rc = fs_setattr(FS(req), &c, ino, attr, set, &st);
		if (!rc && (set & FS_SET_SIZE) &&
		    attr->st_size == test_setattr_fail)
			rc = -EIO;
		if (pt_on && (set & FS_SET_SIZE))
			rc = fs_pt_setattr_done(FS(req), ino, rc, &backing);
	}
#ifdef COWFS_HAVE_PASSTHROUGH
	if (backing > 0)	/* the last release came meanwhile */
		fuse_passthrough_close(req, backing);
#endif
	if (rc)
		fuse_reply_err(req, -rc);
	else
		fuse_reply_attr(req, &st, attr_timeout(&st));
}

static void op_readlink(fuse_req_t req, fuse_ino_t ino)
{
	char buf[4097];
	int rc = fs_readlink(FS(req), ino, buf, sizeof(buf));
	if (rc < 0)
		fuse_reply_err(req, -rc);
	else
		fuse_reply_readlink(req, buf);
}

static void op_mknod(fuse_req_t req, fuse_ino_t parent, const char *name,
		     mode_t mode, dev_t rdev)
{
	struct stat st;
	struct fs_ctx c;
	get_ctx(req, &c);
	int rc = fs_mknod(FS(req), &c, parent, name, mode, rdev, &st);
	if (rc)
		fuse_reply_err(req, -rc);
	else
		reply_entry(req, &st);
}

static void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name,
		     mode_t mode)
{
	op_mknod(req, parent, name, S_IFDIR | (mode & 07777), 0);
}

static void op_symlink(fuse_req_t req, const char *link, fuse_ino_t parent,
		       const char *name)
{
	struct stat st;
	struct fs_ctx c;
	get_ctx(req, &c);
	int rc = fs_symlink(FS(req), &c, parent, name, link, &st);
	if (rc)
		fuse_reply_err(req, -rc);
	else
		reply_entry(req, &st);
}

/* A file that lost a name and keeps one: a reply to a concurrent request
 * may already have brought its count after this unlink, cached for
 * ATTR_TIMEOUT now that it has one name (attr_timeout()), and the kernel
 * lowers the count once more when this reply is in.  So what the kernel
 * holds is dropped first, and the next stat asks.  Before the reply: the
 * unlink's caller sees the right count as soon as it returns. */
static void inval_kept(uint64_t kept)
{
	if (kept)
		fuse_lowlevel_notify_inval_inode(session, kept, -1, 0);
}

static void op_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	uint64_t kept;
	int rc = fs_unlink(FS(req), parent, name, &kept);

	if (!rc)
		inval_kept(kept);
	fuse_reply_err(req, -rc);
}

static void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	fuse_reply_err(req, -fs_rmdir(FS(req), parent, name));
}

static void op_rename(fuse_req_t req, fuse_ino_t parent, const char *name,
		      fuse_ino_t newparent, const char *newname,
		      unsigned int flags)
{
	uint64_t kept;
	int rc = fs_rename(FS(req), parent, name, newparent, newname, flags,
			   &kept);

	if (!rc)
		inval_kept(kept);
	fuse_reply_err(req, -rc);
}

static void op_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent,
		    const char *newname)
{
	struct stat st;
	int rc = fs_link(FS(req), ino, newparent, newname, &st);
	if (!rc && pt_on && S_ISREG(st.st_mode))
		pt_fresh_attr(req, &st);	/* as for a LOOKUP */
	if (rc)
		fuse_reply_err(req, -rc);
	else
		reply_entry(req, &st);
}

#ifdef COWFS_HAVE_PASSTHROUGH
static int pt_reg(void *ctx, int fd)
{
	static int warned;
	int id = fuse_passthrough_open(ctx, fd);

	if (id > 0)
		return id;
	/* e.g. EPERM: stay plain; opens are answered for the mount's life
	 * (an ENOSYS now would lose the RELEASEs of the opens so far) */
	if (!__atomic_exchange_n(&warned, 1, __ATOMIC_RELAXED))
		fs_log(FS(ctx), "FUSE passthrough: backing open refused (%s); "
		       "files stay plain", strerror(errno));
	return -(errno ? errno : EIO);
}
#endif

/*
 * An open in a passthrough connection: passthrough if the file is
 * eligible (fs_pt_open), else plain with the page cache kept.  Created
 * files too (op_create).  0 or -errno; fi filled.
 */
static int pt_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
#ifdef COWFS_HAVE_PASSTHROUGH
	int backing = 0;
	int rc = fs_pt_open(FS(req), ino, fi->flags, pt_reg, req, &backing);

	if (rc < 0)
		return rc;
	if (rc == 1) {
		fi->backing_id = backing;
		fi->fh = PT_FH;
		fi->keep_cache = 0;
		return 0;
	}
	if (backing > 0)	/* registered, not used */
		fuse_passthrough_close(req, backing);
#else
	(void)req;
	(void)ino;
#endif
	fi->fh = 0;
	fi->keep_cache = 1;
	return 0;
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	if (!pt_on) {
		fuse_reply_err(req, ENOSYS);	/* see op_init: no-open mode */
		return;
	}
	int rc = pt_open(req, ino, fi);
	if (rc)
		fuse_reply_err(req, -rc);
	else
		fuse_reply_open(req, fi);
}

/* The reply to a CREATE or a TMPFILE: the new file's entry, opened
 * (and in passthrough mode when the connection has it). */
static void reply_created(fuse_req_t req, const struct stat *st,
			  struct fuse_file_info *fi)
{
	struct fs *fs = FS(req);	/* req is gone after the reply */
	struct fuse_entry_param e = entry_of(st);
	int rc;

	fi->keep_cache = 1;
	/* passthrough: counted, and released (fs_pt_open) */
	if (pt_on && (rc = pt_open(req, st->st_ino, fi))) {
		fs_forget(fs, st->st_ino, 1);
		fuse_reply_err(req, -rc);
		return;
	}
	if (fuse_reply_create(req, &e, fi) == -ENOENT)
		fs_forget(fs, st->st_ino, 1);
}

static void op_create(fuse_req_t req, fuse_ino_t parent, const char *name,
		      mode_t mode, struct fuse_file_info *fi)
{
	struct stat st;
	struct fs_ctx c;

	get_ctx(req, &c);
	/* Not counted as an open: once the kernel is in no-open mode it sends
	 * no RELEASE for created files either, and the lookup reference the
	 * entry carries is what keeps the file alive while it is open. */
	int rc = fs_mknod(FS(req), &c, parent, name, S_IFREG | (mode & 07777), 0, &st);
	if (rc)
		fuse_reply_err(req, -rc);
	else
		reply_created(req, &st, fi);
}

#ifdef COWFS_HAVE_TMPFILE
/* open(dir, O_TMPFILE): as a create, without a name (fs_tmpfile()). */
static void op_tmpfile(fuse_req_t req, fuse_ino_t parent, mode_t mode,
		       struct fuse_file_info *fi)
{
	struct stat st;
	struct fs_ctx c;

	get_ctx(req, &c);
	int rc = fs_tmpfile(FS(req), &c, parent, S_IFREG | (mode & 07777), &st);
	if (rc)
		fuse_reply_err(req, -rc);
	else
		reply_created(req, &st, fi);
}
#endif

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	struct fs_seg *segs;
	int nseg, rc;
	size_t nbuf = 0;

	struct fs *fs = FS(req);	/* req is gone after the reply */
	(void)fi;
	rc = fs_read_map(fs, ino, off, size, &segs, &nseg);
	if (rc) {
		fuse_reply_err(req, -rc);
		return;
	}
	for (int i = 0; i < nseg; i++)
		nbuf += segs[i].fd < 0 ? (segs[i].len + ZERO_BUF - 1) / ZERO_BUF : 1;
	struct fuse_bufvec *bv = calloc(1, sizeof(*bv) + (nbuf + 1) * sizeof(struct fuse_buf));
	if (!bv) {
		fs_read_done(FS(req), segs, nseg);
		fuse_reply_err(req, ENOMEM);
		return;
	}
	size_t k = 0;
	for (int i = 0; i < nseg; i++) {
		if (segs[i].fd >= 0) {
			bv->buf[k].size = segs[i].len;
			bv->buf[k].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
			bv->buf[k].fd = segs[i].fd;
			bv->buf[k].pos = segs[i].pos;
			k++;
			continue;
		}
		for (size_t left = segs[i].len; left;) {
			size_t n = left < ZERO_BUF ? left : ZERO_BUF;
			bv->buf[k].size = n;
			bv->buf[k].mem = zero_buf;
			k++;
			left -= n;
		}
	}
	bv->count = k;
	if (k == 0)
		fuse_reply_buf(req, NULL, 0);
	else
		fuse_reply_data(req, bv, FUSE_BUF_SPLICE_MOVE);
	fs_read_done(fs, segs, nseg);
	free(bv);
}

static ssize_t fill_from_bufvec(void *ctx, int fd, off_t pos, size_t len)
{
	struct fuse_bufvec *src = ctx;
	struct fuse_bufvec dst = FUSE_BUFVEC_INIT(len);

	dst.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
	dst.buf[0].fd = fd;
	dst.buf[0].pos = pos;
	return fuse_buf_copy(&dst, src, 0);
}

/*
 * HANDLE_KILLPRIV_V2: a write by a caller without CAP_FSETID clears the
 * file's setuid, and setgid if group-executable.  The kernel sends such a
 * write through at once (never as writeback) flagged KILL_SUIDGID, a flag
 * libfuse does not pass on: so for a file with one of the bits, which is
 * rare, the caller's capability is read from /proc.  1 if the bits are to
 * go.
 */
static int write_kills_suidgid(fuse_req_t req, fuse_ino_t ino)
{
	uint32_t m;

	if (fs_mode(FS(req), ino, &m) || !S_ISREG(m))
		return 0;
	if (!mode_kills_sxid(m))
		return 0;
	return !has_cap(fuse_req_ctx(req)->pid, 4);	/* CAP_FSETID */
}

static void op_write_buf(fuse_req_t req, fuse_ino_t ino, struct fuse_bufvec *in,
			 off_t off, struct fuse_file_info *fi)
{
	if (kp2_on && !fi->writepage && write_kills_suidgid(req, ino)) {
		struct stat st;
		struct fs_ctx c;

		get_ctx(req, &c);
		memset(&st, 0, sizeof(st));
		(void)fs_setattr(FS(req), &c, ino, &st, FS_SET_KILL_SUIDGID, &st);
	}
	ssize_t n = fs_write(FS(req), ino, off, fuse_buf_size(in),
			     fill_from_bufvec, in);
	if (n < 0)
		fuse_reply_err(req, (int)-n);
	else
		fuse_reply_write(req, (size_t)n);
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	int backing = 0;

	if (pt_on && fs_pt_release(FS(req), ino, fi->fh == PT_FH, &backing) == 1) {
#ifdef COWFS_HAVE_PASSTHROUGH
		fuse_passthrough_close(req, backing);
#endif
	}
	fs_release(FS(req), ino);
	fuse_reply_err(req, 0);
}

static void op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync,
		     struct fuse_file_info *fi)
{
	(void)datasync;
	(void)fi;
	/* passthrough: what the kernel wrote, mapped and synced first */
	int rc = pt_on ? fs_pt_sync(FS(req), ino, 1, NULL) : 0;
	fuse_reply_err(req, rc ? -rc : -fs_fsync(FS(req), ino));
}

/*
 * No OPENDIR/RELEASEDIR round trips (a pair per directory: half the cost
 * of a warm find in a tree of small directories): opendir answers ENOSYS
 * once, and the kernel then opens directories by itself, with its
 * no-opendir defaults: keep_cache and cache_readdir.  The kernel keeps a
 * listing in the directory's page cache across opens, so a second find
 * or git status reads no directory again.  It drops it when the
 * directory changes through it, or at the next listing when its mtime
 * has moved (auto_inval_data); what the daemon adds itself (clones)
 * moves the mtime and invalidates the directory's attributes.  Kernels
 * without no-opendir support get the same flags from this reply.
 */
static void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	if (no_opendir) {
		fuse_reply_err(req, ENOSYS);
		return;
	}
	fi->cache_readdir = 1;
	fi->keep_cache = 1;
	fuse_reply_open(req, fi);
}

struct dirbuf {
	fuse_req_t req;
	char *buf;
	size_t size, len;
	int plus;
};

static int emit_entry(void *ctx, const char *name, const struct stat *st,
		      uint64_t next_off, int node)
{
	struct dirbuf *d = ctx;
	size_t n;

	if (d->plus) {
		struct fuse_entry_param e = entry_of(st);
		/* nodeid 0: the kernel takes no attributes from the entry */
		if (!node)
			e.ino = 0;
		n = fuse_add_direntry_plus(d->req, d->buf + d->len, d->size - d->len,
					   name, &e, (off_t)next_off);
	} else {
		n = fuse_add_direntry(d->req, d->buf + d->len, d->size - d->len,
				      name, st, (off_t)next_off);
	}
	if (n > d->size - d->len)
		return 1;
	d->len += n;
	return 0;
}

static void do_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       int plus)
{
	struct dirbuf d = { req, malloc(size ? size : 1), size, 0, plus };
	int rc;

	if (!d.buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	rc = fs_readdir(FS(req), ino, (uint64_t)off, plus, emit_entry, &d);
	if (rc)
		fuse_reply_err(req, -rc);
	else
		fuse_reply_buf(req, d.buf, d.len);
	free(d.buf);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi)
{
	(void)fi;
	do_readdir(req, ino, size, off, 0);
}

static void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size,
			   off_t off, struct fuse_file_info *fi)
{
	(void)fi;
	do_readdir(req, ino, size, off, 1);
}

static void op_releasedir(fuse_req_t req, fuse_ino_t ino,
			  struct fuse_file_info *fi)
{
	(void)ino;
	(void)fi;
	fuse_reply_err(req, 0);
}

static void op_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync,
			struct fuse_file_info *fi)
{
	(void)datasync;
	(void)fi;
	fuse_reply_err(req, -fs_fsync(FS(req), ino));
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct statvfs sv;
	(void)ino;
	int rc = fs_statfs(FS(req), &sv);
	if (rc)
		fuse_reply_err(req, -rc);
	else
		fuse_reply_statfs(req, &sv);
}

static void op_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name,
			const char *value, size_t size, int flags)
{
	if (private_xattr(name)) {
		fuse_reply_err(req, EPERM);
		return;
	}
	fuse_reply_err(req, -fs_setxattr(FS(req), ino, name, value, size, flags));
}

static void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name,
			size_t size)
{
	if (private_xattr(name)) {
		fuse_reply_err(req, ENODATA);
		return;
	}
	char *buf = size ? malloc(size) : NULL;
	if (size && !buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	int rc = fs_getxattr(FS(req), ino, name, buf, size);
	if (rc < 0)
		fuse_reply_err(req, -rc);
	else if (size == 0)
		fuse_reply_xattr(req, (size_t)rc);
	else
		fuse_reply_buf(req, buf, (size_t)rc);
	free(buf);
}

static void op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	char *buf = size ? malloc(size) : NULL;
	if (size && !buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	/* list everything, then leave out the private names */
	int rc = fs_listxattr(FS(req), ino, NULL, 0);
	char *all = rc > 0 ? malloc((size_t)rc) : NULL;
	if (rc > 0 && !all)
		rc = -ENOMEM;
	if (rc > 0)
		rc = fs_listxattr(FS(req), ino, all, (size_t)rc);
	if (rc > 0) {
		size_t k = 0;
		for (char *p = all; p < all + rc; p += strlen(p) + 1)
			if (!private_xattr(p)) {
				size_t n = strlen(p) + 1;
				memmove(all + k, p, n);
				k += n;
			}
		rc = (int)k;
		if (size && (size_t)rc > size)
			rc = -ERANGE;
		else if (size)
			memcpy(buf, all, (size_t)rc);
	}
	free(all);
	if (rc < 0)
		fuse_reply_err(req, -rc);
	else if (size == 0)
		fuse_reply_xattr(req, (size_t)rc);
	else
		fuse_reply_buf(req, buf, (size_t)rc);
	free(buf);
}

static void op_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
	if (private_xattr(name)) {
		fuse_reply_err(req, EPERM);
		return;
	}
	fuse_reply_err(req, -fs_removexattr(FS(req), ino, name));
}

static void op_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off,
			 off_t len, struct fuse_file_info *fi)
{
	(void)fi;
	fuse_reply_err(req, -fs_fallocate(FS(req), ino, mode, off, len));
}

/*
 * SEEK_DATA and SEEK_HOLE with the writeback cache.  The kernel does not
 * write dirty pages back before it asks the daemon where data is, so the
 * daemon has it do so first: an invalidation of [off, EOF) launders the
 * range's dirty pages (they reach the daemon as WRITEs, served by the
 * loop's workers) and waits for them.  A worker must not wait like that:
 * with every worker in such a wait, no one would serve the WRITEs.  So the
 * request goes to one thread of its own, which invalidates (no lock of
 * ours held), asks the core and replies; the worker is free at once.
 */
struct seek_job {
	fuse_req_t req;
	fuse_ino_t ino;
	off_t off;
	int whence;
	struct seek_job *next;
};

static pthread_mutex_t seek_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t seek_cv = PTHREAD_COND_INITIALIZER;
static struct seek_job *seek_head, **seek_tail = &seek_head;
static pthread_t seek_thread;
static int seek_started, seek_stop;

static void do_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence)
{
	off_t r = fs_lseek(FS(req), ino, off, whence);
	if (r < 0)
		fuse_reply_err(req, (int)-r);
	else
		fuse_reply_lseek(req, r);
}

static void *seek_main(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&seek_mu);
	for (;;) {
		while (!seek_head && !seek_stop)
			pthread_cond_wait(&seek_cv, &seek_mu);
		struct seek_job *j = seek_head;
		if (!j)
			break;	/* stopping, nothing left */
		if (!(seek_head = j->next))
			seek_tail = &seek_head;
		pthread_mutex_unlock(&seek_mu);
		fuse_lowlevel_notify_inval_inode(session, j->ino, j->off, 0);
		do_lseek(j->req, j->ino, j->off, j->whence);
		free(j);
		pthread_mutex_lock(&seek_mu);
	}
	pthread_mutex_unlock(&seek_mu);
	return NULL;
}

/* Queue the request for seek_main; 0, or -errno (the caller answers). */
static int seek_queue(fuse_req_t req, fuse_ino_t ino, off_t off, int whence)
{
	struct seek_job *j = malloc(sizeof(*j));
	int rc = 0;

	if (!j)
		return -ENOMEM;
	*j = (struct seek_job){ req, ino, off, whence, NULL };
	pthread_mutex_lock(&seek_mu);
	if (!seek_started) {
		rc = -pthread_create(&seek_thread, NULL, seek_main, NULL);
		seek_started = !rc;
	}
	if (!rc) {
		*seek_tail = j;
		seek_tail = &j->next;
		pthread_cond_signal(&seek_cv);
	}
	pthread_mutex_unlock(&seek_mu);
	if (rc)
		free(j);
	return rc;
}

static void seek_thread_stop(void)
{
	pthread_mutex_lock(&seek_mu);
	seek_stop = 1;
	pthread_cond_signal(&seek_cv);
	int started = seek_started;
	pthread_mutex_unlock(&seek_mu);
	if (started)
		pthread_join(seek_thread, NULL);
}

static void op_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence,
		     struct fuse_file_info *fi)
{
	(void)fi;
	if (wb_on && (whence == SEEK_DATA || whence == SEEK_HOLE)) {
		int rc = seek_queue(req, ino, off, whence);
		if (rc)
			fuse_reply_err(req, -rc);
		return;
	}
	do_lseek(req, ino, off, whence);
}

static void op_copy_file_range(fuse_req_t req, fuse_ino_t ino_in, off_t off_in,
			       struct fuse_file_info *fi_in, fuse_ino_t ino_out,
			       off_t off_out, struct fuse_file_info *fi_out,
			       size_t len, int flags)
{
	(void)fi_in;
	(void)fi_out;
	if (flags) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	ssize_t n = fs_copy_range(FS(req), ino_in, off_in, ino_out, off_out, len);
	if (n < 0)
		fuse_reply_err(req, (int)-n);
	else
		fuse_reply_write(req, (size_t)n);
}

static void usage_to_ioc(const struct fs_usage *u, struct cowfs_ioc_usage *o)
{
	memset(o, 0, sizeof(*o));
	o->logical = u->logical;
	o->shared = u->shared;
	o->exclusive = u->exclusive;
	o->files = u->files;
	o->dirs = u->dirs;
	o->other = u->other;
	o->meta_bytes = u->meta_bytes;
	o->block_size = u->block_size;
	o->objects = u->objects;
	o->origin = u->origin;
	o->host = u->host;
}

/* Is the string field s of n bytes NUL-terminated inside it? */
static int str_ok(const char *s, size_t n)
{
	return memchr(s, 0, n) != NULL;
}

static int zeroed(const uint64_t *v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (v[i])
			return 0;
	return 1;
}

/* Every request: a fixed-size struct, in and out (_IOWR), flags and
 * reserved fields 0, strings NUL-terminated in their buffers; anything
 * else is EINVAL.  Commands not ours are ENOTTY. */
static void op_ioctl(fuse_req_t req, fuse_ino_t ino, unsigned int cmd,
		     void *arg, struct fuse_file_info *fi, unsigned flags,
		     const void *in_buf, size_t in_bufsz, size_t out_bufsz)
{
	struct fs *fs = FS(req);
	struct fs_usage u;
	struct cowfs_ioc_usage ou;
	struct fs_ctx c;
	int rc;

	(void)arg;
	(void)fi;
	if (flags & FUSE_IOCTL_COMPAT) {
		fuse_reply_err(req, ENOSYS);
		return;
	}
	switch (cmd) {
	case COWFS_IOC_CLONE: {
		struct cowfs_ioc_clone a;
		struct stat st;
		if (in_bufsz != sizeof(a) || out_bufsz != sizeof(a)) {
			fuse_reply_err(req, EINVAL);
			return;
		}
		memcpy(&a, in_buf, sizeof(a));
		if (a.flags || a.reserved || !str_ok(a.name, sizeof(a.name)) ||
		    !str_ok(a.src_name, sizeof(a.src_name))) {
			fuse_reply_err(req, EINVAL);
			return;
		}
		get_ctx_groups(req, &c);
		rc = fs_clone_at(fs, &c, a.src_parent, a.src_name, a.src_ino, ino,
				 a.name, &st);
		if (rc) {
			fuse_reply_err(req, -rc);
			return;
		}
		/* The kernel may hold a negative entry for the name and stale
		 * attributes (nlink, mtime) for the directory. */
		fuse_lowlevel_notify_inval_entry(session, ino, a.name, strlen(a.name));
		fuse_lowlevel_notify_inval_inode(session, ino, -1, 0);
		fuse_reply_ioctl(req, 0, &a, sizeof(a));
		return;
	}
	case COWFS_IOC_CLONE_HOST: {
		struct cowfs_ioc_clone_host *a;
		if (in_bufsz != sizeof(*a) || out_bufsz != sizeof(*a)) {
			fuse_reply_err(req, EINVAL);
			return;
		}
		a = malloc(sizeof(*a));
		if (!a) {
			fuse_reply_err(req, ENOMEM);
			return;
		}
		memcpy(a, in_buf, sizeof(*a));
		if (a->flags || !str_ok(a->name, sizeof(a->name)) ||
		    !str_ok(a->path, sizeof(a->path))) {
			fuse_reply_err(req, EINVAL);
			free(a);
			return;
		}
		get_ctx_groups(req, &c);
		rc = fs_clone_host(fs, &c, a->path, ino, a->name, &a->skipped);
		if (rc) {
			fuse_reply_err(req, -rc);
		} else {
			fuse_lowlevel_notify_inval_entry(session, ino, a->name,
							 strlen(a->name));
			fuse_lowlevel_notify_inval_inode(session, ino, -1, 0);
			fuse_reply_ioctl(req, 0, a, sizeof(*a));
		}
		free(a);
		return;
	}
	case COWFS_IOC_DETACH: {
		struct cowfs_ioc_detach d;
		if (in_bufsz != sizeof(d) || out_bufsz != sizeof(d)) {
			fuse_reply_err(req, EINVAL);
			return;
		}
		memcpy(&d, in_buf, sizeof(d));
		if (d.flags || !zeroed(d.reserved, sizeof(d.reserved) / 8)) {
			fuse_reply_err(req, EINVAL);
			return;
		}
		get_ctx_groups(req, &c);
		int64_t n = fs_detach(fs, &c, ino);
		if (n < 0) {
			fuse_reply_err(req, (int)-n);
			return;
		}
		memset(&d, 0, sizeof(d));
		d.bytes = (uint64_t)n;
		fuse_reply_ioctl(req, 0, &d, sizeof(d));
		return;
	}
	case COWFS_IOC_DU:
	case COWFS_IOC_DF:
		if (in_bufsz != sizeof(ou) || out_bufsz != sizeof(ou)) {
			fuse_reply_err(req, EINVAL);
			return;
		}
		memcpy(&ou, in_buf, sizeof(ou));
		if (!zeroed(ou.reserved, sizeof(ou.reserved) / 8)) {
			fuse_reply_err(req, EINVAL);
			return;
		}
		get_ctx_groups(req, &c);
		rc = cmd == COWFS_IOC_DU ? fs_du(fs, &c, ino, &u) : fs_df(fs, &u);
		if (rc) {
			fuse_reply_err(req, -rc);
			return;
		}
		usage_to_ioc(&u, &ou);
		fuse_reply_ioctl(req, 0, &ou, sizeof(ou));
		return;
	case COWFS_IOC_STATUS: {
		struct cowfs_ioc_status *s;
		if (in_bufsz != sizeof(*s) || out_bufsz != sizeof(*s)) {
			fuse_reply_err(req, EINVAL);
			return;
		}
		if (!(s = malloc(sizeof(*s)))) {
			fuse_reply_err(req, ENOMEM);
			return;
		}
		memcpy(s, in_buf, sizeof(*s));
		if (s->flags || !zeroed(s->reserved, sizeof(s->reserved) / 8) ||
		    s->passthrough || s->pt_opens || s->pt_files)
			rc = -EINVAL;
		else
			rc = fs_status(fs, s);
		s->passthrough = (uint64_t)pt_on;
		if (rc)
			fuse_reply_err(req, -rc);
		else
			fuse_reply_ioctl(req, 0, s, sizeof(*s));
		free(s);
		return;
	}
	default:
		fuse_reply_err(req, ENOTTY);
	}
}

static const struct fuse_lowlevel_ops ops = {
	.ioctl = op_ioctl,
	.init = op_init,
	.lookup = op_lookup,
	.forget = op_forget,
	.forget_multi = op_forget_multi,
	.getattr = op_getattr,
	.setattr = op_setattr,
	.readlink = op_readlink,
	.mknod = op_mknod,
	.mkdir = op_mkdir,
	.symlink = op_symlink,
	.unlink = op_unlink,
	.rmdir = op_rmdir,
	.rename = op_rename,
	.link = op_link,
	.open = op_open,
	.create = op_create,
	.read = op_read,
	.write_buf = op_write_buf,
	.release = op_release,
	.fsync = op_fsync,
	.opendir = op_opendir,
	.readdir = op_readdir,
	.readdirplus = op_readdirplus,
	.releasedir = op_releasedir,
	.fsyncdir = op_fsyncdir,
	.statfs = op_statfs,
	.setxattr = op_setxattr,
	.getxattr = op_getxattr,
	.listxattr = op_listxattr,
	.removexattr = op_removexattr,
	.fallocate = op_fallocate,
	.lseek = op_lseek,
	.copy_file_range = op_copy_file_range,
#ifdef COWFS_HAVE_TMPFILE
	.tmpfile = op_tmpfile,
#endif
};

static void log_nothing(enum fuse_log_level level, const char *fmt, va_list ap)
{
	(void)level;
	(void)fmt;
	(void)ap;
}

int cowfs_fuse_check_opts(const char *opts, char *bad, size_t badlen)
{
	char *dup = strdup(opts), *save = NULL, *tok;
	int rc = 0;

	if (!dup)
		return -ENOMEM;
	*bad = 0;
	fuse_set_log_func(log_nothing);
	for (tok = strtok_r(dup, ",", &save); tok && !rc;
	     tok = strtok_r(NULL, ",", &save)) {
		struct fuse_args args = FUSE_ARGS_INIT(0, NULL);
		struct fuse_session *se = NULL;
		if (fuse_opt_add_arg(&args, "cowfs") ||
		    fuse_opt_add_arg(&args, "-o") ||
		    fuse_opt_add_arg(&args, tok)) {
			rc = -ENOMEM;
		} else if (!(se = fuse_session_new(&args, &ops, sizeof(ops),
						   NULL))) {
			snprintf(bad, badlen, "%s", tok);
			rc = -EINVAL;
		}
		if (se)
			fuse_session_destroy(se);
		fuse_opt_free_args(&args);
	}
	fuse_set_log_func(NULL);
	free(dup);
	return rc;
}

/* mountinfo's escapes (\040 for a space, ...) taken out, in place */
static void unescape_octal(char *s)
{
	char *d = s;

	for (; *s; s++) {
		if (s[0] == '\\' && s[1] >= '0' && s[1] <= '3' &&
		    s[2] >= '0' && s[2] <= '7' && s[3] >= '0' && s[3] <= '7') {
			*d++ = (char)((s[1] - '0') * 64 + (s[2] - '0') * 8 +
				      (s[3] - '0'));
			s += 3;
		} else {
			*d++ = *s;
		}
	}
	*d = 0;
}

/* The device of the topmost mount at path ("MAJ:MIN", the name of its
 * backing_dev_info), read from mountinfo: a stat() of the mount point
 * would wait for the INIT that this thread has not answered yet. */
static int mount_dev(const char *path, char *dev, size_t len)
{
	FILE *f = fopen("/proc/self/mountinfo", "re");
	char *line = NULL;
	size_t cap = 0;
	int found = -ENOENT;

	if (!f)
		return -errno;
	while (getline(&line, &cap, f) > 0) {
		char mdev[64], mpt[4096];
		if (sscanf(line, "%*s %*s %63s %*s %4095s", mdev, mpt) != 2)
			continue;
		unescape_octal(mpt);
		if (!strcmp(mpt, path)) {
			snprintf(dev, len, "%s", mdev);
			found = 0;
		}
	}
	free(line);
	fclose(f);
	return found;
}

static int write_knob(const char *dev, const char *knob, const char *val)
{
	char path[256];
	int fd, rc = 0;

	snprintf(path, sizeof(path), "/sys/class/bdi/%s/%s", dev, knob);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (write(fd, val, strlen(val)) < 0)
		rc = -errno;
	close(fd);
	return rc;
}

/*
 * A FUSE mount's bdi is strictly limited to 1% of the dirty memory
 * (strict_limit, max_ratio 1): a daemon may be slow or hostile, so its
 * dirty pages are kept few and writers are throttled to the daemon's
 * writeback rate long before the global limits.  This daemon writes to
 * a local filesystem, as fast as that one takes data: lift the strict
 * limit and let the bdi share the dirty memory like a disk's.  Root
 * only (files in /sys); best effort, with a log line when it cannot.
 */
static void bdi_tune(struct fs *fs, const char *mnt)
{
	char dev[64];
	int rc = mount_dev(mnt, dev, sizeof(dev));

	if (!rc)
		rc = write_knob(dev, "strict_limit", "0");
	if (!rc)
		rc = write_knob(dev, "max_ratio", BDI_MAX_RATIO);
	if (rc)
		fs_log(fs, "kernel writeback cache: the dirty page limit of "
		       "the mount stays at the FUSE default (%s): writes may "
		       "be throttled", strerror(-rc));
	else
		fs_log(fs, "kernel writeback cache: bdi %s: strict_limit 0, "
		       "max_ratio " BDI_MAX_RATIO, dev);
}

int cowfs_fuse_run(struct fs *fs, const struct cowfs_mount *m)
{
	struct fuse_args args = FUSE_ARGS_INIT(0, NULL);
	struct fuse_session *se;
	struct fuse_loop_config *cfg;
	int rc = -EIO;

	wb_want = !m->no_writeback;
	zero_buf = calloc(1, ZERO_BUF);
	if (!zero_buf)
		return -ENOMEM;
	pt_want = m->passthrough;
#ifndef NDEBUG
	if (getenv("COWFS_TEST_SETATTR_FAIL"))
		test_setattr_fail = strtoll(getenv("COWFS_TEST_SETATTR_FAIL"),
					    NULL, 10);
#endif
	if (fuse_opt_add_arg(&args, "cowfs") ||
	    fuse_opt_add_arg(&args, "-o") ||
	    fuse_opt_add_arg(&args, "default_permissions,subtype=cowfs"))
		goto out;
	if (m->fuse_opts && *m->fuse_opts &&
	    (fuse_opt_add_arg(&args, "-o") || fuse_opt_add_arg(&args, m->fuse_opts)))
		goto out;
	if (m->debug && fuse_opt_add_arg(&args, "-d"))
		goto out;

	se = fuse_session_new(&args, &ops, sizeof(ops), fs);
	if (!se)
		goto out;
	session = se;
	if (fuse_set_signal_handlers(se))
		goto out_destroy;
	if (fuse_session_mount(se, m->mountpoint)) {
		rc = -EIO;
		goto out_handlers;
	}
	/* Errors before this point reach the terminal. */
	if (fuse_daemonize(m->foreground)) {
		rc = -EIO;
		goto out_unmount;
	}
	fs_start(fs);
	if (wb_want)
		bdi_tune(fs, m->mountpoint);
	cfg = fuse_loop_cfg_create();
	if (!cfg) {
		rc = -ENOMEM;
		goto out_unmount;
	}
	fuse_loop_cfg_set_clone_fd(cfg, 0);
	fuse_loop_cfg_set_max_threads(cfg, 16);
	fuse_loop_cfg_set_idle_threads(cfg, 8);
	rc = fuse_session_loop_mt(se, cfg);
	rc = rc < 0 ? rc : 0;
	seek_thread_stop();
	fuse_loop_cfg_destroy(cfg);
	fs_pt_release_all(fs);	/* what the kernel wrote, in the checkpoint */
out_unmount:
	fuse_session_unmount(se);
out_handlers:
	fuse_remove_signal_handlers(se);
out_destroy:
	fuse_session_destroy(se);
out:
	fuse_opt_free_args(&args);
	free(zero_buf);
	return rc;
}
