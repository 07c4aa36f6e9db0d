/*
 * ioctl.h - the protocol between the cowfs command and its daemon, shared
 * by both.  Every request is a fixed-size struct in an _IOWR number, so
 * FUSE passes it to the daemon ("restricted" ioctl), on a file or
 * directory fd opened inside the mount.  The daemon refuses (EINVAL) a
 * request whose flags or reserved fields are not 0 or whose strings are
 * not NUL-terminated inside their buffers.
 */
#ifndef COWFS_IOCTL_H
#define COWFS_IOCTL_H

#include <linux/ioctl.h>
#include <stdint.h>

#define COWFS_IOC_MAGIC 0xCF

/* Clone: issued on the destination's parent directory.  SRC is named by
 * its parent directory and its name, and the daemon checks that this
 * entry is SRC now: an inode number alone is never trusted. */
struct cowfs_ioc_clone {
	uint64_t src_ino;	/* in: st_ino of SRC (same mount) */
	uint64_t flags;		/* in: 0 */
	uint64_t src_parent;	/* in: st_ino of SRC's parent directory;
				 * 0 when SRC is the mount's root */
	uint64_t reserved;	/* in: 0 */
	char name[256];		/* in: destination name, NUL-terminated;
				 * out: unchanged */
	char src_name[256];	/* in: SRC's name in src_parent ("" for the
				 * root), NUL-terminated */
};

/* Accounting: issued on the path measured (du) or any fd (df).  Every
 * field is out; the request must come zeroed (reserved[] is checked). */
struct cowfs_ioc_usage {
	uint64_t logical;	/* out: bytes of file data (sizes) */
	uint64_t shared;	/* out: bytes in blocks shared with files
				 * outside PATH (du) / shared blocks (df) */
	uint64_t exclusive;	/* out: bytes in blocks only PATH uses (du) /
				 * referenced blocks in all (df) */
	uint64_t files;		/* out: regular files (inodes) */
	uint64_t dirs;		/* out: directories */
	uint64_t other;		/* out: symlinks, fifos, ... */
	uint64_t meta_bytes;	/* out: metadata file size (df) */
	uint64_t block_size;	/* out */
	uint64_t objects;	/* out: object files (df) */
	uint64_t origin;	/* out: bytes read in place from origins (df) */
	uint64_t host;		/* out: bytes the store's object files take
				 * on the host (st_blocks * 512): all of
				 * them (df), PATH's blocks' share (du) */
	uint64_t reserved[23];
};

/* Clone by reference: issued on the destination's parent directory. */
struct cowfs_ioc_clone_host {
	uint64_t flags;		/* in: 0 */
	uint64_t skipped;	/* out: sockets and device nodes left out */
	char name[256];		/* in: destination name, NUL-terminated */
	char path[4096];	/* in: absolute host path of SRC,
				 * NUL-terminated */
};

/* Detach: issued on a regular file. */
struct cowfs_ioc_detach {
	uint64_t flags;		/* in: 0 */
	uint64_t bytes;		/* out: bytes copied from origins */
	uint64_t reserved[32];	/* in: 0 */
};

_Static_assert(sizeof(struct cowfs_ioc_clone) == 544, "clone arg size");
_Static_assert(sizeof(struct cowfs_ioc_clone_host) == 4368, "host arg size");
_Static_assert(sizeof(struct cowfs_ioc_detach) == 272, "detach arg size");
_Static_assert(sizeof(struct cowfs_ioc_usage) == 272, "usage arg size");

/* 1 was the clone by inode number alone (refused: ENOTTY) */
#define COWFS_IOC_CLONE _IOWR(COWFS_IOC_MAGIC, 6, struct cowfs_ioc_clone)
#define COWFS_IOC_DU _IOWR(COWFS_IOC_MAGIC, 2, struct cowfs_ioc_usage)
#define COWFS_IOC_DF _IOWR(COWFS_IOC_MAGIC, 3, struct cowfs_ioc_usage)
#define COWFS_IOC_CLONE_HOST _IOWR(COWFS_IOC_MAGIC, 4, struct cowfs_ioc_clone_host)
#define COWFS_IOC_DETACH _IOWR(COWFS_IOC_MAGIC, 5, struct cowfs_ioc_detach)

/* Status of the daemon and its store ('cowfs status'): any fd in the
 * mount.  Strings are NUL-terminated, cut if longer. */
struct cowfs_ioc_status {
	uint64_t flags;		/* in: 0 */
	uint64_t pid;		/* out: the daemon's pid */
	uint64_t uptime_ns;	/* out: since the daemon opened the store */
	uint64_t block_size;
	uint64_t inodes;	/* out: all inodes, the root included */
	uint64_t files, dirs, other;
	uint64_t shared_files;	/* out: regular files with a block shared with
				 * another file, or read from an origin */
	uint64_t origin_files;	/* out: origin objects (host files) */
	uint64_t objects;	/* out: store object files */
	uint64_t logical;	/* out: as df */
	uint64_t physical;
	uint64_t shared;
	uint64_t origin;
	uint64_t host_bytes;	/* out: sum of st_blocks * 512 of the store's
				 * object files */
	uint64_t meta_bytes;	/* out: metadata file size */
	uint64_t ro;		/* out: 1 if mounted read-only */
	uint64_t reserved[11];	/* in: 0 */
	uint64_t passthrough;	/* out: 1 if the mount uses FUSE passthrough
				 * (in: 0, as reserved) */
	uint64_t pt_opens;	/* out: passthrough opens since the mount */
	uint64_t pt_files;	/* out: files in passthrough mode now */
	char store[4096];	/* out: the store's absolute path */
	char origin_dir[4096];	/* out: the --origin DIR, or "" */
	char log[1024];		/* out: "syslog", "stderr" or a file path */
};
_Static_assert(sizeof(struct cowfs_ioc_status) == 9472, "status arg size");

#define COWFS_IOC_STATUS _IOWR(COWFS_IOC_MAGIC, 6, struct cowfs_ioc_status)

#endif
