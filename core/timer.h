/* Per-worker timers for client and upstream connections: a timer is 40 bytes inside its
 * owner (a uv_timer_t is 152) and arming it is O(1), with no heap operation.
 *
 * Timers are kept in a few lists ordered by due time. Each list serves one
 * duration (a connection arms the same few timeouts over and over): a timer armed
 * for a list's duration goes at its tail, which keeps the order. A duration with
 * no list of its own (more distinct durations than lists, after reloads) goes to
 * list 0 by insertion from the tail. One uv_timer per worker fires at the earliest
 * head. */
#ifndef MG_TIMER_H
#define MG_TIMER_H

#include <stdint.h>
#include <uv.h>

typedef struct mg_timer_s mg_timer_t;
typedef void (*mg_timer_cb)(mg_timer_t *t);

struct mg_timer_s {
  mg_timer_t *prev, *next;
  uint64_t due;     /* loop time (ms) */
  mg_timer_cb cb;
  unsigned list;    /* 1 + index of its list; 0: not armed */
};

#define MG_TIMER_LISTS 16

typedef struct {
  mg_timer_t *head, *tail;
  uint64_t ms; /* the duration this list serves (list 0: any) */
} mg_tlist_t;

typedef struct {
  uv_timer_t uv;   /* fires at the earliest due time of every list */
  uint64_t uv_due; /* when uv is due (valid while it is active) */
  mg_tlist_t lists[MG_TIMER_LISTS];
} mg_timers_t;

/* The uv timer does not keep the loop alive. */
void mg_timers_init(mg_timers_t *ts, uv_loop_t *loop);
void mg_timers_close(mg_timers_t *ts);
/* (Re)arms t to call cb after ms milliseconds of loop time. */
void mg_timer_start(mg_timers_t *ts, mg_timer_t *t, uint64_t ms, mg_timer_cb cb);
void mg_timer_stop(mg_timers_t *ts, mg_timer_t *t);
static inline int mg_timer_active(const mg_timer_t *t) { return t->list != 0; }

#endif
