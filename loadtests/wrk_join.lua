-- wrk script: POST a join of the waiting room of the event named by the first script argument,
-- for a new user each time (a service token, the second argument, joins for any user_id).
local event = ""
local counter = 0
local headers = {["Content-Type"] = "application/json"}

function init(args)
  event = args[1]
  headers["Authorization"] = "Bearer " .. args[2]
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
end

function request()
  counter = counter + 1
  local body = string.format('{"user_id":"q%d-%d"}', math.random(1000000000), counter)
  return wrk.format("POST", "/v1/events/" .. event .. "/queue", headers, body)
end
