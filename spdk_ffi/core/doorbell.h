/*
 * doorbell.h: how one thread wakes another that sleeps on an eventfd, with
 * one write(2) per sleep instead of one per request.
 *
 * Two doorbells cross the core: Python rings the poller's (a request on the
 * submission ring) and the poller rings Python's (a completion or an event;
 * asyncio waits on that eventfd with add_reader). A write(2) costs about a
 * microsecond on either side, and the other side is usually awake anyway: the
 * poller spins while I/O is outstanding, and Python reaps a burst of
 * completions in one go. So the consumer arms its doorbell only just before
 * it sleeps, and the producer writes only when it finds it armed.
 *
 * This is Dekker's handshake, and it has one way to go wrong: the consumer
 * stores "armed", then looks at the ring once more; the producer stores the
 * request into the ring, then looks at "armed". If either side's look can
 * pass its own store, both can miss each other: the consumer sleeps with a
 * request queued and the producer does not write. x86 does reorder a store
 * with a later load to another address (release and acquire orderings do not
 * forbid it), so each side puts a full fence between its store and its look.
 * tests/test_doorbell.py runs this header in a ping-pong where every lost
 * wake-up is a deadlock.
 *
 * Only this header: no SPDK, so the test builds it on any machine.
 */
#ifndef IMDN_DOORBELL_H
#define IMDN_DOORBELL_H

#include <stdatomic.h>
#include <stdint.h>
#include <unistd.h>

struct doorbell {
	_Atomic int armed;      /* 1: the consumer sleeps, or is about to */
	int efd;                /* the consumer sleeps on it */
	_Atomic uint64_t rings; /* write(2)s made: the wake-ups actually paid for */
};

/* Consumer, before it sleeps. The caller then looks at its ring(s) once more
 * and sleeps only if they are empty; otherwise it disarms and goes on. */
static inline void doorbell_arm(struct doorbell *d)
{
	atomic_store_explicit(&d->armed, 1, memory_order_relaxed);
	atomic_thread_fence(memory_order_seq_cst); /* the store before the second look */
}

/* Consumer, awake again: woken, timed out, or found work on its second look. */
static inline void doorbell_disarm(struct doorbell *d)
{
	atomic_store_explicit(&d->armed, 0, memory_order_relaxed);
}

/* Producer, after it published work: wake the consumer if it sleeps. The
 * exchange makes exactly one of several racing producers pay for the write. */
static inline void doorbell_ring(struct doorbell *d)
{
	atomic_thread_fence(memory_order_seq_cst); /* the published work before the look */
	if (atomic_load_explicit(&d->armed, memory_order_relaxed) != 0 &&
	    atomic_exchange_explicit(&d->armed, 0, memory_order_relaxed) != 0) {
		uint64_t one = 1;
		ssize_t rc = write(d->efd, &one, sizeof(one));
		(void)rc;
		atomic_fetch_add_explicit(&d->rings, 1, memory_order_relaxed);
	}
}

/* Consumer: clear the eventfd's count after a wake-up (it is non-blocking). */
static inline void doorbell_clear(struct doorbell *d)
{
	uint64_t count;
	ssize_t rc = read(d->efd, &count, sizeof(count));
	(void)rc;
}

#endif
