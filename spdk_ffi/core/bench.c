/*
 * bench.c: the "C tier" benchmark. The poller itself keeps bench_qd I/Os in
 * flight, on one controller (NativeBackend.bench) or through a mirror
 * (NativeMirror.bench: writes fan out to every leg, reads are balanced), and
 * measures them; no Python runs per I/O.
 */
#include "imdn_internal.h"

#include <errno.h>
#include <stdlib.h>

struct bench_slot {
	struct imdn_req *req;
	struct imdn_ctrlr *c;
	void *buf;
	uint64_t started;
	struct mirror_io mio; /* mirror bench */
};

struct bench_ctx {
	struct bench_slot *slots;
	struct spdk_nvme_ns *ns;
	struct imdn_mirror *m;
	uint64_t submitted, completed, measured, t_begin, t_start, lat_ticks_sum;
	uint64_t num_blocks, blocks_per_io, rng, seq_next;
	uint64_t warmup_ticks, duration_ticks;
	bool measuring;
	bool starting; /* the first I/Os are being submitted: do not finish yet */
	uint32_t errors;
};

static uint64_t xorshift(uint64_t *s)
{
	uint64_t x = *s;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *s = x;
}

static void bench_submit(struct bench_slot *slot);

static void bench_finish(struct imdn_req *req)
{
	struct bench_ctx *b = req->internal;
	uint64_t elapsed = spdk_get_ticks() - b->t_start;
	req->bench_measured = b->measured;
	req->bench_seconds = (double)elapsed / (double)g_ticks_hz;
	req->bench_iops = req->bench_seconds > 0 ? b->measured / req->bench_seconds : 0;
	req->bench_avg_us = b->measured ? (double)b->lat_ticks_sum * 1e6 / (double)g_ticks_hz / (double)b->measured : 0;
	for (uint32_t i = 0; i < req->bench_qd; i++) {
		spdk_dma_free(b->slots[i].buf);
	}
	int status = b->errors ? -EIO : 0;
	free(b->slots);
	free(b);
	req->internal = NULL;
	complete(req, status);
}

static bool bench_more(struct imdn_req *req, struct bench_ctx *b, uint64_t now)
{
	if (b->errors) {
		return false;
	}
	if (req->bench_duration_ms) {
		return !b->measuring || now - b->t_start < b->duration_ticks;
	}
	return b->submitted < req->bench_ios + req->bench_warmup;
}

static void bench_complete(struct bench_slot *slot, bool error)
{
	struct imdn_req *req = slot->req;
	struct bench_ctx *b = req->internal;
	uint64_t now = spdk_get_ticks();
	if (error) {
		b->errors++;
	}
	b->completed++;
	if (b->measuring) {
		uint64_t lat = now - slot->started;
		b->lat_ticks_sum += lat;
		b->measured++;
		uint64_t bucket = lat * 10000000 / g_ticks_hz; /* 100 ns units */
		if (bucket >= IMDN_HIST_BUCKETS - 1) {
			bucket = IMDN_HIST_BUCKETS - 1;
		}
		req->bench_hist[bucket]++;
	} else if (req->bench_duration_ms ? now - b->t_begin >= b->warmup_ticks : b->completed >= req->bench_warmup) {
		b->measuring = true; /* I/Os completing from here on are measured */
		b->t_start = now;
	}
	if (bench_more(req, b, now)) {
		bench_submit(slot);
	} else if (b->completed == b->submitted && !b->starting) {
		bench_finish(req);
	}
}

static void bench_nvme_done(void *arg, const struct spdk_nvme_cpl *cpl)
{
	struct bench_slot *slot = arg;
	ctrlr_answered(slot->c);
	g_busy--;
	bench_complete(slot, spdk_nvme_cpl_is_error(cpl));
}

static void bench_mirror_done(struct mirror_io *mio, int status, uint16_t sct, uint16_t sc)
{
	(void)sct;
	(void)sc;
	bench_complete(mio->cb_arg, status != 0);
}

static void bench_submit(struct bench_slot *slot)
{
	struct imdn_req *req = slot->req;
	struct bench_ctx *b = req->internal;
	uint64_t slots = b->num_blocks / b->blocks_per_io;
	uint64_t lba;
	if (req->bench_sequential) {
		lba = (b->seq_next++ % slots) * b->blocks_per_io;
	} else {
		lba = (xorshift(&b->rng) % slots) * b->blocks_per_io;
	}
	slot->started = spdk_get_ticks();
	b->submitted++;
	if (b->m != NULL) {
		struct mirror_io *mio = &slot->mio;
		mio->m = b->m;
		mio->kind = req->bench_write ? IMDN_WRITE : IMDN_READ;
		mio->lba = lba;
		mio->nblocks = b->blocks_per_io;
		mio->iov1.iov_base = slot->buf;
		mio->iov1.iov_len = req->bench_io_size;
		mio->iovs = &mio->iov1;
		mio->iovcnt = 1;
		mio->done = bench_mirror_done;
		mio->cb_arg = slot;
		mirror_submit(mio);
		return;
	}
	int rc = slot->c->qpair == NULL ? -ENXIO : /* the path was declared silent */
		 req->bench_write ?
		 spdk_nvme_ns_cmd_write(b->ns, slot->c->qpair, slot->buf, lba, b->blocks_per_io, bench_nvme_done, slot, 0) :
		 spdk_nvme_ns_cmd_read(b->ns, slot->c->qpair, slot->buf, lba, b->blocks_per_io, bench_nvme_done, slot, 0);
	if (rc != 0) {
		b->submitted--;
		b->errors++;
		return;
	}
	slot->c->outstanding++;
	g_busy++;
}

static void bench_run(struct imdn_req *req, struct bench_ctx *b, struct imdn_ctrlr *c)
{
	b->rng = 0x9E3779B97F4A7C15ull ^ req->id;
	b->slots = calloc(req->bench_qd, sizeof(*b->slots));
	b->warmup_ticks = (uint64_t)req->bench_warmup_ms * g_ticks_hz / 1000;
	b->duration_ticks = (uint64_t)req->bench_duration_ms * g_ticks_hz / 1000;
	b->measuring = req->bench_duration_ms ? req->bench_warmup_ms == 0 : req->bench_warmup == 0;
	req->internal = b;
	for (uint32_t i = 0; i < req->bench_qd; i++) {
		b->slots[i].req = req;
		b->slots[i].c = c;
		b->slots[i].buf = spdk_dma_zmalloc(req->bench_io_size, 4096, NULL);
	}
	b->t_begin = b->t_start = spdk_get_ticks();
	b->starting = true; /* a mirror I/O may complete inside mirror_submit */
	for (uint32_t i = 0; i < req->bench_qd && bench_more(req, b, b->t_begin); i++) {
		bench_submit(&b->slots[i]);
	}
	b->starting = false;
	if (b->completed == b->submitted) {
		bench_finish(req);
	}
}

void start_bench(struct imdn_req *req)
{
	struct imdn_ctrlr *c = req->ctrlr;
	struct spdk_nvme_ns *ns = c ? spdk_nvme_ctrlr_get_ns(c->ctrlr, req->bench_nsid) : NULL;
	if (c == NULL || c->detaching || c->qpair == NULL || ns == NULL || req->bench_qd == 0 || req->bench_hist == NULL) {
		complete(req, c == NULL || c->qpair == NULL || ns == NULL ? -ENODEV : -EINVAL);
		return;
	}
	uint32_t block = spdk_nvme_ns_get_sector_size(ns);
	if (req->bench_io_size == 0 || req->bench_io_size % block != 0) {
		complete(req, -EINVAL);
		return;
	}
	struct bench_ctx *b = calloc(1, sizeof(*b));
	b->ns = ns;
	b->blocks_per_io = req->bench_io_size / block;
	b->num_blocks = spdk_nvme_ns_get_num_sectors(ns);
	bench_run(req, b, c);
}

void start_mirror_bench(struct imdn_req *req)
{
	struct imdn_mirror *m = req->mirror;
	if (m == NULL || m->destroy_req != NULL || req->bench_qd == 0 || req->bench_hist == NULL) {
		complete_msg(req, m == NULL ? -ENODEV : -EINVAL, "no mirror, or qd 0");
		return;
	}
	if (req->bench_io_size == 0 || req->bench_io_size % m->block_size != 0) {
		complete_msg(req, -EINVAL, "io size %u is not a multiple of the block size %u", req->bench_io_size,
			     m->block_size);
		return;
	}
	struct bench_ctx *b = calloc(1, sizeof(*b));
	b->m = m;
	b->blocks_per_io = req->bench_io_size / m->block_size;
	b->num_blocks = CTR_GET(m->num_blocks);
	bench_run(req, b, NULL);
}
