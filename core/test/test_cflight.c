/* core/cflight.c: the table of fetches in flight (request collapsing). */
#include "../cflight.h"
#include "test.h"

static int woken[4];
static void wake(void *arg) { woken[(int)(long)arg]++; }

static void leader_then_waiters_woken_once(void) {
  int lead = -1;
  mg_cwaiter_t w1 = { .wake = wake, .arg = (void *)1L }, w2 = { .wake = wake, .arg = (void *)2L };
  mg_cflight_t *f = mg_cflight_join(MG_STR("GET http://a/x"), NULL, 1, &lead);
  CHECK(f && lead == 1);
  CHECK(mg_cflight_count() == 1);
  mg_cflight_t *g1 = mg_cflight_join(MG_STR("GET http://a/x"), &w1, 1, &lead);
  CHECK(g1 == f && lead == 0 && w1.linked);
  mg_cflight_t *g2 = mg_cflight_join(MG_STR("GET http://a/x"), &w2, 0, &lead);
  CHECK(g2 == f && lead == 0);
  CHECK(mg_cflight_state(f) == MG_CFLIGHT_PENDING);
  mg_cflight_done(f, MG_CFLIGHT_STORED); /* the leader's reference goes */
  CHECK(woken[1] == 1 && woken[2] == 1);
  CHECK(!w1.linked && !w2.linked);
  CHECK(mg_cflight_count() == 0);
  CHECK(mg_cflight_state(g1) == MG_CFLIGHT_STORED); /* still readable: waiters hold it */
  /* a new miss of the key starts another flight */
  mg_cflight_t *n = mg_cflight_join(MG_STR("GET http://a/x"), NULL, 1, &lead);
  CHECK(n && n != g1 && lead == 1);
  mg_cflight_leave(g1, &w1);
  mg_cflight_leave(g2, &w2);
  mg_cflight_done(n, MG_CFLIGHT_FAILED);
  CHECK(mg_cflight_count() == 0);
}

static void waiter_that_leaves_is_not_woken(void) {
  int lead = -1;
  woken[3] = 0;
  mg_cwaiter_t w = { .wake = wake, .arg = (void *)3L };
  mg_cflight_t *f = mg_cflight_join(MG_STR("k"), NULL, 1, &lead);
  mg_cflight_t *g = mg_cflight_join(MG_STR("k"), &w, 1, &lead);
  CHECK(g == f && lead == 0);
  mg_cflight_leave(g, &w);
  CHECK(!w.linked);
  mg_cflight_done(f, MG_CFLIGHT_FAILED);
  CHECK(woken[3] == 0);
}

static void no_leader_without_may_lead_nor_join_without_node(void) {
  int lead = -1;
  CHECK(mg_cflight_join(MG_STR("h"), NULL, 0, &lead) == NULL && lead == 0);
  mg_cflight_t *f = mg_cflight_join(MG_STR("h"), NULL, 1, &lead);
  CHECK(f && lead == 1);
  CHECK(mg_cflight_join(MG_STR("h"), NULL, 1, &lead) == NULL && lead == 0); /* someone fetches */
  CHECK(mg_cflight_join(MG_STR("other"), NULL, 0, &lead) == NULL);
  mg_cflight_done(f, MG_CFLIGHT_FAILED);
  CHECK(mg_cflight_count() == 0);
}

int main(void) {
  static const t_case_t cases[] = {
    { "the first miss leads; later ones wait and are woken once when it ends", leader_then_waiters_woken_once },
    { "a waiter that left is not woken", waiter_that_leaves_is_not_woken },
    { "without may_lead nobody leads; without a node nothing is joined", no_leader_without_may_lead_nor_join_without_node },
  };
  return t_run("cflight", cases, sizeof(cases) / sizeof(cases[0]));
}
