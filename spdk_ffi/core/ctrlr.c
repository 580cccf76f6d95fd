/*
 * ctrlr.c: driver controllers (attach, detach, keep-alive) and multipath
 * objects.
 *
 * A struct imdn_ctrlr is one NVMe-oF connection (one path) with one I/O queue
 * pair in the core's NVMe poll group. A struct imdn_mpath groups the path
 * controllers of one logical controller (NativeController in Python, which
 * adds and removes them as it connects, reconnects and detaches) so that C
 * code (mirror legs, rebuilds) can submit I/O with failover and never waits
 * for Python:
 *   - pick a live path: failover = the first live one, round_robin = the next
 *     live one per command;
 *   - a path-level failure (qpair or controller failed, ABORTED_SQ_DELETION,
 *     the path-related status type, -ENXIO at submission) marks that path
 *     failed (Python's keeper reconnects it) and resubmits on another;
 *   - no live path: queue until one is added or fast_io_fail passes (0 =
 *     fail at once); a lost mpath fails at once.
 * A detach takes the controller out of its mpath first, so nothing new is
 * sent to it; its in-flight commands drain or are aborted, and aborted ones
 * come back here as path failures and move to another path.
 *
 * Silence. A peer that loses power, hangs or is cut off by the network sends
 * no RST and no ICMP: its TCP connection stays open and answers nothing.
 * SPDK v24.01's host sends keep-alives but never fails a controller whose
 * keep-alives go unanswered, and it checks I/O timeouts only when the socket
 * has something to read, which a silent one never has; TCP itself gives up
 * after ~15 minutes (tcp_retries2). So the core watches for silence itself,
 * with one bound per controller (silence_timeout_ms, 0 = never):
 *   - progress: commands outstanding and none answered for the bound
 *     (checked with the admin polling, every 10 ms, whatever the socket does);
 *   - SPDK's own timeout callback, registered with the same bound for I/O
 *     and admin commands: it catches a single command left unanswered among
 *     answered ones, and an unanswered keep-alive on an idle controller (the
 *     admin queue is checked every time it is polled).
 * Either way the path is declared silent: marked failed (Python's keeper
 * reconnects it, and ctrlr_loss_timeout_sec / fast_io_fail_timeout_sec run
 * from there, as for a loud failure), its queue pair dropped so that every
 * command it held comes back at once as a path failure (and moves to another
 * path, or waits for one), and its admin queue cut so that a later detach
 * does not wait for a shutdown handshake the peer will never answer.
 */
#include "imdn_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
	uint64_t cut_deadline; /* past it, the admin queue is cut: the shutdown handshake is given up */
	bool started;
	struct detach_ctx *next;
};

static struct imdn_ctrlr *g_ctrlrs;
static struct attach_ctx *g_attaches;
static struct detach_ctx *g_detaches;
static struct imdn_mpath *g_mpaths;

static void mpath_remove_path(struct imdn_ctrlr *c);

/* -- attach ---------------------------------------------------------------- */

static void attach_cb(void *cb_ctx, const struct spdk_nvme_transport_id *trid,
		      struct spdk_nvme_ctrlr *ctrlr, const struct spdk_nvme_ctrlr_opts *opts)
{
	struct attach_ctx *ctx = (struct attach_ctx *)cb_ctx;
	(void)trid;
	(void)opts;
	ctx->found = ctrlr;
}

static void ctrlr_timed_out(void *arg, struct spdk_nvme_ctrlr *ctrlr, struct spdk_nvme_qpair *qpair, uint16_t cid)
{
	(void)ctrlr;
	(void)qpair;
	(void)cid;
	struct imdn_ctrlr *c = arg;
	/* Inside the driver's completion processing: only note it; poll_ctrlrs
	 * acts on it from the loop. */
	c->timed_out = true;
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
	/* Connect without waiting for the fabrics CONNECT reply: the target may
	 * be this very poller (an exported mirror), which must keep running to
	 * send it. I/O submitted meanwhile is queued by the driver. */
	qopts.async_mode = true;
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
	quiet_watch_start(&c->quiet, 0, spdk_get_ticks());
	if (req->silence_timeout_ms) {
		uint64_t us = (uint64_t)req->silence_timeout_ms * 1000;
		c->silence_ticks = us_to_ticks(us);
		spdk_nvme_ctrlr_register_timeout_callback(ctrlr, us, us, ctrlr_timed_out, c);
	}
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

void start_attach(struct imdn_req *req)
{
	struct spdk_nvme_transport_id trid;
	memset(&trid, 0, sizeof(trid));
	if (spdk_nvme_transport_id_parse(&trid, req->trid) != 0) {
		complete_msg(req, -EINVAL, "cannot parse transport id '%s'", req->trid);
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

struct raw_detach {
	struct spdk_nvme_detach_ctx *dctx;
	struct raw_detach *next;
};
static struct raw_detach *g_raw_detaches;

/* Detach a controller nobody adopted (an abandoned or failed attach). Never
 * with the blocking spdk_nvme_detach_poll: the target may be this very
 * poller (an exported mirror), which must keep running to answer. */
static void detach_raw(struct spdk_nvme_ctrlr *ctrlr)
{
	struct spdk_nvme_detach_ctx *dctx = NULL;
	if (spdk_nvme_detach_async(ctrlr, &dctx) == 0 && dctx != NULL) {
		struct raw_detach *d = calloc(1, sizeof(*d));
		d->dctx = dctx;
		d->next = g_raw_detaches;
		g_raw_detaches = d;
	}
}

void poll_attaches(uint64_t now)
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

bool ctrlr_work_pending(void)
{
	return g_attaches != NULL || g_detaches != NULL || g_raw_detaches != NULL;
}

/* -- detach ---------------------------------------------------------------- */

/* Disconnect, leave the poll group, free: every command the queue pair still
 * holds comes back now, aborted (multipath I/O among them moves to another
 * path), and nothing of it is left in the driver. */
static void drop_qpair(struct imdn_ctrlr *c)
{
	if (c->qpair == NULL) {
		return;
	}
	struct spdk_nvme_qpair *qpair = c->qpair;
	spdk_nvme_ctrlr_disconnect_io_qpair(qpair);
	spdk_nvme_poll_group_remove(g_group, qpair);
	spdk_nvme_ctrlr_free_io_qpair(qpair); /* aborts what is left, callbacks run now */
	c->qpair = NULL;
}

/* Close the admin connection (SPDK's reset begins so), so that destructing the
 * controller skips the shutdown handshake: a silent peer would never answer
 * it, and the detach would wait forever. */
static void cut_admin(struct imdn_ctrlr *c)
{
	if (!c->admin_cut) {
		c->admin_cut = true;
		spdk_nvme_ctrlr_disconnect(c->ctrlr);
	}
}

static void unlink_ctrlr(struct imdn_ctrlr *c)
{
	for (struct imdn_ctrlr **link = &g_ctrlrs; *link; link = &(*link)->next) {
		if (*link == c) {
			*link = c->next;
			return;
		}
	}
}

void start_detach(struct imdn_req *req)
{
	struct imdn_ctrlr *c = req->ctrlr;
	if (c == NULL || c->detaching) {
		complete(req, -ENODEV);
		return;
	}
	c->detaching = true;
	/* Nothing new goes to a controller being detached. */
	mpath_remove_path(c);
	if (c->silence_ticks) {
		/* c goes soon; the driver must not call back into it. */
		spdk_nvme_ctrlr_register_timeout_callback(c->ctrlr, 0, 0, NULL, NULL);
	}
	struct detach_ctx *d = calloc(1, sizeof(*d));
	d->c = c;
	d->req = req;
	d->drain_deadline = spdk_get_ticks() + us_to_ticks(DETACH_DRAIN_US);
	/* A peer that stops answering during the detach (its shutdown handshake)
	 * gets as long as the controller's silence bound, or the drain time. */
	d->cut_deadline = d->drain_deadline + (c->silence_ticks ? c->silence_ticks : us_to_ticks(DETACH_DRAIN_US));
	d->next = g_detaches;
	g_detaches = d;
}

void poll_detaches(uint64_t now)
{
	for (struct raw_detach **link = &g_raw_detaches; *link;) {
		struct raw_detach *d = *link;
		if (spdk_nvme_detach_poll_async(d->dctx) == -EAGAIN) {
			link = &d->next;
			continue;
		}
		*link = d->next;
		free(d);
	}
	struct detach_ctx **link = &g_detaches;
	while (*link) {
		struct detach_ctx *d = *link;
		struct imdn_ctrlr *c = d->c;
		if (!d->started) {
			/* Drain outstanding I/O first (the qpair is still polled);
			 * past the deadline, freeing the qpair aborts what is left,
			 * and multipath I/O among it moves to another path. */
			if (c->outstanding > 0 && now < d->drain_deadline) {
				link = &d->next;
				continue;
			}
			drop_qpair(c);
			if (c->timed_out || atomic_load(&c->silent_us) != 0) {
				cut_admin(c); /* it stopped answering: no shutdown handshake */
			}
			unlink_ctrlr(c);
			if (spdk_nvme_detach_async(c->ctrlr, &d->dctx) != 0) {
				d->dctx = NULL;
			}
			d->started = true;
		}
		if (d->dctx != NULL && spdk_nvme_detach_poll_async(d->dctx) == -EAGAIN) {
			if (now > d->cut_deadline) {
				cut_admin(c); /* the shutdown handshake's command comes back aborted */
			}
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

/* -- keep-alive and failure detection --------------------------------------- */

void qpair_disconnected(struct spdk_nvme_qpair *qpair, void *group_ctx)
{
	(void)group_ctx;
	for (struct imdn_ctrlr *c = g_ctrlrs; c; c = c->next) {
		if (c->qpair == qpair) {
			atomic_store(&c->failed, 1);
		}
	}
}

/* The path answered nothing for `quiet` ticks: see "Silence" at the top. */
static void declare_silent(struct imdn_ctrlr *c, uint64_t quiet)
{
	if (atomic_load(&c->silent_us) != 0 || c->detaching) {
		return;
	}
	uint64_t us = quiet * 1000000 / g_ticks_hz;
	atomic_store(&c->silent_us, us ? us : 1);
	atomic_store(&c->failed, 1);
	if (c->mpath != NULL && c->mpath->silent_us < us) {
		c->mpath->silent_us = us;
	}
	drop_qpair(c);
	cut_admin(c);
}

/* Every WATCHDOG_US per controller: has it answered anything lately? */
static void watch_silence(struct imdn_ctrlr *c, uint64_t now)
{
	if (c->silence_ticks == 0 || atomic_load_explicit(&c->silent_us, memory_order_relaxed) != 0) {
		return;
	}
	uint64_t quiet = quiet_for(&c->quiet, c->outstanding, c->answered, now);
	if (c->timed_out) {
		declare_silent(c, c->silence_ticks); /* a command or keep-alive waited that long */
	} else if (quiet >= c->silence_ticks) {
		declare_silent(c, quiet);
	}
}

int64_t poll_ctrlrs(uint64_t now)
{
	int64_t completed = 0;
	if (g_busy > 0) {
		completed = spdk_nvme_poll_group_process_completions(g_group, 0, qpair_disconnected);
	}
	for (struct imdn_ctrlr *c = g_ctrlrs; c; c = c->next) {
		if (now >= c->next_admin_tick) {
			c->next_admin_tick = now + us_to_ticks(ADMIN_POLL_US);
			if (spdk_nvme_ctrlr_process_admin_completions(c->ctrlr) < 0 ||
			    spdk_nvme_ctrlr_is_failed(c->ctrlr)) {
				atomic_store(&c->failed, 1);
			}
			watch_silence(c, now);
		}
	}
	return completed;
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
	if (which == IMDN_C_SILENT_US) {
		return atomic_load(&c->silent_us);
	}
	return which >= 0 && which < 3 ? atomic_load(&c->counters[which]) : 0;
}

/* -- multipath -------------------------------------------------------------- */

static bool path_live(struct imdn_ctrlr *c)
{
	return c != NULL && !c->detaching && c->qpair != NULL && !atomic_load_explicit(&c->failed, memory_order_relaxed);
}

static struct imdn_ctrlr *mpath_pick(struct imdn_mpath *mp)
{
	if (mp->policy == IMDN_POLICY_ROUND_ROBIN) {
		for (uint32_t i = 0; i < mp->num_paths; i++) {
			struct imdn_ctrlr *c = mp->paths[(mp->rr + i) % mp->num_paths];
			if (path_live(c)) {
				mp->rr = (mp->rr + i + 1) % mp->num_paths;
				return c;
			}
		}
		return NULL;
	}
	for (uint32_t i = 0; i < mp->num_paths; i++) {
		if (path_live(mp->paths[i])) {
			return mp->paths[i];
		}
	}
	return NULL;
}

struct spdk_nvme_ns *mpath_ns(struct imdn_mpath *mp, uint32_t nsid)
{
	struct imdn_ctrlr *c = mpath_pick(mp);
	if (c == NULL) {
		for (uint32_t i = 0; i < mp->num_paths && c == NULL; i++) {
			if (!mp->paths[i]->detaching) {
				c = mp->paths[i];
			}
		}
	}
	if (c == NULL) {
		return NULL;
	}
	struct spdk_nvme_ns *ns = spdk_nvme_ctrlr_get_ns(c->ctrlr, nsid);
	return ns != NULL && spdk_nvme_ns_is_active(ns) ? ns : NULL;
}

static void mpath_maybe_free(struct imdn_mpath *mp)
{
	if (!mp->destroyed || mp->refs > 0 || mp->inflight > 0) {
		return;
	}
	for (struct imdn_mpath **link = &g_mpaths; *link; link = &(*link)->next) {
		if (*link == mp) {
			*link = mp->next;
			break;
		}
	}
	for (uint32_t i = 0; i < mp->num_paths; i++) {
		mp->paths[i]->mpath = NULL;
	}
	free(mp);
}

void mpath_ref(struct imdn_mpath *mp)
{
	mp->refs++;
}

void mpath_unref(struct imdn_mpath *mp)
{
	mp->refs--;
	mpath_maybe_free(mp);
}

static void mpath_finish(struct mpath_io *io, int status, uint16_t sct, uint16_t sc)
{
	struct imdn_mpath *mp = io->mp;
	mp->inflight--;
	mp->refs++; /* done() may drop the last other reference (a leg removed) */
	io->done(io, status, sct, sc);
	mp->refs--;
	mpath_maybe_free(mp);
}

static void unqueue(struct mpath_io *io, struct mpath_io_list *list)
{
	TAILQ_REMOVE(list, io, link);
	io->queued = false;
	g_waiting_io--;
}

/* Path-level failures: the command may succeed on another path. */
static bool path_error(const struct spdk_nvme_cpl *cpl)
{
	if (cpl->status.sct == SPDK_NVME_SCT_PATH) {
		return true;
	}
	return cpl->status.sct == SPDK_NVME_SCT_GENERIC &&
	       (cpl->status.sc == SPDK_NVME_SC_ABORTED_SQ_DELETION ||
		cpl->status.sc == SPDK_NVME_SC_COMMAND_TRANSIENT_TRANSPORT_ERROR);
}

static void mark_path_failed(struct imdn_mpath *mp, struct imdn_ctrlr *c)
{
	if (!c->detaching) {
		atomic_store(&c->failed, 1); /* Python's keeper reconnects it */
	}
	CTR_ADD(mp->failovers, 1);
}

static void mpath_nvme_done(void *arg, const struct spdk_nvme_cpl *cpl);

static void sgl_reset(void *arg, uint32_t offset)
{
	struct mpath_io *io = arg;
	io->iov_idx = 0;
	while (io->iov_idx < io->iovcnt && offset >= io->iovs[io->iov_idx].iov_len) {
		offset -= io->iovs[io->iov_idx].iov_len;
		io->iov_idx++;
	}
	io->iov_off = offset;
}

static int sgl_next(void *arg, void **address, uint32_t *length)
{
	struct mpath_io *io = arg;
	if (io->iov_idx >= io->iovcnt) {
		return -EINVAL;
	}
	struct iovec *iov = &io->iovs[io->iov_idx];
	*address = (char *)iov->iov_base + io->iov_off;
	*length = (uint32_t)(iov->iov_len - io->iov_off);
	io->iov_idx++;
	io->iov_off = 0;
	return 0;
}

static int nvme_submit(struct imdn_ctrlr *c, struct mpath_io *io)
{
	struct spdk_nvme_ns *ns = spdk_nvme_ctrlr_get_ns(c->ctrlr, io->nsid);
	if (ns == NULL || !spdk_nvme_ns_is_active(ns)) {
		return -ENODEV;
	}
	switch (io->kind) {
	case IMDN_READ:
		CTR_ADD(c->counters[IMDN_C_READS], 1);
		if (io->iovcnt == 1) {
			return spdk_nvme_ns_cmd_read(ns, c->qpair, io->iovs[0].iov_base, io->lba, io->nblocks,
						     mpath_nvme_done, io, 0);
		}
		return spdk_nvme_ns_cmd_readv(ns, c->qpair, io->lba, io->nblocks, mpath_nvme_done, io, 0, sgl_reset,
					      sgl_next);
	case IMDN_WRITE:
		CTR_ADD(c->counters[IMDN_C_WRITES], 1);
		if (io->iovcnt == 1) {
			return spdk_nvme_ns_cmd_write(ns, c->qpair, io->iovs[0].iov_base, io->lba, io->nblocks,
						      mpath_nvme_done, io, 0);
		}
		return spdk_nvme_ns_cmd_writev(ns, c->qpair, io->lba, io->nblocks, mpath_nvme_done, io, 0, sgl_reset,
					       sgl_next);
	case IMDN_FLUSH:
		return spdk_nvme_ns_cmd_flush(ns, c->qpair, mpath_nvme_done, io);
	case IMDN_WRITE_ZEROES:
		return spdk_nvme_ns_cmd_write_zeroes(ns, c->qpair, io->lba, io->nblocks, mpath_nvme_done, io, 0);
	case IMDN_UNMAP:
		if (spdk_nvme_ns_get_flags(ns) & SPDK_NVME_NS_DEALLOCATE_SUPPORTED) {
			struct spdk_nvme_dsm_range range = {.starting_lba = io->lba, .length = io->nblocks};
			return spdk_nvme_ns_cmd_dataset_management(ns, c->qpair, SPDK_NVME_DSM_ATTR_DEALLOCATE, &range, 1,
								   mpath_nvme_done, io);
		}
		/* A leg without deallocate gets zeroes, so that every leg reads the same. */
		return spdk_nvme_ns_cmd_write_zeroes(ns, c->qpair, io->lba, io->nblocks, mpath_nvme_done, io, 0);
	default:
		return -EINVAL;
	}
}

/* Send io on a live path, or queue it, or fail it. Every outcome ends in
 * exactly one io->done call (possibly from inside this call). */
static void mpath_dispatch(struct mpath_io *io)
{
	struct imdn_mpath *mp = io->mp;
	for (;;) {
		if (mp->lost || mp->destroyed) {
			mpath_finish(io, -ENXIO, 0, 0);
			return;
		}
		struct imdn_ctrlr *c = mpath_pick(mp);
		if (c == NULL) {
			if (mp->fast_fail_ticks == 0) {
				mpath_finish(io, -ENXIO, 0, 0);
				return;
			}
			if (io->waiting_since == 0) {
				io->waiting_since = spdk_get_ticks();
			}
			TAILQ_INSERT_TAIL(&mp->waiting, io, link);
			io->queued = true;
			g_waiting_io++;
			return;
		}
		io->c = c;
		int rc = nvme_submit(c, io);
		if (rc == 0) {
			c->outstanding++;
			g_busy++;
			return;
		}
		if (rc == -ENOMEM) {
			/* The qpair's request pool is full: retry from the loop, after
			 * completions made room (never reap from inside a callback). */
			TAILQ_INSERT_TAIL(&mp->nomem, io, link);
			io->queued = true;
			g_waiting_io++;
			return;
		}
		if (rc == -ENXIO) {
			mark_path_failed(mp, c); /* the qpair failed: try another path */
			continue;
		}
		CTR_ADD(c->counters[IMDN_C_ERRORS], 1);
		mpath_finish(io, rc, 0, 0);
		return;
	}
}

void mpath_submit(struct mpath_io *io)
{
	io->mp->inflight++;
	io->waiting_since = 0;
	io->queued = false;
	mpath_dispatch(io);
}

static void mpath_nvme_done(void *arg, const struct spdk_nvme_cpl *cpl)
{
	struct mpath_io *io = arg;
	struct imdn_ctrlr *c = io->c;
	struct imdn_mpath *mp = io->mp;
	ctrlr_answered(c);
	g_busy--;
	if (spdk_nvme_cpl_is_error(cpl)) {
		if (path_error(cpl) || c->detaching || atomic_load_explicit(&c->failed, memory_order_relaxed)) {
			mark_path_failed(mp, c);
			io->c = NULL;
			mpath_dispatch(io);
			return;
		}
		CTR_ADD(c->counters[IMDN_C_ERRORS], 1);
		mpath_finish(io, 1, cpl->status.sct, cpl->status.sc);
		return;
	}
	mpath_finish(io, 0, 0, 0);
}

static void kick_waiting(struct imdn_mpath *mp)
{
	struct mpath_io_list list = TAILQ_HEAD_INITIALIZER(list);
	struct mpath_io *io;
	while ((io = TAILQ_FIRST(&mp->waiting)) != NULL) {
		unqueue(io, &mp->waiting);
		TAILQ_INSERT_TAIL(&list, io, link);
	}
	while ((io = TAILQ_FIRST(&list)) != NULL) {
		TAILQ_REMOVE(&list, io, link);
		mpath_dispatch(io); /* may queue it again */
	}
}

static void fail_queued(struct imdn_mpath *mp, struct mpath_io_list *queue)
{
	struct mpath_io *io;
	while ((io = TAILQ_FIRST(queue)) != NULL) {
		unqueue(io, queue);
		mpath_finish(io, -ENXIO, 0, 0);
	}
}

void mpath_poll(uint64_t now)
{
	for (struct imdn_mpath *mp = g_mpaths, *next; mp; mp = next) {
		next = mp->next; /* mpath_finish may free mp */
		struct mpath_io *io;
		if (!TAILQ_EMPTY(&mp->nomem)) {
			struct mpath_io_list list = TAILQ_HEAD_INITIALIZER(list);
			while ((io = TAILQ_FIRST(&mp->nomem)) != NULL) {
				unqueue(io, &mp->nomem);
				TAILQ_INSERT_TAIL(&list, io, link);
			}
			while ((io = TAILQ_FIRST(&list)) != NULL) {
				TAILQ_REMOVE(&list, io, link);
				mpath_dispatch(io);
			}
		}
		if (TAILQ_EMPTY(&mp->waiting)) {
			continue;
		}
		if (mpath_pick(mp) != NULL) {
			kick_waiting(mp); /* a path came back (its failed flag cleared) */
			continue;
		}
		/* waiting_since may be later than now: I/O queued during this loop
		 * turn (a path declared silent in poll_ctrlrs). */
		while ((io = TAILQ_FIRST(&mp->waiting)) != NULL && now > io->waiting_since &&
		       now - io->waiting_since >= mp->fast_fail_ticks) {
			unqueue(io, &mp->waiting);
			mpath_finish(io, -ETIMEDOUT, 0, 0);
		}
	}
}

uint32_t mpath_live_paths(struct imdn_mpath *mp)
{
	uint32_t n = 0;
	for (uint32_t i = 0; i < mp->num_paths; i++) {
		n += path_live(mp->paths[i]);
	}
	return n;
}

void mpath_abandon(struct imdn_mpath *mp)
{
	mp->lost = true; /* what comes back, or is queued, fails now */
	fail_queued(mp, &mp->waiting);
	fail_queued(mp, &mp->nomem);
	for (uint32_t i = 0; i < mp->num_paths; i++) {
		struct imdn_ctrlr *c = mp->paths[i];
		atomic_store(&c->failed, 1);
		drop_qpair(c);
		cut_admin(c);
	}
}

void mpath_create(struct imdn_req *req)
{
	struct imdn_mpath *mp = calloc(1, sizeof(*mp));
	TAILQ_INIT(&mp->waiting);
	TAILQ_INIT(&mp->nomem);
	mp->policy = req->policy;
	mp->fast_fail_ticks = us_to_ticks((uint64_t)req->fast_io_fail_ms * 1000);
	mp->refs = 1; /* Python's handle, until IMDN_MPATH_DESTROY */
	mp->next = g_mpaths;
	g_mpaths = mp;
	req->mpath = mp;
	complete(req, 0);
}

void mpath_add(struct imdn_req *req)
{
	struct imdn_mpath *mp = req->mpath;
	struct imdn_ctrlr *c = req->ctrlr;
	if (mp == NULL || c == NULL || mp->destroyed || c->detaching) {
		complete_msg(req, -ENODEV, "no such multipath object or controller");
		return;
	}
	if (c->mpath != NULL) {
		complete_msg(req, c->mpath == mp ? 0 : -EBUSY, "the controller belongs to another multipath object");
		return;
	}
	if (mp->num_paths == IMDN_MAX_PATHS) {
		complete_msg(req, -ENOSPC, "at most %d paths per controller", IMDN_MAX_PATHS);
		return;
	}
	mp->paths[mp->num_paths++] = c;
	c->mpath = mp;
	kick_waiting(mp);
	complete(req, 0);
}

static void mpath_remove_path(struct imdn_ctrlr *c)
{
	struct imdn_mpath *mp = c->mpath;
	if (mp == NULL) {
		return;
	}
	for (uint32_t i = 0; i < mp->num_paths; i++) {
		if (mp->paths[i] == c) {
			memmove(&mp->paths[i], &mp->paths[i + 1], (mp->num_paths - i - 1) * sizeof(mp->paths[0]));
			mp->num_paths--;
			break;
		}
	}
	c->mpath = NULL;
}

void mpath_set(struct imdn_req *req)
{
	struct imdn_mpath *mp = req->mpath;
	if (mp == NULL || mp->destroyed) {
		complete(req, -ENODEV);
		return;
	}
	mp->policy = req->policy;
	mp->fast_fail_ticks = us_to_ticks((uint64_t)req->fast_io_fail_ms * 1000);
	if (req->lost && !mp->lost) {
		mp->lost = true;
		fail_queued(mp, &mp->waiting);
		fail_queued(mp, &mp->nomem);
	}
	complete(req, 0);
}

void mpath_destroy(struct imdn_req *req)
{
	struct imdn_mpath *mp = req->mpath;
	if (mp == NULL || mp->destroyed) {
		complete(req, -ENODEV);
		return;
	}
	mp->lost = true;
	mp->destroyed = true;
	/* I/O still queued here fails now; a mirror leg on this mpath goes ERR. */
	fail_queued(mp, &mp->waiting);
	fail_queued(mp, &mp->nomem);
	mp->refs--;
	mpath_maybe_free(mp);
	complete(req, 0);
}
