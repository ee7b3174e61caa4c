#include "balance.h"

int mg_balance_pick(mg_wgen_t *wg, int ui, uint64_t skip) {
  const mg_upstream_cfg_t *u = &wg->gen->upstreams[ui];
  int *cur = wg->rr_current + wg->rr_base[ui];
  int total = 0, best = -1;
  for (int i = 0; i < u->nservers && i < 64; i++) {
    if (skip & ((uint64_t)1 << i)) continue;
    cur[i] += u->servers[i].weight;
    total += u->servers[i].weight;
    if (best < 0 || cur[i] > cur[best]) best = i;
  }
  if (best >= 0) cur[best] -= total;
  return best;
}
