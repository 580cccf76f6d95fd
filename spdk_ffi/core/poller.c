/*
 * poller.c: start-up, the loop, and the dispatch of requests (the top floor of
 * the core; base.c lists the floors).
 *
 * imdn_start() creates the poller thread, which initialises the SPDK
 * environment itself (DPDK pins the initialising thread to the first core of
 * the mask, and only that thread should be pinned), then the spdk_thread
 * library and subsystems (frontend_start), then loops:
 *   - take new requests from the submission ring;
 *   - advance connects (probe contexts) and detaches;
 *   - process admin completions of every controller every 10 ms, which is
 *     what sends keep-alives (well under KATO/2 for any sane KATO);
 *   - poll the NVMe poll group while commands are outstanding;
 *   - retry multipath I/O that waits for request memory, and fail I/O that
 *     waited for a path past fast_io_fail;
 *   - every 10 ms, look for silence: paths whose commands or keep-alives go
 *     unanswered (ctrlr.c, with the admin polling) and mirror legs that
 *     answer nothing while another leg works (mirror.c's watchdog);
 *   - poll every spdk_thread once (the NVMe-oF target, bdevs, timers).
 *
 * A polite poller (poll_sleep_us > 0, for hosts that share a core with
 * another busy poller, such as test helpers) naps that long between polls
 * even while I/O is outstanding, instead of spinning: its I/O then costs a
 * timer wake-up (~50-100 us) rather than a scheduler time slice (~ms).
 *
 * Idle policy. The loop busy-polls while there was work within the last
 * idle_spin_us: an spdk_thread poll that did something, NVMe commands
 * outstanding, a request, an attach or detach in progress. After that it
 * sleeps in poll() on the submission eventfd (a Python request wakes it at
 * once) for at most:
 *   - 10 ms with nothing exported (admin polling needs no more), or
 *   - 1 ms with a mirror exported: a host's TCP data has no fd we wait on, so
 *     the first I/O after an idle period waits up to 1 ms (0.5 ms on average,
 *     plus the kernel's timer slack) before the poller notices it; from then
 *     on the poller spins and I/O runs at full speed;
 * and never past the next timed spdk_poller's expiration. I/O queued for a
 * path (fast_io_fail) caps the sleep at 1 ms, its timer granularity.
 *
 * Finished requests go onto the completion ring and events onto the event
 * ring; either rings Python's doorbell, which wakes the asyncio loop
 * (add_reader on its eventfd) to reap them all. Both directions write their
 * eventfd only when the other side has armed its doorbell to sleep
 * (doorbell.h): a spinning poller and a busy loop cost each other nothing.
 *
 * Sharing a core. While I/O is outstanding, and for idle_spin_us after, the
 * poller spins, and on a small machine it may share its core with the Python
 * thread that waits for that I/O. The scheduler then splits the core evenly,
 * and Python, which has real work, waits in the run queue behind a poller
 * that has none. So after yield_after iterations in a row that made no
 * progress (no request, no completion, no spdk_thread work), the poller calls
 * sched_yield(): a thread that is runnable on its core runs now, and on a
 * core of its own the call returns at once. 0 turns this off.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* ppoll */
#endif
#include "doorbell.h"
#include "imdn_internal.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* -- state -------------------------------------------------------------------- */

static pthread_t g_thread;
static _Atomic int g_state; /* 0 none, 1 starting, 2 running, -1 failed */
static char g_init_err[256];
static const char *g_name, *g_core_mask;
static int g_mem_size, g_no_huge;
static uint32_t g_idle_spin_us;
static uint32_t g_poll_sleep_us;
static uint32_t g_yield_after;

static _Atomic uint64_t g_iterations, g_sleeps, g_busy_ticks, g_yields;
static _Atomic int g_stop, g_stopped; /* process exit: see stop_at_exit() */

/* -- dispatch ----------------------------------------------------------------- */

static void handle(struct imdn_req *req)
{
	req->errmsg[0] = '\0';
	bool mirror_op = (req->op >= IMDN_MIRROR_CREATE + 1 && req->op <= IMDN_MIRROR_RESUME) ||
			 (req->op >= IMDN_REBUILD_START && req->op <= IMDN_UNEXPORT);
	if (mirror_op && req->mirror == NULL) {
		complete_msg(req, -ENODEV, "no mirror given");
		return;
	}
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
	case IMDN_MPATH_CREATE:
		mpath_create(req);
		break;
	case IMDN_MPATH_ADD:
		mpath_add(req);
		break;
	case IMDN_MPATH_SET:
		mpath_set(req);
		break;
	case IMDN_MPATH_DESTROY:
		mpath_destroy(req);
		break;
	case IMDN_MIRROR_CREATE:
		mirror_create(req);
		break;
	case IMDN_MIRROR_DESTROY:
		mirror_destroy(req);
		break;
	case IMDN_MIRROR_ADD_LEG:
		mirror_add_leg(req);
		break;
	case IMDN_MIRROR_REMOVE_LEG:
		mirror_remove_leg(req);
		break;
	case IMDN_MIRROR_SET_MODE:
		mirror_set_mode(req);
		break;
	case IMDN_MIRROR_RESIZE:
		mirror_resize(req);
		break;
	case IMDN_MIRROR_IO:
		mirror_start_io(req);
		break;
	case IMDN_MIRROR_BENCH:
		start_mirror_bench(req);
		break;
	case IMDN_REBUILD_START:
		rebuild_start(req);
		break;
	case IMDN_REBUILD_CANCEL:
		rebuild_cancel(req);
		break;
	case IMDN_MIRROR_QUIESCE:
		mirror_quiesce(req);
		break;
	case IMDN_MIRROR_RESUME:
		mirror_resume(req);
		break;
	case IMDN_JOB_START:
		job_start(req);
		break;
	case IMDN_JOB_CANCEL:
		job_cancel(req);
		break;
	case IMDN_JOB_FREE:
		job_free(req);
		break;
	case IMDN_EXPORT:
		frontend_export(req);
		break;
	case IMDN_UNEXPORT:
		frontend_unexport(req);
		break;
	default:
		complete_msg(req, -EINVAL, "unknown request op %d", req->op);
	}
}

/* -- the loop ------------------------------------------------------------------ */

/* Sleep up to wait_us on the submission doorbell (a request ends it). */
static void nap(uint64_t wait_us)
{
	doorbell_arm(&g_sub_bell);
	if (!submission_empty() || atomic_load_explicit(&g_stop, memory_order_relaxed)) {
		doorbell_disarm(&g_sub_bell); /* the second look found work */
		return;
	}
	CTR_ADD(g_sleeps, 1);
	/* poll() takes milliseconds; ppoll() takes the sub-millisecond waits that
	 * a timed spdk_poller or a polite poller ask for. */
	struct timespec ts = {.tv_sec = (time_t)(wait_us / 1000000), .tv_nsec = (long)(wait_us % 1000000) * 1000};
	struct pollfd pfd = {.fd = g_sub_bell.efd, .events = POLLIN};
	int woken = ppoll(&pfd, 1, &ts, NULL);
	doorbell_disarm(&g_sub_bell);
	if (woken > 0) {
		doorbell_clear(&g_sub_bell);
	}
}

static void idle_sleep(uint64_t now, uint64_t next_timer)
{
	uint64_t max_us = (g_exports > 0 || g_waiting_io > 0) ? IDLE_SLEEP_EXPORTED_US : IDLE_SLEEP_MAX_US;
	uint64_t wait_us = max_us;
	if (next_timer != 0) {
		uint64_t until = next_timer > now ? (next_timer - now) * 1000000 / g_ticks_hz : 0;
		if (until < wait_us) {
			wait_us = until;
		}
	}
	if (wait_us > 0) {
		nap(wait_us);
	}
}

static void *poller_main(void *arg)
{
	(void)arg;
	pthread_setname_np(pthread_self(), "imdn-poller"); /* visible in top -H, /proc/<pid>/task/<tid>/comm */
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
	if (frontend_start(g_init_err, sizeof(g_init_err)) != 0) {
		atomic_store(&g_state, -1);
		return NULL;
	}
	atomic_store(&g_state, 2);

	uint64_t spin_ticks = us_to_ticks(g_idle_spin_us);
	uint64_t last_work = spdk_get_ticks();
	uint32_t unproductive = 0; /* iterations in a row with work pending but no progress */
	uint64_t next_watch = 0;
	for (;;) {
		uint64_t begin = spdk_get_ticks();
		bool work = false;
		bool progress = false;
		struct imdn_req *req;
		while ((req = submission_pop()) != NULL) {
			handle(req);
			work = true;
			progress = true;
		}
		uint64_t now = spdk_get_ticks();
		poll_attaches(now);
		if (poll_ctrlrs(now) > 0) {
			progress = true;
		}
		poll_detaches(now);
		if (g_waiting_io > 0) {
			mpath_poll(now);
		}
		if (now >= next_watch) {
			next_watch = now + us_to_ticks(WATCHDOG_US);
			mirror_watchdog(now); /* after poll_ctrlrs: paths declared silent this turn count */
		}
		uint64_t next_timer = 0;
		if (frontend_poll(now, &next_timer)) {
			work = true;
			progress = true;
		}
		if (g_busy > 0 || ctrlr_work_pending()) {
			work = true;
		}
		uint64_t end = spdk_get_ticks();
		CTR_ADD(g_iterations, 1);
		if (atomic_load_explicit(&g_stop, memory_order_relaxed)) {
			break;
		}
		/* Waiting on the network or spinning idle alike: see "Sharing a
		 * core" above. The idle spin counts too: it is up to idle_spin_us
		 * of polling nothing, and a thread that waits for this core would
		 * otherwise wait all of it (the 2 ms tail of an early version). */
		if (progress) {
			unproductive = 0;
		} else if (g_yield_after > 0 && ++unproductive >= g_yield_after) {
			unproductive = 0;
			CTR_ADD(g_yields, 1);
			sched_yield();
		}
		if (work) {
			last_work = end;
			CTR_ADD(g_busy_ticks, end - begin);
			if (g_poll_sleep_us > 0 && submission_empty()) {
				nap(g_poll_sleep_us);
			}
			continue;
		}
		if (end - last_work < spin_ticks || !submission_empty()) {
			continue;
		}
		idle_sleep(end, next_timer);
	}
	atomic_store(&g_stopped, 1);
	return NULL;
}

/* At process exit the libraries' destructors unmap SPDK's memory: the poller
 * must stop touching it first. It stops where it is (no cleanup: the
 * targets see the connections close with the process). */
static void stop_at_exit(void)
{
	atomic_store(&g_stop, 1);
	uint64_t one = 1;
	ssize_t rc = write(g_sub_bell.efd, &one, sizeof(one)); /* armed or not */
	(void)rc;
	for (int i = 0; i < 2000 && !atomic_load(&g_stopped); i++) {
		usleep(500);
	}
}

/* -- API for Python -------------------------------------------------------- */

int imdn_start(const char *name, const char *core_mask, int mem_size_mb, int no_huge, uint32_t idle_spin_us,
	       uint32_t poll_sleep_us, uint32_t yield_after, char *err, size_t errlen)
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
	g_idle_spin_us = idle_spin_us;
	g_poll_sleep_us = poll_sleep_us;
	g_yield_after = yield_after;
	int rc = base_init();
	if (rc != 0) {
		snprintf(err, errlen, "cannot create the eventfds");
		atomic_store(&g_state, -1);
		return rc;
	}
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
	atexit(stop_at_exit); /* runs before the destructors of the libraries loaded earlier */
	return 0;
}

int imdn_submit(struct imdn_req *req)
{
	if (atomic_load(&g_state) != 2) {
		return -ENXIO;
	}
	if (!submission_push(req)) {
		return -EAGAIN;
	}
	doorbell_ring(&g_sub_bell);
	return 0;
}

void imdn_poller_stats(struct imdn_poller_stats *out)
{
	out->iterations = CTR_GET(g_iterations);
	out->sleeps = CTR_GET(g_sleeps);
	out->busy_ticks = CTR_GET(g_busy_ticks);
	out->yields = CTR_GET(g_yields);
	out->poller_wakeups = atomic_load_explicit(&g_sub_bell.rings, memory_order_relaxed);
	out->python_wakeups = atomic_load_explicit(&g_cpl_bell.rings, memory_order_relaxed);
	out->ticks_hz = g_ticks_hz;
	out->spdk_threads = frontend_thread_count();
	out->exports = g_exports;
}
