/*
 * mirror.c: a mirror over up to IMDN_MAX_LEGS legs (an mpath + nsid each),
 * owned by the poller thread like everything else.
 *
 * Leg modes: RW legs take writes and serve reads; WO legs take writes only (a
 * rebuild destination); ERR legs take nothing. A leg goes ERR the moment one
 * of its commands fails after the mpath gave up on every path, and an event
 * tells Python (on_leg_failed) once.
 *
 * Writes (write, write zeroes, unmap, flush) go to every RW and WO leg and
 * complete when all of them did: OK if at least one leg that was RW when the
 * write was sent succeeded, so a host sees no error while one RW leg works.
 * Reads go to one RW leg, the one with the fewest commands outstanding (ties
 * round-robin); a failed read retries on another RW leg and fails only when
 * none is left.
 *
 * Rebuild (one per mirror) copies a RW source leg to a WO destination leg,
 * chunk by chunk, while host I/O goes on. Correctness under concurrent
 * writes comes from a range lock on the chunk being copied:
 *   1. lock [lo, hi): from now on a host write overlapping it is held;
 *   2. wait until no host write admitted before the lock and overlapping it
 *      is still in flight (they are counted when the lock is taken);
 *   3. read the chunk from the source, write it (or write zeroes, if it
 *      read back all zeroes: thin replicas stay thin) to the destination;
 *   4. unlock and release the held writes; they go to every leg, the
 *      destination included, as all writes do.
 * Host writes outside the chunk go on meanwhile, to the destination too, so
 * regions already copied stay current and regions not yet copied get the
 * new data again when their turn comes (from a source that has it).
 * A source that fails goes ERR and the chunk is redone from another RW leg;
 * with none left, or a failed destination, the rebuild ends in error.
 * Cancel stops within one chunk: whatever is waiting is abandoned at once,
 * a chunk command in flight is allowed to finish. A token bucket (bytes/s)
 * throttles it, woken by a one-shot timed spdk_poller.
 *
 * Silence. A leg whose node stops answering (power loss, a hang, a cut
 * network: no RST, no ICMP) would hold every host write forever, since a
 * write completes only when every leg answered. The watchdog (every
 * WATCHDOG_US) fails such a leg while another RW leg still works:
 *   - a leg with commands outstanding that answered none of them for
 *     leg_timeout (the engine's replica timeout) goes ERR;
 *   - so does a leg whose multipath object was given up (lost), or has no
 *     live path left after a path of it was declared silent (ctrlr.c), even
 *     with nothing outstanding (an idle volume's ReplicaList tells the truth).
 * Its commands are then taken back (mpath_abandon: queued ones fail, the
 * paths' queue pairs are dropped so the driver returns the rest now), each
 * write completes from the legs that have it, and reads retry on another
 * leg. A leg with another live path is left to multipath, which moves its
 * commands once ctrlr.c declares the silent path. With no other working RW
 * leg the watchdog does nothing: the legs wait for their paths as before
 * (fast_io_fail_timeout_sec), since failing the last copy helps no one.
 *
 * Quiesce (a snapshot): IMDN_MIRROR_QUIESCE holds every new host write at
 * mirror_write_admit() and answers once the writes admitted before it are
 * done on every leg; IMDN_MIRROR_RESUME lets the held writes go. Reads go on
 * meanwhile. Between the two, every leg holds the same bytes and none
 * changes: the moment a crash-consistent snapshot is taken.
 *
 * Every host write passes through mirror_write_admit() before it touches a
 * leg. That is where the range lock holds writes today, and where a dirty-
 * region log can later hold a write until its region is marked dirty.
 */
#include "imdn_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spdk/nvme_spec.h"

#define RB_MAX_CHUNK (16u << 20)
#define WZ_MAX_BLOCKS 65536 /* NVMe write zeroes: 16-bit block count */

enum rb_phase { RB_IDLE, RB_WAIT_TOKENS, RB_WAIT_WRITES, RB_READING, RB_WRITING };

static void mirror_read(struct mirror_io *mio);
static void mirror_fanout(struct mirror_io *mio);
static void rebuild_step(struct imdn_mirror *m);
static void rebuild_finish(struct imdn_mirror *m, int state, int err);
static void mirror_destroy_continue(struct imdn_mirror *m);

/* -- legs ------------------------------------------------------------------ */

static struct imdn_mirror *g_mirrors; /* for the watchdog */

/* Every command that comes back from a leg passes here. */
static void leg_answered(struct mirror_leg *leg)
{
	leg->outstanding--;
	leg->answered++;
}

static int leg_mode(struct mirror_leg *leg)
{
	return atomic_load_explicit(&leg->mode, memory_order_relaxed);
}

static bool leg_writable(struct mirror_leg *leg)
{
	int mode = leg_mode(leg);
	return leg->mp != NULL && !leg->removing && (mode == IMDN_LEG_RW || mode == IMDN_LEG_WO);
}

static bool leg_readable(struct mirror_leg *leg)
{
	return leg->mp != NULL && !leg->removing && leg_mode(leg) == IMDN_LEG_RW;
}

static bool rebuild_uses(struct imdn_mirror *m, int i)
{
	return m->rb.active && (m->rb.dst == i || m->rb.src == i);
}

/* A leg being removed goes once nothing of it is in flight. */
static void leg_maybe_removed(struct imdn_mirror *m, int i)
{
	struct mirror_leg *leg = &m->legs[i];
	if (!leg->removing || leg->outstanding > 0 || rebuild_uses(m, i)) {
		return;
	}
	struct imdn_req *req = leg->remove_req;
	mpath_unref(leg->mp);
	leg->mp = NULL;
	leg->removing = false;
	leg->remove_req = NULL;
	CTR_SET(leg->mode, IMDN_LEG_ERR);
	if (req != NULL) {
		complete(req, 0);
	}
}

static void leg_failed(struct imdn_mirror *m, int i, int status, uint16_t sct, uint16_t sc)
{
	struct mirror_leg *leg = &m->legs[i];
	CTR_ADD(leg->errors, 1);
	if (leg_mode(leg) == IMDN_LEG_ERR) {
		return;
	}
	CTR_SET(leg->err_status, status);
	CTR_SET(leg->err_sct, sct);
	CTR_SET(leg->err_sc, sc);
	CTR_SET(leg->mode, IMDN_LEG_ERR);
	if (!leg->removing) {
		struct imdn_event ev = {.cookie = m->cookie,
					.type = IMDN_EV_LEG_FAILED,
					.leg = i,
					.status = status,
					.sct = sct,
					.sc = sc,
					.value = CTR_GET(leg->silent_us)};
		post_event(&ev);
	}
	if (m->rb.active && m->rb.dst == i && m->rb.fail_errno == 0) {
		m->rb.fail_errno = status < 0 ? status : -EIO;
		rebuild_step(m);
	}
}

/* -- host I/O --------------------------------------------------------------- */

static uint32_t lat_bucket(uint64_t ticks)
{
	uint64_t us = ticks * 1000000 / g_ticks_hz;
	uint32_t b = us == 0 ? 0 : 64 - (uint32_t)__builtin_clzll(us); /* us < 2^b */
	return b < IMDN_LAT_BUCKETS ? b : IMDN_LAT_BUCKETS - 1;
}

static void mirror_finish(struct mirror_io *mio, int status, uint16_t sct, uint16_t sc)
{
	struct imdn_mirror *m = mio->m;
	uint64_t bytes = mio->nblocks * m->block_size;
	uint64_t ticks = spdk_get_ticks() - mio->start;
	switch (mio->kind) {
	case IMDN_READ:
		CTR_ADD(m->reads, 1);
		CTR_ADD(m->read_lat_ticks, ticks); /* for an average per read over any interval */
		if (status == 0) {
			CTR_ADD(m->bytes_read, bytes);
		}
		break;
	case IMDN_WRITE:
		CTR_ADD(m->writes, 1);
		CTR_ADD(m->write_lat_ticks, ticks);
		if (status == 0) {
			CTR_ADD(m->bytes_written, bytes);
		}
		break;
	default:
		CTR_ADD(m->other_ops, 1);
	}
	if (status != 0) {
		CTR_ADD(m->errors, 1);
	}
	uint32_t bucket = lat_bucket(ticks); /* CTR_ADD evaluates its field twice */
	CTR_ADD(m->lat_hist[bucket], 1);
	m->inflight--;
	mio->done(mio, status, sct, sc); /* mio may be gone after this */
	if (m->destroy_req != NULL) {
		mirror_destroy_kick(m);
	}
}

static void sub_init(struct mirror_io *mio, int i, mpath_done_fn done)
{
	struct mirror_leg *leg = &mio->m->legs[i];
	struct mpath_io *sub = &mio->sub[i];
	sub->mp = leg->mp;
	sub->c = NULL;
	sub->nsid = leg->nsid;
	sub->kind = mio->kind;
	sub->lba = mio->lba;
	sub->nblocks = (uint32_t)mio->nblocks;
	sub->iovs = mio->iovs;
	sub->iovcnt = mio->iovcnt;
	sub->iov_idx = 0;
	sub->iov_off = 0;
	sub->done = done;
	sub->ctx = mio;
	sub->tag = (uint32_t)i;
	leg->outstanding++;
}

void mirror_submit(struct mirror_io *mio)
{
	struct imdn_mirror *m = mio->m;
	mio->start = spdk_get_ticks();
	mio->status = 0;
	mio->sct = mio->sc = 0;
	mio->tried = 0;
	mio->lock_blocker = false;
	m->inflight++;
	if (mio->kind != IMDN_FLUSH &&
	    (mio->nblocks == 0 || mio->lba + mio->nblocks > CTR_GET(m->num_blocks) || mio->nblocks > UINT32_MAX)) {
		mirror_finish(mio, 1, SPDK_NVME_SCT_GENERIC, SPDK_NVME_SC_LBA_OUT_OF_RANGE);
		return;
	}
	switch (mio->kind) {
	case IMDN_READ:
		mirror_read(mio);
		return;
	case IMDN_FLUSH:
		mirror_fanout(mio);
		return;
	case IMDN_WRITE:
	case IMDN_WRITE_ZEROES:
	case IMDN_UNMAP:
		if (mirror_write_admit(m, mio)) {
			mirror_fanout(mio);
		}
		return;
	default:
		mirror_finish(mio, -EINVAL, 0, 0);
	}
}

/* -- reads ------------------------------------------------------------------ */

static void read_leg_done(struct mpath_io *sub, int status, uint16_t sct, uint16_t sc)
{
	struct mirror_io *mio = sub->ctx;
	struct imdn_mirror *m = mio->m;
	int i = (int)sub->tag;
	struct mirror_leg *leg = &m->legs[i];
	leg_answered(leg);
	if (status == 0) {
		CTR_ADD(leg->reads, 1);
		CTR_ADD(leg->bytes_read, mio->nblocks * m->block_size);
		leg_maybe_removed(m, i);
		mirror_finish(mio, 0, 0, 0);
		return;
	}
	leg_failed(m, i, status, sct, sc);
	leg_maybe_removed(m, i);
	mio->tried |= 1u << i;
	mio->status = status;
	mio->sct = sct;
	mio->sc = sc;
	mirror_read(mio); /* the next RW leg, if any */
}

/* The RW leg with the fewest commands outstanding (reads and writes: what
 * waits in its queue pair), ties broken round-robin. A leg that answers more
 * slowly keeps more outstanding and gets fewer reads; at QD1, where every leg
 * has none, this is plain round-robin. */
static void mirror_read(struct mirror_io *mio)
{
	struct imdn_mirror *m = mio->m;
	int best = -1;
	uint32_t best_out = UINT32_MAX;
	for (uint32_t k = 0; k < IMDN_MAX_LEGS; k++) {
		int i = (int)((m->read_rr + k) % IMDN_MAX_LEGS);
		struct mirror_leg *leg = &m->legs[i];
		if (!leg_readable(leg) || (mio->tried & (1u << i)) || leg->outstanding >= best_out) {
			continue;
		}
		best = i;
		best_out = leg->outstanding;
	}
	if (best >= 0) {
		m->read_rr = (uint32_t)best + 1;
		sub_init(mio, best, read_leg_done);
		mpath_submit(&mio->sub[best]);
		return;
	}
	if (mio->status == 0) {
		mio->status = -ENXIO; /* no RW leg at all */
	}
	mirror_finish(mio, mio->status, mio->sct, mio->sc);
}

/* -- writes ------------------------------------------------------------------ */

static bool overlaps(const struct mirror_io *mio, uint64_t lo, uint64_t hi)
{
	return mio->lba < hi && lo < mio->lba + mio->nblocks;
}

/* The one gate of host writes. Today: the rebuild's range lock. Later: a
 * dirty-region log parks the write here until its region is marked dirty. */
bool mirror_write_admit(struct imdn_mirror *m, struct mirror_io *mio)
{
	struct rebuild *rb = &m->rb;
	if (m->quiesced) {
		TAILQ_INSERT_TAIL(&m->quiesce_held, mio, link);
		CTR_ADD(m->held_writes, 1);
		return false;
	}
	if (rb->locked && overlaps(mio, rb->lock_lo, rb->lock_hi)) {
		TAILQ_INSERT_TAIL(&rb->held, mio, link);
		CTR_ADD(m->held_writes, 1);
		return false;
	}
	TAILQ_INSERT_TAIL(&m->inflight_writes, mio, link);
	return true;
}

static void quiesce_check(struct imdn_mirror *m)
{
	if (m->quiesce_req != NULL && TAILQ_EMPTY(&m->inflight_writes)) {
		struct imdn_req *req = m->quiesce_req;
		m->quiesce_req = NULL;
		complete(req, 0);
	}
}

static void write_finish(struct mirror_io *mio)
{
	struct imdn_mirror *m = mio->m;
	if (mio->kind != IMDN_FLUSH) {
		TAILQ_REMOVE(&m->inflight_writes, mio, link);
		quiesce_check(m);
	}
	if (mio->lock_blocker) {
		mio->lock_blocker = false;
		if (--m->rb.blockers == 0) {
			rebuild_step(m);
		}
	}
	if (mio->ok_rw > 0) {
		mirror_finish(mio, 0, 0, 0);
	} else {
		mirror_finish(mio, mio->status != 0 ? mio->status : -ENXIO, mio->sct, mio->sc);
	}
}

static void write_leg_done(struct mpath_io *sub, int status, uint16_t sct, uint16_t sc)
{
	struct mirror_io *mio = sub->ctx;
	struct imdn_mirror *m = mio->m;
	int i = (int)sub->tag;
	struct mirror_leg *leg = &m->legs[i];
	leg_answered(leg);
	if (status == 0) {
		if (mio->kind != IMDN_FLUSH) {
			CTR_ADD(leg->writes, 1);
		}
		if (mio->kind == IMDN_WRITE) {
			CTR_ADD(leg->bytes_written, mio->nblocks * m->block_size);
		}
		if (mio->rw_mask & (1u << i)) {
			mio->ok_rw++;
		}
	} else {
		leg_failed(m, i, status, sct, sc);
		if (mio->status == 0) {
			mio->status = status;
			mio->sct = sct;
			mio->sc = sc;
		}
	}
	leg_maybe_removed(m, i);
	if (--mio->pending == 0) {
		write_finish(mio);
	}
}

static void mirror_fanout(struct mirror_io *mio)
{
	struct imdn_mirror *m = mio->m;
	mio->pending = 1; /* held while submitting: a leg may complete at once */
	mio->ok_rw = 0;
	mio->rw_mask = 0;
	for (int i = 0; i < IMDN_MAX_LEGS; i++) {
		struct mirror_leg *leg = &m->legs[i];
		if (!leg_writable(leg)) {
			continue;
		}
		if (leg_mode(leg) == IMDN_LEG_RW) {
			mio->rw_mask |= 1u << i;
		}
		sub_init(mio, i, write_leg_done);
		mio->pending++;
		mpath_submit(&mio->sub[i]);
	}
	if (--mio->pending == 0) {
		write_finish(mio);
	}
}

/* -- Python-tier I/O through the mirror -------------------------------------- */

static void pyio_done(struct mirror_io *mio, int status, uint16_t sct, uint16_t sc)
{
	struct imdn_req *req = mio->cb_arg;
	struct mirror_io *arr = req->internal;
	struct imdn_io *io = &req->ios[mio - arr];
	io->status = status;
	io->sct = sct;
	io->sc = sc;
	if (status != 0) {
		req->ios_failed++;
	}
	if (--req->pending == 0) {
		free(req->internal);
		req->internal = NULL;
		complete(req, 0);
	}
}

void mirror_start_io(struct imdn_req *req)
{
	struct imdn_mirror *m = req->mirror;
	if (m == NULL || m->destroy_req != NULL) {
		complete_msg(req, -ENODEV, "the mirror is being destroyed");
		return;
	}
	if (req->num_ios == 0) {
		complete(req, 0);
		return;
	}
	struct mirror_io *arr = calloc(req->num_ios, sizeof(*arr));
	req->internal = arr;
	req->pending = 1;
	req->ios_failed = 0;
	for (uint32_t i = 0; i < req->num_ios; i++) {
		struct imdn_io *io = &req->ios[i];
		struct mirror_io *mio = &arr[i];
		mio->m = m;
		mio->kind = (uint8_t)io->kind;
		mio->lba = io->lba;
		mio->nblocks = io->kind == IMDN_FLUSH ? 0 : io->nblocks;
		mio->iov1.iov_base = io->buf;
		mio->iov1.iov_len = (size_t)mio->nblocks * m->block_size;
		mio->iovs = &mio->iov1;
		mio->iovcnt = 1;
		mio->done = pyio_done;
		mio->cb_arg = req;
		req->pending++;
		mirror_submit(mio);
	}
	if (--req->pending == 0) {
		free(req->internal);
		req->internal = NULL;
		complete(req, 0);
	}
}

/* -- create, legs, modes, resize ---------------------------------------------- */

/* Checks a leg's namespace against the mirror; 0 or -errno with req->errmsg. */
static int check_leg(struct imdn_req *req, int i, const struct imdn_leg_spec *spec, uint32_t block_size,
		     uint64_t num_blocks)
{
	if (spec->mpath == NULL || spec->mpath->destroyed) {
		snprintf(req->errmsg, sizeof(req->errmsg), "leg %d: its controller is detached", i);
		return -ENODEV;
	}
	struct spdk_nvme_ns *ns = mpath_ns(spec->mpath, spec->nsid);
	if (ns == NULL) {
		snprintf(req->errmsg, sizeof(req->errmsg), "leg %d: no namespace %u on a connected path", i, spec->nsid);
		return -ENODEV;
	}
	uint32_t bs = spdk_nvme_ns_get_sector_size(ns);
	if (block_size != 0 && bs != block_size) {
		snprintf(req->errmsg, sizeof(req->errmsg), "leg %d: block size %u differs from the mirror's %u", i, bs,
			 block_size);
		return -EINVAL;
	}
	uint64_t have = spdk_nvme_ns_get_num_sectors(ns);
	if (have < num_blocks) {
		snprintf(req->errmsg, sizeof(req->errmsg),
			 "leg %d: namespace %u has %lu blocks, fewer than the mirror's %lu", i, spec->nsid, have,
			 num_blocks);
		return -ENOSPC;
	}
	return 0;
}

void mirror_create(struct imdn_req *req)
{
	if (req->num_legs == 0 || req->num_legs > IMDN_MAX_LEGS || req->num_blocks == 0) {
		complete_msg(req, -EINVAL, "a mirror needs 1 to %d legs and a non-zero size", IMDN_MAX_LEGS);
		return;
	}
	uint32_t block_size = 0;
	for (uint32_t i = 0; i < req->num_legs; i++) {
		int rc = check_leg(req, (int)i, &req->legs[i], block_size, req->num_blocks);
		if (rc != 0) {
			complete(req, rc);
			return;
		}
		if (block_size == 0) {
			block_size = spdk_nvme_ns_get_sector_size(mpath_ns(req->legs[i].mpath, req->legs[i].nsid));
		}
	}
	struct imdn_mirror *m = calloc(1, sizeof(*m));
	m->cookie = req->cookie;
	m->leg_timeout_ticks = us_to_ticks((uint64_t)req->leg_timeout_ms * 1000);
	m->next = g_mirrors;
	g_mirrors = m;
	snprintf(m->name, sizeof(m->name), "%s", req->name);
	m->block_size = block_size;
	CTR_SET(m->num_blocks, req->num_blocks);
	TAILQ_INIT(&m->inflight_writes);
	TAILQ_INIT(&m->quiesce_held);
	TAILQ_INIT(&m->rb.held);
	uint64_t now = spdk_get_ticks();
	for (uint32_t i = 0; i < req->num_legs; i++) {
		struct mirror_leg *leg = &m->legs[i];
		leg->mp = req->legs[i].mpath;
		leg->nsid = req->legs[i].nsid;
		quiet_watch_start(&leg->quiet, 0, now); /* the watchdog measures silence from here at the earliest */
		CTR_SET(leg->mode, req->legs[i].mode);
		mpath_ref(leg->mp);
	}
	req->mirror = m;
	req->block_size = block_size;
	complete(req, 0);
}

void mirror_add_leg(struct imdn_req *req)
{
	struct imdn_mirror *m = req->mirror;
	if (m->destroy_req != NULL) {
		complete_msg(req, -ENODEV, "the mirror is being destroyed");
		return;
	}
	int slot = -1;
	for (int i = 0; i < IMDN_MAX_LEGS && slot < 0; i++) {
		if (m->legs[i].mp == NULL) {
			slot = i;
		}
	}
	if (slot < 0) {
		complete_msg(req, -ENOSPC, "the mirror has %d legs already", IMDN_MAX_LEGS);
		return;
	}
	int rc = check_leg(req, slot, &req->legs[0], m->block_size, CTR_GET(m->num_blocks));
	if (rc != 0) {
		complete(req, rc);
		return;
	}
	struct mirror_leg *leg = &m->legs[slot];
	leg->mp = req->legs[0].mpath;
	leg->nsid = req->legs[0].nsid;
	leg->outstanding = 0;
	CTR_SET(leg->err_status, 0);
	CTR_SET(leg->err_sct, 0);
	CTR_SET(leg->err_sc, 0);
	CTR_SET(leg->reads, 0);
	CTR_SET(leg->writes, 0);
	CTR_SET(leg->bytes_read, 0);
	CTR_SET(leg->bytes_written, 0);
	CTR_SET(leg->errors, 0);
	CTR_SET(leg->silent_us, 0);
	leg->answered = 0;
	quiet_watch_start(&leg->quiet, 0, spdk_get_ticks());
	CTR_SET(leg->mode, req->legs[0].mode);
	mpath_ref(leg->mp);
	req->leg = slot;
	complete(req, 0);
}

static struct mirror_leg *req_leg(struct imdn_req *req)
{
	struct imdn_mirror *m = req->mirror;
	if (req->leg < 0 || req->leg >= IMDN_MAX_LEGS || m->legs[req->leg].mp == NULL || m->legs[req->leg].removing) {
		complete_msg(req, -ENOENT, "no leg %d", req->leg);
		return NULL;
	}
	return &m->legs[req->leg];
}

void mirror_remove_leg(struct imdn_req *req)
{
	struct imdn_mirror *m = req->mirror;
	struct mirror_leg *leg = req_leg(req);
	if (leg == NULL) {
		return;
	}
	leg->removing = true; /* no new I/O picks it */
	leg->remove_req = req;
	if (rebuild_uses(m, req->leg)) {
		m->rb.cancel = true; /* a rebuild involving the leg is preempted */
		rebuild_step(m);
	}
	leg_maybe_removed(m, req->leg);
}

void mirror_set_mode(struct imdn_req *req)
{
	struct imdn_mirror *m = req->mirror;
	struct mirror_leg *leg = req_leg(req);
	if (leg == NULL) {
		return;
	}
	if (req->mode < IMDN_LEG_RW || req->mode > IMDN_LEG_ERR) {
		complete_msg(req, -EINVAL, "no leg mode %d", req->mode);
		return;
	}
	if (m->rb.active && m->rb.dst == req->leg && req->mode != IMDN_LEG_WO) {
		complete_msg(req, -EBUSY, "leg %d is the destination of a rebuild in progress; cancel it first", req->leg);
		return;
	}
	CTR_SET(leg->mode, req->mode);
	if (req->mode == IMDN_LEG_RW || req->mode == IMDN_LEG_WO) {
		CTR_SET(leg->err_status, 0);
	}
	complete(req, 0);
}

void mirror_resize(struct imdn_req *req)
{
	struct imdn_mirror *m = req->mirror;
	uint64_t cur = CTR_GET(m->num_blocks);
	if (req->num_blocks < cur) {
		complete_msg(req, -EINVAL, "a mirror only grows (%lu blocks now, %lu asked)", cur, req->num_blocks);
		return;
	}
	for (int i = 0; i < IMDN_MAX_LEGS; i++) {
		struct mirror_leg *leg = &m->legs[i];
		if (!leg_writable(leg)) {
			continue;
		}
		struct imdn_leg_spec spec = {.mpath = leg->mp, .nsid = leg->nsid};
		int rc = check_leg(req, i, &spec, m->block_size, req->num_blocks);
		if (rc != 0) {
			complete(req, rc);
			return;
		}
	}
	if (req->num_blocks == cur) {
		complete(req, 0);
		return;
	}
	CTR_SET(m->num_blocks, req->num_blocks);
	if (m->rb.active) {
		CTR_SET(m->rb_bytes_total, req->num_blocks * m->block_size);
	}
	if (m->fe != NULL) {
		m->fe_ops->resized(m);
	}
	complete(req, 0);
}

/* -- quiesce ------------------------------------------------------------------------ */

void mirror_quiesce(struct imdn_req *req)
{
	struct imdn_mirror *m = req->mirror;
	if (m->destroy_req != NULL) {
		complete_msg(req, -ENODEV, "the mirror is being destroyed");
		return;
	}
	if (m->quiesced) {
		complete_msg(req, -EALREADY, "the mirror is quiesced already");
		return;
	}
	m->quiesced = true;
	m->quiesce_req = req;
	quiesce_check(m);
}

/* Let held writes go (resume, or a destroy); a quiesce still waiting is
 * answered -ECANCELED. */
static void release_quiesce(struct imdn_mirror *m)
{
	m->quiesced = false;
	if (m->quiesce_req != NULL) {
		struct imdn_req *req = m->quiesce_req;
		m->quiesce_req = NULL;
		complete_msg(req, -ECANCELED, "resumed before the writes in flight were done");
	}
	struct mirror_io_list held = TAILQ_HEAD_INITIALIZER(held);
	TAILQ_CONCAT(&held, &m->quiesce_held, link);
	struct mirror_io *mio;
	while ((mio = TAILQ_FIRST(&held)) != NULL) {
		TAILQ_REMOVE(&held, mio, link);
		if (mirror_write_admit(m, mio)) {
			mirror_fanout(mio);
		}
	}
}

void mirror_resume(struct imdn_req *req)
{
	release_quiesce(req->mirror);
	complete(req, 0);
}

/* -- destroy -------------------------------------------------------------------- */

void mirror_destroy(struct imdn_req *req)
{
	struct imdn_mirror *m = req->mirror;
	if (m->destroy_req != NULL) {
		complete_msg(req, -EALREADY, "the mirror is being destroyed already");
		return;
	}
	m->destroy_req = req;
	m->destroy_step = 0;
	mirror_destroy_continue(m);
}

static void destroy_msg(void *arg)
{
	struct imdn_mirror *m = arg;
	m->destroy_kicked = false;
	mirror_destroy_continue(m);
}

/* Callbacks deep in an I/O completion must not free the mirror under their
 * callers: they post a message, and the destroy resumes on a fresh stack. */
void mirror_destroy_kick(struct imdn_mirror *m)
{
	if (!m->destroy_kicked) {
		m->destroy_kicked = true;
		spdk_thread_send_msg(g_app_thread, destroy_msg, m);
	}
}

/* Cancel the rebuild, unexport, drain, free; each step resumes (through
 * mirror_destroy_kick) from the callback that ends the previous one. */
static void mirror_destroy_continue(struct imdn_mirror *m)
{
	if (m->destroy_req == NULL || m->destroy_kicked) {
		return;
	}
	if (m->destroy_step == 0) {
		if (m->quiesced) {
			release_quiesce(m); /* the export drains host I/O next: nothing may stay held */
		}
		if (m->rb.active) {
			m->rb.cancel = true;
			rebuild_step(m);
			if (m->rb.active) {
				return; /* a chunk command is finishing; rebuild_finish resumes us */
			}
		}
		m->destroy_step = 1;
		if (m->fe != NULL) {
			m->fe_ops->unexport_for_destroy(m); /* resumes us once m->fe is NULL */
			return;
		}
	}
	if (m->destroy_step == 1) {
		if (m->fe != NULL || m->inflight > 0) {
			return;
		}
		for (int i = 0; i < IMDN_MAX_LEGS; i++) {
			if (m->legs[i].outstanding > 0) {
				return;
			}
		}
		m->destroy_step = 2;
		struct imdn_req *req = m->destroy_req;
		for (int i = 0; i < IMDN_MAX_LEGS; i++) {
			struct mirror_leg *leg = &m->legs[i];
			if (leg->mp != NULL) {
				mpath_unref(leg->mp);
				leg->mp = NULL;
			}
			if (leg->remove_req != NULL) {
				complete(leg->remove_req, 0);
			}
		}
		for (struct imdn_mirror **link = &g_mirrors; *link; link = &(*link)->next) {
			if (*link == m) {
				*link = m->next;
				break;
			}
		}
		free(m);
		complete(req, 0);
	}
}

/* -- rebuild -------------------------------------------------------------------- */

static void rebuild_unlock(struct imdn_mirror *m)
{
	struct rebuild *rb = &m->rb;
	if (!rb->locked) {
		return;
	}
	rb->locked = false;
	struct mirror_io_list held = TAILQ_HEAD_INITIALIZER(held);
	TAILQ_CONCAT(&held, &rb->held, link);
	struct mirror_io *mio;
	while ((mio = TAILQ_FIRST(&held)) != NULL) {
		TAILQ_REMOVE(&held, mio, link);
		if (mirror_write_admit(m, mio)) {
			mirror_fanout(mio);
		}
	}
}

static void rebuild_publish_state(struct imdn_mirror *m, int state, int err)
{
	CTR_SET(m->rb_error, err);
	CTR_SET(m->rb_state, state);
}

static int rebuild_timer(void *arg)
{
	struct imdn_mirror *m = arg;
	spdk_poller_unregister(&m->rb.timer);
	m->rb.phase = RB_IDLE;
	rebuild_step(m);
	return SPDK_POLLER_BUSY;
}

static int pick_source(struct imdn_mirror *m)
{
	struct rebuild *rb = &m->rb;
	if (rb->src >= 0 && leg_readable(&m->legs[rb->src]) && rb->src != rb->dst) {
		return rb->src;
	}
	for (int i = 0; i < IMDN_MAX_LEGS; i++) {
		if (i != rb->dst && leg_readable(&m->legs[i])) {
			return i;
		}
	}
	return -1;
}

/* One leg command of the rebuild's current chunk [lock_lo, lock_hi), into or
 * out of buf, through sub and iov (the rebuild's own: one chunk at a time). */
static void rebuild_leg_submit(struct imdn_mirror *m, int leg_index, struct mpath_io *sub, struct iovec *iov,
			       void *buf, uint8_t kind, mpath_done_fn done)
{
	struct rebuild *rb = &m->rb;
	struct mirror_leg *leg = &m->legs[leg_index];
	memset(sub, 0, sizeof(*sub));
	iov->iov_base = buf;
	iov->iov_len = (rb->lock_hi - rb->lock_lo) * m->block_size;
	sub->mp = leg->mp;
	sub->nsid = leg->nsid;
	sub->kind = kind;
	sub->lba = rb->lock_lo;
	sub->nblocks = (uint32_t)(rb->lock_hi - rb->lock_lo);
	sub->iovs = iov;
	sub->iovcnt = 1;
	sub->done = done;
	sub->ctx = m;
	sub->tag = (uint32_t)leg_index;
	leg->outstanding++;
	mpath_submit(sub);
}

static void rebuild_submit(struct imdn_mirror *m, int leg_index, uint8_t kind, mpath_done_fn done)
{
	struct rebuild *rb = &m->rb;
	rb->copy_leg = (uint32_t)leg_index; /* before the submit: its completion reads it */
	rebuild_leg_submit(m, leg_index, &rb->sub, &rb->iov, rb->buf, kind, done);
}

static void rebuild_write_done(struct mpath_io *sub, int status, uint16_t sct, uint16_t sc)
{
	struct imdn_mirror *m = sub->ctx;
	struct rebuild *rb = &m->rb;
	int i = (int)sub->tag;
	struct mirror_leg *leg = &m->legs[i];
	uint64_t bytes = (rb->lock_hi - rb->lock_lo) * m->block_size;
	leg_answered(leg);
	rb->phase = RB_IDLE;
	if (status != 0) {
		leg_failed(m, i, status, sct, sc); /* the destination: the rebuild fails */
		if (rb->fail_errno == 0) {
			rb->fail_errno = status < 0 ? status : -EIO;
		}
	} else {
		CTR_ADD(leg->writes, 1);
		if (sub->kind == IMDN_WRITE) {
			CTR_ADD(leg->bytes_written, bytes);
		}
		rb->next_lba = rb->lock_hi;
		CTR_ADD(m->rb_bytes_done, bytes);
	}
	rebuild_unlock(m);
	rebuild_step(m);
}

/* Both reads of a chunk are back (the source's, and the destination's when
 * comparing): redo, fail, skip or write. */
static void rebuild_chunk_read(struct imdn_mirror *m)
{
	struct rebuild *rb = &m->rb;
	uint64_t blocks = rb->lock_hi - rb->lock_lo;
	if (rb->src_status != 0) {
		/* The source failed: it goes ERR, the chunk is redone from another
		 * RW leg (the lock is still held, nothing new to wait for). */
		int src = rb->src;
		rb->phase = RB_WAIT_WRITES;
		rb->src = -1;
		leg_failed(m, src, rb->src_status, rb->src_sct, rb->src_sc);
		leg_maybe_removed(m, src);
		rebuild_step(m);
		return;
	}
	if (rb->dst_status != 0) {
		leg_failed(m, rb->dst, rb->dst_status, 0, 0); /* the destination: the rebuild fails */
		if (rb->fail_errno == 0) {
			rb->fail_errno = rb->dst_status < 0 ? rb->dst_status : -EIO;
		}
	}
	if (rb->cancel || rb->fail_errno != 0 || !leg_writable(&m->legs[rb->dst])) {
		rb->phase = RB_IDLE;
		rebuild_step(m);
		return;
	}
	if (rb->compare && memcmp(rb->buf, rb->dst_buf, blocks * m->block_size) == 0) {
		/* The destination holds it already (a rebuild onto a replica that
		 * has the volume's snapshots): nothing to write, nothing allocated. */
		CTR_ADD(m->rb_chunks_same, 1);
		CTR_ADD(m->rb_bytes_done, blocks * m->block_size);
		rb->next_lba = rb->lock_hi;
		rb->phase = RB_IDLE;
		rebuild_unlock(m);
		rebuild_step(m);
		return;
	}
	rb->phase = RB_WRITING;
	if (blocks <= WZ_MAX_BLOCKS && buf_all_zero(rb->buf, blocks * m->block_size)) {
		CTR_ADD(m->rb_chunks_zero, 1);
		rebuild_submit(m, rb->dst, IMDN_WRITE_ZEROES, rebuild_write_done);
	} else {
		rebuild_submit(m, rb->dst, IMDN_WRITE, rebuild_write_done);
	}
}

static void rebuild_read_done(struct mpath_io *sub, int status, uint16_t sct, uint16_t sc)
{
	struct imdn_mirror *m = sub->ctx;
	struct rebuild *rb = &m->rb;
	int i = (int)sub->tag;
	struct mirror_leg *leg = &m->legs[i];
	leg_answered(leg);
	if (sub == &rb->dst_sub) {
		rb->dst_status = status;
	} else {
		rb->src_status = status;
		rb->src_sct = sct;
		rb->src_sc = sc;
		if (status == 0) {
			CTR_ADD(leg->reads, 1);
			CTR_ADD(leg->bytes_read, (rb->lock_hi - rb->lock_lo) * m->block_size);
		}
	}
	leg_maybe_removed(m, i);
	if (--rb->reads_pending == 0) {
		rebuild_chunk_read(m);
	}
}

static void rebuild_read(struct imdn_mirror *m)
{
	struct rebuild *rb = &m->rb;
	int src = pick_source(m);
	if (src < 0) {
		rebuild_finish(m, IMDN_RB_ERROR, -ENXIO);
		return;
	}
	if (src != rb->src) {
		rb->src = src;
		CTR_SET(m->rb_src, src);
	}
	rb->phase = RB_READING;
	rb->src_status = rb->dst_status = 0;
	rb->reads_pending = rb->compare ? 2 : 1; /* both counted before either can complete */
	rebuild_submit(m, src, IMDN_READ, rebuild_read_done);
	if (rb->compare) {
		rebuild_leg_submit(m, (int)rb->dst, &rb->dst_sub, &rb->dst_iov, rb->dst_buf, IMDN_READ, rebuild_read_done);
	}
}

static bool rebuild_take_tokens(struct imdn_mirror *m, uint64_t bytes)
{
	struct rebuild *rb = &m->rb;
	if (rb->rate == 0) {
		return true;
	}
	uint64_t now = spdk_get_ticks();
	uint64_t cap = rb->buf_bytes;
	uint64_t add = (uint64_t)((unsigned __int128)(now - rb->last_refill) * rb->rate / g_ticks_hz);
	if (add > 0) {
		rb->tokens = rb->tokens + add > cap ? cap : rb->tokens + add;
		rb->last_refill = now;
	}
	if (rb->tokens >= bytes) {
		rb->tokens -= bytes;
		return true;
	}
	uint64_t wait_us = (bytes - rb->tokens) * 1000000 / rb->rate + 1;
	rb->phase = RB_WAIT_TOKENS;
	rb->timer = spdk_poller_register(rebuild_timer, m, wait_us);
	return false;
}

/* Advance the rebuild from wherever it is; called by every event that may
 * let it move: start, chunk done, timer, last blocking write done, cancel,
 * a leg failing. */
static void rebuild_step(struct imdn_mirror *m)
{
	struct rebuild *rb = &m->rb;
	if (!rb->active || rb->phase == RB_READING || rb->phase == RB_WRITING) {
		return; /* a chunk command is in flight: its callback comes back here */
	}
	if (rb->cancel) {
		rebuild_finish(m, IMDN_RB_CANCELLED, 0);
		return;
	}
	if (rb->fail_errno != 0) {
		rebuild_finish(m, IMDN_RB_ERROR, rb->fail_errno);
		return;
	}
	if (!leg_writable(&m->legs[rb->dst]) || leg_mode(&m->legs[rb->dst]) != IMDN_LEG_WO) {
		rebuild_finish(m, IMDN_RB_ERROR, -EIO);
		return;
	}
	if (rb->phase == RB_WAIT_TOKENS) {
		return;
	}
	if (rb->phase == RB_WAIT_WRITES) {
		if (rb->blockers == 0) {
			rebuild_read(m);
		}
		return;
	}
	uint64_t num_blocks = CTR_GET(m->num_blocks);
	if (rb->next_lba >= num_blocks) {
		rebuild_finish(m, IMDN_RB_COMPLETE, 0);
		return;
	}
	uint64_t lo = rb->next_lba;
	uint64_t hi = lo + rb->chunk_blocks < num_blocks ? lo + rb->chunk_blocks : num_blocks;
	if (!rebuild_take_tokens(m, (hi - lo) * m->block_size)) {
		return;
	}
	rb->lock_lo = lo;
	rb->lock_hi = hi;
	rb->locked = true;
	rb->blockers = 0;
	struct mirror_io *mio;
	TAILQ_FOREACH(mio, &m->inflight_writes, link) {
		if (overlaps(mio, lo, hi)) {
			mio->lock_blocker = true;
			rb->blockers++;
		}
	}
	rb->phase = RB_WAIT_WRITES;
	if (rb->blockers == 0) {
		rebuild_read(m);
	}
}

static void rebuild_finish(struct imdn_mirror *m, int state, int err)
{
	struct rebuild *rb = &m->rb;
	if (rb->timer != NULL) {
		spdk_poller_unregister(&rb->timer);
	}
	rb->active = false;
	rb->phase = RB_IDLE;
	/* Writes that still count as blockers no longer block anything. */
	struct mirror_io *mio;
	TAILQ_FOREACH(mio, &m->inflight_writes, link) {
		mio->lock_blocker = false;
	}
	rb->blockers = 0;
	rebuild_unlock(m);
	spdk_dma_free(rb->buf);
	spdk_dma_free(rb->dst_buf);
	rb->buf = rb->dst_buf = NULL;
	rebuild_publish_state(m, state, err);
	struct imdn_event ev = {.cookie = m->cookie,
				.type = IMDN_EV_REBUILD_DONE,
				.leg = rb->dst,
				.status = state,
				.error = err,
				.value = CTR_GET(m->rb_bytes_done)};
	post_event(&ev);
	struct imdn_req *cancel_req = rb->cancel_req;
	rb->cancel_req = NULL;
	if (cancel_req != NULL) {
		complete(cancel_req, 0);
	}
	int dst = rb->dst, src = rb->src;
	rb->dst = rb->src = -1;
	if (dst >= 0) {
		leg_maybe_removed(m, dst);
	}
	if (src >= 0) {
		leg_maybe_removed(m, src);
	}
	if (m->destroy_req != NULL) {
		mirror_destroy_kick(m);
	}
}

void rebuild_start(struct imdn_req *req)
{
	struct imdn_mirror *m = req->mirror;
	struct rebuild *rb = &m->rb;
	if (m->destroy_req != NULL) {
		complete_msg(req, -ENODEV, "the mirror is being destroyed");
		return;
	}
	if (rb->active) {
		complete_msg(req, -EBUSY, "a rebuild to leg %d is in progress", rb->dst);
		return;
	}
	int dst = req->leg, src = req->src_leg;
	if (dst < 0 || dst >= IMDN_MAX_LEGS || m->legs[dst].mp == NULL || m->legs[dst].removing) {
		complete_msg(req, -ENOENT, "no destination leg %d", dst);
		return;
	}
	if (leg_mode(&m->legs[dst]) != IMDN_LEG_WO) {
		complete_msg(req, -EINVAL, "a rebuild destination must be WO; leg %d is %s", dst,
			     leg_mode(&m->legs[dst]) == IMDN_LEG_RW ? "RW" : "ERR");
		return;
	}
	if (src >= 0 && (src >= IMDN_MAX_LEGS || src == dst || !leg_readable(&m->legs[src]))) {
		complete_msg(req, -EINVAL, "source leg %d is not a RW leg other than the destination", src);
		return;
	}
	uint32_t chunk = req->chunk_bytes ? req->chunk_bytes : 1u << 20;
	if (chunk % m->block_size != 0 || chunk > RB_MAX_CHUNK) {
		complete_msg(req, -EINVAL, "chunk size %u must be a multiple of the block size %u, at most %u", chunk,
			     m->block_size, RB_MAX_CHUNK);
		return;
	}
	rb->compare = (req->copy_flags & IMDN_COPY_COMPARE) != 0;
	rb->buf = spdk_dma_zmalloc(chunk, 4096, NULL);
	rb->dst_buf = rb->compare ? spdk_dma_zmalloc(chunk, 4096, NULL) : NULL;
	if (rb->buf == NULL || (rb->compare && rb->dst_buf == NULL)) {
		spdk_dma_free(rb->buf);
		spdk_dma_free(rb->dst_buf);
		rb->buf = rb->dst_buf = NULL;
		complete_msg(req, -ENOMEM, "cannot allocate a %u-byte rebuild buffer", chunk);
		return;
	}
	rb->active = true;
	rb->dst = dst;
	rb->src = src;
	rb->buf_bytes = chunk;
	rb->chunk_blocks = chunk / m->block_size;
	rb->next_lba = 0;
	rb->locked = false;
	rb->blockers = 0;
	rb->phase = RB_IDLE;
	rb->rate = req->rate_bytes_per_s;
	rb->tokens = chunk;
	rb->last_refill = spdk_get_ticks();
	rb->cancel = false;
	rb->fail_errno = 0;
	rb->cancel_req = NULL;
	CTR_SET(m->rb_dst, dst);
	CTR_SET(m->rb_src, src);
	CTR_SET(m->rb_bytes_done, 0);
	CTR_SET(m->rb_chunks_zero, 0);
	CTR_SET(m->rb_chunks_same, 0);
	CTR_SET(m->rb_bytes_total, CTR_GET(m->num_blocks) * m->block_size);
	rebuild_publish_state(m, IMDN_RB_IN_PROGRESS, 0);
	complete(req, 0);
	rebuild_step(m);
}

void rebuild_cancel(struct imdn_req *req)
{
	struct imdn_mirror *m = req->mirror;
	struct rebuild *rb = &m->rb;
	if (!rb->active) {
		complete(req, 0); /* finished already: nothing to stop */
		return;
	}
	if (rb->cancel_req != NULL) {
		complete_msg(req, -EALREADY, "a cancel is in progress");
		return;
	}
	rb->cancel = true;
	rb->cancel_req = req;
	rebuild_step(m); /* finishes now unless a chunk command is in flight */
}

/* -- silence (see the top of the file) -------------------------------------------- */

/* The rules are in silence.h; this gathers what they need. */
static void leg_facts_of(struct imdn_mirror *m, int i, uint64_t now, struct leg_facts *f)
{
	struct mirror_leg *leg = &m->legs[i];
	f->present = leg->mp != NULL && !leg->removing && leg_mode(leg) != IMDN_LEG_ERR;
	if (!f->present) {
		return;
	}
	f->rw = leg_mode(leg) == IMDN_LEG_RW;
	f->quiet_ticks = quiet_for(&leg->quiet, leg->outstanding, leg->answered, now);
	f->num_paths = leg->mp->num_paths;
	f->live_paths = mpath_live_paths(leg->mp);
	f->lost = leg->mp->lost;
	f->path_silent_us = leg->mp->silent_us;
}

static void mirror_watch(struct imdn_mirror *m, uint64_t now)
{
	struct leg_facts facts[IMDN_MAX_LEGS] = {0};
	int verdicts[IMDN_MAX_LEGS];
	uint64_t silent_us[IMDN_MAX_LEGS];
	for (int i = 0; i < IMDN_MAX_LEGS; i++) {
		leg_facts_of(m, i, now, &facts[i]);
	}
	if (silence_verdicts(facts, IMDN_MAX_LEGS, m->leg_timeout_ticks, g_ticks_hz, verdicts, silent_us) == 0) {
		return;
	}
	for (int i = 0; i < IMDN_MAX_LEGS; i++) {
		if (verdicts[i] == 0) {
			continue;
		}
		struct mirror_leg *leg = &m->legs[i];
		CTR_SET(leg->silent_us, silent_us[i]);
		leg_failed(m, i, verdicts[i], 0, 0);
		/* Its commands come back now (failed): each write completes from
		 * the legs that have it, each read retries on another leg. */
		mpath_abandon(leg->mp);
		leg_maybe_removed(m, i);
	}
}

void mirror_watchdog(uint64_t now)
{
	for (struct imdn_mirror *m = g_mirrors; m; m = m->next) {
		if (m->leg_timeout_ticks != 0 && m->destroy_req == NULL) {
			mirror_watch(m, now);
		}
	}
}

/* -- stats for Python ------------------------------------------------------------ */

void imdn_mirror_stats(struct imdn_mirror *m, struct imdn_mirror_stats *out)
{
	memset(out, 0, sizeof(*out));
	out->num_blocks = CTR_GET(m->num_blocks);
	out->block_size = m->block_size;
	out->exported = (uint32_t)CTR_GET(m->exported);
	out->reads = CTR_GET(m->reads);
	out->writes = CTR_GET(m->writes);
	out->other_ops = CTR_GET(m->other_ops);
	out->bytes_read = CTR_GET(m->bytes_read);
	out->bytes_written = CTR_GET(m->bytes_written);
	out->errors = CTR_GET(m->errors);
	out->held_writes = CTR_GET(m->held_writes);
	out->outstanding = m->inflight;
	out->hosts = CTR_GET(m->hosts);
	out->read_lat_ticks = CTR_GET(m->read_lat_ticks);
	out->write_lat_ticks = CTR_GET(m->write_lat_ticks);
	out->ticks_hz = g_ticks_hz;
	for (int i = 0; i < IMDN_LAT_BUCKETS; i++) {
		out->lat_hist[i] = CTR_GET(m->lat_hist[i]);
	}
	for (int i = 0; i < IMDN_MAX_LEGS; i++) {
		struct mirror_leg *leg = &m->legs[i];
		struct imdn_leg_stats *ls = &out->legs[i];
		ls->present = leg->mp != NULL;
		ls->mode = CTR_GET(leg->mode);
		ls->nsid = leg->nsid;
		ls->err_status = CTR_GET(leg->err_status);
		ls->err_sct = (uint16_t)CTR_GET(leg->err_sct);
		ls->err_sc = (uint16_t)CTR_GET(leg->err_sc);
		ls->outstanding = leg->outstanding;
		ls->reads = CTR_GET(leg->reads);
		ls->writes = CTR_GET(leg->writes);
		ls->bytes_read = CTR_GET(leg->bytes_read);
		ls->bytes_written = CTR_GET(leg->bytes_written);
		ls->errors = CTR_GET(leg->errors);
		ls->silent_us = CTR_GET(leg->silent_us);
	}
	out->rb_state = CTR_GET(m->rb_state);
	out->rb_dst = CTR_GET(m->rb_dst);
	out->rb_src = CTR_GET(m->rb_src);
	out->rb_error = CTR_GET(m->rb_error);
	out->rb_bytes_done = CTR_GET(m->rb_bytes_done);
	out->rb_bytes_total = CTR_GET(m->rb_bytes_total);
	out->rb_chunks_zero = CTR_GET(m->rb_chunks_zero);
	out->rb_chunks_same = CTR_GET(m->rb_chunks_same);
}
