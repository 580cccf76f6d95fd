/*
 * silence.h: how the core decides that a peer has gone silent, and which
 * mirror legs to fail for it. Pure functions of what ctrlr.c and mirror.c
 * observe, with no SPDK in them: tests/test_silence_rules.py builds this
 * header on any machine and checks every rule.
 *
 * A peer that loses power, hangs, or is cut off by the network sends no RST
 * and no ICMP; its connections stay open and answer nothing. The one sign
 * is that nothing comes back: commands are outstanding and none is answered.
 * So each controller (a path) and each mirror leg keeps a quiet_watch,
 * looked at every 10 ms: the first look after an answer, or with nothing
 * outstanding, restarts the clock.
 */
#ifndef IMDN_SILENCE_H
#define IMDN_SILENCE_H

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>

struct quiet_watch {
	uint64_t answered_seen; /* the peer's answer count at the last look */
	uint64_t quiet_since;   /* tick: the last answer seen, or when commands began to wait */
};

static inline void quiet_watch_start(struct quiet_watch *w, uint64_t answered, uint64_t now)
{
	w->answered_seen = answered;
	w->quiet_since = now;
}

/* Ticks the peer has answered nothing while it had commands outstanding; 0
 * if it answered since the last look, or has nothing outstanding. */
static inline uint64_t quiet_for(struct quiet_watch *w, uint32_t outstanding, uint64_t answered, uint64_t now)
{
	if (outstanding == 0 || answered != w->answered_seen || now < w->quiet_since) {
		quiet_watch_start(w, answered, now);
		return 0;
	}
	return now - w->quiet_since;
}

/* What the mirror's watchdog knows of one leg at one look. */
struct leg_facts {
	bool present;            /* a leg in this slot, not being removed, not ERR */
	bool rw;                 /* it serves reads (RW), rather than only taking writes (WO) */
	uint64_t quiet_ticks;    /* quiet_for() of the leg */
	uint32_t num_paths;      /* paths of its multipath object */
	uint32_t live_paths;     /* ...of which this many work */
	bool lost;               /* its multipath object was given up */
	uint64_t path_silent_us; /* a path of it was declared silent, after this long (0: none was) */
};

/* Whether one leg should leave the mirror: 0 (keep it), -ETIMEDOUT (it
 * answers nothing; *silent_us says for how long) or -ENXIO (its controller
 * was given up for a loud failure). */
static inline int leg_verdict(const struct leg_facts *f, uint64_t bound_ticks, uint64_t ticks_hz, uint64_t *silent_us)
{
	*silent_us = 0;
	if (!f->present) {
		return 0;
	}
	if (f->path_silent_us != 0 && (f->live_paths == 0 || f->lost)) {
		*silent_us = f->path_silent_us; /* its path(s) were declared silent, none works */
		return -ETIMEDOUT;
	}
	if (f->lost) {
		return -ENXIO;
	}
	if (f->quiet_ticks < bound_ticks) {
		return 0;
	}
	if (f->live_paths > 0 && f->num_paths > 1 && f->quiet_ticks < 2 * bound_ticks) {
		return 0; /* multipath moves its commands once the silent path is declared */
	}
	*silent_us = f->quiet_ticks * 1000000 / ticks_hz;
	return *silent_us ? -ETIMEDOUT : 0;
}

/* The watchdog's decision over all legs: fills verdicts[] (0 keeps a leg)
 * and returns how many legs to fail. A leg is failed only while another RW
 * leg keeps working: with none left, failing the last copies helps no one,
 * and the legs wait for their paths (fast_io_fail_timeout_sec) as before. */
static inline int silence_verdicts(const struct leg_facts *legs, int n, uint64_t bound_ticks, uint64_t ticks_hz,
				   int *verdicts, uint64_t *silent_us)
{
	int working_rw = 0, failing = 0;
	for (int i = 0; i < n; i++) {
		verdicts[i] = leg_verdict(&legs[i], bound_ticks, ticks_hz, &silent_us[i]);
		if (verdicts[i] != 0) {
			failing++;
		} else if (legs[i].present && legs[i].rw) {
			working_rw++;
		}
	}
	if (failing == 0 || working_rw == 0) {
		for (int i = 0; i < n; i++) {
			verdicts[i] = 0;
			silent_us[i] = 0;
		}
		return 0;
	}
	return failing;
}

#endif
