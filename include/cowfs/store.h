/*
 * store.h - the store directory on the host: its lock, the metadata file,
 * and the object files that hold blocks.  No policy: the core decides what
 * to write, the store does the syscalls.  (Failure injection is done with
 * real failures in the tests: a full loop-mounted disk, kill -9.)
 *
 * Layout:  STORE/cowfs.meta        metadata file (format.h)
 *          STORE/lock              flock()ed by the daemon; holds its pid
 *          STORE/objects/XX/ID     object files, ID 16 hex digits, XX its
 *                                  low byte
 */
#ifndef COWFS_STORE_H
#define COWFS_STORE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define STORE_META "cowfs.meta"
#define STORE_LOCK "lock"
#define STORE_OBJDIR "objects"

struct store {
	char *path;	/* owned, absolute */
	int dirfd;
	int objfd;	/* objects/ */
	int lockfd;
	int ro;
};

/* Create a new store at path (missing or an empty directory).  Writes the
 * given metadata image.  Returns 0 or -errno with a message in err. */
int store_create(const char *path, const void *meta, size_t len, char *err,
		 size_t errlen);

/* Open and lock a store.  0, or -errno with a message in err (-EBUSY when
 * another daemon holds it). */
int store_open(struct store *s, const char *path, int ro, char *err,
	       size_t errlen);
void store_close(struct store *s);
/* Record the daemon's pid in the lock file (after it forked). */
void store_set_pid(struct store *s);

/* Open an object file; create it (empty) when create is set. fd or -errno */
int store_obj_open(struct store *s, uint64_t id, int create);
int store_obj_unlink(struct store *s, uint64_t id);

/* Read the whole metadata file.  Caller owns *buf (free()). */
int store_meta_read(struct store *s, void **buf, size_t *len);
/* Replace the metadata file atomically: temp, fsync, rename, fsync dir.
 * Returns an fd open on the new file for appending, or -errno. */
int store_meta_replace(struct store *s, const void *buf, size_t len);
/* The two halves of store_meta_replace(), for a checkpoint written by a
 * child process: write and fsync STORE/metadata.tmp (returns its fd,
 * caller closes), then rename it over the metadata file and fsync the
 * directory (0 or -errno).  drop_tmp removes a temporary left behind. */
int store_meta_write_tmp(struct store *s, const void *buf, size_t len);
int store_meta_install_tmp(struct store *s);
void store_meta_drop_tmp(struct store *s);
/* Open the current metadata file for appending journal records. */
int store_meta_open(struct store *s);
/* Repair: overwrite the metadata file's first hlen bytes with hdr, cut it
 * to len bytes, and fsync it.  0 or -errno. */
int store_meta_cut(struct store *s, const void *hdr, size_t hlen,
		   uint64_t len);

/* The pid of the daemon holding a store's lock, or 0. */
pid_t store_lock_owner(const char *path);

/* The daemon's stop status (0 or -errno from fs_close), recorded in the
 * lock file for 'cowfs umount'; store_last_stop() gives it back (0 and
 * *rc), or -ENODATA when the last daemon recorded none. */
int store_record_stop(const char *path, int rc);
int store_last_stop(const char *path, int *rc);

#endif
