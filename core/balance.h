/* Choosing a server of an upstream. The state (smooth weighted round robin's
 * current weights) belongs to the worker's Lua generation (luavm.h), so a reload
 * starts it afresh with the new config's servers. */
#ifndef MG_BALANCE_H
#define MG_BALANCE_H

#include "luavm.h"

/* Picks a server of upstream `ui` by smooth weighted round robin, skipping the
 * servers whose bit is set in `skip` (already tried). -1 when none is left. */
int mg_balance_pick(mg_wgen_t *wg, int ui, uint64_t skip);

#endif
