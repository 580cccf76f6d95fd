/*
 * imdn: spdk_ffi's C core. See imdn.h for the model.
 *
 * Threading: imdn_start() creates the poller thread, which initialises the
 * SPDK environment itself (DPDK pins the initialising thread to the first
 * core of the mask, and only that thread should be pinned), then loops:
 *   - take new requests from the submission ring;
 *   - advance connects (probe contexts) and detaches;
 *   - process admin completions of every controller every 10 ms, which is
 *     what sends keep-alives (well under KATO/2 for any sane KATO);
 *   - busy-poll queue pairs while I/O is outstanding;
 *   - when there is nothing to do, sleep in poll() on the submission
 *     eventfd for at most 10 ms.
 * Finished requests go onto the completion ring, and the completion eventfd
 * is written, which wakes the asyncio loop (add_reader) to reap them all.
 */
#include "imdn.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "spdk/env.h"
#include "spdk/nvme.h"

#define RING_SIZE 4096 /* power of two */
#define ADMIN_POLL_US 10000
#define DETACH_DRAIN_US 5000000

/* -- rings ---------------------------------------------------------------- */

struct ring {
	_Atomic uint64_t head; /* consumer */
	_Atomic uint64_t tail; /* producer */
	struct imdn_req *slots[RING_SIZE];
};

static bool ring_push(struct ring *r, struct imdn_req *req)
{
	uint64_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
	uint64_t head = atomic_load_explicit(&r->head, memory_order_acquire);
	if (tail - head >= RING_SIZE) {
		return false;
	}
	r->slots[tail & (RING_SIZE - 1)] = req;
	atomic_store_explicit(&r->tail, tail + 1, memory_order_release);
	return true;
}

static struct imdn_req *ring_pop(struct ring *r)
{
	uint64_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
	uint64_t tail = atomic_load_explicit(&r->tail, memory_order_acquire);
	if (head == tail) {
		return NULL;
	}
	struct imdn_req *req = r->slots[head & (RING_SIZE - 1)];
	atomic_store_explicit(&r->head, head + 1, memory_order_release);
	return req;
}

/* -- state (owned by the poller thread, except where noted) ---------------- */

struct imdn_ctrlr {
	struct spdk_nvme_ctrlr *ctrlr;
	struct spdk_nvme_qpair *qpair;
	struct imdn_ctrlr *next;
	uint64_t next_admin_tick;
	bool detaching;
	_Atomic int failed;             /* read by Python */
	_Atomic uint64_t counters[4];   /* read by Python */
	uint32_t outstanding;
};

struct attach_ctx {
	struct spdk_nvme_ctrlr_opts opts; /* first: attach_cb gets &opts as cb_ctx */
	struct spdk_nvme_probe_ctx *probe;
	struct spdk_nvme_ctrlr *found;
	struct imdn_req *req; /* NULL once the request timed out (abandoned) */
	struct attach_ctx *next;
};

struct detach_ctx {
	struct imdn_ctrlr *c;
	struct imdn_req *req;
	struct spdk_nvme_detach_ctx *dctx;
	uint64_t drain_deadline;
	bool started;
	struct detach_ctx *next;
};

struct io_slot { /* one I/O of a request, as the completion callback sees it */
	struct imdn_req *req;
	struct imdn_io *io;
	struct imdn_ctrlr *c;
};

struct bench_slot {
	struct imdn_req *req;
	struct imdn_ctrlr *c;
	void *buf;
	uint64_t started;
};

struct bench_ctx {
	struct bench_slot *slots;
	struct spdk_nvme_ns *ns;
	uint64_t submitted, completed, measured, t_begin, t_start, lat_ticks_sum;
	uint64_t num_blocks, blocks_per_io, rng, seq_next;
	uint64_t warmup_ticks, duration_ticks;
	bool measuring;
	uint32_t errors;
};

static struct ring g_sub, g_cpl;
static int g_sub_efd = -1, g_cpl_efd = -1;
static pthread_t g_thread;
static _Atomic int g_state; /* 0 none, 1 starting, 2 running, -1 failed */
static char g_init_err[256];
static const char *g_name, *g_core_mask;
static int g_mem_size, g_no_huge;

static struct imdn_ctrlr *g_ctrlrs;
static struct attach_ctx *g_attaches;
static struct detach_ctx *g_detaches;
static uint64_t g_ticks_hz;
/* Every I/O qpair is in this one poll group: the TCP transport then polls
 * all sockets with one epoll-style call instead of one recv per qpair. */
static struct spdk_nvme_poll_group *g_group;
static uint64_t g_busy; /* outstanding I/O across controllers */

static void qpair_disconnected(struct spdk_nvme_qpair *qpair, void *group_ctx);

/* -- completion ------------------------------------------------------------ */

static void complete(struct imdn_req *req, int status)
{
	req->status = status;
	while (!ring_push(&g_cpl, req)) {
		usleep(10); /* Python is behind by RING_SIZE requests: wait for it */
	}
	uint64_t one = 1;
	ssize_t rc = write(g_cpl_efd, &one, sizeof(one));
	(void)rc;
}

/* -- attach ---------------------------------------------------------------- */

static void attach_cb(void *cb_ctx, const struct spdk_nvme_transport_id *trid,
		      struct spdk_nvme_ctrlr *ctrlr, const struct spdk_nvme_ctrlr_opts *opts)
{
	struct attach_ctx *ctx = (struct attach_ctx *)cb_ctx;
	(void)trid;
	(void)opts;
	ctx->found = ctrlr;
}

static struct imdn_ctrlr *adopt_ctrlr(struct spdk_nvme_ctrlr *ctrlr, struct imdn_req *req)
{
	struct spdk_nvme_io_qpair_opts qopts;
	/* The default queue size is the controller's, already clamped to what
	 * the target allows (MQES); asking for more here would fail. Deeper
	 * queue depths are absorbed by io_queue_requests (queued in software). */
	spdk_nvme_ctrlr_get_default_io_qpair_opts(ctrlr, &qopts, sizeof(qopts));
	if (req->io_queue_requests) {
		qopts.io_queue_requests = req->io_queue_requests;
	}
	qopts.create_only = true; /* join the poll group before connecting */
	struct spdk_nvme_qpair *qpair = spdk_nvme_ctrlr_alloc_io_qpair(ctrlr, &qopts, sizeof(qopts));
	if (qpair == NULL) {
		return NULL;
	}
	if (spdk_nvme_poll_group_add(g_group, qpair) != 0 || spdk_nvme_ctrlr_connect_io_qpair(ctrlr, qpair) != 0) {
		spdk_nvme_ctrlr_free_io_qpair(qpair);
		return NULL;
	}
	struct imdn_ctrlr *c = calloc(1, sizeof(*c));
	c->ctrlr = ctrlr;
	c->qpair = qpair;
	c->next = g_ctrlrs;
	g_ctrlrs = c;
	req->num_ns = 0;
	for (uint32_t nsid = spdk_nvme_ctrlr_get_first_active_ns(ctrlr);
	     nsid != 0 && req->num_ns < IMDN_MAX_NS; nsid = spdk_nvme_ctrlr_get_next_active_ns(ctrlr, nsid)) {
		struct spdk_nvme_ns *ns = spdk_nvme_ctrlr_get_ns(ctrlr, nsid);
		struct imdn_ns_info *info = &req->ns[req->num_ns++];
		info->nsid = nsid;
		info->size_bytes = spdk_nvme_ns_get_size(ns);
		info->block_size = spdk_nvme_ns_get_sector_size(ns);
	}
	return c;
}

static void start_attach(struct imdn_req *req)
{
	struct spdk_nvme_transport_id trid;
	memset(&trid, 0, sizeof(trid));
	if (spdk_nvme_transport_id_parse(&trid, req->trid) != 0) {
		complete(req, -EINVAL);
		return;
	}
	struct attach_ctx *ctx = calloc(1, sizeof(*ctx));
	spdk_nvme_ctrlr_get_default_ctrlr_opts(&ctx->opts, sizeof(ctx->opts));
	snprintf(ctx->opts.hostnqn, sizeof(ctx->opts.hostnqn), "%s", req->hostnqn);
	if (req->keep_alive_ms) {
		ctx->opts.keep_alive_timeout_ms = req->keep_alive_ms;
	}
	if (req->io_queue_size) {
		ctx->opts.io_queue_size = req->io_queue_size;
	}
	if (req->io_queue_requests) {
		ctx->opts.io_queue_requests = req->io_queue_requests;
	}
	ctx->req = req;
	ctx->probe = spdk_nvme_connect_async(&trid, &ctx->opts, attach_cb);
	if (ctx->probe == NULL) {
		free(ctx);
		complete(req, -ECONNREFUSED);
		return;
	}
	req->deadline = spdk_get_ticks() + (uint64_t)req->timeout_ms * g_ticks_hz / 1000;
	ctx->next = g_attaches;
	g_attaches = ctx;
}

static void detach_raw(struct spdk_nvme_ctrlr *ctrlr)
{
	struct spdk_nvme_detach_ctx *dctx = NULL;
	if (spdk_nvme_detach_async(ctrlr, &dctx) == 0 && dctx != NULL) {
		spdk_nvme_detach_poll(dctx);
	}
}

static void poll_attaches(uint64_t now)
{
	struct attach_ctx **link = &g_attaches;
	while (*link) {
		struct attach_ctx *ctx = *link;
		int rc = spdk_nvme_probe_poll_async(ctx->probe);
		if (rc == -EAGAIN) {
			if (ctx->req && now > ctx->req->deadline) {
				/* Report the timeout now; the probe goes on, and whatever it
				 * produces is detached (nothing stays attached). */
				complete(ctx->req, -ETIMEDOUT);
				ctx->req = NULL;
			}
			link = &ctx->next;
			continue;
		}
		*link = ctx->next; /* the probe context is freed by SPDK */
		if (ctx->req == NULL) {
			if (ctx->found) {
				detach_raw(ctx->found);
			}
		} else if (ctx->found == NULL) {
			complete(ctx->req, rc < 0 ? rc : -ECONNREFUSED);
		} else {
			struct imdn_ctrlr *c = adopt_ctrlr(ctx->found, ctx->req);
			if (c == NULL) {
				detach_raw(ctx->found);
				complete(ctx->req, -ENOMEM);
			} else {
				ctx->req->ctrlr = c;
				complete(ctx->req, 0);
			}
		}
		free(ctx);
	}
}

/* -- detach ---------------------------------------------------------------- */

static void unlink_ctrlr(struct imdn_ctrlr *c)
{
	for (struct imdn_ctrlr **link = &g_ctrlrs; *link; link = &(*link)->next) {
		if (*link == c) {
			*link = c->next;
			return;
		}
	}
}

static void start_detach(struct imdn_req *req)
{
	struct imdn_ctrlr *c = req->ctrlr;
	if (c == NULL || c->detaching) {
		complete(req, -ENODEV);
		return;
	}
	c->detaching = true;
	struct detach_ctx *d = calloc(1, sizeof(*d));
	d->c = c;
	d->req = req;
	d->drain_deadline = spdk_get_ticks() + DETACH_DRAIN_US * g_ticks_hz / 1000000;
	d->next = g_detaches;
	g_detaches = d;
}

static void poll_detaches(uint64_t now)
{
	struct detach_ctx **link = &g_detaches;
	while (*link) {
		struct detach_ctx *d = *link;
		struct imdn_ctrlr *c = d->c;
		if (!d->started) {
			/* Drain outstanding I/O first (the qpair is still polled);
			 * past the deadline, freeing the qpair aborts what is left. */
			if (c->outstanding > 0 && now < d->drain_deadline) {
				link = &d->next;
				continue;
			}
			unlink_ctrlr(c);
			if (c->qpair) {
				spdk_nvme_ctrlr_disconnect_io_qpair(c->qpair);
				spdk_nvme_poll_group_remove(g_group, c->qpair);
				spdk_nvme_ctrlr_free_io_qpair(c->qpair);
				c->qpair = NULL;
			}
			if (spdk_nvme_detach_async(c->ctrlr, &d->dctx) != 0) {
				d->dctx = NULL;
			}
			d->started = true;
		}
		if (d->dctx != NULL && spdk_nvme_detach_poll_async(d->dctx) == -EAGAIN) {
			link = &d->next;
			continue;
		}
		*link = d->next;
		g_busy -= c->outstanding;
		free(c);
		complete(d->req, 0);
		free(d);
	}
}

/* -- I/O ------------------------------------------------------------------- */

static void io_done(void *arg, const struct spdk_nvme_cpl *cpl)
{
	struct io_slot *slot = arg;
	struct imdn_req *req = slot->req;
	struct imdn_ctrlr *c = slot->c;
	if (spdk_nvme_cpl_is_error(cpl)) {
		slot->io->status = 1;
		slot->io->sct = cpl->status.sct;
		slot->io->sc = cpl->status.sc;
		req->ios_failed++;
		atomic_fetch_add(&c->counters[IMDN_C_ERRORS], 1);
	}
	c->outstanding--;
	g_busy--;
	if (--req->pending == 0) {
		free(req->internal);
		req->internal = NULL;
		complete(req, 0);
	}
}

static int submit_one(struct imdn_ctrlr *c, struct io_slot *slot)
{
	struct imdn_io *io = slot->io;
	struct spdk_nvme_ns *ns = spdk_nvme_ctrlr_get_ns(c->ctrlr, io->nsid);
	if (ns == NULL || !spdk_nvme_ns_is_active(ns)) {
		return -ENODEV;
	}
	switch (io->kind) {
	case IMDN_READ:
		atomic_fetch_add(&c->counters[IMDN_C_READS], 1);
		return spdk_nvme_ns_cmd_read(ns, c->qpair, io->buf, io->lba, io->nblocks, io_done, slot, 0);
	case IMDN_WRITE:
		atomic_fetch_add(&c->counters[IMDN_C_WRITES], 1);
		return spdk_nvme_ns_cmd_write(ns, c->qpair, io->buf, io->lba, io->nblocks, io_done, slot, 0);
	case IMDN_FLUSH:
		return spdk_nvme_ns_cmd_flush(ns, c->qpair, io_done, slot);
	case IMDN_WRITE_ZEROES:
		return spdk_nvme_ns_cmd_write_zeroes(ns, c->qpair, io->lba, io->nblocks, io_done, slot, 0);
	default:
		return -EINVAL;
	}
}

static void start_io(struct imdn_req *req)
{
	struct imdn_ctrlr *c = req->ctrlr;
	if (c == NULL || c->detaching || c->qpair == NULL) {
		complete(req, -ENODEV);
		return;
	}
	if (req->num_ios == 0) {
		complete(req, 0);
		return;
	}
	struct io_slot *slots = calloc(req->num_ios, sizeof(*slots));
	req->internal = slots;
	req->pending = 1; /* held until every I/O is submitted */
	req->ios_failed = 0;
	for (uint32_t i = 0; i < req->num_ios; i++) {
		slots[i] = (struct io_slot){.req = req, .io = &req->ios[i], .c = c};
		req->ios[i].status = 0;
		int rc;
		while ((rc = submit_one(c, &slots[i])) == -ENOMEM) {
			/* Request pool full: make room by reaping, then retry. */
			spdk_nvme_poll_group_process_completions(g_group, 0, qpair_disconnected);
		}
		if (rc != 0) {
			req->ios[i].status = rc;
			req->ios_failed++;
			atomic_fetch_add(&c->counters[IMDN_C_ERRORS], 1);
			continue;
		}
		req->pending++;
		c->outstanding++;
		g_busy++;
	}
	if (--req->pending == 0) {
		free(req->internal);
		req->internal = NULL;
		complete(req, 0);
	}
}

/* -- benchmark (the "C tier": no Python in the loop) ----------------------- */

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

static void bench_done(void *arg, const struct spdk_nvme_cpl *cpl)
{
	struct bench_slot *slot = arg;
	struct imdn_req *req = slot->req;
	struct bench_ctx *b = req->internal;
	uint64_t now = spdk_get_ticks();
	slot->c->outstanding--;
	g_busy--;
	if (spdk_nvme_cpl_is_error(cpl)) {
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
	} else if (req->bench_duration_ms ? now - b->t_begin >= b->warmup_ticks
		   : b->completed >= req->bench_warmup) {
		b->measuring = true; /* I/Os completing from here on are measured */
		b->t_start = now;
	}
	if (bench_more(req, b, now)) {
		bench_submit(slot);
	} else if (b->completed == b->submitted) {
		bench_finish(req);
	}
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
	int rc = req->bench_write ?
		 spdk_nvme_ns_cmd_write(b->ns, slot->c->qpair, slot->buf, lba, b->blocks_per_io, bench_done, slot, 0) :
		 spdk_nvme_ns_cmd_read(b->ns, slot->c->qpair, slot->buf, lba, b->blocks_per_io, bench_done, slot, 0);
	if (rc != 0) {
		b->errors++;
		return;
	}
	b->submitted++;
	slot->c->outstanding++;
	g_busy++;
}

static void start_bench(struct imdn_req *req)
{
	struct imdn_ctrlr *c = req->ctrlr;
	struct spdk_nvme_ns *ns = c ? spdk_nvme_ctrlr_get_ns(c->ctrlr, req->bench_nsid) : NULL;
	if (c == NULL || c->detaching || ns == NULL || req->bench_qd == 0 || req->bench_hist == NULL) {
		complete(req, c == NULL || ns == NULL ? -ENODEV : -EINVAL);
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
	b->rng = 0x9E3779B97F4A7C15ull ^ req->id;
	b->slots = calloc(req->bench_qd, sizeof(*b->slots));
	b->warmup_ticks = (uint64_t)req->bench_warmup_ms * g_ticks_hz / 1000;
	b->duration_ticks = (uint64_t)req->bench_duration_ms * g_ticks_hz / 1000;
	b->measuring = req->bench_duration_ms ? req->bench_warmup_ms == 0 : req->bench_warmup == 0;
	req->internal = b;
	for (uint32_t i = 0; i < req->bench_qd; i++) {
		b->slots[i] = (struct bench_slot){.req = req, .c = c};
		b->slots[i].buf = spdk_dma_zmalloc(req->bench_io_size, 4096, NULL);
	}
	b->t_begin = b->t_start = spdk_get_ticks();
	for (uint32_t i = 0; i < req->bench_qd && bench_more(req, b, b->t_begin); i++) {
		bench_submit(&b->slots[i]);
	}
	if (b->submitted == 0) {
		bench_finish(req);
	}
}

/* -- the poller ------------------------------------------------------------ */

static void handle(struct imdn_req *req)
{
	switch (req->op) {
	case IMDN_ATTACH:
		start_attach(req);
		break;
	case IMDN_DETACH:
		start_detach(req);
		break;
	case IMDN_IO:
		start_io(req);
		break;
	case IMDN_BENCH:
		start_bench(req);
		break;
	default:
		complete(req, -EINVAL);
	}
}

static void qpair_disconnected(struct spdk_nvme_qpair *qpair, void *group_ctx)
{
	(void)group_ctx;
	for (struct imdn_ctrlr *c = g_ctrlrs; c; c = c->next) {
		if (c->qpair == qpair) {
			atomic_store(&c->failed, 1);
		}
	}
}

static void poll_ctrlrs(uint64_t now)
{
	if (g_busy > 0) {
		spdk_nvme_poll_group_process_completions(g_group, 0, qpair_disconnected);
	}
	for (struct imdn_ctrlr *c = g_ctrlrs; c; c = c->next) {
		if (now >= c->next_admin_tick) {
			c->next_admin_tick = now + ADMIN_POLL_US * g_ticks_hz / 1000000;
			if (spdk_nvme_ctrlr_process_admin_completions(c->ctrlr) < 0 ||
			    spdk_nvme_ctrlr_is_failed(c->ctrlr)) {
				atomic_store(&c->failed, 1);
			}
		}
	}
}

static void *poller_main(void *arg)
{
	(void)arg;
	struct spdk_env_opts opts;
	spdk_env_opts_init(&opts);
	opts.name = g_name;
	opts.core_mask = g_core_mask;
	opts.mem_size = g_mem_size;
	opts.no_huge = g_no_huge != 0;
	opts.no_pci = true; /* NVMe/TCP only: no device scan */
	opts.shm_id = -1;
	if (spdk_env_init(&opts) < 0) {
		snprintf(g_init_err, sizeof(g_init_err), "spdk_env_init failed (core mask %s, %d MB%s)",
			 g_core_mask, g_mem_size, g_no_huge ? ", no hugepages" : "");
		atomic_store(&g_state, -1);
		return NULL;
	}
	g_ticks_hz = spdk_get_ticks_hz();
	g_group = spdk_nvme_poll_group_create(NULL, NULL);
	if (g_group == NULL) {
		snprintf(g_init_err, sizeof(g_init_err), "spdk_nvme_poll_group_create failed");
		atomic_store(&g_state, -1);
		return NULL;
	}
	atomic_store(&g_state, 2);
	for (;;) {
		struct imdn_req *req;
		while ((req = ring_pop(&g_sub)) != NULL) {
			handle(req);
		}
		uint64_t now = spdk_get_ticks();
		if (g_attaches) {
			poll_attaches(now);
		}
		poll_ctrlrs(now);
		if (g_detaches) {
			poll_detaches(now);
		}
		if (g_busy == 0 && g_attaches == NULL && g_detaches == NULL) {
			struct pollfd pfd = {.fd = g_sub_efd, .events = POLLIN};
			if (poll(&pfd, 1, ADMIN_POLL_US / 1000) > 0) {
				uint64_t drained;
				ssize_t rc = read(g_sub_efd, &drained, sizeof(drained));
				(void)rc;
			}
		}
	}
	return NULL;
}

/* -- API for Python -------------------------------------------------------- */

int imdn_start(const char *name, const char *core_mask, int mem_size_mb, int no_huge, char *err, size_t errlen)
{
	int expected = 0;
	if (!atomic_compare_exchange_strong(&g_state, &expected, 1)) {
		snprintf(err, errlen, "the SPDK environment is initialised once per process");
		return -EALREADY;
	}
	g_name = strdup(name);
	g_core_mask = strdup(core_mask);
	g_mem_size = mem_size_mb;
	g_no_huge = no_huge;
	g_sub_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	g_cpl_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (pthread_create(&g_thread, NULL, poller_main, NULL) != 0) {
		snprintf(err, errlen, "cannot create the poller thread");
		atomic_store(&g_state, -1);
		return -EAGAIN;
	}
	while (atomic_load(&g_state) == 1) {
		usleep(1000);
	}
	if (atomic_load(&g_state) < 0) {
		pthread_join(g_thread, NULL);
		snprintf(err, errlen, "%s", g_init_err);
		return -EIO;
	}
	pthread_detach(g_thread);
	return 0;
}

int imdn_completion_fd(void)
{
	return g_cpl_efd;
}

int imdn_submit(struct imdn_req *req)
{
	if (atomic_load(&g_state) != 2) {
		return -ENXIO;
	}
	if (!ring_push(&g_sub, req)) {
		return -EAGAIN;
	}
	uint64_t one = 1;
	ssize_t rc = write(g_sub_efd, &one, sizeof(one));
	(void)rc;
	return 0;
}

int imdn_reap(struct imdn_req **out, int max)
{
	uint64_t drained;
	ssize_t rc = read(g_cpl_efd, &drained, sizeof(drained));
	(void)rc;
	int n = 0;
	struct imdn_req *req;
	while (n < max && (req = ring_pop(&g_cpl)) != NULL) {
		out[n++] = req;
	}
	return n;
}

void *imdn_dma_alloc(size_t size, size_t align)
{
	return spdk_dma_zmalloc(size, align, NULL);
}

void imdn_dma_free(void *buf)
{
	spdk_dma_free(buf);
}

int imdn_ctrlr_failed(struct imdn_ctrlr *c)
{
	return atomic_load(&c->failed);
}

uint64_t imdn_ctrlr_counter(struct imdn_ctrlr *c, int which)
{
	if (which == IMDN_C_OUTSTANDING) {
		return c->outstanding;
	}
	return which >= 0 && which < 3 ? atomic_load(&c->counters[which]) : 0;
}
