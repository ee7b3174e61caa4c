-- The hook points: the one list of them. A hook's number is its position here
-- minus one, in request order; the C core gets the same numbers and names from
-- this file (CMakeLists.txt writes them into the generated header mg_hooks.h as
-- MG_HOOK_<NAME> and MG_HOOK_NAMES), so neither side keeps a list of its own.
--
-- scope: "worker" hooks are set with mg.on only; "route" hooks with mg.on or a
-- route's `on = { ... }`; "internal" ones are not a name users write (a route's
-- `respond = function` runs as "respond"). cache_key (i13-api) runs on a caching
-- route's GET, HEAD and PURGE after the request hooks, before the cache lookup; a
-- route's `cache = { key = fn }` is its route hook.
--
-- Keep one entry per line, as { "name", "scope" }: CMake reads them line by line.
return {
  { "init_worker", "worker" },
  { "connect", "worker" },
  { "request", "route" },
  { "balance", "route" },
  { "upstream_request", "route" },
  { "request_body", "route" },
  { "response", "route" },
  { "body", "route" },
  { "log", "route" },
  { "respond", "internal" },
  { "tls_hello", "worker" },
  { "cache_key", "route" },
}
