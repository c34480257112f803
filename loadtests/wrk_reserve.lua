-- wrk script: POST a reservation of one seat for a random buyer, at a random event of those listed
-- (one per line) in the file named by the first script argument. A second argument, if given, is
-- the bearer token to send (a service token: it may reserve for any user_id).
local events = {}
local counter = 0
local headers = {["Content-Type"] = "application/json"}

function init(args)
  for line in io.lines(args[1]) do
    if #line > 0 then events[#events + 1] = line end
  end
  if args[2] and #args[2] > 0 then headers["Authorization"] = "Bearer " .. args[2] end
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
end

function request()
  counter = counter + 1
  local event = events[math.random(#events)]
  local body = string.format('{"ticket_type":"GA","quantity":1,"user_id":"u%d-%d"}', math.random(1000000), counter)
  return wrk.format("POST", "/v1/events/" .. event .. "/reservations", headers, body)
end
