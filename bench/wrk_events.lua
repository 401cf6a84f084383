-- wrk script: POST one purchase event per request, spread over 500 users.
-- Run against a daemon started with API key bench-key, for example:
--   wrk -t2 -c64 -d10s -s bench/wrk_events.lua --latency http://127.0.0.1:18090
counter = 0

request = function()
  counter = counter + 1
  local path = "/api/user/wrk-" .. (counter % 500) .. "/event/purchase"
  local headers = {["Authorization"] = "Bearer bench-key", ["Content-Type"] = "application/json"}
  return wrk.format("POST", path, headers, '{"attributes": {"amount": 12.5, "cds": 2}}')
end
