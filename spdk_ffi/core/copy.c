/*
 * copy.c: jobs that read a whole namespace, chunk by chunk, in the poller:
 *
 *   copy   source -> destination (another controller's namespace): a
 *          snapshot onto a replica being rebuilt, a clone onto a new
 *          replica. With IMDN_COPY_COMPARE the destination is read too and
 *          only chunks that differ are written, so that copying snapshot
 *          S(i) onto a head that already holds S(i-1) writes (and allocates,
 *          on a thin lvol) only what changed: the new replica stays as thin
 *          as the source. With IMDN_COPY_SKIP_ZERO (a destination that reads
 *          zeroes) all-zero chunks are never written.
 *   hash   SHA-256 of the namespace's whole logical content: equal on two
 *          replicas exactly when their contents are equal (SHA-512 with
 *          IMDN_HASH_SHA512: a backing image's checksum, which Longhorn
 *          computes so over the image's device). With a base (the
 *          snapshot's parent), the chunks that differ from it are counted:
 *          what the snapshot itself holds, at chunk (cluster) granularity.
 *
 * Every job is a small state machine like the mirror's rebuild: one chunk
 * at a time (read, then write or hash; a hash without a base reads one
 * chunk ahead, see ahead_pump), a token bucket for its rate cap,
 * a cancel that takes effect within one chunk (a command in flight is let
 * finish), and one IMDN_EV_JOB_DONE event when it ends. Its memory stays
 * until Python frees it (IMDN_JOB_FREE), so that the final figures and the
 * digest can be read after the event. No host I/O is involved: a copy onto
 * a replica that also takes host writes is the mirror's rebuild
 * (mirror.c), which holds its range lock while it copies.
 */
#include "imdn_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#define JOB_MAX_CHUNK (16u << 20)
#define WZ_MAX_BLOCKS 65536 /* NVMe write zeroes: 16-bit block count */

enum job_phase { JOB_IDLE, JOB_WAIT_TOKENS, JOB_READING, JOB_WRITING };

/* A hash without a base reads ahead (see ahead_pump): two chunks, each in
 * a slot of its own, read while the other is hashed, hashed in order. */
struct hash_slot {
	struct imdn_job *job;
	void *buf;
	uint64_t lo, hi;
	bool reading, ready;
	struct mpath_io sub;
	struct iovec iov;
};

struct imdn_job {
	uint32_t kind;
	uint32_t flags;
	uint64_t cookie;
	struct imdn_mpath *src, *dst; /* dst: copy's destination, or hash's base (NULL: none) */
	uint32_t src_nsid, dst_nsid;
	uint32_t block_size;
	uint64_t num_blocks;
	uint64_t chunk_blocks;
	uint64_t next_lba;
	uint64_t lo, hi; /* the chunk in progress */
	enum job_phase phase;
	uint32_t reads_pending;
	int read_status;
	void *buf, *other; /* the source's chunk, and the destination's (compare) or the base's */
	struct iovec iov, other_iov;
	struct mpath_io sub, other_sub;
	uint64_t rate, tokens, last_refill;
	struct spdk_poller *timer;
	bool cancel;
	bool done;
	struct imdn_req *cancel_req;
	EVP_MD_CTX *sha;
	uint32_t digest_len;
	bool ahead; /* a hash without a base: read-ahead through slots */
	struct hash_slot slots[2];
	uint64_t hash_lba; /* ahead: the next chunk to hash */
	bool pumping, repump;
	/* Python reads these (imdn_job_stats) */
	_Atomic int state, error;
	_Atomic uint64_t bytes_done, chunks_written, chunks_skipped, chunks_differ;
	uint8_t digest[IMDN_DIGEST_LEN];
};

static void job_step(struct imdn_job *job);

static uint64_t chunk_bytes(struct imdn_job *job)
{
	return (job->hi - job->lo) * job->block_size;
}

static void job_finish(struct imdn_job *job, int state, int err)
{
	if (job->timer != NULL) {
		spdk_poller_unregister(&job->timer);
	}
	if (job->kind == IMDN_JOB_HASH && state == IMDN_RB_COMPLETE) {
		unsigned int len = 0;
		EVP_DigestFinal_ex(job->sha, job->digest, &len);
		job->digest_len = len;
	}
	job->done = true;
	mpath_unref(job->src);
	if (job->dst != NULL) {
		mpath_unref(job->dst);
	}
	CTR_SET(job->error, err);
	/* Last, and a release: a reader that sees the state sees the digest. */
	atomic_store_explicit(&job->state, state, memory_order_release);
	struct imdn_event ev = {.cookie = job->cookie,
				.type = IMDN_EV_JOB_DONE,
				.status = state,
				.error = err,
				.value = CTR_GET(job->bytes_done)};
	post_event(&ev);
	if (job->cancel_req != NULL) {
		struct imdn_req *req = job->cancel_req;
		job->cancel_req = NULL;
		complete(req, 0);
	}
}

static int job_timer(void *arg)
{
	struct imdn_job *job = arg;
	spdk_poller_unregister(&job->timer);
	job->phase = JOB_IDLE;
	job_step(job);
	return SPDK_POLLER_BUSY;
}

/* The rebuild's token bucket (mirror.c), for one job. */
static bool take_tokens(struct imdn_job *job, uint64_t bytes)
{
	if (job->rate == 0) {
		return true;
	}
	uint64_t now = spdk_get_ticks();
	uint64_t cap = job->chunk_blocks * job->block_size;
	uint64_t add = (uint64_t)((unsigned __int128)(now - job->last_refill) * job->rate / g_ticks_hz);
	if (add > 0) {
		job->tokens = job->tokens + add > cap ? cap : job->tokens + add;
		job->last_refill = now;
	}
	if (job->tokens >= bytes) {
		job->tokens -= bytes;
		return true;
	}
	job->phase = JOB_WAIT_TOKENS;
	job->timer = spdk_poller_register(job_timer, job, (bytes - job->tokens) * 1000000 / job->rate + 1);
	return false;
}

static void submit(struct imdn_job *job, struct mpath_io *sub, struct iovec *iov, void *buf,
		   struct imdn_mpath *mp, uint32_t nsid, uint8_t kind, mpath_done_fn done)
{
	memset(sub, 0, sizeof(*sub));
	iov->iov_base = buf;
	iov->iov_len = chunk_bytes(job);
	sub->mp = mp;
	sub->nsid = nsid;
	sub->kind = kind;
	sub->lba = job->lo;
	sub->nblocks = (uint32_t)(job->hi - job->lo);
	sub->iovs = iov;
	sub->iovcnt = 1;
	sub->done = done;
	sub->ctx = job;
	mpath_submit(sub);
}

static void write_done(struct mpath_io *sub, int status, uint16_t sct, uint16_t sc)
{
	(void)sct;
	(void)sc;
	struct imdn_job *job = sub->ctx;
	job->phase = JOB_IDLE;
	if (status != 0) {
		job_finish(job, IMDN_RB_ERROR, status < 0 ? status : -EIO);
		return;
	}
	CTR_ADD(job->chunks_written, 1);
	CTR_ADD(job->bytes_done, chunk_bytes(job));
	job->next_lba = job->hi;
	job_step(job);
}

/* Both reads of a chunk are back: decide what it needs. */
static void chunk_read(struct imdn_job *job)
{
	size_t bytes = chunk_bytes(job);
	if (job->kind == IMDN_JOB_HASH) {
		EVP_DigestUpdate(job->sha, job->buf, bytes);
		bool differs = job->dst != NULL ? memcmp(job->buf, job->other, bytes) != 0 : !buf_all_zero(job->buf, bytes);
		if (differs) {
			CTR_ADD(job->chunks_differ, 1);
		}
		CTR_ADD(job->bytes_done, bytes);
		job->next_lba = job->hi;
		job->phase = JOB_IDLE;
		job_step(job);
		return;
	}
	bool zero = buf_all_zero(job->buf, bytes);
	bool skip = (job->flags & IMDN_COPY_COMPARE) ? memcmp(job->buf, job->other, bytes) == 0
						     : (zero && (job->flags & IMDN_COPY_SKIP_ZERO));
	if (skip || job->cancel) {
		if (!job->cancel) {
			CTR_ADD(job->chunks_skipped, 1);
			CTR_ADD(job->bytes_done, bytes);
			job->next_lba = job->hi;
		}
		job->phase = JOB_IDLE;
		job_step(job);
		return;
	}
	job->phase = JOB_WRITING;
	uint8_t kind = zero && job->hi - job->lo <= WZ_MAX_BLOCKS ? IMDN_WRITE_ZEROES : IMDN_WRITE;
	submit(job, &job->sub, &job->iov, job->buf, job->dst, job->dst_nsid, kind, write_done);
}

static void read_done(struct mpath_io *sub, int status, uint16_t sct, uint16_t sc)
{
	(void)sct;
	(void)sc;
	struct imdn_job *job = sub->ctx;
	if (status != 0 && job->read_status == 0) {
		job->read_status = status < 0 ? status : -EIO;
	}
	if (--job->reads_pending > 0) {
		return;
	}
	if (job->read_status != 0) {
		job->phase = JOB_IDLE;
		job_finish(job, IMDN_RB_ERROR, job->read_status);
		return;
	}
	chunk_read(job);
}

/*
 * A hash without a base, reading ahead. Hashing runs on this thread and
 * takes about as long as reading the chunk (SHA-512 does 0.5 to 0.8 GB/s
 * here), so one chunk at a time paid both in turn: the next chunk's read
 * now goes out before the current one is hashed, and the two overlap. The
 * pump is re-entrant (a read may complete inside its own submission, on a
 * lost path), hashes strictly in LBA order, and finishes only once no read
 * is in flight: a cancel stops within the two chunks in flight.
 */
static void ahead_pump(struct imdn_job *job);

static void ahead_done(struct mpath_io *sub, int status, uint16_t sct, uint16_t sc)
{
	(void)sct;
	(void)sc;
	struct hash_slot *slot = sub->ctx;
	struct imdn_job *job = slot->job;
	slot->reading = false;
	job->reads_pending--;
	if (status != 0 && job->read_status == 0) {
		job->read_status = status < 0 ? status : -EIO;
	}
	slot->ready = status == 0;
	ahead_pump(job);
}

static void ahead_read(struct imdn_job *job, struct hash_slot *slot)
{
	memset(&slot->sub, 0, sizeof(slot->sub));
	slot->iov.iov_base = slot->buf;
	slot->iov.iov_len = (slot->hi - slot->lo) * job->block_size;
	slot->sub.mp = job->src;
	slot->sub.nsid = job->src_nsid;
	slot->sub.kind = IMDN_READ;
	slot->sub.lba = slot->lo;
	slot->sub.nblocks = (uint32_t)(slot->hi - slot->lo);
	slot->sub.iovs = &slot->iov;
	slot->sub.iovcnt = 1;
	slot->sub.done = ahead_done;
	slot->sub.ctx = slot;
	mpath_submit(&slot->sub);
}

static void ahead_pump(struct imdn_job *job)
{
	if (job->done) {
		return;
	}
	if (job->pumping) {
		job->repump = true; /* called from inside a submission: the outer pump goes round again */
		return;
	}
	job->pumping = true;
	do {
		job->repump = false;
		for (;;) { /* hash what has arrived, in order */
			struct hash_slot *slot = NULL;
			for (int i = 0; i < 2; i++) {
				if (job->slots[i].ready && job->slots[i].lo == job->hash_lba) {
					slot = &job->slots[i];
				}
			}
			if (slot == NULL || job->read_status != 0 || job->cancel) {
				break;
			}
			size_t bytes = (slot->hi - slot->lo) * job->block_size;
			EVP_DigestUpdate(job->sha, slot->buf, bytes);
			if (!buf_all_zero(slot->buf, bytes)) {
				CTR_ADD(job->chunks_differ, 1);
			}
			CTR_ADD(job->bytes_done, bytes);
			job->hash_lba = slot->hi;
			slot->ready = false;
		}
		while (!job->cancel && job->read_status == 0 && job->phase != JOB_WAIT_TOKENS &&
		       job->next_lba < job->num_blocks) { /* read ahead into free slots */
			struct hash_slot *slot = NULL;
			for (int i = 0; i < 2 && slot == NULL; i++) {
				if (!job->slots[i].reading && !job->slots[i].ready) {
					slot = &job->slots[i];
				}
			}
			if (slot == NULL) {
				break;
			}
			uint64_t lo = job->next_lba;
			uint64_t hi = lo + job->chunk_blocks < job->num_blocks ? lo + job->chunk_blocks : job->num_blocks;
			if (!take_tokens(job, (hi - lo) * job->block_size)) {
				break; /* its timer pumps again */
			}
			slot->lo = lo;
			slot->hi = hi;
			slot->reading = true;
			job->next_lba = hi;
			job->reads_pending++;
			ahead_read(job, slot);
		}
	} while (job->repump);
	job->pumping = false;
	if (job->reads_pending > 0 || job->phase == JOB_WAIT_TOKENS) {
		return; /* a completion or the timer comes back here */
	}
	if (job->read_status != 0) {
		job_finish(job, IMDN_RB_ERROR, job->read_status);
	} else if (job->cancel) {
		job_finish(job, IMDN_RB_CANCELLED, 0);
	} else if (job->hash_lba >= job->num_blocks) {
		job_finish(job, IMDN_RB_COMPLETE, 0);
	}
}

/* Advance from wherever the job is (start, chunk done, timer, cancel). */
static void job_step(struct imdn_job *job)
{
	if (!job->done && job->ahead) {
		ahead_pump(job);
		return;
	}
	if (job->done || job->phase == JOB_READING || job->phase == JOB_WRITING) {
		return; /* a command is in flight: its callback comes back here */
	}
	if (job->cancel) {
		job_finish(job, IMDN_RB_CANCELLED, 0);
		return;
	}
	if (job->phase == JOB_WAIT_TOKENS) {
		return;
	}
	if (job->next_lba >= job->num_blocks) {
		job_finish(job, IMDN_RB_COMPLETE, 0);
		return;
	}
	job->lo = job->next_lba;
	job->hi = job->lo + job->chunk_blocks < job->num_blocks ? job->lo + job->chunk_blocks : job->num_blocks;
	if (!take_tokens(job, chunk_bytes(job))) {
		return;
	}
	job->phase = JOB_READING;
	job->read_status = 0;
	bool second = job->dst != NULL && (job->kind == IMDN_JOB_HASH || (job->flags & IMDN_COPY_COMPARE));
	job->reads_pending = second ? 2 : 1; /* both counted before either can complete */
	submit(job, &job->sub, &job->iov, job->buf, job->src, job->src_nsid, IMDN_READ, read_done);
	if (second) {
		submit(job, &job->other_sub, &job->other_iov, job->other, job->dst, job->dst_nsid, IMDN_READ, read_done);
	}
}

/* -- requests ------------------------------------------------------------------ */

static int check_ns(struct imdn_req *req, const char *what, const struct imdn_leg_spec *spec, uint64_t blocks,
		    uint32_t *block_size)
{
	if (spec->mpath == NULL || spec->mpath->destroyed) {
		snprintf(req->errmsg, sizeof(req->errmsg), "the %s's controller is detached", what);
		return -ENODEV;
	}
	struct spdk_nvme_ns *ns = mpath_ns(spec->mpath, spec->nsid);
	if (ns == NULL) {
		snprintf(req->errmsg, sizeof(req->errmsg), "the %s has no namespace %u on a connected path", what,
			 spec->nsid);
		return -ENODEV;
	}
	uint32_t bs = spdk_nvme_ns_get_sector_size(ns);
	if (*block_size != 0 && bs != *block_size) {
		snprintf(req->errmsg, sizeof(req->errmsg), "the %s's block size %u differs from the source's %u", what,
			 bs, *block_size);
		return -EINVAL;
	}
	*block_size = bs;
	if (spdk_nvme_ns_get_num_sectors(ns) < blocks) {
		snprintf(req->errmsg, sizeof(req->errmsg), "the %s has %lu blocks, fewer than the %lu to process", what,
			 spdk_nvme_ns_get_num_sectors(ns), blocks);
		return -ENOSPC;
	}
	return 0;
}

void job_start(struct imdn_req *req)
{
	if (req->job_kind != IMDN_JOB_COPY && req->job_kind != IMDN_JOB_HASH) {
		complete_msg(req, -EINVAL, "no job kind %u", req->job_kind);
		return;
	}
	if (req->job_blocks == 0) {
		complete_msg(req, -EINVAL, "a job needs a non-zero number of blocks");
		return;
	}
	if (req->job_kind == IMDN_JOB_COPY && req->job_dst.mpath == NULL) {
		complete_msg(req, -EINVAL, "a copy needs a destination");
		return;
	}
	uint32_t block_size = 0;
	int rc = check_ns(req, "source", &req->job_src, req->job_blocks, &block_size);
	if (rc == 0 && req->job_dst.mpath != NULL) {
		rc = check_ns(req, req->job_kind == IMDN_JOB_COPY ? "destination" : "base", &req->job_dst,
			      req->job_blocks, &block_size);
	}
	if (rc != 0) {
		complete(req, rc);
		return;
	}
	uint32_t chunk = req->chunk_bytes ? req->chunk_bytes : 1u << 20;
	if (chunk % block_size != 0 || chunk > JOB_MAX_CHUNK) {
		complete_msg(req, -EINVAL, "chunk size %u must be a multiple of the block size %u, at most %u", chunk,
			     block_size, JOB_MAX_CHUNK);
		return;
	}
	struct imdn_job *job = calloc(1, sizeof(*job));
	job->buf = spdk_dma_zmalloc(chunk, 4096, NULL);
	bool ahead = req->job_kind == IMDN_JOB_HASH && req->job_dst.mpath == NULL;
	bool second = ahead ||
		      (req->job_dst.mpath != NULL && (req->job_kind == IMDN_JOB_HASH || (req->copy_flags & IMDN_COPY_COMPARE)));
	job->other = second ? spdk_dma_zmalloc(chunk, 4096, NULL) : NULL;
	job->sha = req->job_kind == IMDN_JOB_HASH ? EVP_MD_CTX_new() : NULL;
	const EVP_MD *md = (req->copy_flags & IMDN_HASH_SHA512) ? EVP_sha512() : EVP_sha256();
	if (job->buf == NULL || (second && job->other == NULL) ||
	    (job->sha != NULL && EVP_DigestInit_ex(job->sha, md, NULL) != 1) ||
	    (req->job_kind == IMDN_JOB_HASH && job->sha == NULL)) {
		spdk_dma_free(job->buf);
		spdk_dma_free(job->other);
		EVP_MD_CTX_free(job->sha);
		free(job);
		complete_msg(req, -ENOMEM, "cannot allocate a job's %u-byte buffers", chunk);
		return;
	}
	job->kind = req->job_kind;
	job->flags = req->copy_flags;
	job->ahead = ahead;
	for (int i = 0; i < 2; i++) {
		job->slots[i].job = job;
		job->slots[i].buf = i == 0 ? job->buf : job->other;
	}
	job->cookie = req->cookie;
	job->src = req->job_src.mpath;
	job->src_nsid = req->job_src.nsid;
	job->dst = req->job_dst.mpath;
	job->dst_nsid = req->job_dst.nsid;
	mpath_ref(job->src);
	if (job->dst != NULL) {
		mpath_ref(job->dst);
	}
	job->block_size = block_size;
	job->num_blocks = req->job_blocks;
	job->chunk_blocks = chunk / block_size;
	job->rate = req->rate_bytes_per_s;
	job->tokens = chunk;
	job->last_refill = spdk_get_ticks();
	CTR_SET(job->state, IMDN_RB_IN_PROGRESS);
	req->job = job;
	complete(req, 0);
	job_step(job);
}

void job_cancel(struct imdn_req *req)
{
	struct imdn_job *job = req->job;
	if (job == NULL) {
		complete_msg(req, -ENODEV, "no job given");
		return;
	}
	if (job->done) {
		complete(req, 0); /* finished already: nothing to stop */
		return;
	}
	if (job->cancel_req != NULL) {
		complete_msg(req, -EALREADY, "a cancel is in progress");
		return;
	}
	job->cancel = true;
	job->cancel_req = req;
	if (job->phase == JOB_WAIT_TOKENS) {
		spdk_poller_unregister(&job->timer);
		job->phase = JOB_IDLE;
	}
	job_step(job); /* finishes now unless a command is in flight */
}

void job_free(struct imdn_req *req)
{
	struct imdn_job *job = req->job;
	if (job == NULL) {
		complete_msg(req, -ENODEV, "no job given");
		return;
	}
	if (!job->done) {
		complete_msg(req, -EBUSY, "the job is still running; cancel it first");
		return;
	}
	spdk_dma_free(job->buf);
	spdk_dma_free(job->other);
	EVP_MD_CTX_free(job->sha);
	free(job);
	complete(req, 0);
}

void imdn_job_stats(struct imdn_job *job, struct imdn_job_stats *out)
{
	memset(out, 0, sizeof(*out));
	out->state = atomic_load_explicit(&job->state, memory_order_acquire);
	out->error = CTR_GET(job->error);
	out->block_size = job->block_size;
	out->chunk_bytes = (uint32_t)(job->chunk_blocks * job->block_size);
	out->bytes_done = CTR_GET(job->bytes_done);
	out->bytes_total = job->num_blocks * job->block_size;
	out->chunks_written = CTR_GET(job->chunks_written);
	out->chunks_skipped = CTR_GET(job->chunks_skipped);
	out->chunks_differ = CTR_GET(job->chunks_differ);
	if (out->state == IMDN_RB_COMPLETE) {
		out->digest_len = job->digest_len;
		memcpy(out->digest, job->digest, sizeof(out->digest));
	}
}
