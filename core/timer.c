#include "timer.h"

#include <stddef.h>

static void on_uv(uv_timer_t *h);

void mg_timers_init(mg_timers_t *ts, uv_loop_t *loop) {
  for (int i = 0; i < MG_TIMER_LISTS; i++) ts->lists[i] = (mg_tlist_t){ NULL, NULL, UINT64_MAX };
  ts->uv_due = 0;
  uv_timer_init(loop, &ts->uv);
  ts->uv.data = ts;
  uv_unref((uv_handle_t *)&ts->uv);
}

void mg_timers_close(mg_timers_t *ts) {
  if (!uv_is_closing((uv_handle_t *)&ts->uv)) uv_close((uv_handle_t *)&ts->uv, NULL);
}

void mg_timer_stop(mg_timers_t *ts, mg_timer_t *t) {
  if (!t->list) return;
  mg_tlist_t *l = &ts->lists[t->list - 1];
  if (t->prev) t->prev->next = t->next;
  else l->head = t->next;
  if (t->next) t->next->prev = t->prev;
  else l->tail = t->prev;
  t->prev = t->next = NULL;
  t->list = 0;
  /* the uv timer may now fire early for nothing: cheaper than finding the new
   * earliest time on every stop */
}

/* The list for duration ms: its own, an empty one taken for it, or list 0. */
static unsigned pick_list(mg_timers_t *ts, uint64_t ms) {
  unsigned empty = 0;
  for (unsigned i = 1; i < MG_TIMER_LISTS; i++) {
    mg_tlist_t *l = &ts->lists[i];
    if (l->ms == ms) return i;
    if (!l->head && !empty) empty = i;
  }
  if (empty) {
    ts->lists[empty].ms = ms;
    return empty;
  }
  return 0;
}

static void schedule(mg_timers_t *ts, uint64_t due) {
  uint64_t now = uv_now(ts->uv.loop);
  if (uv_is_active((uv_handle_t *)&ts->uv) && ts->uv_due <= due) return;
  ts->uv_due = due;
  uv_timer_start(&ts->uv, on_uv, due > now ? due - now : 0, 0);
}

void mg_timer_start(mg_timers_t *ts, mg_timer_t *t, uint64_t ms, mg_timer_cb cb) {
  mg_timer_stop(ts, t);
  t->due = uv_now(ts->uv.loop) + ms;
  t->cb = cb;
  unsigned i = pick_list(ts, ms);
  mg_tlist_t *l = &ts->lists[i];
  /* from the tail: in a list of one duration the new timer is always last */
  mg_timer_t *after = l->tail;
  while (after && after->due > t->due) after = after->prev;
  t->prev = after;
  t->next = after ? after->next : l->head;
  if (t->next) t->next->prev = t;
  else l->tail = t;
  if (after) after->next = t;
  else l->head = t;
  t->list = i + 1;
  schedule(ts, t->due);
}

static void on_uv(uv_timer_t *h) {
  mg_timers_t *ts = h->data;
  uint64_t now = uv_now(h->loop), next = 0;
  /* Overdue timers fire in due order across lists (a late loop may find several
   * lists due at once). A callback may stop or arm any timer: the heads are
   * looked at again before each one. */
  for (;;) {
    mg_timer_t *first = NULL;
    for (int i = 0; i < MG_TIMER_LISTS; i++) {
      mg_timer_t *t = ts->lists[i].head;
      if (t && (!first || t->due < first->due)) first = t;
    }
    if (!first || first->due > now) {
      next = first ? first->due : 0;
      break;
    }
    mg_timer_stop(ts, first);
    first->cb(first);
  }
  /* callbacks may have scheduled already; schedule() keeps the earlier time */
  if (next) schedule(ts, next);
}
