/*
 * frontend.c: SPDK's thread library, bdev layer and NVMe-oF target inside the
 * core, all polled by the one poller thread.
 *
 * Threads. spdk_thread_lib_init_ext's op callback records every spdk_thread
 * created (the "imd" app thread first; libraries may add more) and the loop
 * polls each of them once per iteration (frontend_poll). The poller OS thread
 * stays bound to the app thread between those polls (spdk_set_thread), so
 * code that runs outside spdk_thread_poll (request handling, NVMe completion
 * callbacks) is "on" the app thread too: a mirror completing a bdev_io from
 * an NVMe completion callback completes it on its own thread, without a
 * message, and may register pollers and send messages.
 *
 * Subsystems: spdk_subsystem_init brings up bdev and its dependencies (accel,
 * vmd, sock, iobuf), with pools small enough for 1 GB without hugepages.
 *
 * Target: one spdk_nvmf_tgt with one poll group on the app thread; the TCP
 * transport is created on the first export. Every exported mirror is one bdev
 * of our "imd_mirror" module, one subsystem (any host) with that bdev as
 * namespace 1, and one TCP listener. Export, unexport and the unexport of a
 * mirror being destroyed run one at a time, in order (g_ops): they are rare,
 * and each is a chain of asynchronous SPDK steps.
 */
#include "imdn_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spdk/bdev.h"
#include "spdk/bdev_module.h"
#include "spdk/init.h"
#include "spdk/nvmf.h"
#include "spdk/nvmf_transport.h"
#include "spdk/uuid.h"

#define MSG_MEMPOOL_SIZE 65535
#define SUBSYS_INIT_TIMEOUT_US 30000000


static struct spdk_thread *g_threads[MAX_SPDK_THREADS];
static _Atomic uint32_t g_nthreads;

static struct spdk_nvmf_tgt *g_tgt;
static struct spdk_nvmf_poll_group *g_pg;
static struct spdk_nvmf_transport *g_transport;

/* -- spdk_thread integration ---------------------------------------------------- */

static int thread_op(struct spdk_thread *thread, enum spdk_thread_op op)
{
	switch (op) {
	case SPDK_THREAD_OP_NEW: {
		uint32_t n = atomic_load(&g_nthreads);
		if (n == MAX_SPDK_THREADS) {
			return -ENOMEM;
		}
		g_threads[n] = thread;
		atomic_store(&g_nthreads, n + 1);
		return 0;
	}
	default:
		return -ENOTSUP; /* one OS thread polls every spdk_thread: nothing to reschedule */
	}
}

static bool thread_op_supported(enum spdk_thread_op op)
{
	return op == SPDK_THREAD_OP_NEW;
}

uint32_t frontend_thread_count(void)
{
	return atomic_load(&g_nthreads);
}

bool frontend_poll(uint64_t now, uint64_t *next_tick)
{
	bool work = false;
	uint32_t n = atomic_load(&g_nthreads);
	for (uint32_t i = 0; i < n; i++) {
		struct spdk_thread *t = g_threads[i];
		if (spdk_thread_poll(t, 0, now) > 0) {
			work = true;
		}
		if (t != g_app_thread && spdk_thread_is_exited(t) && spdk_thread_is_idle(t)) {
			spdk_thread_destroy(t);
			g_threads[i] = g_threads[n - 1];
			atomic_store(&g_nthreads, --n);
			i--;
			continue;
		}
		uint64_t exp = spdk_thread_next_poller_expiration(t);
		if (exp != 0 && (*next_tick == 0 || exp < *next_tick)) {
			*next_tick = exp;
		}
	}
	return work;
}

static void subsystem_init_done(int rc, void *arg)
{
	int *out = arg;
	*out = rc == 0 ? 1 : rc;
}

int frontend_start(char *err, size_t errlen)
{
	if (spdk_thread_lib_init_ext(thread_op, thread_op_supported, 0, MSG_MEMPOOL_SIZE) != 0) {
		snprintf(err, errlen, "spdk_thread_lib_init_ext failed");
		return -1;
	}
	g_app_thread = spdk_thread_create("imd", NULL);
	if (g_app_thread == NULL) {
		snprintf(err, errlen, "cannot create the imd spdk_thread");
		return -1;
	}
	spdk_set_thread(g_app_thread);

	/* Pools sized for 1 GB without hugepages (the defaults take ~250 MB). */
	struct spdk_iobuf_opts iobuf;
	spdk_iobuf_get_opts(&iobuf);
	iobuf.small_pool_count = 2048;
	iobuf.large_pool_count = 512;
	spdk_iobuf_set_opts(&iobuf);
	struct spdk_bdev_opts bopts;
	spdk_bdev_get_opts(&bopts, sizeof(bopts));
	bopts.bdev_io_pool_size = 8191;
	bopts.bdev_io_cache_size = 128;
	if (spdk_bdev_set_opts(&bopts) != 0) {
		snprintf(err, errlen, "spdk_bdev_set_opts refused the pool sizes");
		return -1;
	}

	int done = 0;
	spdk_subsystem_init(subsystem_init_done, &done);
	uint64_t deadline = spdk_get_ticks() + us_to_ticks(SUBSYS_INIT_TIMEOUT_US);
	while (done == 0) {
		uint64_t next = 0;
		frontend_poll(spdk_get_ticks(), &next);
		if (spdk_get_ticks() > deadline) {
			snprintf(err, errlen, "spdk_subsystem_init did not finish within %d s",
				 SUBSYS_INIT_TIMEOUT_US / 1000000);
			return -1;
		}
	}
	if (done != 1) {
		snprintf(err, errlen, "spdk_subsystem_init failed (%d)", done);
		return -1;
	}

	struct spdk_nvmf_target_opts topts;
	memset(&topts, 0, sizeof(topts));
	snprintf(topts.name, sizeof(topts.name), "imd");
	topts.max_subsystems = 1024;
	g_tgt = spdk_nvmf_tgt_create(&topts);
	if (g_tgt == NULL) {
		snprintf(err, errlen, "spdk_nvmf_tgt_create failed");
		return -1;
	}
	g_pg = spdk_nvmf_poll_group_create(g_tgt);
	if (g_pg == NULL) {
		snprintf(err, errlen, "spdk_nvmf_poll_group_create failed");
		return -1;
	}
	return 0;
}

/* -- the imd_mirror bdev module ---------------------------------------------------- */

struct mirror_frontend {
	struct spdk_bdev bdev; /* bdev.ctxt == this */
	struct imdn_mirror *m;
	struct spdk_nvmf_subsystem *subsystem;
	struct spdk_nvme_transport_id trid;
	bool io_device;
	bool registered;
	bool listening;      /* holds a reference on the target's listener */
	bool listener_added; /* the subsystem accepts connections from it */
	bool started;
	int error;
	char errmsg[IMDN_ERRMSG];
	void (*teardown_done)(struct mirror_frontend *fe);
	struct spdk_poller *host_counter; /* keeps m->hosts, on the app thread */
};

static int mod_init(void)
{
	return 0;
}

static void mod_fini(void)
{
}

static int mod_ctx_size(void)
{
	return (int)sizeof(struct mirror_io); /* a host I/O's mirror state lives in its bdev_io */
}

static struct spdk_bdev_module g_module = {
	.name = "imd_mirror",
	.module_init = mod_init,
	.module_fini = mod_fini,
	.get_ctx_size = mod_ctx_size,
};
SPDK_BDEV_MODULE_REGISTER(imd_mirror, &g_module)

static void fe_io_done(struct mirror_io *mio, int status, uint16_t sct, uint16_t sc)
{
	struct spdk_bdev_io *bdev_io = mio->cb_arg;
	if (status == 0) {
		spdk_bdev_io_complete(bdev_io, SPDK_BDEV_IO_STATUS_SUCCESS);
	} else if (status == 1) {
		spdk_bdev_io_complete_nvme_status(bdev_io, 0, sct, sc); /* the leg's own status, passed through */
	} else {
		spdk_bdev_io_complete(bdev_io, SPDK_BDEV_IO_STATUS_FAILED);
	}
}

static void fe_submit_mirror(struct spdk_bdev_io *bdev_io, uint8_t kind)
{
	struct mirror_frontend *fe = bdev_io->bdev->ctxt;
	struct mirror_io *mio = (struct mirror_io *)bdev_io->driver_ctx;
	mio->m = fe->m;
	mio->kind = kind;
	mio->lba = bdev_io->u.bdev.offset_blocks;
	mio->nblocks = kind == IMDN_FLUSH ? 0 : bdev_io->u.bdev.num_blocks;
	mio->iovs = bdev_io->u.bdev.iovs;
	mio->iovcnt = bdev_io->u.bdev.iovcnt;
	mio->done = fe_io_done;
	mio->cb_arg = bdev_io;
	mirror_submit(mio);
}

static void fe_read_buf(struct spdk_io_channel *ch, struct spdk_bdev_io *bdev_io, bool success)
{
	(void)ch;
	if (!success) {
		spdk_bdev_io_complete(bdev_io, SPDK_BDEV_IO_STATUS_NOMEM);
		return;
	}
	fe_submit_mirror(bdev_io, IMDN_READ);
}

static void fe_submit_request(struct spdk_io_channel *ch, struct spdk_bdev_io *bdev_io)
{
	(void)ch;
	switch (bdev_io->type) {
	case SPDK_BDEV_IO_TYPE_READ:
		if (bdev_io->u.bdev.iovs == NULL || bdev_io->u.bdev.iovs[0].iov_base == NULL) {
			spdk_bdev_io_get_buf(bdev_io, fe_read_buf, bdev_io->u.bdev.num_blocks * bdev_io->bdev->blocklen);
			return;
		}
		fe_submit_mirror(bdev_io, IMDN_READ);
		return;
	case SPDK_BDEV_IO_TYPE_WRITE:
		fe_submit_mirror(bdev_io, IMDN_WRITE);
		return;
	case SPDK_BDEV_IO_TYPE_WRITE_ZEROES:
		fe_submit_mirror(bdev_io, IMDN_WRITE_ZEROES);
		return;
	case SPDK_BDEV_IO_TYPE_UNMAP:
		fe_submit_mirror(bdev_io, IMDN_UNMAP);
		return;
	case SPDK_BDEV_IO_TYPE_FLUSH:
		fe_submit_mirror(bdev_io, IMDN_FLUSH);
		return;
	case SPDK_BDEV_IO_TYPE_RESET:
		/* Every command is bounded by fast_io_fail and the legs' own
		 * timeouts; there is nothing of ours to reset. */
		spdk_bdev_io_complete(bdev_io, SPDK_BDEV_IO_STATUS_SUCCESS);
		return;
	default:
		spdk_bdev_io_complete(bdev_io, SPDK_BDEV_IO_STATUS_FAILED);
	}
}

static bool fe_io_type_supported(void *ctx, enum spdk_bdev_io_type type)
{
	(void)ctx;
	switch (type) {
	case SPDK_BDEV_IO_TYPE_READ:
	case SPDK_BDEV_IO_TYPE_WRITE:
	case SPDK_BDEV_IO_TYPE_WRITE_ZEROES:
	case SPDK_BDEV_IO_TYPE_UNMAP: /* legs without deallocate get write zeroes */
	case SPDK_BDEV_IO_TYPE_FLUSH:
	case SPDK_BDEV_IO_TYPE_RESET:
		return true;
	default:
		return false;
	}
}

static struct spdk_io_channel *fe_get_io_channel(void *ctx)
{
	struct mirror_frontend *fe = ctx;
	return spdk_get_io_channel(fe->m);
}

static void fe_io_device_gone_destruct(void *io_device)
{
	struct imdn_mirror *m = io_device;
	struct mirror_frontend *fe = m->fe;
	fe->io_device = false;
	spdk_bdev_destruct_done(&fe->bdev, 0);
}

static int fe_destruct(void *ctx)
{
	struct mirror_frontend *fe = ctx;
	/* The bdev layer released its channels; the io_device goes once they
	 * are all gone, and the destruct completes then. */
	spdk_io_device_unregister(fe->m, fe_io_device_gone_destruct);
	return 1;
}

static const struct spdk_bdev_fn_table g_fn_table = {
	.destruct = fe_destruct,
	.submit_request = fe_submit_request,
	.io_type_supported = fe_io_type_supported,
	.get_io_channel = fe_get_io_channel,
};

static int fe_channel_create(void *io_device, void *ctx_buf)
{
	(void)io_device;
	(void)ctx_buf;
	return 0; /* all mirror state is on the one thread: a channel holds nothing */
}

static void fe_channel_destroy(void *io_device, void *ctx_buf)
{
	(void)io_device;
	(void)ctx_buf;
}

/* -- the operation queue ---------------------------------------------------------- */

enum fe_op_kind { FE_EXPORT, FE_UNEXPORT, FE_UNEXPORT_DESTROY };

struct fe_op {
	enum fe_op_kind kind;
	struct imdn_req *req;
	struct imdn_mirror *m;
	TAILQ_ENTRY(fe_op) link;
};

static TAILQ_HEAD(, fe_op) g_ops = TAILQ_HEAD_INITIALIZER(g_ops);
static bool g_op_running;

static void op_run(struct fe_op *op);

static void op_next(void)
{
	struct fe_op *op = TAILQ_FIRST(&g_ops);
	if (op == NULL) {
		g_op_running = false;
		return;
	}
	TAILQ_REMOVE(&g_ops, op, link);
	g_op_running = true;
	op_run(op);
}

static void op_done_msg(void *arg)
{
	(void)arg;
	op_next();
}

/* End the current operation; the next starts on a fresh stack. */
static void op_done(struct fe_op *op)
{
	free(op);
	spdk_thread_send_msg(g_app_thread, op_done_msg, NULL);
}

static void op_queue(enum fe_op_kind kind, struct imdn_req *req, struct imdn_mirror *m)
{
	struct fe_op *op = calloc(1, sizeof(*op));
	op->kind = kind;
	op->req = req;
	op->m = m;
	TAILQ_INSERT_TAIL(&g_ops, op, link);
	if (!g_op_running) {
		op_next();
	}
}

void frontend_export(struct imdn_req *req)
{
	op_queue(FE_EXPORT, req, req->mirror);
}

void frontend_unexport(struct imdn_req *req)
{
	op_queue(FE_UNEXPORT, req, req->mirror);
}

static void unexport_for_destroy(struct imdn_mirror *m)
{
	op_queue(FE_UNEXPORT_DESTROY, NULL, m);
}

static void resized(struct imdn_mirror *m)
{
	struct mirror_frontend *fe = m->fe;
	if (fe != NULL && fe->registered) {
		/* The target sees SPDK_BDEV_EVENT_RESIZE and sends hosts a
		 * namespace-attribute-changed notice. */
		spdk_bdev_notify_blockcnt_change(&fe->bdev, CTR_GET(m->num_blocks));
	}
}

static const struct mirror_export_ops g_export_ops = {.resized = resized, .unexport_for_destroy = unexport_for_destroy};

/* -- teardown: stop, remove listener, destroy subsystem, unregister bdev ----------- */

static void teardown_step(struct mirror_frontend *fe);

static void teardown_stopped(struct spdk_nvmf_subsystem *subsystem, void *arg, int status)
{
	(void)subsystem;
	struct mirror_frontend *fe = arg;
	if (status != 0) {
		SPDK_ERRLOG("imd: stopping subsystem of mirror %s failed (%d)\n", fe->m->name, status);
	}
	fe->started = false;
	teardown_step(fe);
}

static void teardown_destroyed(void *arg)
{
	struct mirror_frontend *fe = arg;
	fe->subsystem = NULL;
	teardown_step(fe);
}

static void teardown_unregistered(void *arg, int rc)
{
	struct mirror_frontend *fe = arg;
	if (rc != 0) {
		SPDK_ERRLOG("imd: unregistering the bdev of mirror %s failed (%d)\n", fe->m->name, rc);
	}
	fe->registered = false;
	teardown_step(fe);
}

static void teardown_io_device_gone(void *io_device)
{
	struct imdn_mirror *m = io_device;
	struct mirror_frontend *fe = m->fe;
	fe->io_device = false;
	teardown_step(fe);
}

/* Undo whatever of an export exists, in reverse order, each asynchronous
 * step resuming here; fe->teardown_done when nothing is left. */
static void teardown_step(struct mirror_frontend *fe)
{
	/* The count stops with the subsystem: no poller outlives what it reads. */
	spdk_poller_unregister(&fe->host_counter);
	if (fe->started) {
		if (spdk_nvmf_subsystem_stop(fe->subsystem, teardown_stopped, fe) == 0) {
			return;
		}
		fe->started = false;
	}
	if (fe->subsystem != NULL) {
		if (fe->listener_added) {
			spdk_nvmf_subsystem_remove_listener(fe->subsystem, &fe->trid);
			fe->listener_added = false;
		}
		if (fe->listening) {
			spdk_nvmf_tgt_stop_listen(g_tgt, &fe->trid); /* closes the port with its last user */
			fe->listening = false;
		}
		int rc = spdk_nvmf_subsystem_destroy(fe->subsystem, teardown_destroyed, fe);
		if (rc == -EINPROGRESS) {
			return;
		}
		if (rc != 0) {
			SPDK_ERRLOG("imd: destroying subsystem of mirror %s failed (%d)\n", fe->m->name, rc);
		}
		fe->subsystem = NULL;
	}
	if (fe->listening) {
		spdk_nvmf_tgt_stop_listen(g_tgt, &fe->trid);
		fe->listening = false;
	}
	if (fe->registered) {
		spdk_bdev_unregister(&fe->bdev, teardown_unregistered, fe);
		return;
	}
	if (fe->io_device) {
		spdk_io_device_unregister(fe->m, teardown_io_device_gone);
		return;
	}
	fe->teardown_done(fe);
}

static void fe_free(struct mirror_frontend *fe)
{
	free(fe->bdev.name);
	free(fe);
}

/* -- export ----------------------------------------------------------------------- */

static struct fe_op *g_export_op; /* the export running (operations run one at a time) */

static void export_failed_torn_down(struct mirror_frontend *fe)
{
	struct fe_op *op = g_export_op;
	struct imdn_mirror *m = fe->m;
	m->fe = NULL;
	g_export_op = NULL;
	complete_msg(op->req, fe->error, "%s", fe->errmsg);
	fe_free(fe);
	if (m->destroy_req != NULL) {
		mirror_destroy_kick(m);
	}
	op_done(op);
}

static void export_fail(struct mirror_frontend *fe, int error, const char *fmt, const char *detail)
{
	fe->error = error;
	snprintf(fe->errmsg, sizeof(fe->errmsg), fmt, detail);
	fe->teardown_done = export_failed_torn_down;
	teardown_step(fe);
}

/* How many hosts are connected to the export, for metrics: the admin queue
 * pairs (one per host controller) of the target's one poll group whose local
 * address is this export's listener (every export has its own port). SPDK
 * v24.01 has no public per-subsystem controller list, but the poll group and
 * its queue pairs are public to transports (nvmf_transport.h). Counted here,
 * on the thread that owns the poll group, every HOST_COUNT_US, and published
 * as an atomic that Python reads without a request. */
#define HOST_COUNT_US 100000

static int count_hosts(void *arg)
{
	struct mirror_frontend *fe = arg;
	uint64_t hosts = 0;
	struct spdk_nvmf_qpair *qpair;
	TAILQ_FOREACH(qpair, &g_pg->qpairs, link) {
		struct spdk_nvme_transport_id local;
		if (qpair->qid != 0 || qpair->ctrlr == NULL ||
		    spdk_nvmf_qpair_get_local_trid(qpair, &local) != 0) {
			continue;
		}
		if (strcmp(local.trsvcid, fe->trid.trsvcid) == 0 && strcmp(local.traddr, fe->trid.traddr) == 0) {
			hosts++;
		}
	}
	CTR_SET(fe->m->hosts, hosts);
	return SPDK_POLLER_IDLE;
}

static void export_started(struct spdk_nvmf_subsystem *subsystem, void *arg, int status)
{
	(void)subsystem;
	struct mirror_frontend *fe = arg;
	if (status != 0) {
		export_fail(fe, status < 0 ? status : -EIO, "cannot start subsystem of %s", fe->m->name);
		return;
	}
	fe->started = true;
	fe->host_counter = SPDK_POLLER_REGISTER(count_hosts, fe, HOST_COUNT_US);
	struct fe_op *op = g_export_op;
	g_export_op = NULL;
	g_exports++;
	CTR_SET(fe->m->exported, 1);
	complete(op->req, 0);
	op_done(op);
}

static void export_listener_added(void *arg, int status)
{
	struct mirror_frontend *fe = arg;
	if (status != 0) {
		export_fail(fe, status < 0 ? status : -EIO, "cannot add listener %s to the subsystem", fe->trid.traddr);
		return;
	}
	fe->listener_added = true;
	int rc = spdk_nvmf_subsystem_start(fe->subsystem, export_started, fe);
	if (rc != 0) {
		export_fail(fe, rc, "cannot start subsystem of %s", fe->m->name);
	}
}

static void export_with_transport(struct fe_op *op)
{
	struct imdn_req *req = op->req;
	struct imdn_mirror *m = op->m;
	struct mirror_frontend *fe = m->fe;

	/* The bdev: one per exported mirror, our module, the mirror as io_device. */
	char name[96];
	snprintf(name, sizeof(name), "imd-%s", m->name);
	fe->bdev.name = strdup(name);
	fe->bdev.product_name = "imd mirror";
	fe->bdev.blocklen = m->block_size;
	fe->bdev.blockcnt = CTR_GET(m->num_blocks);
	fe->bdev.write_cache = 1; /* hosts send flushes, and the legs get them */
	fe->bdev.max_write_zeroes = 65536;
	fe->bdev.max_unmap = 65536;
	fe->bdev.max_unmap_segments = 1;
	memcpy(&fe->bdev.uuid, req->nguid, sizeof(fe->bdev.uuid));
	fe->bdev.ctxt = fe;
	fe->bdev.fn_table = &g_fn_table;
	fe->bdev.module = &g_module;
	spdk_io_device_register(m, fe_channel_create, fe_channel_destroy, sizeof(void *), "imd_mirror");
	fe->io_device = true;
	int rc = spdk_bdev_register(&fe->bdev);
	if (rc != 0) {
		export_fail(fe, rc, "cannot register bdev %s", name);
		return;
	}
	fe->registered = true;

	fe->subsystem = spdk_nvmf_subsystem_create(g_tgt, req->nqn, SPDK_NVMF_SUBTYPE_NVME, 1);
	if (fe->subsystem == NULL) {
		export_fail(fe, -EEXIST, "cannot create subsystem %s (NQN invalid or in use)", req->nqn);
		return;
	}
	spdk_nvmf_subsystem_set_allow_any_host(fe->subsystem, true);
	if (spdk_nvmf_subsystem_set_sn(fe->subsystem, req->serial) != 0) {
		export_fail(fe, -EINVAL, "invalid serial number '%s'", req->serial);
		return;
	}
	if (spdk_nvmf_subsystem_set_mn(fe->subsystem, req->model) != 0) {
		export_fail(fe, -EINVAL, "invalid model number '%s'", req->model);
		return;
	}
	struct spdk_nvmf_ns_opts ns_opts;
	spdk_nvmf_ns_opts_get_defaults(&ns_opts, sizeof(ns_opts));
	ns_opts.nsid = 1;
	memcpy(ns_opts.nguid, req->nguid, sizeof(ns_opts.nguid));
	memcpy(&ns_opts.uuid, req->nguid, sizeof(ns_opts.uuid));
	if (spdk_nvmf_subsystem_add_ns_ext(fe->subsystem, name, &ns_opts, sizeof(ns_opts), NULL) == 0) {
		export_fail(fe, -EINVAL, "cannot add bdev %s as namespace 1", name);
		return;
	}
	struct spdk_nvmf_listen_opts lopts;
	spdk_nvmf_listen_opts_init(&lopts, sizeof(lopts));
	rc = spdk_nvmf_tgt_listen_ext(g_tgt, &fe->trid, &lopts);
	if (rc != 0) {
		export_fail(fe, rc, "cannot listen on %s", req->traddr);
		return;
	}
	fe->listening = true;
	spdk_nvmf_subsystem_add_listener(fe->subsystem, &fe->trid, export_listener_added, fe);
}

static void transport_added(void *arg, int status)
{
	struct fe_op *op = arg;
	if (status != 0) {
		spdk_nvmf_transport_destroy(g_transport, NULL, NULL);
		g_transport = NULL;
		export_fail(op->m->fe, status, "cannot add the %s transport to the target", "TCP");
		return;
	}
	export_with_transport(op);
}

static void transport_created(void *arg, struct spdk_nvmf_transport *transport)
{
	struct fe_op *op = arg;
	if (transport == NULL) {
		export_fail(op->m->fe, -EIO, "cannot create the %s transport", "TCP");
		return;
	}
	g_transport = transport;
	spdk_nvmf_tgt_add_transport(g_tgt, transport, transport_added, op);
}

static void export_start(struct fe_op *op)
{
	struct imdn_req *req = op->req;
	struct imdn_mirror *m = op->m;
	if (m->destroy_req != NULL) {
		complete_msg(req, -ENODEV, "the mirror is being destroyed");
		op_done(op);
		return;
	}
	if (m->fe != NULL) {
		complete_msg(req, -EEXIST, "mirror %s is exported already", m->name);
		op_done(op);
		return;
	}
	struct mirror_frontend *fe = calloc(1, sizeof(*fe));
	fe->m = m;
	m->fe = fe;
	m->fe_ops = &g_export_ops;
	g_export_op = op;
	spdk_nvme_trid_populate_transport(&fe->trid, SPDK_NVME_TRANSPORT_TCP);
	fe->trid.adrfam = strchr(req->traddr, ':') != NULL ? SPDK_NVMF_ADRFAM_IPV6 : SPDK_NVMF_ADRFAM_IPV4;
	snprintf(fe->trid.traddr, sizeof(fe->trid.traddr), "%s", req->traddr);
	snprintf(fe->trid.trsvcid, sizeof(fe->trid.trsvcid), "%s", req->trsvcid);
	/* No subnqn: the target matches a connection's listen address against
	 * this trid, and that address carries none. */
	if (g_transport != NULL) {
		export_with_transport(op);
		return;
	}
	/* The TCP transport, on the first export; buffers from the modest iobuf pools. */
	struct spdk_nvmf_transport_opts topts;
	if (!spdk_nvmf_transport_opts_init("TCP", &topts, sizeof(topts))) {
		export_fail(fe, -ENOTSUP, "SPDK has no %s transport", "TCP");
		return;
	}
	topts.num_shared_buffers = 127;
	topts.buf_cache_size = 32;
	int rc = spdk_nvmf_transport_create_async("TCP", &topts, transport_created, op);
	if (rc != 0) {
		export_fail(fe, rc, "cannot create the %s transport", "TCP");
	}
}

/* -- unexport --------------------------------------------------------------------- */

static struct fe_op *g_unexport_op;

static void unexport_torn_down(struct mirror_frontend *fe)
{
	struct fe_op *op = g_unexport_op;
	struct imdn_mirror *m = fe->m;
	g_unexport_op = NULL;
	m->fe = NULL;
	g_exports--;
	CTR_SET(m->exported, 0);
	CTR_SET(m->hosts, 0);
	fe_free(fe);
	if (op->req != NULL) {
		complete(op->req, 0);
	}
	if (op->kind == FE_UNEXPORT_DESTROY || m->destroy_req != NULL) {
		mirror_destroy_kick(m);
	}
	op_done(op);
}

static void unexport_start(struct fe_op *op)
{
	struct imdn_mirror *m = op->m;
	struct mirror_frontend *fe = m->fe;
	if (fe == NULL) {
		if (op->req != NULL) {
			complete(op->req, 0); /* not exported: nothing to do */
		}
		if (op->kind == FE_UNEXPORT_DESTROY) {
			mirror_destroy_kick(m);
		}
		op_done(op);
		return;
	}
	g_unexport_op = op;
	fe->teardown_done = unexport_torn_down;
	teardown_step(fe);
}

static void op_run(struct fe_op *op)
{
	if (op->kind == FE_EXPORT) {
		export_start(op);
	} else {
		unexport_start(op);
	}
}
