/*
 * fs.h - the cowfs core's public API: a mounted store as a filesystem of
 * inode numbers.  Used by the FUSE layer (fuse_ops.c) and the command line;
 * knows nothing of FUSE.
 *
 * Every function returns 0 (or a non-negative count) on success and -errno
 * on failure.  Functions that return attributes fill a struct stat.
 * Functions are thread-safe; see the lock order in fs_impl.h.
 */
#ifndef COWFS_FS_H
#define COWFS_FS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/types.h>

#define FS_ROOT_INO 1

struct fs;

struct fs_options {
	int ro;
	unsigned commit_secs;	/* periodic journal commit, 0: default 5 */
	const char *logfile;	/* NULL: stderr */
	int debug;
};

/* The caller of a request.  When its groups are not all known, a
 * permission check grants no more than if it were in every group. */
#define FS_CTX_GROUPS 1024
struct fs_ctx {
	uid_t uid;
	gid_t gid;
	mode_t umask;
	int ngroups;		/* supplementary groups, -1: unknown */
	int groups_cut;		/* 1: the caller has more than groups[] */
	gid_t groups[FS_CTX_GROUPS];
};

/* setattr's to_set bits */
enum fs_set {
	FS_SET_MODE = 1 << 0,
	FS_SET_UID = 1 << 1,
	FS_SET_GID = 1 << 2,
	FS_SET_SIZE = 1 << 3,
	FS_SET_ATIME = 1 << 4,
	FS_SET_MTIME = 1 << 5,
	FS_SET_ATIME_NOW = 1 << 6,
	FS_SET_MTIME_NOW = 1 << 7,
	FS_SET_CTIME = 1 << 8,
	/* clear setuid, and setgid if group-executable (not on a directory):
	 * what the VFS does on write, truncate and chown, done here when the
	 * kernel leaves it to the daemon (FUSE_CAP_HANDLE_KILLPRIV_V2) */
	FS_SET_KILL_SUIDGID = 1 << 9,
};

/* Create a new store with the given block size (log2).  err gets a message. */
int fs_init_store(const char *path, unsigned block_shift, char *err,
		  size_t errlen);

/* Open, lock and load a store; replays the journal after an unclean stop.
 * Caller owns *out; release with fs_close(). */
int fs_open(const char *path, const struct fs_options *opt, struct fs **out,
	    char *err, size_t errlen);
/* Start background work (the commit thread).  Call after any fork(). */
int fs_start(struct fs *fs);
/* Write a checkpoint, stop background work, unlock, free. */
int fs_close(struct fs *fs);

unsigned fs_block_size(const struct fs *fs);
void fs_log(struct fs *fs, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* Namespace.  Functions that return an entry (lookup, mknod, mkdir,
 * symlink, link, create) add one kernel lookup reference. */
int fs_lookup(struct fs *fs, uint64_t parent, const char *name, struct stat *st);
void fs_forget(struct fs *fs, uint64_t ino, uint64_t nlookup);
int fs_getattr(struct fs *fs, uint64_t ino, struct stat *st);
/*
 * Mode bits that a write, a truncate or a chown by a caller without
 * CAP_FSETID clears: setuid, and setgid when the file is group-executable
 * (without group exec it marks mandatory locking and stays).  A file
 * with them is not opened in FUSE passthrough mode (pt_eligible()): the
 * kernel's writes to it would not reach the daemon, which clears them
 * (write_kills_suidgid() in the FUSE layer).
 */
static inline int mode_kills_sxid(uint32_t mode)
{
	return (mode & S_ISUID) ||
	       (mode & (S_ISGID | S_IXGRP)) == (S_ISGID | S_IXGRP);
}

/* The inode's mode alone (type and permission bits): cheaper than a stat. */
int fs_mode(struct fs *fs, uint64_t ino, uint32_t *mode);
int fs_setattr(struct fs *fs, const struct fs_ctx *c, uint64_t ino,
	       const struct stat *in, int to_set, struct stat *st);
int fs_mknod(struct fs *fs, const struct fs_ctx *c, uint64_t parent,
	     const char *name, mode_t mode, dev_t rdev, struct stat *st);
/* An O_TMPFILE: a regular file in no directory (link count 0) that
 * fs_link() may name once; freed when forgotten unlinked, like an
 * unlinked open file, and by the next mount after a crash. */
int fs_tmpfile(struct fs *fs, const struct fs_ctx *c, uint64_t parent,
	       mode_t mode, struct stat *st);
int fs_symlink(struct fs *fs, const struct fs_ctx *c, uint64_t parent,
	       const char *name, const char *target, struct stat *st);
/* Copies the target into buf (NUL-terminated); returns its length. */
int fs_readlink(struct fs *fs, uint64_t ino, char *buf, size_t size);
/* *kept (may be NULL): the inode number of a file that lost this name
 * and keeps another, else 0 (the FUSE layer has the kernel drop its
 * cached link count: op_unlink()). */
int fs_unlink(struct fs *fs, uint64_t parent, const char *name,
	      uint64_t *kept);
int fs_rmdir(struct fs *fs, uint64_t parent, const char *name);
/* flags: RENAME_NOREPLACE, RENAME_EXCHANGE; *kept as for fs_unlink(),
 * for the file a rename replaced. */
int fs_rename(struct fs *fs, uint64_t parent, const char *name,
	      uint64_t newparent, const char *newname, unsigned flags,
	      uint64_t *kept);
int fs_link(struct fs *fs, uint64_t ino, uint64_t newparent,
	    const char *newname, struct stat *st);

/* Directory listing.  Entries come in cookie order after 'off'; emit()
 * returns nonzero when the reply buffer is full (the entry is not taken).
 * With plus set, each taken entry with 'node' set gets a lookup
 * reference; node is 0 for "." and "..", and for a file in passthrough
 * mode, whose size and times the daemon may not know yet (the entry then
 * gives the kernel no attributes to cache). */
typedef int (*fs_emit_fn)(void *ctx, const char *name, const struct stat *st,
			  uint64_t next_off, int node);
int fs_readdir(struct fs *fs, uint64_t ino, uint64_t off, int plus,
	       fs_emit_fn emit, void *ctx);

/* Open files. */
int fs_open_file(struct fs *fs, uint64_t ino, int flags);
void fs_release(struct fs *fs, uint64_t ino);
int fs_fsync(struct fs *fs, uint64_t ino);

/*
 * FUSE passthrough (docs/design.md, "Passthrough"): the kernel does a
 * file's reads and writes on its write object itself.  reg() hands fd to
 * the kernel and returns a backing id (> 0) or -errno.
 *
 * fs_pt_open: an open (open(2) flags) in a passthrough connection,
 * counted as fs_open_file() counts; a read-only open of a file under
 * 1 MiB that is not in the mode yet stays plain.  1: in passthrough mode, *backing is the file's
 * backing id; 0: a plain open (the file is not eligible, or reg failed
 * with *backing = its -errno; a *backing > 0 was registered but is not
 * used: the caller closes it); or -errno.
 * fs_pt_release: the release of such an open (pt: fs_pt_open returned
 * 1).  Returns 1 when it was the last passthrough open of the file: the
 * caller then closes *backing.
 * fs_pt_sync: bring the size and map of a file in passthrough mode up to
 * what the kernel wrote (nothing for other files); fsync: the object's
 * data is synced at the next commit too; blocks (if not NULL): the
 * object's st_blocks, which are the file's, if it is in passthrough mode.
 * fs_pt_setattr_done: after a setattr that changed the size (rc: how
 * it went, 0 or -errno): in passthrough mode a shrink is committed, then
 * the object is cut; a failure (rc, or of the commit or the cut) puts the
 * old size back.  Returns the SETATTR's result; *backing as for
 * fs_pt_release (a last release that came meanwhile left the mode here).
 * fs_pt_release_all: at unmount, every open the kernel did not release.
 */
typedef int (*fs_backing_fn)(void *ctx, int fd);
int fs_pt_open(struct fs *fs, uint64_t ino, int flags, fs_backing_fn reg,
	       void *ctx, int *backing);
int fs_pt_release(struct fs *fs, uint64_t ino, int pt, int *backing);
int fs_pt_sync(struct fs *fs, uint64_t ino, int fsync, uint64_t *blocks);
int fs_pt_setattr_done(struct fs *fs, uint64_t ino, int rc, int *backing);
void fs_pt_release_all(struct fs *fs);
int fs_statfs(struct fs *fs, struct statvfs *sv);

/* Reads: fs_read_map describes [off, off+size) as segments of object fds
 * (fd >= 0, pos) or zeros (fd == -1).  The fds stay valid until
 * fs_read_done(); the caller owns *segs (free()). */
struct fs_seg {
	int fd;
	uint64_t obj;
	off_t pos;
	size_t len;
};
int fs_read_map(struct fs *fs, uint64_t ino, off_t off, size_t size,
		struct fs_seg **segs, int *nseg);
void fs_read_done(struct fs *fs, struct fs_seg *segs, int nseg);

/* Writes: the core decides where the bytes go and calls fill() to put
 * len bytes at fd offset pos; fill returns bytes written or -errno. */
typedef ssize_t (*fs_fill_fn)(void *ctx, int fd, off_t pos, size_t len);
ssize_t fs_write(struct fs *fs, uint64_t ino, off_t off, size_t len,
		 fs_fill_fn fill, void *ctx);
int fs_fallocate(struct fs *fs, uint64_t ino, int mode, off_t off, off_t len);
off_t fs_lseek(struct fs *fs, uint64_t ino, off_t off, int whence);
ssize_t fs_copy_range(struct fs *fs, uint64_t ino_in, off_t off_in,
		      uint64_t ino_out, off_t off_out, size_t len);

/* Extended attributes (system.posix_acl_* included). getxattr/listxattr
 * return the size; size 0 asks for the size only. */
int fs_setxattr(struct fs *fs, uint64_t ino, const char *name,
		const void *value, size_t size, int flags);
int fs_getxattr(struct fs *fs, uint64_t ino, const char *name, void *buf,
		size_t size);
int fs_listxattr(struct fs *fs, uint64_t ino, char *buf, size_t size);
int fs_removexattr(struct fs *fs, uint64_t ino, const char *name);

/* The one check of a name that a new entry gets (live operations,
 * clones, clones by reference, replayed records): 0, -EINVAL for an
 * empty name, ".", "..", or one holding '/' or NUL, -ENAMETOOLONG over
 * 255 bytes.  len is the name's length without a terminating NUL. */
int fs_name_check(const char *name, size_t len);

/* Clone src (file, symlink or tree) as dst_parent/name.  No lookup
 * reference is taken.  src_ino is trusted: for in-process callers. */
int fs_clone(struct fs *fs, const struct fs_ctx *c, uint64_t src_ino,
	     uint64_t dst_parent, const char *name, struct stat *st);
/* The same for a request from a user: SRC is the entry src_name of
 * directory src_parent, which must name src_ino (src_parent 0 and an
 * empty src_name: SRC is the root).  The caller needs search permission
 * on every directory from src_parent and from dst_parent up to the root,
 * write on dst_parent, read on every file and read and search on every
 * directory it clones (mode bits, ACLs, supplementary groups). */
int fs_clone_at(struct fs *fs, const struct fs_ctx *c, uint64_t src_parent,
		const char *src_name, uint64_t src_ino, uint64_t dst_parent,
		const char *name, struct stat *st);

/* Clone a host tree or file by reference (zero-copy) as dst_parent/name;
 * its files become read-only origin objects.  Host paths are opened with
 * the caller's credentials.  *skipped counts sockets and device nodes
 * left out.  With name NULL the host directory's contents go into
 * dst_parent itself (the --origin root). */
int fs_clone_host(struct fs *fs, const struct fs_ctx *c, const char *host,
		  uint64_t dst_parent, const char *name, uint64_t *skipped);
/* Copy every block a regular file still reads from an origin into the
 * store.  The caller needs read permission on it.  Returns bytes copied
 * or -errno. */
int64_t fs_detach(struct fs *fs, const struct fs_ctx *c, uint64_t ino);
/* The --origin of this store: 0 and *dir (caller frees) if it has one,
 * -ENODATA if not. */
int fs_origin_root(struct fs *fs, char **dir);
/* Make the root a clone of host dir (a new or empty store), or check that
 * it is the store's recorded origin.  err gets a message. */
int fs_attach_origin(struct fs *fs, const char *dir, char *err, size_t errlen);

struct fs_usage {
	uint64_t logical;	/* bytes of file data (sum of sizes) */
	uint64_t shared;	/* du: bytes in blocks also used outside PATH;
				 * df: bytes in blocks with refcount >= 2 */
	uint64_t exclusive;	/* du: bytes in blocks only PATH uses;
				 * df: bytes in all referenced blocks */
	uint64_t files, dirs, other;
	uint64_t meta_bytes;	/* df: metadata file size */
	uint64_t block_size;
	uint64_t objects;	/* df: object files */
	uint64_t origin;	/* df: bytes read in place from host origins */
	uint64_t host;		/* host bytes of store objects (st_blocks):
				 * df all, du the share of PATH's blocks */
};
/* du of ino: a directory needs search permission on it and its
 * ancestors, and read and search on every directory under it. */
int fs_du(struct fs *fs, const struct fs_ctx *c, uint64_t ino,
	  struct fs_usage *u);
int fs_df(struct fs *fs, struct fs_usage *u);

/* Offline check of a store (not mounted).  Prints to out; repair returns
 * leaked space.  Returns 0 clean (leaks alone count as clean), 1 problems
 * found, or -errno when the store cannot be opened (message in err). */
int fs_fsck(const char *path, int repair, int verbose, void *out, char *err,
	    size_t errlen);

/* How far fs_fsck_ex() is, for a progress display in another thread:
 * work units (an inode's namespace check, its blocks' check, an object
 * file) done out of total; total is 0 while the metadata is loading. */
struct fsck_progress {
	_Atomic uint64_t done;
	_Atomic uint64_t total;
};
/* fs_fsck() that reports its progress in *prog (NULL: none). */
int fs_fsck_ex(const char *path, int repair, int verbose, void *out,
	       struct fsck_progress *prog, char *err, size_t errlen);

#endif
