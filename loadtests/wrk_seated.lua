-- wrk script: POST a reservation of 1 to the third argument's number of tickets (best available
-- on a seated type, or general admission) of the ticket type named by the second argument, at
-- the event named by the first, for a new buyer each time; the fourth argument is the bearer token
-- (a service token: it may reserve for any user_id).
local event = ""
local ticket_type = ""
local most = 1
local counter = 0
local headers = {["Content-Type"] = "application/json"}

function init(args)
  event = args[1]
  ticket_type = args[2]
  most = tonumber(args[3])
  headers["Authorization"] = "Bearer " .. args[4]
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
end

function request()
  counter = counter + 1
  local body = string.format('{"ticket_type":"%s","quantity":%d,"user_id":"s%d-%d"}',
    ticket_type, math.random(most), math.random(1000000000), counter)
  return wrk.format("POST", "/v1/events/" .. event .. "/reservations", headers, body)
end
