-- The hook work of the `hooks` scenario for candidate `haproxy-lua` (loaded by
-- bench/haproxy-lua.cfg): what bench/moongate-hooks.lua and the Lua blocks of
-- bench/nginx-lua.conf do, as HAProxy Lua actions.

-- request: X-Tenant-Id upstream from X-Tenant; /api/ goes to the api backend
core.register_action("bench_request", { "http-req" }, function(txn)
  local hdrs = txn.http:req_get_headers()
  local tenant = hdrs["x-tenant"] and hdrs["x-tenant"][0] or "none"
  txn.http:req_set_header("X-Tenant-Id", tenant)
  local path = txn.sf:path()
  if path:sub(1, 5) == "/api/" then
    txn:set_var("txn.backend", "api")
  else
    txn:set_var("txn.backend", "origin")
  end
end, 0)

-- response: one header set
core.register_action("bench_response", { "http-res" }, function(txn)
  txn.http:res_set_header("X-Proxy", "haproxy-lua")
end, 0)
