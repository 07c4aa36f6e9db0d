/*
 * fuzz_load.c - libFuzzer target: the input is a whole metadata file
 * (cowfs.meta).  It goes, as git's oss-fuzz targets hand bytes straight to
 * the parser, to:
 *
 *  1. the decoder: format_header_decode(), then format_decode() over
 *     every offset of the rest (and format_pack_next() over the
 *     sub-records of every REC_PACK found), and format_scan_journal();
 *  2. the loader and replay, read-only, and fsck's checks: fs_fsck()
 *     on a store whose cowfs.meta is the input;
 *  3. a read-write open and clean close (recovery, retiring, the final
 *     checkpoint); whatever a read-write open accepted and checkpointed
 *     must load again (else abort: a store cowfs wrote that it refuses).
 *
 * Steps 2 and 3 run twice: on the input as it is, and on a copy whose
 * checksums (every record's, the checkpoint's, the header's) are made
 * right, so that mutations reach the code behind the checksums, as a
 * crafted file would.
 *
 * Nothing may crash, leak, overflow, hang or allocate without bound: the
 * sanitizers and libFuzzer's -timeout and -rss_limit_mb catch those.
 *
 * One exception, by design: the loader accepts extents up to the store's
 * limit (COWFS_MAX_FILE_SIZE), and the work that counts blocks (the
 * refcount table, fsck, live counts) is proportional to the blocks the
 * extents map, as it is for a real store that holds that much data.  So
 * inputs whose records map more than FUZZ_MAX_BLOCKS blocks in all are
 * only decoded, not loaded: a timeout there says nothing new.  A REC_CLONE
 * replays every extent of its source again, so each one counts as a copy
 * of all the blocks mapped.
 * The store lives in a private directory under /dev/shm (or $TMPDIR).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <xxhash.h>

#include "cowfs/format.h"
#include "cowfs/fs.h"
#include "cowfs/store.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char store[256], meta[300];
static FILE *devnull;

static void setup(void)
{
	const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" :
			   getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
	char sub[320];
	int fd;

	snprintf(store, sizeof(store), "%s/cowfs-fuzz-XXXXXX", base);
	if (!mkdtemp(store))
		abort();
	snprintf(sub, sizeof(sub), "%s/" STORE_OBJDIR, store);
	if (mkdir(sub, 0700) < 0)
		abort();
	for (int i = 0; i < 256; i++) {
		snprintf(sub, sizeof(sub), "%s/" STORE_OBJDIR "/%02x", store, i);
		if (mkdir(sub, 0700) < 0)
			abort();
	}
	snprintf(sub, sizeof(sub), "%s/" STORE_LOCK, store);
	fd = open(sub, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
	if (fd < 0)
		abort();
	close(fd);
	snprintf(meta, sizeof(meta), "%s/" STORE_META, store);
	devnull = fopen("/dev/null", "we");
	if (!devnull)
		abort();
}

static void put_meta(const uint8_t *data, size_t size)
{
	int fd = open(meta, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0600);
	if (fd < 0)
		abort();
	for (size_t done = 0; done < size;) {
		ssize_t n = write(fd, data + done, size - done);
		if (n <= 0)
			abort();
		done += (size_t)n;
	}
	close(fd);
}

#define FUZZ_MAX_BLOCKS ((uint64_t)1 << 22)

static uint64_t rec_blocks(const struct rec *r)
{
	uint64_t len = r->type == REC_EXT_SET ? r->u.ext.len :
		       r->type == REC_REFCNT ? r->u.refcnt.len : 0;
	return len > FUZZ_MAX_BLOCKS ? FUZZ_MAX_BLOCKS + 1 : len;
}

/* Returns the blocks that the records at record boundaries map (packed
 * sub-records included). */
static uint64_t decode_all(const uint8_t *data, size_t size)
{
	struct disk_header h;
	struct rec r;
	struct jscan js;
	uint64_t blocks = 0, clones = 0;

	if (size < COWFS_HDR_SIZE)
		return 0;
	(void)format_header_decode(data, &h);
	for (size_t off = COWFS_HDR_SIZE; off < size; off++) {
		long n = format_decode(data + off, size - off, &r);
		if (n > 0 && (size_t)n > size - off)
			abort();	/* a record longer than the bytes */
		if (n > 0 && r.type == REC_PACK) {
			struct pack_reader rd;
			struct rec s;
			format_pack_open(&rd, &r);
			while (format_pack_next(&rd, &s) == 1) {
				if (format_pack_offset(&rd) > r.data_len)
					abort();	/* read past the pack */
				blocks += rec_blocks(&s);
			}
		} else if (n > 0) {
			blocks += rec_blocks(&r);
		}
		if (n > 0 && r.type == REC_CLONE)
			clones++;
	}
	(void)format_scan_journal(data, size, COWFS_HDR_SIZE, &js);
	if (js.good > size || js.bad > size)
		abort();
	if (blocks > FUZZ_MAX_BLOCKS)
		return blocks;
	return blocks * (clones + 1);
}

static uint64_t get_le(const uint8_t *p, int n)
{
	uint64_t v = 0;
	for (int i = 0; i < n; i++)
		v |= (uint64_t)p[i] << (8 * i);
	return v;
}

static void put_le(uint8_t *p, uint64_t v, int n)
{
	for (int i = 0; i < n; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

/* Make every checksum right (docs/format.md, "Checksums"). */
static void fix_checksums(uint8_t *b, size_t size)
{
	size_t off = COWFS_HDR_SIZE;

	if (size < COWFS_HDR_SIZE)
		return;
	while (size - off >= COWFS_REC_HDR_SIZE) {
		uint32_t len = (uint32_t)get_le(b + off, 4);
		if (len < COWFS_REC_HDR_SIZE || len > size - off)
			break;
		uint64_t seed = (uint64_t)len | get_le(b + off + 4, 2) << 32 |
				get_le(b + off + 6, 2) << 48;
		put_le(b + off + 8, XXH3_64bits_withSeed(b + off + 16, len - 16,
							 seed), 8);
		off += len;
	}
	uint64_t ck = get_le(b + 24, 8);
	if (ck <= size - COWFS_HDR_SIZE)
		put_le(b + 32, XXH3_64bits(b + COWFS_HDR_SIZE, (size_t)ck), 8);
	put_le(b + 56, XXH3_64bits(b, 56), 8);
}

static void load_all(const uint8_t *data, size_t size)
{
	struct fs_options opt = { .logfile = "/dev/null",
				  .commit_secs = 100000 };
	struct fs *fs;
	char err[1024];
	int rc;

	put_meta(data, size);
	(void)fs_fsck(store, 0, 0, devnull, err, sizeof(err));

	put_meta(data, size);
	rc = fs_open(store, &opt, &fs, err, sizeof(err));
	if (rc == 0) {
		rc = fs_close(fs);
		if (rc == 0) {
			/* what cowfs accepted and rewrote must load again */
			opt.ro = 1;
			rc = fs_open(store, &opt, &fs, err, sizeof(err));
			if (rc) {
				char keep[320];
				snprintf(keep, sizeof(keep), "%s.refused", store);
				rename(meta, keep);
				fprintf(stderr, "fuzz_load: a store cowfs "
					"checkpointed is refused: %s (kept as "
					"%s)\n", err, keep);
				abort();
			}
			fs_close(fs);
		}
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!devnull)
		setup();
	if (decode_all(data, size) <= FUZZ_MAX_BLOCKS)
		load_all(data, size);
	uint8_t *fixed = malloc(size ? size : 1);
	if (!fixed)
		abort();
	memcpy(fixed, data, size);
	fix_checksums(fixed, size);
	if (size && memcmp(fixed, data, size) &&
	    decode_all(fixed, size) <= FUZZ_MAX_BLOCKS)
		load_all(fixed, size);
	free(fixed);
	return 0;
}
