/*
 * format.c - encodes and decodes the metadata file: the 64-byte header and
 * the checksummed records of the checkpoint and journal.  Nothing else in
 * cowfs knows the byte layout (docs/format.md).
 */
#include <string.h>
#include <xxhash.h>

#include "cowfs/format.h"

uint64_t format_csum(const void *p, size_t len)
{
	return XXH3_64bits(p, len);
}

static void put16(unsigned char **p, uint16_t v)
{
	(*p)[0] = (unsigned char)v;
	(*p)[1] = (unsigned char)(v >> 8);
	*p += 2;
}

static void put32(unsigned char **p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		(*p)[i] = (unsigned char)(v >> (8 * i));
	*p += 4;
}

static void put64(unsigned char **p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		(*p)[i] = (unsigned char)(v >> (8 * i));
	*p += 8;
}

struct cur {
	const unsigned char *p, *end;
	int bad;
};

static uint16_t get16(struct cur *c)
{
	if (c->end - c->p < 2) {
		c->bad = 1;
		return 0;
	}
	uint16_t v = (uint16_t)(c->p[0] | (c->p[1] << 8));
	c->p += 2;
	return v;
}

static uint32_t get32(struct cur *c)
{
	if (c->end - c->p < 4) {
		c->bad = 1;
		return 0;
	}
	uint32_t v = 0;
	for (int i = 0; i < 4; i++)
		v |= (uint32_t)c->p[i] << (8 * i);
	c->p += 4;
	return v;
}

static uint64_t get64(struct cur *c)
{
	if (c->end - c->p < 8) {
		c->bad = 1;
		return 0;
	}
	uint64_t v = 0;
	for (int i = 0; i < 8; i++)
		v |= (uint64_t)c->p[i] << (8 * i);
	c->p += 8;
	return v;
}

static const void *getbytes(struct cur *c, size_t n)
{
	if ((size_t)(c->end - c->p) < n) {
		c->bad = 1;
		return NULL;
	}
	const void *r = c->p;
	c->p += n;
	return r;
}

static uint64_t rec_seed(uint32_t len, uint16_t type, uint16_t flags)
{
	return (uint64_t)len | ((uint64_t)type << 32) | ((uint64_t)flags << 48);
}

/* Which variable parts a record type carries. */
static int has_name(uint16_t t)
{
	return t == REC_DIRENT_ADD || t == REC_DIRENT_DEL || t == REC_XATTR_SET ||
	       t == REC_XATTR_DEL || t == REC_CLONE;
}

static int has_data(uint16_t t)
{
	return t == REC_INODE || t == REC_XATTR_SET || t == REC_ORIGIN;
}

/* A run (extent or refcount) is never empty and never wraps. */
static int runs_ok(const struct rec *r)
{
	if (r->type == REC_REFCNT)
		return r->u.refcnt.len &&
		       r->u.refcnt.pblk + r->u.refcnt.len >= r->u.refcnt.pblk;
	return r->u.ext.len && r->u.ext.lblk + r->u.ext.len >= r->u.ext.lblk &&
	       r->u.ext.pblk + r->u.ext.len >= r->u.ext.pblk;
}

static void put_header(unsigned char *base, uint32_t len, uint16_t type,
		       uint16_t flags)
{
	unsigned char *h = base;

	put32(&h, len);
	put16(&h, type);
	put16(&h, flags);
	put64(&h, XXH3_64bits_withSeed(base + COWFS_REC_HDR_SIZE,
				       len - COWFS_REC_HDR_SIZE,
				       rec_seed(len, type, flags)));
}

size_t format_encode(const struct rec *r, void *buf)
{
	unsigned char *base = buf, *p = base + COWFS_REC_HDR_SIZE;

	switch (r->type) {
	case REC_SUPER:
		put64(&p, r->u.super.next_ino);
		put64(&p, r->u.super.next_obj);
		put64(&p, r->u.super.root_ino);
		break;
	case REC_INODE:
		put64(&p, r->u.inode.ino);
		put64(&p, r->u.inode.size);
		put64(&p, r->u.inode.wobj);
		put64(&p, r->u.inode.rdev);
		put64(&p, r->u.inode.next_cookie);
		put64(&p, r->u.inode.parent);
		put32(&p, r->u.inode.mode);
		put32(&p, r->u.inode.uid);
		put32(&p, r->u.inode.gid);
		put32(&p, r->u.inode.nlink);
		put32(&p, r->u.inode.flags);
		put64(&p, (uint64_t)r->u.inode.atime_sec);
		put64(&p, (uint64_t)r->u.inode.mtime_sec);
		put64(&p, (uint64_t)r->u.inode.ctime_sec);
		put64(&p, (uint64_t)r->u.inode.btime_sec);
		put32(&p, r->u.inode.atime_nsec);
		put32(&p, r->u.inode.mtime_nsec);
		put32(&p, r->u.inode.ctime_nsec);
		put32(&p, r->u.inode.btime_nsec);
		break;
	case REC_INODE_DEL:
		put64(&p, r->u.del.ino);
		break;
	case REC_DIRENT_ADD:
	case REC_DIRENT_DEL:
		put64(&p, r->u.dirent.parent);
		put64(&p, r->u.dirent.ino);
		put64(&p, r->u.dirent.cookie);
		break;
	case REC_EXT_SET:
	case REC_EXT_PUNCH:
		put64(&p, r->u.ext.ino);
		put64(&p, r->u.ext.lblk);
		put64(&p, r->u.ext.len);
		put64(&p, r->u.ext.obj);
		put64(&p, r->u.ext.pblk);
		break;
	case REC_XATTR_SET:
	case REC_XATTR_DEL:
		put64(&p, r->u.xattr.ino);
		break;
	case REC_REFCNT:
		put64(&p, r->u.refcnt.obj);
		put64(&p, r->u.refcnt.pblk);
		put64(&p, r->u.refcnt.len);
		put32(&p, r->u.refcnt.count);
		break;
	case REC_COMMIT:
		put64(&p, r->u.commit.seq);
		put64(&p, r->u.commit.next_ino);
		put64(&p, r->u.commit.next_obj);
		break;
	case REC_CLONE:
		put64(&p, r->u.clone.src_ino);
		put64(&p, r->u.clone.dst_parent);
		put64(&p, r->u.clone.first_ino);
		put64(&p, r->u.clone.cookie);
		put64(&p, (uint64_t)r->u.clone.time_sec);
		put32(&p, r->u.clone.time_nsec);
		put32(&p, r->u.clone.flags);
		put32(&p, r->u.clone.uid);
		put32(&p, r->u.clone.gid);
		break;
	case REC_PACK:
		memcpy(p, r->data, r->data_len);
		p += r->data_len;
		break;
	case REC_ORIGIN:
		put64(&p, r->u.origin.obj);
		put64(&p, r->u.origin.dev);
		put64(&p, r->u.origin.ino);
		put64(&p, r->u.origin.size);
		put64(&p, (uint64_t)r->u.origin.mtime_ns);
		put64(&p, (uint64_t)r->u.origin.ctime_ns);
		break;
	}
	if (has_name(r->type)) {
		put16(&p, (uint16_t)r->name_len);
		memcpy(p, r->name, r->name_len);
		p += r->name_len;
	}
	if (has_data(r->type)) {
		put32(&p, r->data_len);
		if (r->data_len)
			memcpy(p, r->data, r->data_len);
		p += r->data_len;
	}

	uint32_t len = (uint32_t)(p - base);
	put_header(base, len, r->type, r->flags);
	return len;
}

long format_decode(const void *buf, size_t avail, struct rec *r)
{
	struct cur c = { buf, (const unsigned char *)buf + avail, 0 };

	if (avail < COWFS_REC_HDR_SIZE)
		return 0;
	uint32_t len = get32(&c);
	uint16_t type = get16(&c);
	uint16_t flags = get16(&c);
	uint64_t csum = get64(&c);
	if (len < COWFS_REC_HDR_SIZE || len > COWFS_REC_MAX || len > avail)
		return 0;
	if (XXH3_64bits_withSeed(c.p, len - COWFS_REC_HDR_SIZE,
				 rec_seed(len, type, flags)) != csum)
		return 0;

	memset(r, 0, sizeof(*r));
	r->type = type;
	r->flags = flags;
	c.end = (const unsigned char *)buf + len;

	switch (type) {
	case REC_SUPER:
		r->u.super.next_ino = get64(&c);
		r->u.super.next_obj = get64(&c);
		r->u.super.root_ino = get64(&c);
		break;
	case REC_INODE:
		r->u.inode.ino = get64(&c);
		r->u.inode.size = get64(&c);
		r->u.inode.wobj = get64(&c);
		r->u.inode.rdev = get64(&c);
		r->u.inode.next_cookie = get64(&c);
		r->u.inode.parent = get64(&c);
		r->u.inode.mode = get32(&c);
		r->u.inode.uid = get32(&c);
		r->u.inode.gid = get32(&c);
		r->u.inode.nlink = get32(&c);
		r->u.inode.flags = get32(&c);
		r->u.inode.atime_sec = (int64_t)get64(&c);
		r->u.inode.mtime_sec = (int64_t)get64(&c);
		r->u.inode.ctime_sec = (int64_t)get64(&c);
		r->u.inode.btime_sec = (int64_t)get64(&c);
		r->u.inode.atime_nsec = get32(&c);
		r->u.inode.mtime_nsec = get32(&c);
		r->u.inode.ctime_nsec = get32(&c);
		r->u.inode.btime_nsec = get32(&c);
		break;
	case REC_INODE_DEL:
		r->u.del.ino = get64(&c);
		break;
	case REC_DIRENT_ADD:
	case REC_DIRENT_DEL:
		r->u.dirent.parent = get64(&c);
		r->u.dirent.ino = get64(&c);
		r->u.dirent.cookie = get64(&c);
		break;
	case REC_EXT_SET:
	case REC_EXT_PUNCH:
		r->u.ext.ino = get64(&c);
		r->u.ext.lblk = get64(&c);
		r->u.ext.len = get64(&c);
		r->u.ext.obj = get64(&c);
		r->u.ext.pblk = get64(&c);
		if (!runs_ok(r))
			return -1;
		break;
	case REC_XATTR_SET:
	case REC_XATTR_DEL:
		r->u.xattr.ino = get64(&c);
		break;
	case REC_REFCNT:
		r->u.refcnt.obj = get64(&c);
		r->u.refcnt.pblk = get64(&c);
		r->u.refcnt.len = get64(&c);
		r->u.refcnt.count = get32(&c);
		if (!runs_ok(r))
			return -1;
		break;
	case REC_COMMIT:
		r->u.commit.seq = get64(&c);
		r->u.commit.next_ino = get64(&c);
		r->u.commit.next_obj = get64(&c);
		break;
	case REC_CLONE:
		r->u.clone.src_ino = get64(&c);
		r->u.clone.dst_parent = get64(&c);
		r->u.clone.first_ino = get64(&c);
		r->u.clone.cookie = get64(&c);
		r->u.clone.time_sec = (int64_t)get64(&c);
		r->u.clone.time_nsec = get32(&c);
		r->u.clone.flags = get32(&c);
		r->u.clone.uid = get32(&c);
		r->u.clone.gid = get32(&c);
		break;
	case REC_PACK:
		/* the sub-records are read by format_pack_next() */
		if (flags || len == COWFS_REC_HDR_SIZE)
			return -1;
		r->data = c.p;
		r->data_len = len - COWFS_REC_HDR_SIZE;
		c.p = c.end;
		break;
	case REC_ORIGIN:
		r->u.origin.obj = get64(&c);
		r->u.origin.dev = get64(&c);
		r->u.origin.ino = get64(&c);
		r->u.origin.size = get64(&c);
		r->u.origin.mtime_ns = (int64_t)get64(&c);
		r->u.origin.ctime_ns = (int64_t)get64(&c);
		break;
	default:
		return -1;
	}
	if (has_name(type)) {
		r->name_len = get16(&c);
		r->name = getbytes(&c, r->name_len);
		if (r->name_len == 0 || r->name_len > COWFS_XATTR_MAX)
			return -1;
	}
	if (has_data(type)) {
		r->data_len = get32(&c);
		if (r->data_len > COWFS_XATTR_MAX)
			return -1;
		r->data = getbytes(&c, r->data_len);
	}
	if (c.bad || c.p != c.end)
		return -1;
	return (long)len;
}

void format_header_init(struct disk_header *h, unsigned block_shift)
{
	memset(h, 0, sizeof(*h));
	memcpy(h->magic, COWFS_MAGIC, 8);
	h->version = COWFS_VERSION_FMT;
	h->block_shift = block_shift;
}

static void header_put(struct disk_header *h, unsigned char out[COWFS_HDR_SIZE])
{
	unsigned char *p = out;

	memcpy(p, h->magic, 8);
	p += 8;
	put32(&p, h->version);
	put32(&p, h->incompat);
	put32(&p, h->compat);
	put32(&p, h->block_shift);
	put64(&p, h->ckpt_len);
	put64(&p, h->ckpt_csum);
	put64(&p, h->generation);
	put32(&p, h->flags);
	put32(&p, h->reserved);
	h->hdr_csum = XXH3_64bits(out, 56);
	put64(&p, h->hdr_csum);
}

void format_header_encode(struct disk_header *h, const void *ckpt, size_t len,
			  unsigned char out[COWFS_HDR_SIZE])
{
	h->ckpt_len = len;
	h->ckpt_csum = XXH3_64bits(ckpt, len);
	header_put(h, out);
}

int format_header_set_mounted(unsigned char img[COWFS_HDR_SIZE], int mounted)
{
	struct disk_header h;

	if (format_header_decode(img, &h))
		return -1;
	if (mounted)
		h.flags |= COWFS_HDR_MOUNTED;
	else
		h.flags &= ~COWFS_HDR_MOUNTED;
	header_put(&h, img);
	return 0;
}

const char *format_header_decode(const unsigned char in[COWFS_HDR_SIZE],
				 struct disk_header *h)
{
	struct cur c = { in + 8, in + COWFS_HDR_SIZE, 0 };

	if (memcmp(in, COWFS_MAGIC, 8) != 0)
		return "not a cowfs metadata file (bad magic)";
	memcpy(h->magic, in, 8);
	h->version = get32(&c);
	h->incompat = get32(&c);
	h->compat = get32(&c);
	h->block_shift = get32(&c);
	h->ckpt_len = get64(&c);
	h->ckpt_csum = get64(&c);
	h->generation = get64(&c);
	h->flags = get32(&c);
	h->reserved = get32(&c);
	h->hdr_csum = get64(&c);
	if (XXH3_64bits(in, 56) != h->hdr_csum)
		return "metadata header checksum mismatch (corrupt header)";
	if (h->version != COWFS_VERSION_FMT)
		return "unsupported metadata format version";
	if (h->incompat & ~COWFS_INCOMPAT_KNOWN)
		return "metadata uses unknown incompatible features";
	if (h->block_shift < 12 || h->block_shift > 20)
		return "metadata header has an invalid block size";
	return NULL;
}

int format_extent_ok(uint64_t lblk, uint64_t len, uint64_t pblk,
		     unsigned block_shift)
{
	uint64_t max = COWFS_MAX_FILE_SIZE >> block_shift;

	return len >= 1 && lblk <= max && len <= max - lblk &&
	       pblk <= max && len <= max - pblk;
}

/* The fixed length of a COMMIT record, to find candidates quickly. */
#define COMMIT_LEN (COWFS_REC_HDR_SIZE + 24u)

enum jscan_result format_scan_journal(const void *buf, size_t len,
				      size_t start, struct jscan *js)
{
	const unsigned char *p = buf;
	size_t off = start;
	struct rec r;

	memset(js, 0, sizeof(*js));
	js->good = start;
	while (off < len) {
		long n = format_decode(p + off, len - off, &r);
		if (n < 0) {
			js->bad = off;
			return JSCAN_NONSENSE;
		}
		if (n == 0)
			break;
		off += (size_t)n;
		if (r.type == REC_COMMIT) {
			js->good = off;
			js->good_seq = r.u.commit.seq;
			js->batches++;
		}
	}
	if (off >= len) {
		/* whole records to the end: at most an unfinished batch */
		js->bad = js->good;
		return js->good == len ? JSCAN_CLEAN : JSCAN_TORN;
	}
	js->bad = off;
	/*
	 * A record fails at off.  If a COMMIT with a later sequence number
	 * lies anywhere after it, batches were committed after the bad
	 * bytes: that is corruption, not a torn tail.  Try every offset
	 * (the bad record's length cannot be trusted); only offsets whose
	 * header says "a COMMIT of the right length" are checksummed.
	 */
	for (size_t q = off + 1; q + COMMIT_LEN <= len; q++) {
		const unsigned char *h = p + q;
		if (h[0] != COMMIT_LEN || h[1] || h[2] || h[3] ||
		    h[4] != REC_COMMIT || h[5])
			continue;
		if (format_decode(h, len - q, &r) != (long)COMMIT_LEN ||
		    r.type != REC_COMMIT || r.u.commit.seq <= js->good_seq)
			continue;
		js->later_commits++;
		if (r.u.commit.seq > js->later_seq)
			js->later_seq = r.u.commit.seq;
	}
	return js->later_commits ? JSCAN_BAD_MIDDLE : JSCAN_TORN;
}

/* ---- packed records (docs/format.md, "Packed records") ---- */

#define PACK_MAX (COWFS_REC_MAX - COWFS_REC_HDR_SIZE)	/* payload bytes */
#define NSEC 1000000000u
#define TDELTA_MAX ((int64_t)1 << 32)	/* seconds, compact times */

/* Bits of an INODE sub-record's field mask: which fields follow. */
enum {
	PI_SIZE = 1 << 0,	/* else 0 */
	PI_ATIME = 1 << 1,	/* else atime == mtime */
	PI_CTIME = 1 << 2,	/* else ctime == mtime */
	PI_BTIME = 1 << 3,	/* else btime == ctime */
	PI_MODE = 1 << 4,	/* else the previous inode's */
	PI_NLINK = 1 << 5,	/* else the previous inode's */
	PI_PARENT = 1 << 6,	/* else 0 */
	PI_UID = 1 << 7,	/* else the previous inode's */
	PI_GID = 1 << 8,	/* else the previous inode's */
	PI_WOBJ = 1 << 9,	/* else 0 */
	PI_RDEV = 1 << 10,	/* else 0 */
	PI_COOKIE = 1 << 11,	/* else 0 */
	PI_FLAGS = 1 << 12,	/* else the previous inode's */
	PI_DATA = 1 << 13,	/* else no symlink target */
	PI_ALL = (1 << 14) - 1,
};

enum { T_A, T_M, T_C, T_B };	/* pack_state.sec[] */

/* Zigzag of d, a signed difference computed with wrap-around. */
static uint64_t zz(uint64_t d)
{
	return (d << 1) ^ (0 - (d >> 63));
}

static uint64_t unzz(uint64_t v)
{
	return (v >> 1) ^ (0 - (v & 1));
}

static inline void putv(unsigned char **p, uint64_t v)
{
	unsigned char *q = *p;

	while (v >= 0x80) {
		*q++ = (unsigned char)(v | 0x80);
		v >>= 7;
	}
	*q++ = (unsigned char)v;
	*p = q;
}

/* A varint: at most 10 bytes, the 10th at most 1 (no bit beyond 64). */
static inline uint64_t getv(struct cur *c)
{
	const unsigned char *q = c->p;
	uint64_t v = 0;

	for (unsigned shift = 0; shift < 64; shift += 7) {
		if (q == c->end) {
			c->bad = 1;
			return 0;
		}
		unsigned b = *q++;
		if (shift == 63 && b > 1) {
			c->bad = 1;
			return 0;
		}
		v |= (uint64_t)(b & 0x7f) << shift;
		if (!(b & 0x80)) {
			c->p = q;
			return v;
		}
	}
	c->bad = 1;
	return 0;
}

static uint32_t getv32(struct cur *c)
{
	uint64_t v = getv(c);

	if (v > UINT32_MAX)
		c->bad = 1;
	return (uint32_t)v;
}

/*
 * A time against a reference time (psec, pnsec): the zigzag of the
 * difference in nanoseconds, shifted left by one, when both nsec are
 * below 10^9 and the seconds differ by less than 2^32; else the varint 1,
 * then the zigzag of the seconds' difference and the raw nsec.
 */
static void put_time(unsigned char **p, int64_t sec, uint32_t nsec,
		     int64_t psec, uint32_t pnsec)
{
	uint64_t ds = (uint64_t)sec - (uint64_t)psec;
	int64_t dsec = (int64_t)ds;

	if (nsec < NSEC && pnsec < NSEC && dsec > -TDELTA_MAX &&
	    dsec < TDELTA_MAX) {
		int64_t d = dsec * NSEC + ((int64_t)nsec - (int64_t)pnsec);
		putv(p, zz((uint64_t)d) << 1);
		return;
	}
	putv(p, 1);
	putv(p, zz(ds));
	putv(p, nsec);
}

static void get_time(struct cur *c, int64_t *sec, uint32_t *nsec,
		     int64_t psec, uint32_t pnsec)
{
	uint64_t v = getv(c);

	if (v & 1) {
		if (v != 1)
			c->bad = 1;
		*sec = (int64_t)((uint64_t)psec + unzz(getv(c)));
		*nsec = getv32(c);
		return;
	}
	int64_t d = (int64_t)unzz(v >> 1);
	int64_t dsec = d / NSEC, n = (int64_t)pnsec + d % NSEC;
	if (pnsec >= NSEC || dsec <= -TDELTA_MAX || dsec >= TDELTA_MAX) {
		c->bad = 1;	/* the writer never codes these compactly */
		return;
	}
	if (n < 0) {
		n += NSEC;
		dsec--;
	} else if (n >= NSEC) {
		n -= NSEC;
		dsec++;
	}
	*sec = (int64_t)((uint64_t)psec + (uint64_t)dsec);
	*nsec = (uint32_t)n;
}

static void put_bytes(unsigned char **p, const void *b, uint32_t n)
{
	putv(p, n);
	if (n)
		memcpy(*p, b, n);
	*p += n;
}

static const void *get_bytes(struct cur *c, uint32_t *n, uint32_t max)
{
	uint64_t v = getv(c);

	if (v > max) {
		c->bad = 1;
		return NULL;
	}
	*n = (uint32_t)v;
	return getbytes(c, *n);
}

void format_pack_start(struct pack_writer *w, void *buf)
{
	memset(w, 0, sizeof(*w));
	w->rec = buf;
}

/* The most bytes r can take packed, or 0 if it cannot be packed. */
static size_t pack_worst(const struct rec *r)
{
	switch (r->type) {
	case REC_SUPER:
	case REC_EXT_SET:
	case REC_REFCNT:
		return 64;
	case REC_INODE:
	case REC_ORIGIN:
		return r->data_len > COWFS_XATTR_MAX ? 0 : 256 + r->data_len;
	case REC_DIRENT_ADD:
		return r->name_len && r->name_len <= COWFS_NAME_MAX ?
		       64 + r->name_len : 0;
	case REC_XATTR_SET:
		return r->name_len && r->name_len <= COWFS_XATTR_MAX &&
		       r->data_len <= COWFS_XATTR_MAX ?
		       32 + r->name_len + r->data_len : 0;
	}
	return 0;
}

static void pack_inode(unsigned char **p, struct pack_state *st,
		       const struct rec *r)
{
	const int64_t sec[4] = { r->u.inode.atime_sec, r->u.inode.mtime_sec,
				 r->u.inode.ctime_sec, r->u.inode.btime_sec };
	const uint32_t nsec[4] = {
		r->u.inode.atime_nsec, r->u.inode.mtime_nsec,
		r->u.inode.ctime_nsec, r->u.inode.btime_nsec
	};
	static const unsigned bit[4] = { PI_ATIME, 0, PI_CTIME, PI_BTIME };
	unsigned m = 0;

	m |= r->u.inode.size ? PI_SIZE : 0;
	m |= sec[T_A] != sec[T_M] || nsec[T_A] != nsec[T_M] ? PI_ATIME : 0;
	m |= sec[T_C] != sec[T_M] || nsec[T_C] != nsec[T_M] ? PI_CTIME : 0;
	m |= sec[T_B] != sec[T_C] || nsec[T_B] != nsec[T_C] ? PI_BTIME : 0;
	m |= r->u.inode.mode != st->mode ? PI_MODE : 0;
	m |= r->u.inode.nlink != st->nlink ? PI_NLINK : 0;
	m |= r->u.inode.parent ? PI_PARENT : 0;
	m |= r->u.inode.uid != st->uid ? PI_UID : 0;
	m |= r->u.inode.gid != st->gid ? PI_GID : 0;
	m |= r->u.inode.wobj ? PI_WOBJ : 0;
	m |= r->u.inode.rdev ? PI_RDEV : 0;
	m |= r->u.inode.next_cookie ? PI_COOKIE : 0;
	m |= r->u.inode.flags != st->iflags ? PI_FLAGS : 0;
	m |= r->data_len ? PI_DATA : 0;

	putv(p, m);
	putv(p, zz(r->u.inode.ino - st->ino - 1));
	st->ino = r->u.inode.ino;
	put_time(p, sec[T_M], nsec[T_M], st->sec[T_M], st->nsec[T_M]);
	for (int t = 0; t < 4; t++) {
		if (m & bit[t])
			put_time(p, sec[t], nsec[t], st->sec[t], st->nsec[t]);
		st->sec[t] = sec[t];
		st->nsec[t] = nsec[t];
	}
	if (m & PI_SIZE)
		putv(p, r->u.inode.size);
	if (m & PI_MODE)
		putv(p, st->mode = r->u.inode.mode);
	if (m & PI_NLINK)
		putv(p, st->nlink = r->u.inode.nlink);
	if (m & PI_PARENT) {
		putv(p, zz(r->u.inode.parent - st->parent));
		st->parent = r->u.inode.parent;
	}
	if (m & PI_UID)
		putv(p, st->uid = r->u.inode.uid);
	if (m & PI_GID)
		putv(p, st->gid = r->u.inode.gid);
	if (m & PI_WOBJ)
		putv(p, r->u.inode.wobj);
	if (m & PI_RDEV)
		putv(p, r->u.inode.rdev);
	if (m & PI_COOKIE)
		putv(p, r->u.inode.next_cookie);
	if (m & PI_FLAGS)
		putv(p, st->iflags = r->u.inode.flags);
	if (m & PI_DATA)
		put_bytes(p, r->data, r->data_len);
}

static void pack_dirent(unsigned char **p, struct pack_state *st,
			const struct rec *r)
{
	uint32_t k = 0, n = r->name_len;

	if (r->u.dirent.parent != st->d_parent)
		st->d_cookie = 0;
	putv(p, zz(r->u.dirent.parent - st->d_parent));
	putv(p, zz(r->u.dirent.ino - st->d_ino));
	putv(p, zz(r->u.dirent.cookie - st->d_cookie - 1));
	st->d_parent = r->u.dirent.parent;
	st->d_ino = r->u.dirent.ino;
	st->d_cookie = r->u.dirent.cookie;
	/* front coding: k bytes shared with the previous name */
	while (k < n && k < st->name_len && r->name[k] == st->name[k])
		k++;
	putv(p, k);
	put_bytes(p, r->name + k, n - k);
	memcpy(st->name + k, r->name + k, n - k);
	st->name_len = n;
}

static void pack_ext(unsigned char **p, struct pack_state *st,
		     const struct rec *r)
{
	if (r->u.ext.ino != st->e_ino)
		st->e_lend = 0;
	if (r->u.ext.obj != st->e_obj)
		st->e_pend = 0;
	putv(p, zz(r->u.ext.ino - st->ino));
	putv(p, zz(r->u.ext.lblk - st->e_lend));
	putv(p, r->u.ext.len);
	putv(p, zz(r->u.ext.obj - st->e_obj));
	putv(p, zz(r->u.ext.pblk - st->e_pend));
	st->e_ino = r->u.ext.ino;
	st->e_obj = r->u.ext.obj;
	st->e_lend = r->u.ext.lblk + r->u.ext.len;
	st->e_pend = r->u.ext.pblk + r->u.ext.len;
}

/* The tag: the type, and in the high nibble the header flags (15: a
 * varint with the flags follows). */
static void pack_one(unsigned char **p, struct pack_state *st,
		     const struct rec *r)
{
	unsigned f = r->flags < 15 ? r->flags : 15;

	*(*p)++ = (unsigned char)(r->type | f << 4);
	if (r->flags >= 15)
		putv(p, r->flags);
	switch (r->type) {
	case REC_SUPER:
		putv(p, r->u.super.next_ino);
		putv(p, r->u.super.next_obj);
		putv(p, r->u.super.root_ino);
		break;
	case REC_INODE:
		pack_inode(p, st, r);
		break;
	case REC_DIRENT_ADD:
		pack_dirent(p, st, r);
		break;
	case REC_EXT_SET:
		pack_ext(p, st, r);
		break;
	case REC_XATTR_SET:
		putv(p, zz(r->u.xattr.ino - st->ino));
		put_bytes(p, r->name, r->name_len);
		put_bytes(p, r->data, r->data_len);
		break;
	case REC_REFCNT:
		if (r->u.refcnt.obj != st->r_obj)
			st->r_pend = 0;
		putv(p, zz(r->u.refcnt.obj - st->r_obj));
		putv(p, zz(r->u.refcnt.pblk - st->r_pend));
		putv(p, r->u.refcnt.len);
		putv(p, r->u.refcnt.count);
		st->r_obj = r->u.refcnt.obj;
		st->r_pend = r->u.refcnt.pblk + r->u.refcnt.len;
		break;
	case REC_ORIGIN:
		putv(p, zz(r->u.origin.obj - st->o_obj));
		putv(p, r->u.origin.dev);
		putv(p, r->u.origin.ino);
		putv(p, r->u.origin.size);
		putv(p, zz((uint64_t)r->u.origin.mtime_ns -
			   (uint64_t)st->o_mtime));
		putv(p, zz((uint64_t)r->u.origin.ctime_ns -
			   (uint64_t)r->u.origin.mtime_ns));
		st->o_obj = r->u.origin.obj;
		st->o_mtime = r->u.origin.mtime_ns;
		put_bytes(p, r->data, r->data_len);
		break;
	}
}

int format_pack_add(struct pack_writer *w, const struct rec *r)
{
	size_t worst = pack_worst(r);

	if (!worst)
		return -1;
	if (w->len >= COWFS_PACK_TARGET || w->len + worst > PACK_MAX)
		return w->len ? 0 : -1;
	unsigned char *p = w->rec + COWFS_REC_HDR_SIZE + w->len;
	pack_one(&p, &w->st, r);
	w->len = (size_t)(p - w->rec) - COWFS_REC_HDR_SIZE;
	return 1;
}

size_t format_pack_finish(struct pack_writer *w)
{
	uint32_t len = (uint32_t)(w->len + COWFS_REC_HDR_SIZE);

	if (!w->len)
		return 0;
	put_header(w->rec, len, REC_PACK, 0);
	return len;
}

void format_pack_open(struct pack_reader *rd, const struct rec *pack)
{
	memset(&rd->st, 0, sizeof(rd->st));
	rd->start = rd->p = pack->data;
	rd->end = rd->p + pack->data_len;
}

size_t format_pack_offset(const struct pack_reader *rd)
{
	return (size_t)(rd->p - rd->start);
}

static void unpack_inode(struct cur *c, struct pack_state *st, struct rec *r)
{
	uint64_t m = getv(c);
	int64_t sec[4];
	uint32_t nsec[4];

	if (m & ~(uint64_t)PI_ALL)
		c->bad = 1;
	r->u.inode.ino = st->ino = st->ino + 1 + unzz(getv(c));
	get_time(c, &sec[T_M], &nsec[T_M], st->sec[T_M], st->nsec[T_M]);
	if (m & PI_ATIME)
		get_time(c, &sec[T_A], &nsec[T_A], st->sec[T_A], st->nsec[T_A]);
	else
		sec[T_A] = sec[T_M], nsec[T_A] = nsec[T_M];
	if (m & PI_CTIME)
		get_time(c, &sec[T_C], &nsec[T_C], st->sec[T_C], st->nsec[T_C]);
	else
		sec[T_C] = sec[T_M], nsec[T_C] = nsec[T_M];
	if (m & PI_BTIME)
		get_time(c, &sec[T_B], &nsec[T_B], st->sec[T_B], st->nsec[T_B]);
	else
		sec[T_B] = sec[T_C], nsec[T_B] = nsec[T_C];
	memcpy(st->sec, sec, sizeof(sec));
	memcpy(st->nsec, nsec, sizeof(nsec));
	r->u.inode.atime_sec = sec[T_A];
	r->u.inode.mtime_sec = sec[T_M];
	r->u.inode.ctime_sec = sec[T_C];
	r->u.inode.btime_sec = sec[T_B];
	r->u.inode.atime_nsec = nsec[T_A];
	r->u.inode.mtime_nsec = nsec[T_M];
	r->u.inode.ctime_nsec = nsec[T_C];
	r->u.inode.btime_nsec = nsec[T_B];
	if (m & PI_SIZE)
		r->u.inode.size = getv(c);
	if (m & PI_MODE)
		st->mode = getv32(c);
	if (m & PI_NLINK)
		st->nlink = getv32(c);
	if (m & PI_PARENT)
		r->u.inode.parent = st->parent += unzz(getv(c));
	if (m & PI_UID)
		st->uid = getv32(c);
	if (m & PI_GID)
		st->gid = getv32(c);
	if (m & PI_WOBJ)
		r->u.inode.wobj = getv(c);
	if (m & PI_RDEV)
		r->u.inode.rdev = getv(c);
	if (m & PI_COOKIE)
		r->u.inode.next_cookie = getv(c);
	if (m & PI_FLAGS)
		st->iflags = getv32(c);
	if (m & PI_DATA)
		r->data = get_bytes(c, &r->data_len, COWFS_XATTR_MAX);
	r->u.inode.mode = st->mode;
	r->u.inode.nlink = st->nlink;
	r->u.inode.uid = st->uid;
	r->u.inode.gid = st->gid;
	r->u.inode.flags = st->iflags;
}

static void unpack_dirent(struct cur *c, struct pack_state *st, struct rec *r)
{
	uint64_t parent = st->d_parent + unzz(getv(c));
	uint32_t k, n = 0;
	const char *sfx;

	if (parent != st->d_parent)
		st->d_cookie = 0;
	r->u.dirent.parent = st->d_parent = parent;
	r->u.dirent.ino = st->d_ino += unzz(getv(c));
	r->u.dirent.cookie = st->d_cookie += 1 + unzz(getv(c));
	uint64_t kk = getv(c);
	if (kk > st->name_len) {
		c->bad = 1;
		return;
	}
	k = (uint32_t)kk;
	sfx = get_bytes(c, &n, COWFS_NAME_MAX - k);
	if (c->bad || k + n == 0) {
		c->bad = 1;
		return;
	}
	memcpy(st->name + k, sfx, n);
	st->name_len = k + n;
	r->name = st->name;
	r->name_len = st->name_len;
}

static void unpack_ext(struct cur *c, struct pack_state *st, struct rec *r)
{
	uint64_t ino = st->ino + unzz(getv(c));

	if (ino != st->e_ino)
		st->e_lend = 0;
	r->u.ext.ino = st->e_ino = ino;
	r->u.ext.lblk = st->e_lend + unzz(getv(c));
	r->u.ext.len = getv(c);
	uint64_t obj = st->e_obj + unzz(getv(c));
	if (obj != st->e_obj)
		st->e_pend = 0;
	r->u.ext.obj = st->e_obj = obj;
	r->u.ext.pblk = st->e_pend + unzz(getv(c));
	st->e_lend = r->u.ext.lblk + r->u.ext.len;
	st->e_pend = r->u.ext.pblk + r->u.ext.len;
}

static void unpack_refcnt(struct cur *c, struct pack_state *st, struct rec *r)
{
	uint64_t obj = st->r_obj + unzz(getv(c));

	if (obj != st->r_obj)
		st->r_pend = 0;
	r->u.refcnt.obj = st->r_obj = obj;
	r->u.refcnt.pblk = st->r_pend + unzz(getv(c));
	r->u.refcnt.len = getv(c);
	r->u.refcnt.count = getv32(c);
	st->r_pend = r->u.refcnt.pblk + r->u.refcnt.len;
}

static void unpack_origin(struct cur *c, struct pack_state *st, struct rec *r)
{
	r->u.origin.obj = st->o_obj += unzz(getv(c));
	r->u.origin.dev = getv(c);
	r->u.origin.ino = getv(c);
	r->u.origin.size = getv(c);
	st->o_mtime = (int64_t)((uint64_t)st->o_mtime + unzz(getv(c)));
	r->u.origin.mtime_ns = st->o_mtime;
	r->u.origin.ctime_ns = (int64_t)((uint64_t)st->o_mtime + unzz(getv(c)));
	r->data = get_bytes(c, &r->data_len, COWFS_XATTR_MAX);
}

int format_pack_next(struct pack_reader *rd, struct rec *r)
{
	struct cur c = { rd->p, rd->end, 0 };

	if (rd->p == rd->end)
		return 0;
	memset(r, 0, sizeof(*r));
	unsigned tag = *c.p++;
	r->type = tag & 15;
	r->flags = (uint16_t)(tag >> 4);
	if (r->flags == 15) {
		uint64_t f = getv(&c);
		if (f < 15 || f > UINT16_MAX)
			return -1;
		r->flags = (uint16_t)f;
	}
	switch (r->type) {
	case REC_SUPER:
		r->u.super.next_ino = getv(&c);
		r->u.super.next_obj = getv(&c);
		r->u.super.root_ino = getv(&c);
		break;
	case REC_INODE:
		unpack_inode(&c, &rd->st, r);
		break;
	case REC_DIRENT_ADD:
		unpack_dirent(&c, &rd->st, r);
		break;
	case REC_EXT_SET:
		unpack_ext(&c, &rd->st, r);
		if (!runs_ok(r))
			return -1;
		break;
	case REC_XATTR_SET:
		r->u.xattr.ino = rd->st.ino + unzz(getv(&c));
		r->name = get_bytes(&c, &r->name_len, COWFS_XATTR_MAX);
		r->data = get_bytes(&c, &r->data_len, COWFS_XATTR_MAX);
		if (!r->name_len)
			return -1;
		break;
	case REC_REFCNT:
		unpack_refcnt(&c, &rd->st, r);
		if (!runs_ok(r))
			return -1;
		break;
	case REC_ORIGIN:
		unpack_origin(&c, &rd->st, r);
		break;
	default:
		return -1;
	}
	if (c.bad)
		return -1;
	rd->p = c.p;
	return 1;
}
