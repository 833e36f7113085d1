-- Portcullis login limiter: a credential checked under a reservation was right. Clears the
-- account's streak and this pair's, and makes the IP known for the account (see begin.lua).
--
-- KEYS[1]  account streak     KEYS[2]  pair streaks     KEYS[3]  known IPs
-- ARGV     now, ip, known_ttl, max_known

local now = tonumber(ARGV[1])
local ip = ARGV[2]
local known_ttl, max_known = tonumber(ARGV[3]), tonumber(ARGV[4])

redis.call('DEL', KEYS[1])
redis.call('HDEL', KEYS[2], 'n:' .. ip, 't:' .. ip)
redis.call('HSET', KEYS[3], ip, string.format('%d', now + known_ttl))
redis.call('PEXPIRE', KEYS[3], known_ttl)

-- Bound the known set: drop expired IPs, then the ones that expire soonest.
if redis.call('HLEN', KEYS[3]) > max_known then
  local all = redis.call('HGETALL', KEYS[3])
  local live = {}
  for i = 1, #all, 2 do
    local until_ = tonumber(all[i + 1])
    if until_ <= now then
      redis.call('HDEL', KEYS[3], all[i])
    else
      table.insert(live, {all[i], until_})
    end
  end
  if #live > max_known then
    table.sort(live, function(a, b) return a[2] < b[2] end)
    for i = 1, #live - max_known do
      redis.call('HDEL', KEYS[3], live[i][1])
    end
  end
end
return 0
