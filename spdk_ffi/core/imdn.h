/*
 * imdn: spdk_ffi's C core. One poller thread owns every SPDK object
 * (controllers, queue pairs, probe and detach contexts); Python talks to it
 * only through two single-producer/single-consumer rings of request
 * pointers and two eventfds. No Python code runs per I/O: a request (an
 * attach, a detach, a batch of I/Os, a benchmark) completes as a whole.
 *
 * This header is also the cffi cdef (spdk_ffi/_build.py reads the part
 * between the CDEF markers), so it uses only plain C declarations there.
 */
#ifndef IMDN_H
#define IMDN_H

#include <stddef.h>
#include <stdint.h>

/* CDEF-BEGIN */
#define IMDN_MAX_NS 16
#define IMDN_HIST_BUCKETS 100001 /* 100 ns buckets up to 10 ms, then one overflow bucket */

enum imdn_op { IMDN_ATTACH = 1, IMDN_DETACH = 2, IMDN_IO = 3, IMDN_BENCH = 4 };
enum imdn_io_kind { IMDN_READ = 0, IMDN_WRITE = 1, IMDN_FLUSH = 2, IMDN_WRITE_ZEROES = 3 };
enum imdn_counter { IMDN_C_READS = 0, IMDN_C_WRITES = 1, IMDN_C_ERRORS = 2, IMDN_C_OUTSTANDING = 3 };

struct imdn_ctrlr;

struct imdn_ns_info {
	uint32_t nsid;
	uint32_t block_size;
	uint64_t size_bytes;
};

struct imdn_io {
	uint32_t nsid;
	uint32_t kind;
	uint64_t lba;
	uint32_t nblocks;
	void *buf;
	int32_t status; /* 0 ok; < 0 -errno at submission; 1 NVMe error (sct, sc) */
	uint16_t sct;
	uint16_t sc;
};

struct imdn_req {
	uint64_t id;
	int32_t op;
	int32_t status; /* 0 or -errno */
	/* attach */
	char trid[512];
	char hostnqn[224];
	uint32_t keep_alive_ms;
	uint32_t io_queue_size;
	uint32_t io_queue_requests;
	uint32_t timeout_ms;
	uint32_t num_ns;
	struct imdn_ns_info ns[IMDN_MAX_NS];
	/* attach (result), detach, io, bench */
	struct imdn_ctrlr *ctrlr;
	/* io */
	struct imdn_io *ios;
	uint32_t num_ios;
	uint32_t ios_failed;
	/* bench: the poller runs the I/O itself */
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

int imdn_start(const char *name, const char *core_mask, int mem_size_mb, int no_huge, char *err, size_t errlen);
int imdn_completion_fd(void);
int imdn_submit(struct imdn_req *req);
int imdn_reap(struct imdn_req **out, int max);
void *imdn_dma_alloc(size_t size, size_t align);
void imdn_dma_free(void *buf);
int imdn_ctrlr_failed(struct imdn_ctrlr *c);
uint64_t imdn_ctrlr_counter(struct imdn_ctrlr *c, int which);
/* CDEF-END */

#endif
