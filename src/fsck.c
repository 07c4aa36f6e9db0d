/*
 * fsck.c - offline consistency check of a store, through the core alone:
 * recomputes every refcount from the extent maps, checks that every
 * mapped block lies in an existing object, checks the namespace (entries,
 * link counts, parents), and finds leaked space (object files or blocks
 * that nothing references).  --repair returns leaked space to the host.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <linux/falloc.h>

#include "cowfs/fs_impl.h"

struct fsck {
	struct fs *fs;
	FILE *out;
	int verbose, repair;
	uint64_t errors, leaked_blocks, leaked_objects;
	struct refcount refs;	/* block -> references + 1 */
	struct refcount links;	/* ino -> dirents naming it + 1 */
	struct fsck_progress *prog;	/* NULL: nobody watches */
};

static void tick(struct fsck *k)
{
	if (k->prog)
		k->prog->done++;
}

static void problem(struct fsck *k, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void problem(struct fsck *k, const char *fmt, ...)
{
	va_list ap;
	k->errors++;
	if (k->errors > 100 && !k->verbose)
		return;
	fprintf(k->out, "error: ");
	va_start(ap, fmt);
	vfprintf(k->out, fmt, ap);
	va_end(ap);
	fputc('\n', k->out);
}

static void count(struct refcount *rc, uint64_t a, uint64_t b, int *oom)
{
	uint32_t v = refcount_get(rc, a, b);
	if (refcount_set(rc, a, b, v + 1))
		*oom = 1;
}

static uint32_t counted(struct refcount *rc, uint64_t a, uint64_t b)
{
	return refcount_get(rc, a, b) - 1;	/* absent: 0 */
}

static void check_namespace(struct fsck *k, int *oom)
{
	struct fs *fs = k->fs;
	struct inode *in;

	INODE_FOREACH(in, fs) {
		struct dent *d;
		tick(k);
		if (!S_ISDIR(in->mode))
			continue;
		uint64_t subdirs = 0;
		for (size_t i = 0; (d = dir_next(in, &i)); i++) {
			struct inode *ch = inode_get(fs, d->ino);
			if (!ch) {
				problem(k, "directory %" PRIu64 " entry '%s' names "
					"missing inode %" PRIu64, in->ino,
					dent_name(in, d), d->ino);
				continue;
			}
			count(&k->links, d->ino, 0, oom);
			if (S_ISDIR(ch->mode)) {
				subdirs++;
				if (dir_parent(ch) != in->ino)
					problem(k, "directory %" PRIu64 " has parent %"
						PRIu64 " but is named in %" PRIu64,
						ch->ino, dir_parent(ch), in->ino);
			}
		}
		if (in->nlink != 2 + subdirs)
			problem(k, "directory %" PRIu64 " has nlink %u, expected %"
				PRIu64, in->ino, in->nlink, 2 + subdirs);
	}
	INODE_FOREACH(in, fs) {
		uint32_t n = counted(&k->links, in->ino, 0);
		if (in->ino == FS_ROOT_INO) {
			if (n)
				problem(k, "the root directory is named in a directory");
			continue;
		}
		if (n == 0)
			problem(k, "inode %" PRIu64 " is in no directory", in->ino);
		else if (S_ISDIR(in->mode) && n != 1)
			problem(k, "directory %" PRIu64 " is named %u times",
				in->ino, n);
		else if (!S_ISDIR(in->mode) && in->nlink != n)
			problem(k, "inode %" PRIu64 " has nlink %u, but %u names",
				in->ino, in->nlink, n);
	}
}

static void check_blocks(struct fsck *k, int *oom)
{
	struct fs *fs = k->fs;
	struct inode *in;
	size_t it = 0;
	uint64_t obj, pblk;
	uint32_t v;

	INODE_FOREACH(in, fs) {
		tick(k);
		if (!S_ISREG(in->mode))
			continue;
		for (size_t i = 0; i < extmap_n(&in->map); i++) {
			const struct extent ev = extmap_at(&in->map, i), *e = &ev;
			struct object *o = obj_get(fs, e->obj);
			if (!o) {
				problem(k, "inode %" PRIu64 " maps unknown object %016"
					PRIx64, in->ino, e->obj);
				continue;
			}
			for (uint64_t b = 0; b < e->len; b++)
				count(&k->refs, e->obj, e->pblk + b, oom);
		}
	}
	/* every stored count must be the real count */
	while (refcount_next(&fs->rc, &it, &obj, &pblk, &v)) {
		uint32_t real = counted(&k->refs, obj, pblk);
		if (real != v)
			problem(k, "block %016" PRIx64 ":%" PRIu64 " has refcount %u, "
				"but %u references", obj, pblk, v, real);
	}
	it = 0;
	while (refcount_next(&k->refs, &it, &obj, &pblk, &v)) {
		uint32_t stored = refcount_get(&fs->rc, obj, pblk);
		if (v - 1 >= 2 && stored != v - 1)
			problem(k, "block %016" PRIx64 ":%" PRIu64 " has %u references "
				"but refcount %u", obj, pblk, v - 1, stored);
	}
}

/* Objects on disk: referenced ones must exist and cover their blocks;
 * others are leaks. */
static void check_objects(struct fsck *k)
{
	struct fs *fs = k->fs;
	char sub[8];

	for (int x = 0; x < 256; x++) {
		snprintf(sub, sizeof(sub), "%02x", x);
		int dfd = openat(fs->store.objfd, sub, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (dfd < 0) {
			problem(k, "objects/%s: %s", sub, strerror(errno));
			continue;
		}
		DIR *d = fdopendir(dfd);
		struct dirent *de;
		while (d && (de = readdir(d))) {
			if (de->d_name[0] == '.')
				continue;
			tick(k);
			char *end;
			uint64_t id = strtoull(de->d_name, &end, 16);
			if (*end || id == 0) {
				problem(k, "objects/%s/%s: not an object file", sub,
					de->d_name);
				continue;
			}
			struct object *o = obj_get(fs, id);
			if (!o || (o->nlive == 0 && obj_owner(o) == 0)) {
				k->leaked_objects++;
				if (k->verbose)
					fprintf(k->out, "leak: object %016" PRIx64
						" is not used\n", id);
				if (k->repair)
					store_obj_unlink(&fs->store, id);
				continue;
			}
			/* blocks that hold data but that nothing maps */
			int fd = store_obj_open(&fs->store, id, 0);
			if (fd < 0)
				continue;
			off_t pos = 0, hole;
			while ((pos = lseek(fd, pos, SEEK_DATA)) >= 0) {
				hole = lseek(fd, pos, SEEK_HOLE);
				if (hole < 0)
					break;
				for (uint64_t b = (uint64_t)pos >> fs->block_shift;
				     (b << fs->block_shift) < (uint64_t)hole; b++) {
					if (counted(&k->refs, id, b))
						continue;
					k->leaked_blocks++;
					if (k->repair &&
					    fallocate(fd, FALLOC_FL_PUNCH_HOLE |
						      FALLOC_FL_KEEP_SIZE,
						      (off_t)(b << fs->block_shift),
						      (off_t)fs->block_size) < 0)
						fprintf(k->out, "warning: punch: %s\n",
							strerror(errno));
				}
				pos = hole;
			}
			close(fd);
		}
		if (d)
			closedir(d);
		else
			close(dfd);
	}
	/* referenced objects must exist */
	struct object *o;
	for (size_t it_ = 0; (o = obj_next(fs, &it_));) {
		if (o->nlive == 0)
			continue;
		if (o->origin) {
			/* an origin: still the host file that was cloned? */
			char path[PATH_MAX];
			int fd = origin_open(fs, o);
			origin_path(o, path);
			if (fd < 0)
				problem(k, "origin file '%s' changed or is gone since it "
					"was cloned (its clones' reads fail with EIO)",
					path);
			else
				close(fd);
			continue;
		}
		int fd = store_obj_open(&fs->store, o->id, 0);
		if (fd < 0) {
			problem(k, "object %016" PRIx64 " holds %" PRIu64 " referenced "
				"blocks but cannot be opened: %s", o->id, o->nlive,
				strerror(-fd));
			continue;
		}
		close(fd);
	}
}

/*
 * The journal before the load: a bad record with committed batches after
 * it is corruption that fs_open() refuses.  With --repair (and only then)
 * cut the journal at the end of the last whole batch before the bad
 * record, say what that drops, and set the mount mark so the load that
 * follows retires every write object (the dropped batches may have filled
 * slots that no surviving record describes).  0, or -errno with err.
 */
static int fsck_journal(struct fsck *k, const char *path, char *err,
			size_t errlen)
{
	struct store st;
	struct disk_header h;
	struct jscan js;
	void *data = NULL;
	size_t len = 0;
	int rc;

	rc = store_open(&st, path, !k->repair, err, errlen);
	if (rc)
		return rc;
	rc = store_meta_read(&st, &data, &len);
	if (rc || len < COWFS_HDR_SIZE || format_header_decode(data, &h) ||
	    h.ckpt_len > len - COWFS_HDR_SIZE) {
		rc = 0;		/* fs_open() says what is wrong */
		goto out;
	}
	size_t end = COWFS_HDR_SIZE + (size_t)h.ckpt_len;
	enum jscan_result res = format_scan_journal(data, len, end, &js);
	if (res != JSCAN_BAD_MIDDLE && res != JSCAN_NONSENSE)
		goto out;
	fprintf(k->out, "%s: journal record at offset %zu is corrupt; %zu "
		"byte(s) from offset %zu on hold %llu later committed batch(es)"
		"%s\n", k->repair ? "repair" : "error", js.bad, len - js.good,
		js.good, (unsigned long long)js.later_commits,
		res == JSCAN_NONSENSE ? " (a record that checksums but makes no "
		"sense)" : "");
	if (!k->repair)
		goto out;	/* fs_open() refuses with the same offset */
	unsigned char hdr[COWFS_HDR_SIZE];
	memcpy(hdr, data, sizeof(hdr));
	format_header_set_mounted(hdr, 1);
	rc = store_meta_cut(&st, hdr, sizeof(hdr), js.good);
	if (rc) {
		snprintf(err, errlen, "'%s/%s': cutting the journal: %s", path,
			 STORE_META, strerror(-rc));
		goto out;
	}
	fprintf(k->out, "repair: journal cut at offset %zu: dropped %zu "
		"byte(s), the batches after seq %llu%s%llu\n", js.good,
		len - js.good, (unsigned long long)js.good_seq,
		js.later_seq ? " up to seq " : "",
		(unsigned long long)js.later_seq);
out:
	free(data);
	store_close(&st);
	return rc;
}

int fs_fsck(const char *path, int repair, int verbose, void *outp, char *err,
	    size_t errlen)
{
	return fs_fsck_ex(path, repair, verbose, outp, NULL, err, errlen);
}

int fs_fsck_ex(const char *path, int repair, int verbose, void *outp,
	       struct fsck_progress *prog, char *err, size_t errlen)
{
	struct fs_options opt = { .ro = !repair };
	struct fsck k = { .out = outp, .verbose = verbose, .repair = repair,
			  .prog = prog };
	struct fs *fs;
	int oom = 0, rc;

	rc = fsck_journal(&k, path, err, errlen);
	if (rc)
		return rc;
	rc = fs_open(path, &opt, &fs, err, errlen);
	if (rc)
		return rc;
	k.fs = fs;
	if (prog) {
		uint64_t nobj = 0;
		struct object *o;
		for (size_t it_ = 0; (o = obj_next(fs, &it_));)
			nobj += !o->origin;
		prog->total = 2 * fs->ninodes + nobj;
	}
	refcount_init(&k.refs);
	refcount_init(&k.links);
	check_namespace(&k, &oom);
	check_blocks(&k, &oom);
	check_objects(&k);
	if (oom)
		problem(&k, "out of memory while checking");
	uint64_t inodes = 0;
	struct inode *in;
	INODE_FOREACH(in, fs)
		inodes++;
	fprintf(k.out, "%s: %" PRIu64 " inodes, %" PRIu64 " problem(s), %" PRIu64
		" leaked object(s), %" PRIu64 " leaked block(s)%s\n", fs->store.path,
		inodes, k.errors, k.leaked_objects, k.leaked_blocks,
		repair && (k.leaked_objects || k.leaked_blocks) ? " (returned)" :
		(k.leaked_objects || k.leaked_blocks) ? " (cowfs fsck --repair returns them)" : "");
	refcount_release(&k.refs);
	refcount_release(&k.links);
	rc = fs_close(fs);
	if (rc && repair) {
		snprintf(err, errlen, "'%s': writing the repaired metadata: %s",
			 path, strerror(-rc));
		return rc;
	}
	return k.errors ? 1 : 0;
}
