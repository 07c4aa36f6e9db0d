/*
 * format.h - the metadata file's on-disk encoding (the only module that
 * knows it).  The byte-by-byte description is docs/format.md.
 *
 * The metadata file is a header, a checkpoint (a run of records whose
 * length and checksum are in the header) and a journal (records appended
 * after the checkpoint, committed in batches that end in a COMMIT record).
 * All integers are little-endian and fixed-width, except inside the
 * checkpoint's packed records (REC_PACK), which hold varints.
 */
#ifndef COWFS_FORMAT_H
#define COWFS_FORMAT_H

#include <stddef.h>
#include <stdint.h>

#define COWFS_MAGIC        "COWFSMD1"	/* 8 bytes, no NUL stored */
#define COWFS_VERSION_FMT  1u
#define COWFS_HDR_SIZE     64u
#define COWFS_REC_HDR_SIZE 16u
#define COWFS_NAME_MAX     255u
#define COWFS_XATTR_MAX    65536u
#define COWFS_REC_MAX      (COWFS_REC_HDR_SIZE + 64u + 2u * COWFS_XATTR_MAX)

/* Feature bits.  An unknown incompat bit refuses the mount; unknown
 * compat bits are ignored.  COWFS_INCOMPAT_PACKED: the checkpoint holds
 * REC_PACK records (a cowfs that predates them says "metadata uses unknown
 * incompatible features" instead of misreading them). */
#define COWFS_INCOMPAT_PACKED 1u
#define COWFS_INCOMPAT_KNOWN  COWFS_INCOMPAT_PACKED

/* Header state flags (disk_header.flags).  HDR_MOUNTED is set, durably,
 * before a read-write mount changes anything, and cleared only by the
 * checkpoint of a clean close: found set at load, it means the last stop
 * was unclean (invariant 4 of fs_impl.h).  Unknown flags are ignored. */
#define COWFS_HDR_MOUNTED 1u

/* Store limits the loader enforces (the write path refuses more). */
#define COWFS_MAX_FILE_SIZE ((uint64_t)1 << 62)

struct disk_header {
	char magic[8];
	uint32_t version;
	uint32_t incompat;
	uint32_t compat;
	uint32_t block_shift;
	uint64_t ckpt_len;	/* bytes of checkpoint records after header */
	uint64_t ckpt_csum;	/* xxh3-64 of those bytes */
	uint64_t generation;	/* bumped by every checkpoint */
	uint32_t flags;		/* COWFS_HDR_MOUNTED */
	uint32_t reserved;
	uint64_t hdr_csum;	/* xxh3-64 of the 56 bytes above */
};
_Static_assert(sizeof(struct disk_header) == COWFS_HDR_SIZE, "header size");

enum rec_type {
	REC_SUPER = 1,		/* checkpoint only: counters */
	REC_INODE = 2,		/* create or replace an inode's attributes */
	REC_INODE_DEL = 3,	/* free an inode and everything it maps */
	REC_DIRENT_ADD = 4,
	REC_DIRENT_DEL = 5,
	REC_EXT_SET = 6,	/* map a run of logical blocks */
	REC_EXT_PUNCH = 7,	/* unmap a run of logical blocks */
	REC_XATTR_SET = 8,
	REC_XATTR_DEL = 9,
	REC_REFCNT = 10,	/* checkpoint only: a shared block's count */
	REC_COMMIT = 11,	/* journal only: end of an atomic batch */
	REC_CLONE = 12,		/* a whole clone, replayed deterministically */
	REC_ORIGIN = 13,	/* an origin file's identity */
	REC_PACK = 14,		/* checkpoint only: packed sub-records */
};

/* REC_EXT_SET flags */
enum ext_flags {
	EXT_NEW = 1 << 0,	/* fresh blocks in a write object (count 1) */
	EXT_SHARE = 1 << 1,	/* one more reference to existing blocks */
	EXT_NOREF = 1 << 2,	/* checkpoint: counts come from REC_REFCNT */
};

/* Decoded record.  Pointers (name, data) point into the buffer that was
 * decoded, or are owned by the caller when encoding. */
struct rec {
	uint16_t type;
	uint16_t flags;
	union {
		struct {
			uint64_t next_ino, next_obj, root_ino;
		} super;
		struct {
			uint64_t ino, size, wobj, rdev, next_cookie, parent;
			uint32_t mode, uid, gid, nlink, flags;
			int64_t atime_sec, mtime_sec, ctime_sec, btime_sec;
			uint32_t atime_nsec, mtime_nsec, ctime_nsec, btime_nsec;
		} inode;	/* plus data = symlink target */
		struct {
			uint64_t ino;
		} del;
		struct {
			uint64_t parent, ino, cookie;
		} dirent;	/* plus name */
		struct {
			uint64_t ino, lblk, len, obj, pblk;
		} ext;
		struct {
			uint64_t ino;
		} xattr;	/* plus name, data = value */
		struct {
			uint64_t obj, pblk, len;
			uint32_t count;
		} refcnt;
		struct {
			uint64_t seq, next_ino, next_obj;
		} commit;
		struct {
			uint64_t src_ino, dst_parent, first_ino, cookie;
			int64_t time_sec;
			uint32_t time_nsec, flags;
			uint32_t uid, gid;	/* owner override (CLONE_OWNER) */
		} clone;	/* plus name = destination name */
		struct {
			uint64_t obj, dev, ino, size;
			int64_t mtime_ns, ctime_ns;
		} origin;	/* plus data = host path */
	} u;
	const char *name;
	uint32_t name_len;
	const void *data;
	uint32_t data_len;
};

/* Encode into buf (at least COWFS_REC_MAX bytes); returns bytes used. */
size_t format_encode(const struct rec *r, void *buf);

/*
 * Decode one record at buf[0..avail).  Returns its length, 0 when the
 * bytes are short or fail their checksum (a torn tail), or -1 when the
 * record checksums fine but makes no sense (corruption).
 */
long format_decode(const void *buf, size_t avail, struct rec *r);

/*
 * Packed records (REC_PACK): one checksummed record whose payload is a run
 * of sub-records in a compact varint encoding, each coded as a delta
 * against the sub-records before it in the same pack (docs/format.md,
 * "Packed records").  A sub-record decodes into the same struct rec as
 * the record of its type.  Only the checkpoint types are packed: SUPER,
 * INODE, DIRENT_ADD, EXT_SET, XATTR_SET, REFCNT, ORIGIN.
 */
#define COWFS_PACK_TARGET (64u << 10)	/* the writer seals a pack here */

/* What a pack's earlier sub-records leave for the next one.  All zero at
 * the start of a pack: a pack decodes without the packs before it. */
struct pack_state {
	uint64_t ino, parent;			/* INODE */
	uint32_t mode, uid, gid, nlink, iflags;
	int64_t sec[4];				/* a, m, c, btime */
	uint32_t nsec[4];
	uint64_t d_parent, d_ino, d_cookie;	/* DIRENT_ADD */
	uint32_t name_len;
	uint64_t e_ino, e_lend, e_obj, e_pend;	/* EXT_SET */
	uint64_t r_obj, r_pend;			/* REFCNT */
	uint64_t o_obj;				/* ORIGIN */
	int64_t o_mtime;
	char name[COWFS_NAME_MAX];		/* the last entry name */
};

struct pack_writer {
	unsigned char *rec;	/* the REC_PACK record being filled */
	size_t len;		/* payload bytes so far */
	struct pack_state st;
};

struct pack_reader {
	const unsigned char *start, *p, *end;	/* the pack's payload */
	struct pack_state st;
};

/* Start a pack at buf, which has room for COWFS_REC_MAX bytes. */
void format_pack_start(struct pack_writer *w, void *buf);
/* Append r: 1 done, 0 the pack is full (finish it, start another and
 * add r there), -1 r cannot be packed (its type, or a name or data
 * beyond the packed limits): encode it as a plain record. */
int format_pack_add(struct pack_writer *w, const struct rec *r);
/* Seal the pack (header, checksum); returns its length, 0 if empty. */
size_t format_pack_finish(struct pack_writer *w);

/* Read the sub-records of pack, a REC_PACK that format_decode() returned
 * (its data is the payload). */
void format_pack_open(struct pack_reader *rd, const struct rec *pack);
/* The next sub-record into r: 1, 0 at the end, -1 when it does not
 * decode (corruption).  r's name may point into rd: valid until the next
 * call. */
int format_pack_next(struct pack_reader *rd, struct rec *r);
/* Offset of the next sub-record in the pack's payload. */
size_t format_pack_offset(const struct pack_reader *rd);

void format_header_init(struct disk_header *h, unsigned block_shift);
/* Fill ckpt_len/ckpt_csum from the checkpoint bytes and write the 64-byte
 * little-endian image of h into out. */
void format_header_encode(struct disk_header *h, const void *ckpt, size_t len,
			  unsigned char out[COWFS_HDR_SIZE]);
/* Decode and check a header; returns NULL or a static message saying what
 * is wrong (foreign file, unknown version, bad checksum...). */
const char *format_header_decode(const unsigned char in[COWFS_HDR_SIZE],
				 struct disk_header *h);
/* Set or clear COWFS_HDR_MOUNTED in a valid 64-byte header image in
 * place (rewrites hdr_csum).  Returns 0, or -1 if the image is not a valid
 * header. */
int format_header_set_mounted(unsigned char img[COWFS_HDR_SIZE], int mounted);
uint64_t format_csum(const void *p, size_t len);

/* Does an extent (lblk, len) -> (obj, pblk) stay within the store's
 * limits for a block size of 1 << block_shift?  No overflow, len >= 1,
 * both ends within COWFS_MAX_FILE_SIZE.  1 yes, 0 no. */
int format_extent_ok(uint64_t lblk, uint64_t len, uint64_t pblk,
		     unsigned block_shift);

/*
 * Scan the journal part of a metadata image, buf[start..len), for whole
 * batches.  The journal is good up to the end of the last COMMIT that is
 * reached by whole, checksummed records.  What follows is:
 *   - nothing, or a torn tail: bytes that hold no valid COMMIT record with
 *     a later sequence number anywhere (an incomplete last batch): result
 *     JSCAN_TORN (or JSCAN_CLEAN when there is nothing);
 *   - corruption: a record that checksums but does not decode
 *     (JSCAN_NONSENSE), or a bad record followed somewhere by a valid
 *     COMMIT record with a later sequence number (JSCAN_BAD_MIDDLE): the
 *     journal lost committed batches in its middle, and a silent
 *     truncation would make the loss permanent.
 * bad is the offset of the first bad record; later_commits counts the
 * valid COMMIT records found after it, later_seq the highest of them.
 */
enum jscan_result {
	JSCAN_CLEAN = 0,
	JSCAN_TORN = 1,
	JSCAN_NONSENSE = 2,
	JSCAN_BAD_MIDDLE = 3,
};
struct jscan {
	size_t good;		/* end of the last whole batch */
	size_t bad;		/* first byte that is not a whole record */
	uint64_t good_seq;	/* seq of the last good COMMIT, 0: none */
	uint64_t batches;	/* whole batches before good */
	uint64_t later_commits;	/* valid COMMITs after bad */
	uint64_t later_seq;	/* highest seq among them */
};
enum jscan_result format_scan_journal(const void *buf, size_t len,
				      size_t start, struct jscan *js);

#endif
