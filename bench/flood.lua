-- A wrong-password flood from many client addresses (the gateway trusts 127.0.0.1 as a proxy in
-- the benchmark config, so X-Forwarded-For names the client) against many usernames: every
-- attempt passes the per-IP and per-account budgets and costs a full argon2id verification,
-- the worst case for the gateway. Loopback resolver as in loopback.lua.
function wrk.resolve(host, service)
   wrk.addrs = wrk.lookup("127.0.0.1", service)
end
local counter = 0
function request()
   counter = counter + 1
   local ip = string.format("10.%d.%d.%d", (counter / 65536) % 256, (counter / 256) % 256, counter % 256)
   local body = string.format('{"username":"victim%d","password":"wrong-password-%d"}', counter, counter)
   return wrk.format("POST", "/.auth/login", {
      ["Content-Type"] = "application/json",
      ["Accept"] = "application/json",
      ["X-Forwarded-For"] = ip,
   }, body)
end
