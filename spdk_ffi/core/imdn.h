/*
 * imdn: spdk_ffi's C core. One poller thread owns every SPDK object
 * (controllers, queue pairs, multipath objects, mirrors, the embedded NVMe-oF
 * target and its spdk_threads); Python talks to it only through
 * single-producer/single-consumer rings and two eventfds:
 *
 *   submission ring   Python -> poller   struct imdn_req *   (+ submission eventfd)
 *   completion ring   poller -> Python   struct imdn_req *   (+ completion eventfd)
 *   event ring        poller -> Python   struct imdn_event   (shares the completion eventfd)
 *
 * No Python code runs per I/O: a request (an attach, a batch of I/Os, a
 * mirror operation, a benchmark) completes as a whole, and host I/O that
 * arrives through the embedded NVMe-oF target never leaves C.
 *
 * Counters and states Python reads without a request (imdn_mirror_stats,
 * imdn_ctrlr_counter, imdn_poller_stats) are single-writer atomics owned by
 * the poller, so a metrics scrape never waits for or slows down I/O.
 *
 * This header is also the cffi cdef (spdk_ffi/_build.py reads the part
 * between the CDEF markers), so it uses only plain C declarations there.
 * The core's own shared state is declared in imdn_internal.h.
 */
#ifndef IMDN_H
#define IMDN_H

#include <stddef.h>
#include <stdint.h>

/* CDEF-BEGIN */
#define IMDN_MAX_NS 16
#define IMDN_HIST_BUCKETS 100001 /* 100 ns buckets up to 10 ms, then one overflow bucket */
#define IMDN_MAX_LEGS 8
#define IMDN_MAX_PATHS 8
#define IMDN_LAT_BUCKETS 24 /* mirror latency histogram: bucket i counts I/Os under 2^i microseconds */
#define IMDN_ERRMSG 160

enum imdn_op {
	IMDN_ATTACH = 1,
	IMDN_DETACH = 2,
	IMDN_IO = 3,
	IMDN_BENCH = 4,
	IMDN_MPATH_CREATE = 10,
	IMDN_MPATH_ADD = 11,
	IMDN_MPATH_SET = 12,
	IMDN_MPATH_DESTROY = 13,
	IMDN_MIRROR_CREATE = 20,
	IMDN_MIRROR_DESTROY = 21,
	IMDN_MIRROR_ADD_LEG = 22,
	IMDN_MIRROR_REMOVE_LEG = 23,
	IMDN_MIRROR_SET_MODE = 24,
	IMDN_MIRROR_RESIZE = 25,
	IMDN_MIRROR_IO = 26,
	IMDN_MIRROR_BENCH = 27,
	IMDN_MIRROR_QUIESCE = 28,
	IMDN_MIRROR_RESUME = 29,
	IMDN_REBUILD_START = 30,
	IMDN_REBUILD_CANCEL = 31,
	IMDN_EXPORT = 40,
	IMDN_UNEXPORT = 41,
	IMDN_JOB_START = 50,
	IMDN_JOB_CANCEL = 51,
	IMDN_JOB_FREE = 52
};
enum imdn_io_kind { IMDN_READ = 0, IMDN_WRITE = 1, IMDN_FLUSH = 2, IMDN_WRITE_ZEROES = 3, IMDN_UNMAP = 4 };
enum imdn_counter { IMDN_C_READS = 0, IMDN_C_WRITES = 1, IMDN_C_ERRORS = 2, IMDN_C_OUTSTANDING = 3, IMDN_C_SILENT_US = 4 };
enum imdn_policy { IMDN_POLICY_FAILOVER = 0, IMDN_POLICY_ROUND_ROBIN = 1 };
enum imdn_leg_mode { IMDN_LEG_RW = 0, IMDN_LEG_WO = 1, IMDN_LEG_ERR = 2 };
enum imdn_rebuild_state {
	IMDN_RB_NONE = 0,
	IMDN_RB_IN_PROGRESS = 1,
	IMDN_RB_COMPLETE = 2,
	IMDN_RB_ERROR = 3,
	IMDN_RB_CANCELLED = 4
};
enum imdn_event_type { IMDN_EV_LEG_FAILED = 1, IMDN_EV_REBUILD_DONE = 2, IMDN_EV_JOB_DONE = 3 };
/* Jobs (copy.c): long reads of one namespace, chunk by chunk, rate-capped,
 * cancellable within one chunk. Their states are enum imdn_rebuild_state's. */
enum imdn_job_kind { IMDN_JOB_COPY = 1, IMDN_JOB_HASH = 2 };
#define IMDN_COPY_COMPARE 1   /* copy (and rebuild): read the destination too, write only chunks that differ */
#define IMDN_COPY_SKIP_ZERO 2 /* copy: the destination reads zeroes already; never write an all-zero chunk */
#define IMDN_HASH_SHA512 4    /* hash: SHA-512 (a backing image's checksum, as Longhorn's) instead of SHA-256 */
#define IMDN_DIGEST_LEN 64    /* room for the longest digest (SHA-512); digest_len says how much is used */

struct imdn_ctrlr;
struct imdn_mpath;
struct imdn_mirror;
struct imdn_job;

struct imdn_ns_info {
	uint32_t nsid;
	uint32_t block_size;
	uint64_t size_bytes;
};

struct imdn_io {
	uint32_t nsid; /* ignored by mirror I/O */
	uint32_t kind;
	uint64_t lba;
	uint32_t nblocks;
	void *buf;
	int32_t status; /* 0 ok; < 0 -errno at submission; 1 NVMe error (sct, sc) */
	uint16_t sct;
	uint16_t sc;
};

struct imdn_leg_spec {
	struct imdn_mpath *mpath;
	uint32_t nsid;
	int32_t mode;
};

struct imdn_req {
	uint64_t id;
	int32_t op;
	int32_t status; /* 0 or -errno */
	char errmsg[IMDN_ERRMSG]; /* what failed, when status != 0 and the core knows more */
	/* attach */
	char trid[512];
	char hostnqn[224];
	uint32_t keep_alive_ms;
	uint32_t io_queue_size;
	uint32_t io_queue_requests;
	uint32_t timeout_ms;
	uint32_t silence_timeout_ms; /* declare the path lost when nothing is answered this long; 0 = never */
	uint32_t num_ns;
	struct imdn_ns_info ns[IMDN_MAX_NS];
	/* attach (result), detach, io, bench, mpath add */
	struct imdn_ctrlr *ctrlr;
	/* io, mirror io */
	struct imdn_io *ios;
	uint32_t num_ios;
	uint32_t ios_failed;
	/* mpath: create (result), add, set, destroy; a controller joins one mpath */
	struct imdn_mpath *mpath;
	uint32_t policy;          /* enum imdn_policy */
	uint32_t fast_io_fail_ms; /* queue I/O this long without a live path; 0 = fail at once */
	uint32_t lost;            /* set: the mpath is lost, I/O fails at once */
	/* mirror */
	struct imdn_mirror *mirror; /* create (result) and every other mirror op */
	uint64_t cookie;            /* create: carried by every event of the mirror */
	char name[64];
	uint64_t num_blocks; /* create, resize */
	uint32_t leg_timeout_ms; /* create: fail a leg that answers nothing this long while another works; 0 = never */
	uint32_t block_size; /* create (result) */
	uint32_t num_legs;
	struct imdn_leg_spec legs[IMDN_MAX_LEGS]; /* create; add_leg uses legs[0] */
	int32_t leg;                              /* add_leg (result), remove_leg, set_mode, rebuild dst */
	int32_t mode;                             /* set_mode */
	int32_t src_leg;                          /* rebuild source, -1 = any RW leg */
	uint32_t chunk_bytes;     /* rebuild, job */
	uint64_t rate_bytes_per_s; /* rebuild, job: 0 = no cap */
	uint32_t copy_flags;       /* rebuild, copy job: IMDN_COPY_*; hash job: IMDN_HASH_* */
	/* jobs */
	struct imdn_job *job;         /* start (result), cancel, free */
	uint32_t job_kind;            /* enum imdn_job_kind */
	struct imdn_leg_spec job_src; /* what is read */
	struct imdn_leg_spec job_dst; /* copy: where it goes; hash: a base to count differing chunks against (optional) */
	uint64_t job_blocks;          /* blocks from LBA 0 */
	/* export */
	char nqn[224];
	char traddr[64];
	char trsvcid[16];
	uint8_t nguid[16];
	char serial[21];
	char model[41];
	/* bench: the poller runs the I/O itself (on a controller, or through a mirror) */
	uint32_t bench_nsid;
	uint32_t bench_qd;
	uint32_t bench_io_size;
	uint32_t bench_write;
	uint32_t bench_sequential;
	uint64_t bench_ios;     /* I/Os to measure (count mode) */
	uint64_t bench_warmup;  /* I/Os completed before measuring (count mode) */
	uint32_t bench_duration_ms; /* time mode when non-zero: measure this long... */
	uint32_t bench_warmup_ms;   /* ...after this long */
	uint64_t bench_measured;
	double bench_seconds;
	double bench_iops;
	double bench_avg_us;
	uint64_t *bench_hist;   /* IMDN_HIST_BUCKETS counters, caller's memory */
	/* internal to the core */
	uint64_t deadline;
	uint32_t pending;
	void *internal;
};

/* Events from the poller; imdn_reap_events copies them out. */
struct imdn_event {
	uint64_t cookie; /* the mirror's, from IMDN_MIRROR_CREATE */
	int32_t type;    /* enum imdn_event_type */
	int32_t leg;
	int32_t status;  /* leg failed: 1 = NVMe status (sct, sc), < 0 = -errno; rebuild: enum imdn_rebuild_state */
	uint16_t sct;
	uint16_t sc;
	int32_t error;   /* rebuild: -errno of an error */
	uint64_t value;  /* rebuild: bytes copied; leg failed: for how long it answered nothing (us), 0 = it answered */
};

struct imdn_leg_stats {
	int32_t present;
	int32_t mode;
	uint32_t nsid;
	int32_t err_status; /* why it went ERR: 1 = NVMe status (err_sct, err_sc), < 0 = -errno */
	uint16_t err_sct;
	uint16_t err_sc;
	uint32_t outstanding;
	uint64_t reads;
	uint64_t writes;
	uint64_t bytes_read;
	uint64_t bytes_written;
	uint64_t errors;
	uint64_t silent_us; /* went ERR for answering nothing this long (0: it did not) */
};

struct imdn_mirror_stats {
	uint64_t num_blocks;
	uint32_t block_size;
	uint32_t exported;
	uint64_t reads;
	uint64_t writes;
	uint64_t other_ops; /* flush, write zeroes, unmap */
	uint64_t bytes_read;
	uint64_t bytes_written;
	uint64_t errors;
	uint64_t outstanding;
	uint64_t held_writes; /* host writes that waited for a rebuild chunk */
	uint64_t lat_hist[IMDN_LAT_BUCKETS];
	struct imdn_leg_stats legs[IMDN_MAX_LEGS];
	int32_t rb_state; /* enum imdn_rebuild_state of the last rebuild */
	int32_t rb_dst;
	int32_t rb_src;
	int32_t rb_error;
	uint64_t rb_bytes_done;
	uint64_t rb_bytes_total;
	uint64_t rb_chunks_zero; /* chunks written as write-zeroes */
	uint64_t rb_chunks_same; /* compare: chunks the destination held already (not written) */
	uint64_t hosts;          /* host controllers on the export, counted every 100 ms */
	uint64_t read_lat_ticks; /* latency summed over every read, in ticks of ticks_hz */
	uint64_t write_lat_ticks;
	uint64_t ticks_hz;
};

struct imdn_job_stats {
	int32_t state; /* enum imdn_rebuild_state */
	int32_t error; /* -errno when state is IMDN_RB_ERROR */
	uint32_t block_size;
	uint32_t chunk_bytes;
	uint64_t bytes_done;
	uint64_t bytes_total;
	uint64_t chunks_written; /* copy: chunks written (data or zeroes) */
	uint64_t chunks_skipped; /* copy: chunks that needed no write */
	uint64_t chunks_differ;  /* hash: chunks that differ from the base (no base: chunks not all zero) */
	uint32_t digest_len;             /* hash: bytes of digest used (32: SHA-256, 64: SHA-512) */
	uint8_t digest[IMDN_DIGEST_LEN]; /* hash: the digest of the whole content, once complete */
};

struct imdn_poller_stats {
	uint64_t iterations;
	uint64_t sleeps;         /* poll() calls on the submission eventfd */
	uint64_t spdk_threads;
	uint64_t busy_ticks;     /* time in iterations that did work */
	uint64_t ticks_hz;
	uint64_t exports;
	uint64_t yields;         /* sched_yield() calls (yield_after) */
	uint64_t poller_wakeups; /* eventfd writes that woke the poller (Python's doorbell rings) */
	uint64_t python_wakeups; /* eventfd writes that woke Python (the poller's doorbell rings) */
};

int imdn_start(const char *name, const char *core_mask, int mem_size_mb, int no_huge, uint32_t idle_spin_us,
	       uint32_t poll_sleep_us, uint32_t yield_after, char *err, size_t errlen);
int imdn_completion_fd(void);
int imdn_submit(struct imdn_req *req);
/* Python reaps events, then requests, then calls imdn_rearm; 1 means more
 * arrived meanwhile (reap again), 0 that the doorbell is armed (sleep). */
int imdn_reap(struct imdn_req **out, int max);
int imdn_rearm(void);
int imdn_reap_events(struct imdn_event *out, int max);
void *imdn_dma_alloc(size_t size, size_t align);
void imdn_dma_free(void *buf);
int imdn_ctrlr_failed(struct imdn_ctrlr *c);
uint64_t imdn_ctrlr_counter(struct imdn_ctrlr *c, int which);
void imdn_mirror_stats(struct imdn_mirror *m, struct imdn_mirror_stats *out);
void imdn_poller_stats(struct imdn_poller_stats *out);
void imdn_job_stats(struct imdn_job *job, struct imdn_job_stats *out);
/* CDEF-END */

#endif
