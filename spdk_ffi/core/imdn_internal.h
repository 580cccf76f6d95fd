/*
 * The core's shared state, declared in one place. Everything here belongs to
 * the poller thread unless a field says otherwise; the files are that
 * thread's code, split by concern and stacked in floors (base.c lists them),
 * each calling only the floors below it:
 *
 *   poller.c    start-up (env, spdk_threads, subsystems), the loop, the dispatch of requests
 *   bench.c     the C-tier benchmark, on a controller or through a mirror
 *   frontend.c  spdk_thread integration, the "imd_mirror" bdev module, the embedded NVMe-oF/TCP target
 *   mirror.c    mirrors: fan-out, read balancing, leg failure and silence, range lock, rebuild, resize
 *   copy.c      jobs: copy a namespace onto another (compare, skip zeroes), hash one (SHA-256)
 *   io.c        Python-tier I/O batches on one controller
 *   ctrlr.c     attach/detach of driver controllers, silence detection; multipath objects
 *   base.c      the rings, completions and events, the shared globals
 *
 * No locks: one OS thread runs all of it. Asynchronous steps continue in
 * their completion callbacks; long operations are small state machines.
 * Python-visible counters are single-writer atomics (CTR_ADD below).
 */
#ifndef IMDN_INTERNAL_H
#define IMDN_INTERNAL_H

#include "imdn.h"
#include "silence.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <sys/queue.h>
#include <sys/uio.h>

#include "spdk/env.h"
#include "spdk/nvme.h"
#include "spdk/thread.h"

#define ADMIN_POLL_US 10000
#define WATCHDOG_US 10000 /* how often mirror.c looks for silent legs (ctrlr.c looks with its admin polling) */
#define IDLE_SLEEP_MAX_US 10000      /* idle, nothing exported */
#define IDLE_SLEEP_EXPORTED_US 1000  /* idle with an exported mirror: a host's first I/O waits at most this */
#define DETACH_DRAIN_US 5000000
#define MAX_SPDK_THREADS 16

/* Single writer (the poller), any number of readers: a relaxed load and store
 * is enough and costs no locked instruction on the I/O path. */
#define CTR_ADD(field, n) \
	atomic_store_explicit(&(field), atomic_load_explicit(&(field), memory_order_relaxed) + (n), \
			      memory_order_relaxed)
#define CTR_GET(field) atomic_load_explicit(&(field), memory_order_relaxed)
#define CTR_SET(field, v) atomic_store_explicit(&(field), (v), memory_order_relaxed)

/* -- base.c ------------------------------------------------------------------- */

struct doorbell;
extern struct doorbell g_sub_bell;  /* Python rings it; the poller sleeps on it */
extern struct doorbell g_cpl_bell;  /* the poller rings it; Python sleeps on it */
extern uint64_t g_ticks_hz;
extern uint64_t g_busy;           /* NVMe commands outstanding, all controllers */
extern uint64_t g_waiting_io;     /* mpath I/Os queued for a path or for request memory */
extern uint32_t g_exports;        /* mirrors exported through the NVMe-oF target */
extern struct spdk_thread *g_app_thread; /* "imd" (frontend.c makes it): the nvmf poll group, bdevs, mirrors' timers */
extern struct spdk_nvme_poll_group *g_group;

int base_init(void); /* the eventfds; 0 or -errno */
bool submission_push(struct imdn_req *req);
struct imdn_req *submission_pop(void);
bool submission_empty(void);
void complete(struct imdn_req *req, int status);
void complete_msg(struct imdn_req *req, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void post_event(const struct imdn_event *ev);
/* Whether len bytes (a multiple of 8, 8-aligned) are all zero: a chunk a
 * copy or a rebuild need not write (the target has it as a hole). */
bool buf_all_zero(const void *buf, size_t len);
static inline uint64_t us_to_ticks(uint64_t us)
{
	return us * g_ticks_hz / 1000000;
}

/* -- ctrlr.c ------------------------------------------------------------------ */

struct imdn_ctrlr {
	struct spdk_nvme_ctrlr *ctrlr;
	struct spdk_nvme_qpair *qpair; /* NULL once the path was declared silent (or is detaching) */
	struct imdn_ctrlr *next;
	struct imdn_mpath *mpath; /* the multipath object this path belongs to, if any */
	uint64_t next_admin_tick;
	bool detaching;
	_Atomic int failed;           /* read by Python */
	_Atomic uint64_t counters[4]; /* read by Python; written by the poller only (CTR_ADD: no locked add) */
	uint32_t outstanding;
	/* Silence (ctrlr.c, "silence"): a path whose peer stops answering. */
	uint64_t silence_ticks;    /* declare the path lost after this long without an answer; 0 = never */
	uint64_t answered;         /* commands that came back, whatever their status */
	struct quiet_watch quiet;
	bool timed_out;            /* SPDK's timeout callback fired: a command or a keep-alive went unanswered */
	bool admin_cut;            /* the admin queue was disconnected, so a detach skips the shutdown handshake */
	_Atomic uint64_t silent_us; /* read by Python: how long it had been silent when declared lost (0: never) */
};

/* Every command that comes back from a controller passes here. */
static inline void ctrlr_answered(struct imdn_ctrlr *c)
{
	c->outstanding--;
	c->answered++;
}

struct mpath_io;
typedef void (*mpath_done_fn)(struct mpath_io *io, int status, uint16_t sct, uint16_t sc);

/* One command through a multipath object: the unit of failover. Embedded in
 * its owner (a mirror I/O's per-leg slot, a rebuild, ...). */
struct mpath_io {
	struct imdn_mpath *mp;
	struct imdn_ctrlr *c; /* the path carrying it while submitted */
	uint32_t nsid;
	uint8_t kind; /* enum imdn_io_kind */
	uint64_t lba;
	uint32_t nblocks;
	struct iovec *iovs;
	int iovcnt;
	int iov_idx; /* SGL cursor for readv/writev */
	uint32_t iov_off;
	uint64_t waiting_since; /* ticks; set while queued without a live path */
	bool queued;
	mpath_done_fn done;
	void *ctx;
	uint32_t tag;
	TAILQ_ENTRY(mpath_io) link;
};
TAILQ_HEAD(mpath_io_list, mpath_io);

struct imdn_mpath {
	struct imdn_ctrlr *paths[IMDN_MAX_PATHS];
	uint32_t num_paths;
	uint32_t rr;
	uint32_t policy;
	uint64_t fast_fail_ticks; /* 0: fail at once without a live path */
	uint64_t silent_us;       /* a path of it was declared silent, after this long (0: none was) */
	bool lost;
	bool destroyed;  /* Python let go of it; freed once unreferenced and idle */
	uint32_t refs;   /* Python's handle + mirror legs */
	uint32_t inflight; /* submitted or queued mpath I/Os */
	struct mpath_io_list waiting; /* no live path: until one is added, or fast_io_fail */
	struct mpath_io_list nomem;   /* request pool full: retried every loop iteration */
	struct imdn_mpath *next;
	_Atomic uint64_t failovers;
};

void start_attach(struct imdn_req *req);
void start_detach(struct imdn_req *req);
void poll_attaches(uint64_t now);
void poll_detaches(uint64_t now);
int64_t poll_ctrlrs(uint64_t now); /* completions processed (< 0: the group failed) */
bool ctrlr_work_pending(void);
void qpair_disconnected(struct spdk_nvme_qpair *qpair, void *group_ctx);

void mpath_create(struct imdn_req *req);
void mpath_add(struct imdn_req *req);
void mpath_set(struct imdn_req *req);
void mpath_destroy(struct imdn_req *req);
void mpath_ref(struct imdn_mpath *mp);
void mpath_unref(struct imdn_mpath *mp);
void mpath_submit(struct mpath_io *io);
struct spdk_nvme_ns *mpath_ns(struct imdn_mpath *mp, uint32_t nsid); /* of any current path */
void mpath_poll(uint64_t now); /* retries and fast_io_fail timeouts, when g_waiting_io */
uint32_t mpath_live_paths(struct imdn_mpath *mp);
/* Give up on every path of mp: it is lost, its queued I/O fails now, and each
 * path's commands come back now (its queue pair is dropped). From the loop
 * only, never from inside a completion callback. */
void mpath_abandon(struct imdn_mpath *mp);

/* -- io.c ---------------------------------------------------------------------- */

void start_io(struct imdn_req *req);

/* -- copy.c ------------------------------------------------------------------ */

void job_start(struct imdn_req *req);
void job_cancel(struct imdn_req *req);
void job_free(struct imdn_req *req);

/* -- mirror.c ---------------------------------------------------------------- */

struct mirror_io;
typedef void (*mirror_done_fn)(struct mirror_io *mio, int status, uint16_t sct, uint16_t sc);

/* One host I/O through a mirror. Lives in the bdev_io's driver context for
 * frontend I/O, or beside a Python-tier or benchmark request. */
struct mirror_io {
	struct imdn_mirror *m;
	uint8_t kind;
	uint64_t lba;
	uint64_t nblocks;
	struct iovec *iovs;
	int iovcnt;
	struct iovec iov1; /* a single buffer, for Python-tier and bench I/O */
	uint64_t start;
	uint32_t pending;   /* legs still running */
	uint32_t ok_rw;     /* RW legs that succeeded */
	uint32_t rw_mask;   /* legs that were RW when the write was sent */
	uint32_t tried;     /* reads: legs that failed this read */
	int status;
	uint16_t sct, sc;
	bool lock_blocker;  /* the rebuild waits for this write to finish */
	mirror_done_fn done;
	void *cb_arg;
	TAILQ_ENTRY(mirror_io) link; /* in flight (writes) or held by the rebuild's range lock */
	struct mpath_io sub[IMDN_MAX_LEGS]; /* sub[i] is the command to leg i */
};
TAILQ_HEAD(mirror_io_list, mirror_io);

struct mirror_leg {
	struct imdn_mpath *mp; /* NULL: free slot */
	uint32_t nsid;
	_Atomic int mode;
	bool removing;
	uint32_t outstanding;
	struct imdn_req *remove_req;
	_Atomic int err_status;
	_Atomic int err_sct, err_sc;
	_Atomic uint64_t reads, writes, bytes_read, bytes_written, errors;
	/* the watchdog (mirror.c, "silence") */
	uint64_t answered; /* commands to this leg that came back, whatever their status */
	struct quiet_watch quiet;
	_Atomic uint64_t silent_us; /* went ERR for answering nothing this long (0: it did not) */
};

struct mirror_frontend; /* frontend.c */

/* What a mirror tells its export. frontend.c sits above mirror.c and gives
 * an exported mirror these (with m->fe); the mirror never calls it by name. */
struct mirror_export_ops {
	void (*resized)(struct imdn_mirror *m);              /* the mirror grew */
	void (*unexport_for_destroy)(struct imdn_mirror *m); /* sets m->fe = NULL, then mirror_destroy_kick(m) */
};

struct rebuild {
	bool active;
	int dst, src;
	uint64_t chunk_blocks;
	uint64_t next_lba;
	uint64_t lock_lo, lock_hi; /* the chunk being copied, while locked */
	bool locked;
	uint32_t blockers;          /* in-flight host writes overlapping the lock */
	struct mirror_io_list held; /* host writes waiting for the chunk */
	int phase;
	void *buf;
	uint64_t buf_bytes;
	uint64_t rate;       /* bytes/s, 0 = unlimited */
	uint64_t tokens;     /* token bucket, bytes */
	uint64_t last_refill;
	struct spdk_poller *timer;
	bool cancel;
	int fail_errno;      /* set: finish as error */
	struct imdn_req *cancel_req;
	struct mpath_io sub;
	struct iovec iov;
	uint32_t copy_leg;   /* leg of the command in flight */
	bool compare;        /* IMDN_COPY_COMPARE: read the destination too, write only what differs */
	void *dst_buf;       /* compare: the destination's chunk */
	struct mpath_io dst_sub;
	struct iovec dst_iov;
	uint32_t reads_pending;
	int src_status, dst_status; /* the chunk's reads, once back */
	uint16_t src_sct, src_sc;
};

struct imdn_mirror {
	uint64_t cookie;
	char name[64];
	uint32_t block_size;
	_Atomic uint64_t num_blocks;
	struct mirror_leg legs[IMDN_MAX_LEGS];
	uint32_t read_rr;
	uint32_t inflight; /* mirror I/Os not yet completed, including held ones */
	struct mirror_io_list inflight_writes; /* writes in flight, for the range lock */
	struct rebuild rb;
	bool quiesced;                       /* new host writes are held (a snapshot is being taken) */
	struct mirror_io_list quiesce_held;  /* ...here */
	struct imdn_req *quiesce_req;        /* answered once the writes admitted before are done */
	struct mirror_frontend *fe;
	const struct mirror_export_ops *fe_ops; /* set with fe */
	struct imdn_req *destroy_req;
	int destroy_step;
	bool destroy_kicked;
	struct imdn_mirror *next;
	uint64_t leg_timeout_ticks; /* the watchdog's bound; 0 = no watchdog */
	/* Python reads these (imdn_mirror_stats) */
	_Atomic uint64_t reads, writes, other_ops, bytes_read, bytes_written, errors, held_writes;
	_Atomic uint64_t lat_hist[IMDN_LAT_BUCKETS];
	_Atomic int rb_state, rb_dst, rb_src, rb_error;
	_Atomic uint64_t rb_bytes_done, rb_bytes_total, rb_chunks_zero, rb_chunks_same;
	_Atomic int exported;
	_Atomic uint64_t hosts; /* controllers hosts hold on the export (frontend.c counts them) */
	_Atomic uint64_t read_lat_ticks, write_lat_ticks; /* summed latency, per kind */
};

void mirror_create(struct imdn_req *req);
void mirror_destroy(struct imdn_req *req);
void mirror_add_leg(struct imdn_req *req);
void mirror_remove_leg(struct imdn_req *req);
void mirror_set_mode(struct imdn_req *req);
void mirror_resize(struct imdn_req *req);
void mirror_start_io(struct imdn_req *req);
void mirror_quiesce(struct imdn_req *req);
void mirror_resume(struct imdn_req *req);
void rebuild_start(struct imdn_req *req);
void rebuild_cancel(struct imdn_req *req);
/* Submit one host I/O; mio->m, kind, lba, nblocks, iovs/iovcnt and done are set. */
void mirror_submit(struct mirror_io *mio);
/* The one gate every host write passes before it touches a leg; false: held. */
bool mirror_write_admit(struct imdn_mirror *m, struct mirror_io *mio);
/* Resume a pending destroy from a fresh stack (a message to the app thread). */
void mirror_destroy_kick(struct imdn_mirror *m);
/* Fail legs that stopped answering while another leg works (every
 * WATCHDOG_US, from the loop). */
void mirror_watchdog(uint64_t now);

/* -- frontend.c ------------------------------------------------------------ */

/* Start-up on the poller thread, after spdk_env_init: the spdk_thread library
 * (every spdk_thread is polled by this one OS thread), the "imd" app thread,
 * spdk_subsystem_init (bdev and its dependencies), the NVMe-oF target and its
 * one poll group. */
int frontend_start(char *err, size_t errlen);
/* Poll every spdk_thread once; returns whether any did work, and lowers
 * *next_tick to the earliest timed-poller expiration. */
bool frontend_poll(uint64_t now, uint64_t *next_tick);
uint32_t frontend_thread_count(void);
void frontend_export(struct imdn_req *req);
void frontend_unexport(struct imdn_req *req);

/* -- bench.c ------------------------------------------------------------------- */

void start_bench(struct imdn_req *req);
void start_mirror_bench(struct imdn_req *req);

#endif
