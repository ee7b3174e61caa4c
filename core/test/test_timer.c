/* core/timer.c: worker timers on a real libuv loop. */
#include <stddef.h>
#include <time.h>

#include "../timer.h"
#include "test.h"

typedef struct {
  mg_timer_t t;
  int id;
} item_t;

static int order[64];
static int nfired;
static mg_timers_t *cur;

static void record(mg_timer_t *t) {
  item_t *it = (item_t *)((char *)t - offsetof(item_t, t));
  if (nfired < 64) order[nfired] = it->id;
  nfired++;
}

/* runs the loop until no timer is left (the uv timer is referenced for the test) */
static void run(uv_loop_t *loop, mg_timers_t *ts) {
  uv_ref((uv_handle_t *)&ts->uv);
  uv_run(loop, UV_RUN_DEFAULT);
}

static void setup(uv_loop_t *loop, mg_timers_t *ts) {
  uv_loop_init(loop);
  mg_timers_init(ts, loop);
  cur = ts;
  nfired = 0;
}

static void teardown(uv_loop_t *loop, mg_timers_t *ts) {
  mg_timers_close(ts);
  uv_run(loop, UV_RUN_DEFAULT);
  CHECK(uv_loop_close(loop) == 0);
}

static void fire_in_due_order_within_and_across_lists(void) {
  uv_loop_t loop;
  mg_timers_t ts;
  setup(&loop, &ts);
  item_t a = { .id = 1 }, b = { .id = 2 }, c = { .id = 3 }, d = { .id = 4 };
  mg_timer_start(&ts, &a.t, 30, record);
  mg_timer_start(&ts, &b.t, 10, record);
  mg_timer_start(&ts, &c.t, 20, record);
  mg_timer_start(&ts, &d.t, 10, record); /* same list as b, after it */
  CHECK(mg_timer_active(&a.t) && mg_timer_active(&d.t));
  run(&loop, &ts);
  CHECK(nfired == 4);
  CHECK(order[0] == 2 && order[1] == 4 && order[2] == 3 && order[3] == 1);
  CHECK(!mg_timer_active(&a.t) && !mg_timer_active(&b.t));
  teardown(&loop, &ts);
}

static void stop_and_rearm(void) {
  uv_loop_t loop;
  mg_timers_t ts;
  setup(&loop, &ts);
  item_t a = { .id = 1 }, b = { .id = 2 }, c = { .id = 3 };
  mg_timer_start(&ts, &a.t, 5, record);
  mg_timer_start(&ts, &b.t, 10, record);
  mg_timer_start(&ts, &c.t, 15, record);
  mg_timer_stop(&ts, &b.t);
  mg_timer_stop(&ts, &b.t); /* stopping twice is harmless */
  mg_timer_start(&ts, &a.t, 25, record); /* re-armed: now after c */
  run(&loop, &ts);
  CHECK(nfired == 2);
  CHECK(order[0] == 3 && order[1] == 1);
  teardown(&loop, &ts);
}

/* more distinct durations than lists: the rest share list 0, kept in order */
static void many_durations_fire_in_order(void) {
  uv_loop_t loop;
  mg_timers_t ts;
  setup(&loop, &ts);
  enum { N = 3 * MG_TIMER_LISTS };
  item_t it[N];
  for (int i = N - 1; i >= 0; i--) {
    it[i] = (item_t){ .id = i };
    mg_timer_start(&ts, &it[i].t, (uint64_t)(2 + 2 * i), record);
  }
  run(&loop, &ts);
  CHECK(nfired == N);
  int sorted = 1;
  for (int i = 0; i < N && i < 64; i++)
    if (order[i] != i) sorted = 0;
  CHECK(sorted);
  teardown(&loop, &ts);
}

/* a late loop finds timers of several lists due at once: they fire in due
 * order, not list by list */
static void overdue_timers_fire_in_due_order(void) {
  uv_loop_t loop;
  mg_timers_t ts;
  setup(&loop, &ts);
  enum { N = 2 * MG_TIMER_LISTS };
  item_t it[N];
  /* list i gets durations i+1 and N+i+1... interleaved so that list order and
   * due order differ */
  for (int i = 0; i < N; i++) {
    int d = (i % 2) ? N - i : i;
    it[i] = (item_t){ .id = d };
    mg_timer_start(&ts, &it[i].t, (uint64_t)(1 + d), record);
  }
  struct timespec late = { 0, (long)(N + 20) * 1000000L };
  nanosleep(&late, NULL);
  run(&loop, &ts);
  CHECK(nfired == N);
  int sorted = 1;
  for (int i = 0; i < N; i++)
    if (order[i] != i) sorted = 0;
  CHECK(sorted);
  teardown(&loop, &ts);
}

/* a callback may arm timers and stop the ones still pending */
static item_t chain_b, chain_c;
static void chain(mg_timer_t *t) {
  record(t);
  mg_timer_stop(cur, &chain_c.t);
  mg_timer_start(cur, &chain_b.t, 0, record);
}

static void callbacks_arm_and_stop(void) {
  uv_loop_t loop;
  mg_timers_t ts;
  setup(&loop, &ts);
  item_t a = { .id = 1 };
  chain_b = (item_t){ .id = 2 };
  chain_c = (item_t){ .id = 3 };
  mg_timer_start(&ts, &a.t, 5, chain);
  mg_timer_start(&ts, &chain_c.t, 20, record);
  run(&loop, &ts);
  CHECK(nfired == 2);
  CHECK(order[0] == 1 && order[1] == 2);
  teardown(&loop, &ts);
}

int main(void) {
  static const t_case_t cases[] = {
    T(fire_in_due_order_within_and_across_lists), T(stop_and_rearm),
    T(many_durations_fire_in_order), T(overdue_timers_fire_in_due_order),
    T(callbacks_arm_and_stop),
  };
  return t_run("timer", cases, sizeof(cases) / sizeof(cases[0]));
}
