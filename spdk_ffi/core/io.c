/*
 * io.c: Python-tier I/O batches on one controller (NativeBackend.io). The
 * batch completes as one request; Python moves I/Os that failed with a
 * path-level status to another path itself (native.py), so this tier talks to
 * exactly the controller it was given.
 */
#include "imdn_internal.h"

#include <errno.h>
#include <stdlib.h>

struct io_slot { /* one I/O of a request, as the completion callback sees it */
	struct imdn_req *req;
	struct imdn_io *io;
	struct imdn_ctrlr *c;
};

static void finish_batch(struct imdn_req *req)
{
	free(req->internal);
	req->internal = NULL;
	complete(req, 0);
}

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
		CTR_ADD(c->counters[IMDN_C_ERRORS], 1);
	}
	ctrlr_answered(c);
	g_busy--;
	if (--req->pending == 0) {
		finish_batch(req);
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
		CTR_ADD(c->counters[IMDN_C_READS], 1);
		return spdk_nvme_ns_cmd_read(ns, c->qpair, io->buf, io->lba, io->nblocks, io_done, slot, 0);
	case IMDN_WRITE:
		CTR_ADD(c->counters[IMDN_C_WRITES], 1);
		return spdk_nvme_ns_cmd_write(ns, c->qpair, io->buf, io->lba, io->nblocks, io_done, slot, 0);
	case IMDN_FLUSH:
		return spdk_nvme_ns_cmd_flush(ns, c->qpair, io_done, slot);
	case IMDN_WRITE_ZEROES:
		return spdk_nvme_ns_cmd_write_zeroes(ns, c->qpair, io->lba, io->nblocks, io_done, slot, 0);
	default:
		return -EINVAL;
	}
}

void start_io(struct imdn_req *req)
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
			/* Request pool full: make room by reaping, then retry. This
			 * runs from the loop (a request), never from a callback. */
			spdk_nvme_poll_group_process_completions(g_group, 0, qpair_disconnected);
		}
		if (rc != 0) {
			req->ios[i].status = rc;
			req->ios_failed++;
			CTR_ADD(c->counters[IMDN_C_ERRORS], 1);
			continue;
		}
		req->pending++;
		c->outstanding++;
		g_busy++;
	}
	if (--req->pending == 0) {
		finish_batch(req);
	}
}
