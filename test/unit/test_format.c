/*
 * test_format.c - unit tests of the metadata encoding (format.h):
 * record round trips for every type, bit flips and truncations that must
 * read as a torn tail, garbage that must never crash, decode/encode
 * canonicality of checksummed records, and the 64-byte header.
 *
 * Randomised: the seed is printed; rerun with TEST_SEED=<seed>.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "testutil.h"
#include "cowfs/format.h"


static void fail_exit(void)
{
	fprintf(stderr, "test_format: FAILED (seed %" PRIu64
		", rerun with TEST_SEED=%" PRIu64 ")\n", seed, seed);
	exit(1);
}

/* ---- what docs/format.md says about each type ---- */

#define NTYPES 13

/* Fixed payload sizes, indexed by type. */
static const size_t fixed_size[NTYPES + 1] = {
	[REC_SUPER] = 24,	[REC_INODE] = 116,	[REC_INODE_DEL] = 8,
	[REC_DIRENT_ADD] = 24,	[REC_DIRENT_DEL] = 24,	[REC_EXT_SET] = 40,
	[REC_EXT_PUNCH] = 40,	[REC_XATTR_SET] = 8,	[REC_XATTR_DEL] = 8,
	[REC_REFCNT] = 28,	[REC_COMMIT] = 24,	[REC_CLONE] = 56,
	[REC_ORIGIN] = 48,
};

static int t_has_name(unsigned t)
{
	return t == REC_DIRENT_ADD || t == REC_DIRENT_DEL || t == REC_XATTR_SET ||
	       t == REC_XATTR_DEL || t == REC_CLONE;
}

static int t_has_data(unsigned t)
{
	return t == REC_INODE || t == REC_XATTR_SET || t == REC_ORIGIN;
}

static size_t expected_len(const struct rec *r)
{
	size_t n = COWFS_REC_HDR_SIZE + fixed_size[r->type];
	if (t_has_name(r->type))
		n += 2 + r->name_len;
	if (t_has_data(r->type))
		n += 4 + r->data_len;
	return n;
}

static void put_le(unsigned char *p, uint64_t v, int n)
{
	for (int i = 0; i < n; i++)
		p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_le(const unsigned char *p, int n)
{
	uint64_t v = 0;
	for (int i = 0; i < n; i++)
		v |= (uint64_t)p[i] << (8 * i);
	return v;
}

/* The record checksum as docs/format.md defines it. */
static uint64_t rec_csum(const unsigned char *rec, uint32_t len)
{
	uint64_t s = (uint64_t)len | (uint64_t)get_le(rec + 4, 2) << 32 |
		     (uint64_t)get_le(rec + 6, 2) << 48;
	return XXH3_64bits_withSeed(rec + COWFS_REC_HDR_SIZE,
				    len - COWFS_REC_HDR_SIZE, s);
}

/* Fill every fixed field of r with random values for type t. */
static void random_fields(struct rec *r, unsigned t)
{
	memset(r, 0, sizeof(*r));
	r->type = (uint16_t)t;
	r->flags = (uint16_t)rnd();
	switch (t) {
	case REC_SUPER:
		r->u.super.next_ino = rnd();
		r->u.super.next_obj = rnd();
		r->u.super.root_ino = rnd();
		break;
	case REC_INODE:
		r->u.inode.ino = rnd();
		r->u.inode.size = rnd();
		r->u.inode.wobj = rnd();
		r->u.inode.rdev = rnd();
		r->u.inode.next_cookie = rnd();
		r->u.inode.parent = rnd();
		r->u.inode.mode = (uint32_t)rnd();
		r->u.inode.uid = (uint32_t)rnd();
		r->u.inode.gid = (uint32_t)rnd();
		r->u.inode.nlink = (uint32_t)rnd();
		r->u.inode.flags = (uint32_t)rnd();
		r->u.inode.atime_sec = (int64_t)rnd();
		r->u.inode.mtime_sec = -(int64_t)rndn(1ull << 40);
		r->u.inode.ctime_sec = INT64_MIN;
		r->u.inode.btime_sec = INT64_MAX;
		r->u.inode.atime_nsec = (uint32_t)rnd();
		r->u.inode.mtime_nsec = (uint32_t)rnd();
		r->u.inode.ctime_nsec = (uint32_t)rnd();
		r->u.inode.btime_nsec = (uint32_t)rnd();
		break;
	case REC_INODE_DEL:
		r->u.del.ino = rnd();
		break;
	case REC_DIRENT_ADD:
	case REC_DIRENT_DEL:
		r->u.dirent.parent = rnd();
		r->u.dirent.ino = rnd();
		r->u.dirent.cookie = rnd();
		break;
	case REC_EXT_SET:
	case REC_EXT_PUNCH:
		r->u.ext.ino = rnd();
		/* the decoder refuses empty and overflowing runs */
		r->u.ext.lblk = rnd() >> 2;
		r->u.ext.len = 1 + (rnd() >> 2);
		r->u.ext.obj = rnd();
		r->u.ext.pblk = rnd() >> 2;
		break;
	case REC_XATTR_SET:
	case REC_XATTR_DEL:
		r->u.xattr.ino = rnd();
		break;
	case REC_REFCNT:
		r->u.refcnt.obj = rnd();
		r->u.refcnt.pblk = rnd() >> 2;
		r->u.refcnt.len = 1 + (rnd() >> 2);
		r->u.refcnt.count = (uint32_t)rnd();
		break;
	case REC_COMMIT:
		r->u.commit.seq = rnd();
		r->u.commit.next_ino = rnd();
		r->u.commit.next_obj = rnd();
		break;
	case REC_CLONE:
		r->u.clone.src_ino = rnd();
		r->u.clone.dst_parent = rnd();
		r->u.clone.first_ino = rnd();
		r->u.clone.cookie = rnd();
		r->u.clone.time_sec = (int64_t)rnd();
		r->u.clone.time_nsec = (uint32_t)rnd();
		r->u.clone.flags = (uint32_t)rnd();
		r->u.clone.uid = (uint32_t)rnd();
		r->u.clone.gid = (uint32_t)rnd();
		break;
	case REC_ORIGIN:
		r->u.origin.obj = rnd();
		r->u.origin.dev = rnd();
		r->u.origin.ino = rnd();
		r->u.origin.size = rnd();
		r->u.origin.mtime_ns = (int64_t)rnd();
		r->u.origin.ctime_ns = -(int64_t)rndn(1ull << 62);
		break;
	}
}

#define EQ(f) CHECKF(a->f == b->f, "type %u field %s", a->type, #f)

static void check_same(const struct rec *a, const struct rec *b)
{
	EQ(type);
	EQ(flags);
	switch (a->type) {
	case REC_SUPER:
		EQ(u.super.next_ino); EQ(u.super.next_obj); EQ(u.super.root_ino);
		break;
	case REC_INODE:
		EQ(u.inode.ino); EQ(u.inode.size); EQ(u.inode.wobj);
		EQ(u.inode.rdev); EQ(u.inode.next_cookie); EQ(u.inode.parent);
		EQ(u.inode.mode); EQ(u.inode.uid); EQ(u.inode.gid);
		EQ(u.inode.nlink); EQ(u.inode.flags);
		EQ(u.inode.atime_sec); EQ(u.inode.mtime_sec);
		EQ(u.inode.ctime_sec); EQ(u.inode.btime_sec);
		EQ(u.inode.atime_nsec); EQ(u.inode.mtime_nsec);
		EQ(u.inode.ctime_nsec); EQ(u.inode.btime_nsec);
		break;
	case REC_INODE_DEL:
		EQ(u.del.ino);
		break;
	case REC_DIRENT_ADD:
	case REC_DIRENT_DEL:
		EQ(u.dirent.parent); EQ(u.dirent.ino); EQ(u.dirent.cookie);
		break;
	case REC_EXT_SET:
	case REC_EXT_PUNCH:
		EQ(u.ext.ino); EQ(u.ext.lblk); EQ(u.ext.len); EQ(u.ext.obj);
		EQ(u.ext.pblk);
		break;
	case REC_XATTR_SET:
	case REC_XATTR_DEL:
		EQ(u.xattr.ino);
		break;
	case REC_REFCNT:
		EQ(u.refcnt.obj); EQ(u.refcnt.pblk); EQ(u.refcnt.len);
		EQ(u.refcnt.count);
		break;
	case REC_COMMIT:
		EQ(u.commit.seq); EQ(u.commit.next_ino); EQ(u.commit.next_obj);
		break;
	case REC_CLONE:
		EQ(u.clone.src_ino); EQ(u.clone.dst_parent);
		EQ(u.clone.first_ino); EQ(u.clone.cookie);
		EQ(u.clone.time_sec); EQ(u.clone.time_nsec);
		EQ(u.clone.flags); EQ(u.clone.uid); EQ(u.clone.gid);
		break;
	case REC_ORIGIN:
		EQ(u.origin.obj); EQ(u.origin.dev); EQ(u.origin.ino);
		EQ(u.origin.size); EQ(u.origin.mtime_ns); EQ(u.origin.ctime_ns);
		break;
	default:
		CHECKF(0, "unexpected type %u", a->type);
	}
	if (t_has_name(a->type)) {
		EQ(name_len);
		CHECK(b->name != NULL);
		CHECK(memcmp(a->name, b->name, a->name_len) == 0);
	} else {
		CHECK(b->name_len == 0);
	}
	if (t_has_data(a->type)) {
		EQ(data_len);
		CHECK(b->data_len == 0 || b->data != NULL);
		if (a->data_len)
			CHECK(memcmp(a->data, b->data, a->data_len) == 0);
	} else {
		CHECK(b->data_len == 0);
	}
}

/* Copy len bytes into a buffer of exactly that size (so that ASan sees any
 * read past 'avail'). */
static unsigned char *exact_copy(const void *p, size_t len)
{
	unsigned char *b = malloc(len ? len : 1);
	CHECK(b != NULL);
	if (len)
		memcpy(b, p, len);
	return b;
}

/* Encode r, check its size and header, decode it back (exact buffer). */
static size_t roundtrip(const struct rec *r, unsigned char *buf)
{
	struct rec d;
	size_t len = format_encode(r, buf);

	CHECKF(len == expected_len(r), "type %u: encoded %zu bytes, format.md "
	       "says %zu", r->type, len, expected_len(r));
	CHECK(len <= COWFS_REC_MAX);
	CHECK(get_le(buf, 4) == len);
	CHECK(get_le(buf + 4, 2) == r->type);
	CHECK(get_le(buf + 6, 2) == r->flags);
	CHECKF(get_le(buf + 8, 8) == rec_csum(buf, (uint32_t)len),
	       "type %u: checksum is not the one format.md defines", r->type);

	unsigned char *e = exact_copy(buf, len);
	memset(&d, 0xa5, sizeof(d));
	long n = format_decode(e, len, &d);
	CHECKF(n == (long)len, "type %u: decode returned %ld, want %zu",
	       r->type, n, len);
	check_same(r, &d);
	/* Name and data point into the decoded buffer. */
	if (d.name_len)
		CHECK((const unsigned char *)d.name >= e &&
		      (const unsigned char *)d.name + d.name_len <= e + len);
	if (d.data_len)
		CHECK((const unsigned char *)d.data >= e &&
		      (const unsigned char *)d.data + d.data_len <= e + len);
	/* Re-encoding the decoded record gives the same bytes. */
	unsigned char *again = malloc(COWFS_REC_MAX);
	CHECK(again != NULL);
	CHECK(format_encode(&d, again) == len);
	CHECK(memcmp(again, e, len) == 0);
	free(again);
	free(e);
	return len;
}

static void test_roundtrip(void)
{
	unsigned char *buf = malloc(COWFS_REC_MAX);
	unsigned char *name = malloc(65535), *data = malloc(COWFS_XATTR_MAX);
	static const uint32_t name_lens[] = { 1, 2, 17, 254, 255 };
	static const uint32_t data_lens[] = { 0, 1, 255, 4095, 4096,
					      COWFS_XATTR_MAX - 1, COWFS_XATTR_MAX };
	struct rec r;
	int count = 0;

	CHECK(buf && name && data);
	rnd_bytes(name, 65535);
	rnd_bytes(data, COWFS_XATTR_MAX);
	for (unsigned t = REC_SUPER; t <= REC_ORIGIN; t++) {
		size_t nn = t_has_name(t) ? sizeof(name_lens) / sizeof(*name_lens) : 1;
		size_t nd = t_has_data(t) ? sizeof(data_lens) / sizeof(*data_lens) : 1;
		for (size_t i = 0; i < nn; i++) {
			for (size_t j = 0; j < nd; j++) {
				random_fields(&r, t);
				if (t_has_name(t)) {
					r.name = (const char *)name + rndn(16);
					r.name_len = name_lens[i];
				}
				if (t_has_data(t)) {
					r.data_len = data_lens[j];
					r.data = r.data_len ? data : NULL;
				}
				roundtrip(&r, buf);
				count++;
			}
		}
		/* Flags 0 and all-ones, fields 0 and all-ones. */
		random_fields(&r, t);
		memset(&r.u, 0, sizeof(r.u));
		r.flags = 0;
		if (t_has_name(t)) {
			r.name = "x";
			r.name_len = 1;
		}
		if (t == REC_EXT_SET || t == REC_EXT_PUNCH)
			r.u.ext.len = 1;	/* an empty run is refused */
		if (t == REC_REFCNT)
			r.u.refcnt.len = 1;
		roundtrip(&r, buf);
		memset(&r.u, 0xff, sizeof(r.u));
		if (t == REC_EXT_SET || t == REC_EXT_PUNCH) {
			r.u.ext.lblk = r.u.ext.pblk = 0;	/* no wrap */
		}
		if (t == REC_REFCNT)
			r.u.refcnt.pblk = 0;
		r.flags = 0xffff;
		roundtrip(&r, buf);
		count += 2;
	}
	/* The largest legal record fits COWFS_REC_MAX: an xattr with a 64 KiB
	 * name (the decoder's limit) and a 64 KiB value. */
	random_fields(&r, REC_XATTR_SET);
	r.name = (const char *)name;
	r.name_len = 65535;
	r.data = data;
	r.data_len = COWFS_XATTR_MAX;
	roundtrip(&r, buf);
	count++;

	/* Docs: whole sizes of the fixed-size records. */
	random_fields(&r, REC_SUPER);
	CHECK(format_encode(&r, buf) == 40);
	random_fields(&r, REC_COMMIT);
	CHECK(format_encode(&r, buf) == 40);
	random_fields(&r, REC_EXT_SET);
	CHECK(format_encode(&r, buf) == 56);
	random_fields(&r, REC_REFCNT);
	CHECK(format_encode(&r, buf) == 44);
	random_fields(&r, REC_INODE);
	CHECK(format_encode(&r, buf) == 136);

	free(buf);
	free(name);
	free(data);
	printf("  roundtrip: %d records ok\n", count);
}

/* Build a random record of type t with small name/data into buf. */
static size_t random_record(unsigned t, unsigned char *buf, unsigned char *pool,
			    size_t poolsz)
{
	struct rec r;
	random_fields(&r, t);
	if (t_has_name(t)) {
		r.name_len = 1 + (uint32_t)rndn(COWFS_NAME_MAX);
		r.name = (const char *)pool + rndn(poolsz - r.name_len);
	}
	if (t_has_data(t)) {
		r.data_len = (uint32_t)rndn(3) == 0 ? 0 : (uint32_t)rndn(300);
		r.data = r.data_len ? pool + rndn(poolsz - r.data_len) : NULL;
	}
	return format_encode(&r, buf);
}

/* A stream of records decodes one after the other; each decode sees the
 * whole rest of the stream. */
static void test_stream(void)
{
	unsigned char pool[4096];
	size_t cap = 200 * 1024, len = 0, nrec = 0;
	unsigned char *stream = malloc(cap);
	size_t offs[400], lens[400];
	struct rec d;

	CHECK(stream != NULL);
	rnd_bytes(pool, sizeof(pool));
	while (nrec < 400 && len + 1024 < cap) {
		offs[nrec] = len;
		lens[nrec] = random_record(1 + (unsigned)rndn(NTYPES), stream + len,
					   pool, sizeof(pool));
		len += lens[nrec++];
	}
	unsigned char *e = exact_copy(stream, len);
	size_t off = 0;
	for (size_t i = 0; i < nrec; i++) {
		CHECK(off == offs[i]);
		long n = format_decode(e + off, len - off, &d);
		CHECKF(n == (long)lens[i], "record %zu at %zu: %ld", i, off, n);
		off += (size_t)n;
	}
	CHECK(off == len);
	CHECK(format_decode(e + off, 0, &d) == 0);
	free(e);
	free(stream);
	printf("  stream: %zu records ok\n", nrec);
}

/* Any flipped bit makes the record torn (0), whatever follows it. */
static void test_bitflips(void)
{
	unsigned char pool[4096];
	unsigned char *buf = malloc(2 * COWFS_REC_MAX);
	struct rec d;
	long flips = 0;

	CHECK(buf != NULL);
	rnd_bytes(pool, sizeof(pool));
	for (int round = 0; round < 16; round++) {
		for (unsigned t = REC_SUPER; t <= REC_ORIGIN; t++) {
			size_t len = random_record(t, buf, pool, sizeof(pool));
			/* followed by a second, valid record */
			size_t len2 = random_record(1 + (unsigned)rndn(NTYPES),
						    buf + len, pool, sizeof(pool));
			int follow = round & 1;
			size_t avail = follow ? len + len2 : len;
			unsigned char *e = exact_copy(buf, avail);
			CHECK(format_decode(e, avail, &d) == (long)len);
			for (size_t bit = 0; bit < len * 8; bit++) {
				e[bit / 8] ^= (unsigned char)(1u << (bit % 8));
				long n = format_decode(e, avail, &d);
				CHECKF(n == 0, "type %u len %zu: flipping bit %zu "
				       "gave %ld, want 0 (torn)", t, len, bit, n);
				e[bit / 8] ^= (unsigned char)(1u << (bit % 8));
				flips++;
			}
			CHECK(format_decode(e, avail, &d) == (long)len);
			free(e);
		}
	}
	/* A big record: a sample of its bits. */
	struct rec r;
	unsigned char *data = malloc(COWFS_XATTR_MAX);
	CHECK(data != NULL);
	rnd_bytes(data, COWFS_XATTR_MAX);
	random_fields(&r, REC_XATTR_SET);
	r.name = (const char *)pool;
	r.name_len = 255;
	r.data = data;
	r.data_len = COWFS_XATTR_MAX;
	size_t len = format_encode(&r, buf);
	unsigned char *e = exact_copy(buf, len);
	for (int i = 0; i < 300; i++) {
		size_t bit = i < 200 ? rndn(COWFS_REC_HDR_SIZE * 8 + 32 * 8) :
				       rndn(len * 8);
		e[bit / 8] ^= (unsigned char)(1u << (bit % 8));
		CHECKF(format_decode(e, len, &d) == 0, "big record: bit %zu", bit);
		e[bit / 8] ^= (unsigned char)(1u << (bit % 8));
		flips++;
	}
	CHECK(format_decode(e, len, &d) == (long)len);
	free(e);
	free(data);
	free(buf);
	printf("  bit flips: %ld ok\n", flips);
}

/* Every proper prefix of a record is torn (0). */
static void test_truncation(void)
{
	unsigned char pool[4096];
	unsigned char *buf = malloc(COWFS_REC_MAX);
	struct rec d;
	long cuts = 0;

	CHECK(buf != NULL);
	rnd_bytes(pool, sizeof(pool));
	for (int round = 0; round < 3; round++) {
		for (unsigned t = REC_SUPER; t <= REC_ORIGIN; t++) {
			size_t len = random_record(t, buf, pool, sizeof(pool));
			for (size_t k = 0; k < len; k++) {
				unsigned char *e = exact_copy(buf, k);
				long n = format_decode(e, k, &d);
				CHECKF(n == 0, "type %u: prefix %zu of %zu gave %ld",
				       t, k, len, n);
				free(e);
				cuts++;
			}
		}
	}
	free(buf);
	printf("  truncations: %ld ok\n", cuts);
}

/* Random bytes: never a crash, and never > 0 unless the checksum holds. */
static void test_garbage(void)
{
	unsigned char buf[600];
	struct rec d;
	long accepted = 0, n_runs = 200000;

	for (long i = 0; i < n_runs; i++) {
		size_t len = rndn(sizeof(buf));
		rnd_bytes(buf, len);
		if (len >= COWFS_REC_HDR_SIZE && rndn(2)) {
			/* a plausible header: len within the buffer */
			uint32_t rl = (uint32_t)(COWFS_REC_HDR_SIZE +
						 rndn(len - COWFS_REC_HDR_SIZE + 1));
			put_le(buf, rl, 4);
			put_le(buf + 4, 1 + rndn(NTYPES), 2);
			if (rndn(2))
				put_le(buf + 6, 0, 2);
		}
		unsigned char *e = exact_copy(buf, len);
		long n = format_decode(e, len, &d);
		if (n != 0) {
			CHECK(len >= COWFS_REC_HDR_SIZE);
			uint32_t rl = (uint32_t)get_le(e, 4);
			CHECKF(rl >= COWFS_REC_HDR_SIZE && rl <= len &&
			       get_le(e + 8, 8) == rec_csum(e, rl),
			       "garbage of %zu bytes decoded to %ld without a "
			       "valid checksum", len, n);
			accepted++;
		}
		free(e);
	}
	/* Headers claiming impossible lengths are torn, never read. */
	memset(buf, 0, sizeof(buf));
	static const uint32_t bad_lens[] = { 0, 1, 15, COWFS_REC_MAX + 1,
					     0x7fffffff, 0xffffffff };
	for (size_t i = 0; i < sizeof(bad_lens) / sizeof(*bad_lens); i++) {
		put_le(buf, bad_lens[i], 4);
		put_le(buf + 4, REC_COMMIT, 2);
		unsigned char *e = exact_copy(buf, 100);
		CHECK(format_decode(e, 100, &d) == 0);
		free(e);
	}
	printf("  garbage: %ld buffers ok (%ld accepted)\n", n_runs, accepted);
}

/*
 * Records whose checksum is right but whose payload is arbitrary (types
 * known and unknown, consistent or mangled lengths): decode returns -1 or
 * the length, never crashes, and whatever it accepts re-encodes to the very
 * same bytes.  Untouched well-formed payloads of known types must decode.
 */
static void test_checksummed_garbage(void)
{
	unsigned char *rec = malloc(COWFS_REC_MAX);
	unsigned char *again = malloc(COWFS_REC_MAX);
	struct rec d;
	long ok = 0, bad = 0;

	CHECK(rec && again);
	for (long i = 0; i < 100000; i++) {
		unsigned t = (unsigned)rndn(NTYPES + 4);	/* 0..16 */
		int known = t >= REC_SUPER && t <= REC_ORIGIN;
		size_t fixed = known ? fixed_size[t] : rndn(80);
		unsigned char *p = rec + COWFS_REC_HDR_SIZE, *dfield = NULL;
		rnd_bytes(p, fixed);
		p += fixed;
		if (known && t_has_name(t)) {
			uint32_t nl = 1 + (uint32_t)rndn(300);
			put_le(p, nl, 2);
			rnd_bytes(p + 2, nl);
			p += 2 + nl;
		}
		if (known && t_has_data(t)) {
			uint32_t dl = rndn(4) ? (uint32_t)rndn(300) : 0;
			dfield = p;
			put_le(p, dl, 4);
			rnd_bytes(p + 4, dl);
			p += 4 + dl;
		}
		size_t len = (size_t)(p - rec);
		int mangled = (int)rndn(3) == 0;
		if (mangled) {
			switch (rndn(5)) {
			case 0: {	/* trailing bytes */
				size_t extra = 1 + rndn(8);
				rnd_bytes(rec + len, extra);
				len += extra;
				break;
			}
			case 1:		/* missing bytes */
				len -= rndn(len - COWFS_REC_HDR_SIZE + 1);
				break;
			case 2:		/* name_len 0 or off by some */
				if (known && t_has_name(t))
					put_le(rec + COWFS_REC_HDR_SIZE + fixed,
					       rndn(2) ? 0 : rndn(65536), 2);
				break;
			case 3:		/* data_len too big or wrong */
				if (dfield)
					put_le(dfield, rndn(2) ? COWFS_XATTR_MAX + 1 +
					       rndn(100) : rnd(), 4);
				break;
			default:	/* random length fields everywhere */
				len = COWFS_REC_HDR_SIZE + rndn(len - COWFS_REC_HDR_SIZE + 1);
				break;
			}
		}
		uint16_t flags = (uint16_t)rnd();
		put_le(rec, len, 4);
		put_le(rec + 4, t, 2);
		put_le(rec + 6, flags, 2);
		put_le(rec + 8, rec_csum(rec, (uint32_t)len), 8);

		unsigned char *e = exact_copy(rec, len);
		long n = format_decode(e, len, &d);
		CHECKF(n == -1 || n == (long)len, "type %u len %zu: decode %ld",
		       t, len, n);
		if (!known && t != REC_PACK)
			CHECKF(n == -1, "unknown type %u accepted", t);
		/* a pack: any payload but an empty one, flags 0 */
		if (t == REC_PACK)
			CHECKF(n == (flags || len == COWFS_REC_HDR_SIZE ? -1 :
				     (long)len), "pack len %zu flags %u: %ld",
			       len, flags, n);
		if (t == REC_PACK && n > 0)
			CHECK(d.data == e + COWFS_REC_HDR_SIZE &&
			      d.data_len == len - COWFS_REC_HDR_SIZE);
		/* runs (extents, refcounts) must be non-empty and not wrap */
		int bad_run = 0;
		if (known && (t == REC_EXT_SET || t == REC_EXT_PUNCH ||
			      t == REC_REFCNT)) {
			const unsigned char *f = rec + COWFS_REC_HDR_SIZE;
			uint64_t a = get_le(f + (t == REC_REFCNT ? 8 : 8), 8);
			uint64_t l = get_le(f + 16, 8);
			uint64_t pb = t == REC_REFCNT ? a : get_le(f + 32, 8);
			bad_run = l == 0 || a + l < a || pb + l < pb;
		}
		if (known && !mangled && !bad_run)
			CHECKF(n == (long)len, "well-formed type %u len %zu "
			       "refused (%ld)", t, len, n);
		if (known && !mangled && bad_run && len == COWFS_REC_HDR_SIZE +
		    fixed)
			CHECKF(n == -1, "type %u: empty or wrapping run accepted",
			       t);
		if (n > 0) {
			CHECK(d.type == t && d.flags == flags);
			CHECK(format_encode(&d, again) == len);
			CHECKF(memcmp(again, e, len) == 0, "type %u: decode is "
			       "not canonical", t);
			ok++;
		} else {
			bad++;
		}
		free(e);
	}
	free(rec);
	free(again);
	printf("  checksummed garbage: %ld accepted, %ld refused ok\n", ok, bad);
}

/* Specific refusals: name_len 0, data_len > 64 KiB, unknown type. */
static void test_decode_refusals(void)
{
	unsigned char buf[512];
	struct rec r, d;
	size_t len;

	random_fields(&r, REC_DIRENT_ADD);
	r.name = "abc";
	r.name_len = 3;
	len = format_encode(&r, buf);
	/* name_len = 0, trailing name bytes dropped, checksum fixed */
	put_le(buf + COWFS_REC_HDR_SIZE + 24, 0, 2);
	len -= 3;
	put_le(buf, len, 4);
	put_le(buf + 8, rec_csum(buf, (uint32_t)len), 8);
	CHECK(format_decode(buf, len, &d) == -1);

	random_fields(&r, REC_XATTR_SET);
	r.name = "user.x";
	r.name_len = 6;
	r.data = NULL;
	r.data_len = 0;
	len = format_encode(&r, buf);
	put_le(buf + len - 4, COWFS_XATTR_MAX + 1, 4);
	put_le(buf + 8, rec_csum(buf, (uint32_t)len), 8);
	CHECK(format_decode(buf, len, &d) == -1);

	for (unsigned t = 0; t < 40; t++) {
		if (t >= REC_SUPER && t <= REC_PACK)
			continue;
		memset(buf, 0, sizeof(buf));
		len = COWFS_REC_HDR_SIZE + 24;
		put_le(buf, len, 4);
		put_le(buf + 4, t, 2);
		put_le(buf + 8, rec_csum(buf, (uint32_t)len), 8);
		CHECKF(format_decode(buf, len, &d) == -1, "type %u", t);
	}
	put_le(buf + 4, 0xffff, 2);
	put_le(buf + 8, rec_csum(buf, (uint32_t)len), 8);
	CHECK(format_decode(buf, len, &d) == -1);
	/* Runs: empty, or wrapping around 2^64 (lblk or pblk), refused. */
	static const uint64_t runs[][3] = {	/* lblk, len, pblk */
		{ 0, 0, 0 }, { 5, 0, 7 }, { UINT64_MAX, 1, 0 },
		{ 1, UINT64_MAX, 0 }, { 0, 2, UINT64_MAX },
		{ (uint64_t)1 << 63, (uint64_t)1 << 63, 0 },
	};
	for (size_t i = 0; i < sizeof(runs) / sizeof(*runs); i++) {
		for (unsigned t = REC_EXT_SET; t <= REC_EXT_PUNCH; t++) {
			memset(&r, 0, sizeof(r));
			r.type = (uint16_t)t;
			r.u.ext.ino = 2;
			r.u.ext.lblk = runs[i][0];
			r.u.ext.len = runs[i][1];
			r.u.ext.obj = 1;
			r.u.ext.pblk = runs[i][2];
			len = format_encode(&r, buf);
			CHECKF(format_decode(buf, len, &d) == -1, "type %u run %zu",
			       t, i);
		}
		if (runs[i][1] && runs[i][0] + runs[i][1] > runs[i][0])
			continue;	/* only the pblk run wraps */
		memset(&r, 0, sizeof(r));
		r.type = REC_REFCNT;
		r.u.refcnt.obj = 1;
		r.u.refcnt.pblk = runs[i][0];
		r.u.refcnt.len = runs[i][1];
		r.u.refcnt.count = 2;
		len = format_encode(&r, buf);
		CHECKF(format_decode(buf, len, &d) == -1, "refcnt run %zu", i);
	}
	/* The store limit: extents must end within COWFS_MAX_FILE_SIZE. */
	for (unsigned shift = 12; shift <= 20; shift++) {
		uint64_t max = COWFS_MAX_FILE_SIZE >> shift;
		CHECK(format_extent_ok(0, max, 0, shift));
		CHECK(format_extent_ok(max - 1, 1, max - 1, shift));
		CHECK(!format_extent_ok(max, 1, 0, shift));
		CHECK(!format_extent_ok(0, 1, max, shift));
		CHECK(!format_extent_ok(1, max, 0, shift));
		CHECK(!format_extent_ok(0, 0, 0, shift));
		CHECK(!format_extent_ok(UINT64_MAX, 2, 0, shift));
		CHECK(!format_extent_ok(1, UINT64_MAX, 1, shift));
	}
	printf("  decode refusals ok\n");
}

/* ---- journal scan: torn tail or corruption ---- */

static size_t put_commit(unsigned char *p, uint64_t seq)
{
	struct rec c = { .type = REC_COMMIT };
	c.u.commit.seq = seq;
	c.u.commit.next_ino = 100;
	c.u.commit.next_obj = 100;
	return format_encode(&c, p);
}

static size_t put_dirent(unsigned char *p, uint64_t ino)
{
	struct rec r = { .type = REC_DIRENT_ADD };
	r.u.dirent.parent = 1;
	r.u.dirent.ino = ino;
	r.u.dirent.cookie = ino;
	r.name = "name";
	r.name_len = 4;
	return format_encode(&r, p);
}

static void test_scan_journal(void)
{
	unsigned char *j = calloc(1, 1 << 16);
	size_t off[32], n = 0, len = 0;
	struct jscan js;

	CHECK(j != NULL);
	/* 5 batches of 3 records + COMMIT, after an 8-byte "checkpoint" */
	len = 8;
	for (uint64_t b = 1; b <= 5; b++) {
		for (int k = 0; k < 3; k++) {
			off[n++] = len;
			len += put_dirent(j + len, 10 * b + (uint64_t)k);
		}
		off[n++] = len;
		len += put_commit(j + len, b);
	}
	CHECK(format_scan_journal(j, len, 8, &js) == JSCAN_CLEAN);
	CHECK(js.good == len && js.batches == 5 && js.good_seq == 5);
	/* an empty journal */
	CHECK(format_scan_journal(j, 8, 8, &js) == JSCAN_CLEAN);
	CHECK(js.good == 8 && js.batches == 0);

	/* a torn last batch: cut anywhere inside batch 5 */
	for (size_t cut = off[16]; cut < len; cut++) {
		enum jscan_result res = format_scan_journal(j, cut, 8, &js);
		CHECKF(res == (cut == off[16] ? JSCAN_CLEAN : JSCAN_TORN),
		       "cut at %zu: %d", cut, res);
		CHECK(js.good == off[16] && js.good_seq == 4);
	}
	/* garbage after the last COMMIT */
	for (int i = 0; i < 200; i++) {
		unsigned char *g = malloc(len + 300);
		CHECK(g != NULL);
		memcpy(g, j, len);
		size_t gl = 1 + rndn(300);
		rnd_bytes(g + len, gl);
		CHECK(format_scan_journal(g, len + gl, 8, &js) == JSCAN_TORN);
		CHECK(js.good == len && js.bad == len);
		free(g);
	}
	/* a bad byte in any record of batches 1..4, or the first record of
	 * batch 5: later COMMITs exist, so it is corruption, with the
	 * offset of the bad record */
	for (size_t i = 0; i < 17; i++) {
		unsigned char *c = malloc(len);
		CHECK(c != NULL);
		memcpy(c, j, len);
		size_t rl = (i + 1 < n ? off[i + 1] : len) - off[i];
		c[off[i] + COWFS_REC_HDR_SIZE + rndn(rl - COWFS_REC_HDR_SIZE)] ^= 0x10;
		enum jscan_result res = format_scan_journal(c, len, 8, &js);
		CHECKF(res == JSCAN_BAD_MIDDLE, "record %zu: %d", i, res);
		CHECKF(js.bad == off[i], "record %zu: bad at %zu, want %zu", i,
		       js.bad, off[i]);
		CHECK(js.later_seq == 5);
		CHECK(js.later_commits == 5 - i / 4 - (i % 4 == 3));
		free(c);
	}
	/* the very last COMMIT damaged: nothing later, a torn tail */
	{
		unsigned char *c = malloc(len);
		CHECK(c != NULL);
		memcpy(c, j, len);
		c[len - 1] ^= 1;
		CHECK(format_scan_journal(c, len, 8, &js) == JSCAN_TORN);
		CHECK(js.good == off[16] && js.good_seq == 4);
		/* a zeroed page in the middle: corruption too */
		memcpy(c, j, len);
		memset(c + off[4], 0, off[8] - off[4]);
		CHECK(format_scan_journal(c, len, 8, &js) == JSCAN_BAD_MIDDLE);
		CHECK(js.bad == off[4]);
		free(c);
	}
	/* a record that checksums but does not decode: corruption */
	{
		unsigned char *c = malloc(len + 64);
		CHECK(c != NULL);
		memcpy(c, j, len);
		memset(c + len, 0, 40);
		put_le(c + len, 40, 4);
		put_le(c + len + 4, 0x7777, 2);
		put_le(c + len + 8, rec_csum(c + len, 40), 8);
		CHECK(format_scan_journal(c, len + 40, 8, &js) == JSCAN_NONSENSE);
		CHECK(js.bad == len);
		free(c);
	}
	free(j);
	printf("  journal scan: torn tails and corruption ok\n");
}

/* ---- header ---- */

static void hdr_roundtrip(unsigned shift)
{
	struct disk_header h, d;
	unsigned char out[COWFS_HDR_SIZE];
	size_t clen = rndn(3000);
	unsigned char *ckpt = malloc(clen ? clen : 1);

	CHECK(ckpt != NULL);
	rnd_bytes(ckpt, clen);
	format_header_init(&h, shift);
	CHECK(memcmp(h.magic, COWFS_MAGIC, 8) == 0);
	CHECK(h.version == COWFS_VERSION_FMT);
	CHECK(h.incompat == 0 && h.compat == 0 && h.block_shift == shift);
	h.generation = rnd();
	format_header_encode(&h, ckpt, clen, out);
	CHECK(h.ckpt_len == clen);
	CHECK(h.ckpt_csum == format_csum(ckpt, clen));
	CHECK(format_csum(ckpt, clen) == XXH3_64bits(ckpt, clen));
	/* Layout from docs/format.md */
	CHECK(memcmp(out, "COWFSMD1", 8) == 0);
	CHECK(get_le(out + 8, 4) == COWFS_VERSION_FMT);
	CHECK(get_le(out + 12, 4) == 0);
	CHECK(get_le(out + 16, 4) == 0);
	CHECK(get_le(out + 20, 4) == shift);
	CHECK(get_le(out + 24, 8) == clen);
	CHECK(get_le(out + 32, 8) == XXH3_64bits(ckpt, clen));
	CHECK(get_le(out + 40, 8) == h.generation);
	CHECK(get_le(out + 48, 8) == 0);
	CHECK(get_le(out + 56, 8) == XXH3_64bits(out, 56));
	CHECK(h.hdr_csum == get_le(out + 56, 8));

	memset(&d, 0x5a, sizeof(d));
	const char *msg = format_header_decode(out, &d);
	CHECKF(msg == NULL, "shift %u: %s", shift, msg);
	CHECK(memcmp(d.magic, COWFS_MAGIC, 8) == 0);
	CHECK(d.version == h.version && d.incompat == h.incompat &&
	      d.compat == h.compat && d.block_shift == h.block_shift &&
	      d.ckpt_len == h.ckpt_len && d.ckpt_csum == h.ckpt_csum &&
	      d.generation == h.generation && d.reserved == h.reserved &&
	      d.hdr_csum == h.hdr_csum);
	free(ckpt);
}

/* Re-encode h (valid checksum) and expect decode to refuse it. */
static const char *hdr_refused(struct disk_header *h)
{
	unsigned char out[COWFS_HDR_SIZE];
	struct disk_header d;
	static const char ckpt[] = "checkpoint bytes";

	format_header_encode(h, ckpt, sizeof(ckpt), out);
	const char *msg = format_header_decode(out, &d);
	CHECK(msg != NULL);
	CHECK(*msg != 0);
	return msg;
}

static void test_header(void)
{
	struct disk_header h, d;
	unsigned char out[COWFS_HDR_SIZE];
	const char *msg;

	for (unsigned s = 12; s <= 20; s++)
		hdr_roundtrip(s);
	for (int i = 0; i < 50; i++)
		hdr_roundtrip(12 + (unsigned)rndn(9));

	/* The mount mark: set and cleared in place, nothing else changes. */
	format_header_init(&h, 16);
	h.generation = 77;
	format_header_encode(&h, "abc", 3, out);
	CHECK(format_header_set_mounted(out, 1) == 0);
	CHECK(format_header_decode(out, &d) == NULL);
	CHECK(d.flags == COWFS_HDR_MOUNTED && d.generation == 77 &&
	      d.ckpt_len == 3 && d.ckpt_csum == h.ckpt_csum);
	CHECK(get_le(out + 48, 4) == COWFS_HDR_MOUNTED);
	CHECK(format_header_set_mounted(out, 0) == 0);
	CHECK(format_header_decode(out, &d) == NULL && d.flags == 0);
	out[3] ^= 1;
	CHECK(format_header_set_mounted(out, 1) == -1);

	/* Unknown compat bits and the reserved field are ignored. */
	format_header_init(&h, 16);
	h.compat = 0xffffffffu;
	h.reserved = rnd();
	format_header_encode(&h, "", 0, out);
	CHECK(format_header_decode(out, &d) == NULL);
	CHECK(d.compat == 0xffffffffu && d.reserved == h.reserved);
	CHECK(d.ckpt_len == 0);

	/* Wrong version (re-encoded, so the checksum is right). */
	format_header_init(&h, 12);
	h.version = 2;
	msg = hdr_refused(&h);
	CHECKF(strstr(msg, "version") != NULL, "message: %s", msg);
	h.version = 0;
	msg = hdr_refused(&h);
	CHECKF(strstr(msg, "version") != NULL, "message: %s", msg);
	h.version = 0xffffffffu;
	msg = hdr_refused(&h);
	CHECKF(strstr(msg, "version") != NULL, "message: %s", msg);

	/* Every unknown incompat bit; the known one (PACKED) is read. */
	format_header_init(&h, 12);
	h.incompat = COWFS_INCOMPAT_PACKED;
	format_header_encode(&h, "x", 1, out);
	CHECK(format_header_decode(out, &d) == NULL &&
	      d.incompat == COWFS_INCOMPAT_PACKED);
	for (int b = 0; b < 32; b++) {
		if ((1u << b) & COWFS_INCOMPAT_KNOWN)
			continue;
		format_header_init(&h, 12);
		h.incompat = 1u << b;
		msg = hdr_refused(&h);
		CHECKF(strstr(msg, "incompat") != NULL, "bit %d: %s", b, msg);
	}

	/* Invalid block shifts. */
	static const uint32_t bad_shifts[] = { 0, 1, 9, 11, 21, 31, 32, 63, 64,
					       0xffffffffu };
	for (size_t i = 0; i < sizeof(bad_shifts) / sizeof(*bad_shifts); i++) {
		format_header_init(&h, 12);
		h.block_shift = bad_shifts[i];
		msg = hdr_refused(&h);
		CHECKF(strstr(msg, "block size") != NULL, "shift %u: %s",
		       bad_shifts[i], msg);
	}

	/* Bad magic: each magic byte. */
	format_header_init(&h, 12);
	format_header_encode(&h, "x", 1, out);
	for (int i = 0; i < 8; i++) {
		unsigned char c[COWFS_HDR_SIZE];
		memcpy(c, out, sizeof(c));
		c[i] ^= (unsigned char)(1 + rndn(255));
		msg = format_header_decode(c, &d);
		CHECK(msg != NULL);
		CHECKF(strstr(msg, "magic") != NULL, "byte %d: %s", i, msg);
	}

	/* Every single bit flip is refused (magic or checksum). */
	for (int bit = 0; bit < (int)COWFS_HDR_SIZE * 8; bit++) {
		unsigned char c[COWFS_HDR_SIZE];
		memcpy(c, out, sizeof(c));
		c[bit / 8] ^= (unsigned char)(1u << (bit % 8));
		msg = format_header_decode(c, &d);
		CHECKF(msg != NULL, "header bit %d flipped was accepted", bit);
		if (bit >= 64)
			CHECKF(strstr(msg, "checksum") != NULL, "bit %d: %s",
			       bit, msg);
	}

	/* A flipped field with a recomputed checksum of the wrong data. */
	{
		unsigned char c[COWFS_HDR_SIZE];
		memcpy(c, out, sizeof(c));
		put_le(c + 56, get_le(c + 56, 8) + 1, 8);
		msg = format_header_decode(c, &d);
		CHECK(msg != NULL && strstr(msg, "checksum") != NULL);
	}

	/* Garbage headers. */
	for (int i = 0; i < 10000; i++) {
		unsigned char c[COWFS_HDR_SIZE];
		rnd_bytes(c, sizeof(c));
		if (i & 1)
			memcpy(c, COWFS_MAGIC, 8);
		CHECK(format_header_decode(c, &d) != NULL);
	}
	memset(out, 0, sizeof(out));
	CHECK(format_header_decode(out, &d) != NULL);
	printf("  header ok\n");
}

/* ---- packed records (REC_PACK) ---- */

static const unsigned pack_types[] = { REC_SUPER, REC_INODE, REC_DIRENT_ADD,
				       REC_EXT_SET, REC_XATTR_SET, REC_REFCNT,
				       REC_ORIGIN };
#define NPACK_TYPES (sizeof(pack_types) / sizeof(*pack_types))

/* A record the pack decoder gave, with its name and data copied out. */
struct held {
	struct rec r;
	unsigned char *name, *data;
};

static void hold(struct held *h, const struct rec *r)
{
	h->r = *r;
	h->name = malloc(r->name_len + 1u);
	h->data = malloc(r->data_len + 1u);
	CHECK(h->name && h->data);
	if (r->name_len)
		memcpy(h->name, r->name, r->name_len);
	if (r->data_len)
		memcpy(h->data, r->data, r->data_len);
	h->r.name = (const char *)h->name;
	h->r.data = h->data;
}

static void unhold(struct held *h)
{
	free(h->name);
	free(h->data);
}

/* Decode a whole pack record (exact buffer) and compare its sub-records
 * with want[0..n). */
static void pack_check(const unsigned char *rec, size_t len,
		       const struct rec *want, size_t n)
{
	unsigned char *e = exact_copy(rec, len);
	struct pack_reader rd;
	struct rec p, d;

	CHECK(len <= COWFS_REC_MAX);
	CHECK(get_le(e, 4) == len && get_le(e + 4, 2) == REC_PACK &&
	      get_le(e + 6, 2) == 0);
	CHECK(get_le(e + 8, 8) == rec_csum(e, (uint32_t)len));
	CHECK(format_decode(e, len, &p) == (long)len);
	CHECK(p.type == REC_PACK);
	format_pack_open(&rd, &p);
	for (size_t i = 0; i < n; i++) {
		memset(&d, 0xa5, sizeof(d));
		int k = format_pack_next(&rd, &d);
		CHECKF(k == 1, "sub-record %zu of %zu (type %u): %d", i, n,
		       want[i].type, k);
		check_same(&want[i], &d);
	}
	CHECK(format_pack_next(&rd, &d) == 0);
	CHECK(format_pack_next(&rd, &d) == 0);
	free(e);
}

/* Pack recs[0..n) into as many packs as it takes, check each; returns
 * the bytes of all the packs. */
static size_t pack_roundtrip(const struct rec *recs, size_t n)
{
	unsigned char *buf = malloc(COWFS_REC_MAX);
	struct pack_writer w;
	size_t total = 0, first = 0;

	CHECK(buf != NULL);
	format_pack_start(&w, buf);
	for (size_t i = 0; i <= n; i++) {
		int k = i < n ? format_pack_add(&w, &recs[i]) : 0;
		if (k == 1)
			continue;
		CHECKF(k == 0, "record %zu (type %u) cannot be packed", i,
		       recs[i].type);
		size_t len = format_pack_finish(&w);
		CHECK(len > 0 || i == first);
		if (len) {
			pack_check(buf, len, recs + first, i - first);
			total += len;
		}
		if (i == n)
			break;
		first = i;
		format_pack_start(&w, buf);
		CHECK(format_pack_add(&w, &recs[i]) == 1);
	}
	free(buf);
	return total;
}

static const uint64_t x64[] = { 0, 1, 2, 127, 128, (uint64_t)1 << 62,
				((uint64_t)1 << 62) - 1, INT64_MAX,
				(uint64_t)INT64_MAX + 1, UINT64_MAX - 1,
				UINT64_MAX };
static const uint32_t x32[] = { 0, 1, 999999999, 1000000000, UINT32_MAX };
static const int64_t xsec[] = { 0, -1, 1, INT64_MIN, INT64_MAX,
				INT64_MIN + 1, INT64_MAX - 1,
				(int64_t)1 << 32, -((int64_t)1 << 32),
				((int64_t)1 << 32) - 1, 1764892800 };

static uint64_t pick64(void)
{
	return rndn(2) ? x64[rndn(sizeof(x64) / sizeof(*x64))] : rnd() >> rndn(64);
}

static uint32_t pick32(void)
{
	return rndn(2) ? x32[rndn(sizeof(x32) / sizeof(*x32))] :
	       (uint32_t)(rnd() >> rndn(64));
}

static int64_t picksec(int64_t near)
{
	switch (rndn(4)) {
	case 0:
		return xsec[rndn(sizeof(xsec) / sizeof(*xsec))];
	case 1:
		return (int64_t)rnd();
	default:
		return (int64_t)((uint64_t)near + rndn(200) - 100);
	}
}

static uint32_t picknsec(void)
{
	return rndn(4) ? (uint32_t)rndn(1000000000) : pick32();
}

/* A run [a, a + len) that the decoder accepts: len >= 1, no wrap. */
static void pick_run(uint64_t *a, uint64_t *len, uint64_t *b)
{
	do {
		*a = pick64();
		*len = pick64();
		*b = pick64();
	} while (!*len || *a + *len < *a || *b + *len < *b);
}

static unsigned char names[COWFS_XATTR_MAX], values[COWFS_XATTR_MAX];

/* A record of a packed type with extreme or random fields; prev: the one
 * before it, for names that share a prefix and times close together. */
static void pack_random(struct rec *r, unsigned t, const struct rec *prev)
{
	random_fields(r, t);
	switch (rndn(4)) {
	case 0:
		r->flags = 0;
		break;
	case 1:
		r->flags = (uint16_t)rndn(16);
		break;
	}
	switch (t) {
	case REC_SUPER:
		r->u.super.next_ino = pick64();
		r->u.super.next_obj = pick64();
		r->u.super.root_ino = pick64();
		break;
	case REC_INODE: {
		int64_t near = prev && prev->type == REC_INODE ?
			       prev->u.inode.mtime_sec : 1764892800;
		r->u.inode.ino = rndn(2) && prev ? prev->u.inode.ino + 1 : pick64();
		r->u.inode.size = pick64();
		r->u.inode.wobj = rndn(2) ? 0 : pick64();
		r->u.inode.rdev = rndn(2) ? 0 : pick64();
		r->u.inode.next_cookie = rndn(2) ? 0 : pick64();
		r->u.inode.parent = rndn(2) ? 0 : pick64();
		r->u.inode.mode = rndn(2) ? 0100644 : pick32();
		r->u.inode.uid = rndn(2) ? 1000 : pick32();
		r->u.inode.gid = pick32();
		r->u.inode.nlink = rndn(2) ? 1 : pick32();
		r->u.inode.flags = rndn(2) ? 0 : pick32();
		r->u.inode.mtime_sec = picksec(near);
		r->u.inode.mtime_nsec = picknsec();
		r->u.inode.atime_sec = rndn(2) ? r->u.inode.mtime_sec : picksec(near);
		r->u.inode.atime_nsec = rndn(2) ? r->u.inode.mtime_nsec : picknsec();
		r->u.inode.ctime_sec = rndn(2) ? r->u.inode.mtime_sec : picksec(near);
		r->u.inode.ctime_nsec = rndn(2) ? r->u.inode.mtime_nsec : picknsec();
		r->u.inode.btime_sec = rndn(2) ? r->u.inode.ctime_sec : picksec(near);
		r->u.inode.btime_nsec = rndn(2) ? r->u.inode.ctime_nsec : picknsec();
		r->data_len = rndn(3) ? 0 : (uint32_t)rndn(5000);
		if (!rndn(50))
			r->data_len = COWFS_XATTR_MAX;
		r->data = values;
		break;
	}
	case REC_DIRENT_ADD:
		r->u.dirent.parent = rndn(2) && prev ? prev->u.dirent.parent : pick64();
		r->u.dirent.ino = pick64();
		r->u.dirent.cookie = rndn(2) && prev ? prev->u.dirent.cookie + 1 :
				     pick64();
		r->name_len = 1 + (uint32_t)rndn(COWFS_NAME_MAX);
		if (!rndn(8))
			r->name_len = COWFS_NAME_MAX;
		/* names differ only near their end: long shared prefixes */
		r->name = (const char *)names + (rndn(2) ? 0 : rndn(4));
		break;
	case REC_EXT_SET:
		r->u.ext.ino = prev && rndn(2) ? prev->u.ext.ino : pick64();
		pick_run(&r->u.ext.lblk, &r->u.ext.len, &r->u.ext.pblk);
		r->u.ext.obj = pick64();
		break;
	case REC_XATTR_SET:
		r->u.xattr.ino = pick64();
		r->name = (const char *)names;
		r->name_len = 1 + (uint32_t)rndn(300);
		r->data = values;
		r->data_len = (uint32_t)rndn(300);
		if (!rndn(50)) {	/* the largest: both at 64 KiB */
			r->name_len = COWFS_XATTR_MAX;
			r->data_len = COWFS_XATTR_MAX;
		}
		break;
	case REC_REFCNT: {
		uint64_t pb;
		pick_run(&r->u.refcnt.pblk, &r->u.refcnt.len, &pb);
		r->u.refcnt.obj = prev && rndn(2) ? prev->u.refcnt.obj : pick64();
		r->u.refcnt.count = pick32();
		break;
	}
	case REC_ORIGIN:
		r->u.origin.obj = pick64();
		r->u.origin.dev = pick64();
		r->u.origin.ino = pick64();
		r->u.origin.size = pick64();
		r->u.origin.mtime_ns = rndn(2) ? (int64_t)pick64() :
				       xsec[rndn(sizeof(xsec) / sizeof(*xsec))];
		r->u.origin.ctime_ns = rndn(2) ? r->u.origin.mtime_ns :
				       (int64_t)pick64();
		r->flags = (uint16_t)(rndn(2) ? rndn(4096) : rnd());
		r->data = values;
		r->data_len = (uint32_t)rndn(4096);
		break;
	}
}

/* Every packed type, alone and in long mixed runs, with extreme values:
 * what goes in comes out. */
static void test_pack_roundtrip(void)
{
	enum { N = 20000 };
	struct rec *recs = calloc(N, sizeof(*recs));
	size_t bytes = 0;

	CHECK(recs != NULL);
	rnd_bytes(values, sizeof(values));
	for (size_t i = 0; i < sizeof(names); i++)	/* no NUL, no '/' */
		names[i] = (unsigned char)('a' + (i * 7 + i / 13) % 26);
	for (unsigned i = 0; i < NPACK_TYPES; i++) {
		/* one type alone, several in a row (delta state) */
		for (int rep = 0; rep < 200; rep++) {
			size_t n = 1 + rndn(40);
			for (size_t k = 0; k < n; k++)
				pack_random(&recs[k], pack_types[i],
					    k ? &recs[k - 1] : NULL);
			pack_roundtrip(recs, n);
		}
	}
	/* long mixed runs: several packs each, types interleaved, and
	 * runs of one type so that the deltas stay small */
	for (int rep = 0; rep < 10; rep++) {
		unsigned t = pack_types[rndn(NPACK_TYPES)];
		for (size_t k = 0; k < N; k++) {
			if (!rndn(8))
				t = pack_types[rndn(NPACK_TYPES)];
			pack_random(&recs[k], t, k && recs[k - 1].type == t ?
				    &recs[k - 1] : NULL);
		}
		bytes += pack_roundtrip(recs, N);
	}
	/* hand-picked extremes */
	struct rec r[8];
	memset(r, 0, sizeof(r));
	r[0].type = REC_INODE;		/* all zero: mask 0 */
	r[1].type = REC_INODE;		/* all max */
	r[1].u.inode.ino = r[1].u.inode.size = r[1].u.inode.wobj = UINT64_MAX;
	r[1].u.inode.rdev = r[1].u.inode.next_cookie = UINT64_MAX;
	r[1].u.inode.parent = UINT64_MAX;
	r[1].u.inode.mode = r[1].u.inode.uid = r[1].u.inode.gid = UINT32_MAX;
	r[1].u.inode.nlink = r[1].u.inode.flags = UINT32_MAX;
	r[1].u.inode.atime_sec = INT64_MIN;
	r[1].u.inode.mtime_sec = INT64_MAX;
	r[1].u.inode.ctime_sec = -1;
	r[1].u.inode.btime_sec = INT64_MIN;
	r[1].u.inode.atime_nsec = r[1].u.inode.mtime_nsec = UINT32_MAX;
	r[1].u.inode.ctime_nsec = 999999999;
	r[1].u.inode.btime_nsec = 1000000000;
	r[1].flags = UINT16_MAX;
	r[2] = r[1];			/* the same again: no deltas */
	r[3].type = REC_EXT_SET;	/* 2^62 offsets */
	r[3].u.ext.ino = UINT64_MAX;
	r[3].u.ext.lblk = (uint64_t)1 << 62;
	r[3].u.ext.len = (uint64_t)1 << 62;
	r[3].u.ext.obj = UINT64_MAX;
	r[3].u.ext.pblk = UINT64_MAX - ((uint64_t)1 << 62);
	r[4] = r[3];
	r[4].u.ext.lblk = 0;
	r[4].u.ext.len = 1;
	r[4].u.ext.obj = 1;
	r[5].type = REC_REFCNT;
	r[5].u.refcnt.obj = UINT64_MAX;
	r[5].u.refcnt.pblk = UINT64_MAX - 1;
	r[5].u.refcnt.len = 1;
	r[5].u.refcnt.count = UINT32_MAX;
	r[6].type = REC_ORIGIN;
	r[6].u.origin.mtime_ns = INT64_MIN;
	r[6].u.origin.ctime_ns = INT64_MAX;
	r[6].flags = 4095;
	r[7].type = REC_SUPER;
	r[7].u.super.next_ino = r[7].u.super.next_obj = UINT64_MAX;
	pack_roundtrip(r, 8);
	printf("  pack round trips: ok (%zu bytes in the mixed runs)\n", bytes);
	free(recs);
}

/* A hand-made pack whose payload is bytes[0..n); how its sub-records
 * decode: the number of good ones before the first -1, or -(good + 1)... */
static int pack_decode_bytes(const unsigned char *bytes, size_t n,
			     size_t *good)
{
	unsigned char *buf = malloc(COWFS_REC_MAX);
	struct rec r = { .type = REC_PACK, .data = bytes,
			 .data_len = (uint32_t)n }, p, d;
	struct pack_reader rd;
	int k;

	CHECK(buf != NULL);
	size_t len = format_encode(&r, buf);
	unsigned char *e = exact_copy(buf, len);
	CHECK(format_decode(e, len, &p) == (long)len);
	format_pack_open(&rd, &p);
	*good = 0;
	while ((k = format_pack_next(&rd, &d)) == 1)
		(*good)++;
	free(e);
	free(buf);
	return k;
}

#define BYTES(...) ((const unsigned char[]){ __VA_ARGS__ })
#define CORRUPT(want_good, ...)                                             \
	do {                                                                \
		static const unsigned char b_[] = { __VA_ARGS__ };         \
		size_t g_;                                                  \
		CHECKF(pack_decode_bytes(b_, sizeof(b_), &g_) == -1 &&     \
		       g_ == (want_good), "corrupt pack at line %d: %zu "   \
		       "good", __LINE__, g_);                               \
	} while (0)
#define GOOD(want_good, ...)                                                \
	do {                                                                \
		static const unsigned char b_[] = { __VA_ARGS__ };         \
		size_t g_;                                                  \
		CHECKF(pack_decode_bytes(b_, sizeof(b_), &g_) == 0 &&      \
		       g_ == (want_good), "good pack at line %d: %zu good", \
		       __LINE__, g_);                                       \
	} while (0)

#define FF9 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff

/* Hand-made packs that checksum but do not decode: -1, never UB. */
static void test_pack_corrupt(void)
{
	/* SUPER (tag 1): three varints */
	GOOD(1, 0x01, 0x02, 0x01, 0x01);
	GOOD(1, 0x01, FF9, 0x01, 0x00, 0x00);		/* 2^64 - 1 */
	CORRUPT(0, 0x01, FF9, 0x02, 0x00, 0x00);	/* 2^64: overflow */
	CORRUPT(0, 0x01, FF9, 0xff, 0x00, 0x00);	/* 11-byte varint */
	CORRUPT(0, 0x01, 0x80);				/* truncated varint */
	CORRUPT(1, 0x01, 0x02, 0x01, 0x01, 0x01, 0x02);	/* truncated record */
	/* unknown or unpackable tags */
	for (unsigned t = 0; t < 16; t++) {
		int ok = 0;
		for (size_t i = 0; i < NPACK_TYPES; i++)
			ok |= pack_types[i] == t;
		if (ok)
			continue;
		unsigned char b[] = { (unsigned char)t, 0, 0, 0, 0, 0, 0, 0, 0,
				      0, 0, 0, 0, 0, 0, 0 };
		size_t g;
		CHECKF(pack_decode_bytes(b, sizeof(b), &g) == -1 && g == 0,
		       "tag %u", t);
	}
	/* flags: 15 in the tag, then a varint of at least 15 and at most
	 * 0xffff */
	GOOD(1, 0xf1, 0x0f, 0x02, 0x01, 0x01);
	GOOD(1, 0xf1, 0xff, 0xff, 0x03, 0x02, 0x01, 0x01);
	CORRUPT(0, 0xf1, 0x0e, 0x02, 0x01, 0x01);
	CORRUPT(0, 0xf1, 0x80, 0x80, 0x04, 0x02, 0x01, 0x01);
	/* EXT_SET (tag 0x46 with EXT_NOREF): ino, lblk, len, obj, pblk */
	GOOD(1, 0x46, 0x02, 0x00, 0x01, 0x02, 0x00);
	CORRUPT(0, 0x46, 0x02, 0x00, 0x00, 0x02, 0x00);	/* len 0 */
	CORRUPT(0, 0x46, 0x02, 0x01, FF9, 0x01, 0x02, 0x00); /* lblk wraps */
	CORRUPT(0, 0x46, 0x02, 0x00, FF9, 0x01, 0x02, 0x01); /* pblk wraps */
	/* REFCNT (tag 10): obj, pblk, len, count */
	GOOD(1, 0x0a, 0x02, 0x00, 0x01, 0x02);
	CORRUPT(0, 0x0a, 0x02, 0x00, 0x00, 0x02);	/* len 0 */
	CORRUPT(0, 0x0a, 0x02, 0x00, 0x01, 0x80, 0x80, 0x80, 0x80, 0x10);
							/* count > u32 */
	/* DIRENT_ADD (tag 4): parent, ino, cookie, k, suffix */
	GOOD(2, 0x04, 0x02, 0x04, 0x04, 0x00, 0x03, 'a', 'b', 'c',
	     0x04, 0x00, 0x02, 0x00, 0x02, 0x01, 'x');	/* "ab" + "x" */
	CORRUPT(1, 0x04, 0x02, 0x04, 0x04, 0x00, 0x03, 'a', 'b', 'c',
		0x04, 0x00, 0x02, 0x00, 0x04, 0x01, 'x'); /* k > previous */
	CORRUPT(0, 0x04, 0x02, 0x04, 0x04, 0x00, 0x00);	/* empty name */
	CORRUPT(0, 0x04, 0x02, 0x04, 0x04, 0x00, 0x80, 0x02); /* 256 bytes */
	CORRUPT(0, 0x04, 0x02, 0x04, 0x04, 0x00, 0x05, 'a'); /* truncated */
	{	/* 255 bytes, then 255 + 1 with a shared prefix */
		unsigned char b[600];
		size_t n = 0, g;
		b[n++] = 0x04; b[n++] = 2; b[n++] = 4; b[n++] = 4;
		b[n++] = 0; b[n++] = 0xff; b[n++] = 0x01;
		memset(b + n, 'n', 255);
		n += 255;
		b[n++] = 0x04; b[n++] = 0; b[n++] = 2; b[n++] = 0;
		b[n++] = 0xff; b[n++] = 0x01; b[n++] = 0x00;	/* same name */
		CHECK(pack_decode_bytes(b, n, &g) == 0 && g == 2);
		b[n - 1] = 0x01;				/* + 1 byte */
		b[n++] = 'z';
		CHECK(pack_decode_bytes(b, n, &g) == -1 && g == 1);
	}
	/* XATTR_SET (tag 8): ino, name, value */
	GOOD(1, 0x08, 0x02, 0x01, 'k', 0x01, 'v');
	CORRUPT(0, 0x08, 0x02, 0x00, 0x01, 'v');	/* empty name */
	CORRUPT(0, 0x08, 0x02, 0x01, 'k', 0x81, 0x80, 0x04); /* value > 64 KiB */
	/* INODE (tag 2): mask, ino, mtime, ... */
	GOOD(1, 0x02, 0x00, 0x00, 0x00);		/* all zero */
	CORRUPT(0, 0x02, 0x80, 0x80, 0x01, 0x00, 0x00);	/* unknown mask bit */
	CORRUPT(0, 0x02, 0x00, 0x00, 0x03);		/* time marker 3 */
	CORRUPT(0, 0x02, 0x00, 0x00, 0x01, 0x00, 0x80, 0x80, 0x80, 0x80, 0x10);
							/* nsec > u32 */
	GOOD(1, 0x02, 0x00, 0x00, 0x01, 0x00, 0x80, 0x94, 0xeb, 0xdc, 0x03);
							/* escape, nsec 10^9 */
	/* a compact time whose seconds differ by 2^32 or more */
	{
		unsigned char b[32];
		size_t n = 0, g;
		uint64_t v = ((uint64_t)1 << 32) * 1000000000u;	/* ns */
		b[n++] = 0x02; b[n++] = 0x00; b[n++] = 0x00;
		v = (v << 1) << 1;			/* zigzag, then << 1 */
		while (v >= 0x80) {
			b[n++] = (unsigned char)(v | 0x80);
			v >>= 7;
		}
		b[n++] = (unsigned char)v;
		CHECK(pack_decode_bytes(b, n, &g) == -1 && g == 0);
	}
	/* nsec 10^9 before, then a compact time against it */
	GOOD(1, 0x02, 0x00, 0x00, 0x01, 0x00, 0x80, 0x94, 0xeb, 0xdc, 0x03);
	CORRUPT(1, 0x02, 0x00, 0x00, 0x01, 0x00, 0x80, 0x94, 0xeb, 0xdc, 0x03,
		0x02, 0x00, 0x00, 0x00);
	CORRUPT(0, 0x02, 0x10, 0x00, 0x00, 0x80, 0x80, 0x80, 0x80, 0x10);
							/* mode > u32 */
	CORRUPT(0, 0x02, 0x80, 0x40, 0x00, 0x00, 0x81, 0x80, 0x04);
							/* target > 64 KiB */
	/* ORIGIN (tag 13): obj, dev, ino, size, mtime, ctime, path */
	GOOD(1, 0x0d, 0x02, 0x01, 0x01, 0x01, 0x00, 0x00, 0x02, '/', 'a');
	CORRUPT(0, 0x0d, 0x02, 0x01, 0x01, 0x01, 0x00, 0x00, 0x03, '/', 'a');

	/* Every cut of a real pack: a cut between sub-records reads as a
	 * shorter pack, a cut inside one is -1. */
	struct rec recs[64];
	unsigned char *buf = malloc(COWFS_REC_MAX);
	struct pack_writer w;
	CHECK(buf != NULL);
	format_pack_start(&w, buf);
	for (size_t k = 0; k < 64; k++) {
		pack_random(&recs[k], pack_types[k % NPACK_TYPES], NULL);
		if (recs[k].type == REC_XATTR_SET)
			recs[k].name_len = recs[k].data_len = 3;
		if (recs[k].type == REC_INODE || recs[k].type == REC_ORIGIN)
			recs[k].data_len = (uint32_t)rndn(4);
		CHECK(format_pack_add(&w, &recs[k]) == 1);
	}
	size_t len = format_pack_finish(&w);
	struct rec p;
	struct pack_reader rd;
	size_t ends[65], nends = 0;
	CHECK(format_decode(buf, len, &p) == (long)len);
	format_pack_open(&rd, &p);
	ends[nends++] = 0;
	for (size_t k = 0; k < 64; k++) {
		struct rec d;
		CHECK(format_pack_next(&rd, &d) == 1);
		ends[nends++] = format_pack_offset(&rd);
	}
	const unsigned char *pay = buf + COWFS_REC_HDR_SIZE;
	size_t j = 0;
	for (size_t cut = 0; cut <= p.data_len; cut++) {
		size_t g;
		while (j + 1 < nends && ends[j + 1] <= cut)
			j++;
		int at_end = ends[j] == cut;
		int k = cut ? pack_decode_bytes(pay, cut, &g) : 0;
		if (!cut)
			continue;
		CHECKF(g == j && k == (at_end ? 0 : -1), "cut at %zu of %u: "
		       "%d after %zu (want %zu)", cut, p.data_len, k, g, j);
	}
	free(buf);

	/* Random payloads: never UB; what decodes packs again the same. */
	long ok = 0, bad = 0;
	unsigned char *gb = malloc(400);
	struct held *hs = calloc(400, sizeof(*hs));
	CHECK(gb && hs);
	for (int i = 0; i < 30000; i++) {
		size_t n = 1 + rndn(400), nh = 0;
		rnd_bytes(gb, n);
		for (size_t q = 0; q < n; q++)	/* small varints, known tags */
			if (rndn(2))
				gb[q] &= 0x7f;
		gb[0] = (unsigned char)pack_types[rndn(NPACK_TYPES)];
		unsigned char *rb = malloc(COWFS_REC_MAX);
		struct rec pr = { .type = REC_PACK, .data = gb,
				  .data_len = (uint32_t)n }, d;
		CHECK(rb != NULL);
		size_t rl = format_encode(&pr, rb);
		unsigned char *e = exact_copy(rb, rl);
		CHECK(format_decode(e, rl, &pr) == (long)rl);
		format_pack_open(&rd, &pr);
		int k;
		while ((k = format_pack_next(&rd, &d)) == 1)
			hold(&hs[nh++], &d);
		if (k == 0)
			ok++;
		else
			bad++;
		struct rec again[400];
		for (size_t q = 0; q < nh; q++)
			again[q] = hs[q].r;
		pack_roundtrip(again, nh);
		for (size_t q = 0; q < nh; q++)
			unhold(&hs[q]);
		free(e);
		free(rb);
	}
	/* Real packs with a few bytes changed: the same, deeper in. */
	long mok = 0, mbad = 0;
	for (int i = 0; i < 3000; i++) {
		struct rec rs[32];
		size_t n = 1 + rndn(32), nh = 0;
		unsigned char *rb = malloc(COWFS_REC_MAX);
		CHECK(rb != NULL);
		format_pack_start(&w, rb);
		for (size_t k = 0; k < n; k++) {
			pack_random(&rs[k], pack_types[rndn(NPACK_TYPES)],
				    k && rs[k - 1].type == rs[k].type ?
				    &rs[k - 1] : NULL);
			rs[k].data_len %= 64;
			if (rs[k].type == REC_XATTR_SET)
				rs[k].name_len = 1 + rs[k].name_len % 64;
			CHECK(format_pack_add(&w, &rs[k]) == 1);
		}
		size_t rl = format_pack_finish(&w);
		size_t pl = rl - COWFS_REC_HDR_SIZE;
		for (int f = 1 + (int)rndn(3); f > 0; f--) {
			size_t at = COWFS_REC_HDR_SIZE + rndn(pl);
			if (rndn(2))
				rb[at] ^= (unsigned char)(1u << rndn(8));
			else
				rb[at] = (unsigned char)rnd();
		}
		struct rec pr = { .type = REC_PACK, .data = rb +
				  COWFS_REC_HDR_SIZE, .data_len = (uint32_t)pl }, d;
		unsigned char *rb2 = malloc(COWFS_REC_MAX);
		CHECK(rb2 != NULL);
		rl = format_encode(&pr, rb2);
		unsigned char *e = exact_copy(rb2, rl);
		CHECK(format_decode(e, rl, &pr) == (long)rl);
		format_pack_open(&rd, &pr);
		int k;
		while (nh < 400 && (k = format_pack_next(&rd, &d)) == 1)
			hold(&hs[nh++], &d);
		if (k == 0)
			mok++;
		else
			mbad++;
		struct rec again[400];
		for (size_t q = 0; q < nh; q++)
			again[q] = hs[q].r;
		pack_roundtrip(again, nh);
		for (size_t q = 0; q < nh; q++)
			unhold(&hs[q]);
		free(e);
		free(rb);
		free(rb2);
	}
	free(gb);
	free(hs);
	printf("  corrupt packs: ok (random payloads: %ld decode, %ld refused; "
	       "changed packs: %ld decode, %ld refused)\n", ok, bad, mok, mbad);
}

static double now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

/*
 * Not a check, a measurement: the records of a checkpoint of cloned
 * small files (per file: INODE, DIRENT_ADD "file%06d", one EXT_SET), plain
 * and packed: bytes and encode/decode time per inode.
 */
static void bench_pack(void)
{
	enum { N = 200000 };
	struct rec *recs = calloc(3 * N, sizeof(*recs));
	char (*nm)[16] = calloc(N, 16);
	unsigned char *plain = malloc((size_t)N * 300), *packed;
	size_t plen = 0, klen = 0, cap = (size_t)N * 300;
	int64_t t0 = 1764892800;

	CHECK(recs && nm && plain);
	packed = malloc(cap);
	CHECK(packed != NULL);
	for (size_t i = 0; i < N; i++) {
		struct rec *r = &recs[3 * i];
		uint64_t ino = 1000 + i, ns = 1000000ull * i + rndn(100000);
		r[0].type = REC_INODE;
		r[0].u.inode.ino = ino;
		r[0].u.inode.size = 100 + rndn(4000);
		r[0].u.inode.mode = 0100644;
		r[0].u.inode.uid = r[0].u.inode.gid = 1000;
		r[0].u.inode.nlink = 1;
		r[0].u.inode.mtime_sec = t0 + (int64_t)(ns / 1000000000u);
		r[0].u.inode.mtime_nsec = (uint32_t)(ns % 1000000000u);
		r[0].u.inode.atime_sec = r[0].u.inode.mtime_sec;
		r[0].u.inode.atime_nsec = r[0].u.inode.mtime_nsec;
		r[0].u.inode.ctime_sec = r[0].u.inode.btime_sec = t0 + 3600;
		r[0].u.inode.ctime_nsec = r[0].u.inode.btime_nsec = 123456789;
		snprintf(nm[i], 16, "file%06zu", i);
		r[1].type = REC_DIRENT_ADD;
		r[1].u.dirent.parent = 500 + i / 100;
		r[1].u.dirent.ino = ino;
		r[1].u.dirent.cookie = 3 + i % 100;
		r[1].name = nm[i];
		r[1].name_len = (uint32_t)strlen(nm[i]);
		r[2].type = REC_EXT_SET;
		r[2].flags = EXT_NOREF;
		r[2].u.ext.ino = ino;
		r[2].u.ext.len = 1;
		r[2].u.ext.obj = 7 + i;
	}
	double a = now_ns();
	for (size_t i = 0; i < 3 * N; i++)
		plen += format_encode(&recs[i], plain + plen);
	double b = now_ns();
	struct pack_writer w;
	format_pack_start(&w, packed);
	for (size_t i = 0; i < 3 * N; i++) {
		if (format_pack_add(&w, &recs[i]) == 1)
			continue;
		klen += format_pack_finish(&w);
		format_pack_start(&w, packed + klen);
		CHECK(format_pack_add(&w, &recs[i]) == 1);
	}
	klen += format_pack_finish(&w);
	double c = now_ns();
	struct rec d, p;
	size_t got = 0;
	for (size_t off = 0; off < plen;) {
		long n = format_decode(plain + off, plen - off, &d);
		CHECK(n > 0);
		off += (size_t)n;
		got++;
	}
	double e = now_ns();
	for (size_t off = 0; off < klen;) {
		long n = format_decode(packed + off, klen - off, &p);
		struct pack_reader rd;
		CHECK(n > 0);
		format_pack_open(&rd, &p);
		while (format_pack_next(&rd, &d) == 1)
			got++;
		off += (size_t)n;
	}
	double f = now_ns();
	CHECK(got == 6 * (size_t)N);
	printf("  bench (cloned small files, per inode): plain %.1f B, "
	       "encode %.0f ns, decode %.0f ns; packed %.1f B, encode %.0f ns, "
	       "decode %.0f ns\n", (double)plen / N, (b - a) / N, (e - c) / N,
	       (double)klen / N, (c - b) / N, (f - e) / N);
	free(recs);
	free(nm);
	free(plain);
	free(packed);
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	init_seed("test_format");
	test_roundtrip();
	test_stream();
	test_decode_refusals();
	test_scan_journal();
	test_bitflips();
	test_truncation();
	test_garbage();
	test_checksummed_garbage();
	test_header();
	test_pack_roundtrip();
	test_pack_corrupt();
	bench_pack();
	printf("test_format: all ok\n");
	return 0;
}
