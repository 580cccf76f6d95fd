/*
 * base.c: what every part of the core uses, and nothing above it: the rings
 * between Python and the poller, completions and events (complete,
 * complete_msg, post_event), and the state the parts share (imdn_internal.h).
 *
 * The files of the core form floors; each calls only into the floors below:
 *
 *   poller.c     start-up, the loop, the dispatch of requests
 *   bench.c      the C-tier benchmark (controllers, mirrors)
 *   frontend.c   the embedded NVMe-oF target (mirrors)
 *   mirror.c     mirrors (multipath objects)
 *   copy.c       copy and hash jobs (multipath objects)
 *   io.c         Python-tier I/O (controllers)
 *   ctrlr.c      controllers and multipath objects
 *   base.c       this file
 *
 * A lower floor that must tell a higher one something does it through a
 * function pointer the higher floor gave it (a multipath I/O's done
 * callback, a mirror's export hooks), never by name.
 *
 *   submission ring   Python -> poller   struct imdn_req *   (+ the poller's doorbell)
 *   completion ring   poller -> Python   struct imdn_req *   (+ Python's doorbell)
 *   event ring        poller -> Python   struct imdn_event   (shares Python's doorbell)
 *
 * Each ring has one producer and one consumer. Python's side (imdn_submit in
 * poller.c, imdn_reap*, imdn_rearm here) runs on the asyncio thread.
 */
#include "doorbell.h"
#include "imdn_internal.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define RING_SIZE 4096 /* power of two */
#define EVENT_RING_SIZE 1024

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

static bool ring_empty(struct ring *r)
{
	return atomic_load_explicit(&r->head, memory_order_relaxed) ==
	       atomic_load_explicit(&r->tail, memory_order_acquire);
}

/* Events are copied by value: nothing to allocate or free per event. */
struct event_ring {
	_Atomic uint64_t head;
	_Atomic uint64_t tail;
	struct imdn_event slots[EVENT_RING_SIZE];
};

static struct ring g_sub, g_cpl;
static struct event_ring g_events;

/* -- shared state (imdn_internal.h) ----------------------------------------------- */

struct doorbell g_sub_bell = {.efd = -1}; /* Python rings, the poller sleeps on it */
struct doorbell g_cpl_bell = {.efd = -1}; /* the poller rings, Python sleeps on it */
uint64_t g_ticks_hz;
uint64_t g_busy;
uint64_t g_waiting_io;
uint32_t g_exports;
struct spdk_nvme_poll_group *g_group;
struct spdk_thread *g_app_thread;

int base_init(void)
{
	g_sub_bell.efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	g_cpl_bell.efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (g_sub_bell.efd < 0 || g_cpl_bell.efd < 0) {
		return -errno;
	}
	atomic_store(&g_cpl_bell.armed, 1); /* Python waits from the start */
	return 0;
}

/* -- the submission ring (the poller's side; Python pushes in imdn_submit) ------ */

bool submission_push(struct imdn_req *req)
{
	return ring_push(&g_sub, req);
}

struct imdn_req *submission_pop(void)
{
	return ring_pop(&g_sub);
}

bool submission_empty(void)
{
	return ring_empty(&g_sub);
}

/* -- completion and events ---------------------------------------------------- */

void complete(struct imdn_req *req, int status)
{
	req->status = status;
	while (!ring_push(&g_cpl, req)) {
		usleep(10); /* Python is behind by RING_SIZE requests: wait for it */
	}
	doorbell_ring(&g_cpl_bell);
}

void complete_msg(struct imdn_req *req, int status, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(req->errmsg, sizeof(req->errmsg), fmt, ap);
	va_end(ap);
	complete(req, status);
}

bool buf_all_zero(const void *buf, size_t len)
{
	const uint64_t *w = buf;
	for (size_t i = 0; i < len / 8; i++) {
		if (w[i] != 0) {
			return false;
		}
	}
	return true;
}

void post_event(const struct imdn_event *ev)
{
	struct event_ring *r = &g_events;
	for (;;) {
		uint64_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
		uint64_t head = atomic_load_explicit(&r->head, memory_order_acquire);
		if (tail - head < EVENT_RING_SIZE) {
			r->slots[tail & (EVENT_RING_SIZE - 1)] = *ev;
			atomic_store_explicit(&r->tail, tail + 1, memory_order_release);
			break;
		}
		usleep(10); /* never drop an event: wait for Python to reap */
	}
	doorbell_ring(&g_cpl_bell);
}

/* -- API for Python: the consumer side of completions and events ------------------ */

int imdn_completion_fd(void)
{
	return g_cpl_bell.efd;
}

static bool events_empty(void)
{
	return atomic_load_explicit(&g_events.head, memory_order_relaxed) ==
	       atomic_load_explicit(&g_events.tail, memory_order_acquire);
}

int imdn_rearm(void)
{
	doorbell_clear(&g_cpl_bell);
	doorbell_arm(&g_cpl_bell);
	if (!ring_empty(&g_cpl) || !events_empty()) {
		doorbell_disarm(&g_cpl_bell);
		return 1;
	}
	return 0;
}

int imdn_reap(struct imdn_req **out, int max)
{
	int n = 0;
	struct imdn_req *req;
	while (n < max && (req = ring_pop(&g_cpl)) != NULL) {
		out[n++] = req;
	}
	return n;
}

int imdn_reap_events(struct imdn_event *out, int max)
{
	struct event_ring *r = &g_events;
	int n = 0;
	while (n < max) {
		uint64_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
		uint64_t tail = atomic_load_explicit(&r->tail, memory_order_acquire);
		if (head == tail) {
			break;
		}
		out[n++] = r->slots[head & (EVENT_RING_SIZE - 1)];
		atomic_store_explicit(&r->head, head + 1, memory_order_release);
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
