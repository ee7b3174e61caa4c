-- docs/policies.md "Writing your own": a user policy (policy_example_spec runs it)
local mg = require "moongate"

return function(conf)
  if type(conf.header) ~= "string" then -- level 2: the error names the caller's line
    error("require_header: 'header' must be a string", 2)
  end
  local name = conf.header:lower()
  return mg.policy.new {
    name = "require_header",
    describe = function() return "header=" .. name end,
    request = function(self, req)
      if not req:header(name) then
        return req:respond(400, "missing " .. name .. "\n", { ["content-type"] = "text/plain" })
      end
    end,
  }
end
