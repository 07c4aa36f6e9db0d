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
	unsigned char *h = base;
	put32(&h, len);
	put16(&h, r->type);
	put16(&h, r->flags);
	put64(&h, XXH3_64bits_withSeed(base + COWFS_REC_HDR_SIZE,
				       len - COWFS_REC_HDR_SIZE,
				       rec_seed(len, r->type, r->flags)));
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
		if (r->u.ext.len == 0 ||
		    r->u.ext.lblk + r->u.ext.len < r->u.ext.lblk ||
		    r->u.ext.pblk + r->u.ext.len < r->u.ext.pblk)
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
		if (r->u.refcnt.len == 0 ||
		    r->u.refcnt.pblk + r->u.refcnt.len < r->u.refcnt.pblk)
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
