-- Portcullis login limiter: check the rules for one attempt and, if they all pass, reserve it
-- (count it as a failure), in one atomic step. The Rust twin is `judge` + `MemoryLimiter` in
-- src/ratelimit/; both are pinned by the same tests. Times are milliseconds since the Unix
-- epoch, passed in by the gateway (never Redis TIME) so every instance and test agrees.
--
-- KEYS[1]  IP bucket: GCRA theoretical arrival time (the scheme governor uses)
-- KEYS[2]  account streak: hash f = consecutive failures, t = last failure
-- KEYS[3]  pair streaks of the account: hash n:<ip> = failures, t:<ip> = last failure
-- KEYS[4]  known IPs of the account: hash <ip> = known until
-- ARGV     now, ip, ip_interval, ip_burst, pair_free, pair_base, pair_cap, pair_memory,
--          account_free, account_base, account_cap, failure_memory, hard_cap, locked_retry,
--          max_pairs
-- Returns  {0, failures so far} when allowed, else {code, wait}: 1 IP rate, 2 account back-off,
--          3 pair back-off, 4 locked.

local now = tonumber(ARGV[1])
local ip = ARGV[2]
local ip_interval, ip_burst = tonumber(ARGV[3]), tonumber(ARGV[4])
local pair_free, pair_base = tonumber(ARGV[5]), tonumber(ARGV[6])
local pair_cap, pair_memory = tonumber(ARGV[7]), tonumber(ARGV[8])
local account_free, account_base = tonumber(ARGV[9]), tonumber(ARGV[10])
local account_cap, failure_memory = tonumber(ARGV[11]), tonumber(ARGV[12])
local hard_cap, locked_retry = tonumber(ARGV[13]), tonumber(ARGV[14])
local max_pairs = tonumber(ARGV[15])

-- A missing key or field reads as false; count it as zero.
local function num(value)
  return tonumber(value) or 0
end

-- The wait after `failures`: none while within `free`, then base * 2^(failures - free), capped.
local function backoff(failures, free, base, cap)
  local excess = failures - free
  if excess < 0 then
    return nil
  end
  if excess > 40 then
    return cap
  end
  return math.min(base * 2 ^ excess, cap)
end

-- Rule 4: a lock is never forgotten.
local failures = num(redis.call('HGET', KEYS[2], 'f'))
local last = num(redis.call('HGET', KEYS[2], 't'))
if failures >= hard_cap then
  return {4, locked_retry}
end
if now - last >= failure_memory then
  failures = 0
end

-- Rules 2 and 3: the longer wait wins, the account's on a tie.
local code, wait = 0, 0
local known = num(redis.call('HGET', KEYS[4], ip)) > now
if not known then
  local w = backoff(failures, account_free, account_base, account_cap)
  if w and last + w > now then
    code, wait = 2, last + w - now
  end
end
local pair_n = 'n:' .. ip
local pair_t = 't:' .. ip
local pair_failures = num(redis.call('HGET', KEYS[3], pair_n))
local pair_last = num(redis.call('HGET', KEYS[3], pair_t))
if now - pair_last >= pair_memory then
  pair_failures = 0
end
local w = backoff(pair_failures, pair_free, pair_base, pair_cap)
if w and pair_last + w - now > wait then
  code, wait = 3, pair_last + w - now
end
if code ~= 0 then
  return {code, wait}
end

-- Rule 1: GCRA, as governor does it (burst tolerance = interval * (burst - 1)).
local tau = ip_interval * (ip_burst - 1)
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if now < tat - tau then
  return {1, tat - tau - now}
end
tat = math.max(tat, now) + ip_interval
redis.call('SET', KEYS[1], string.format('%d', tat), 'PX', string.format('%d', tat - now))

-- Reserve: the attempt counts as a failure until a success clears it.
failures = failures + 1
redis.call('HSET', KEYS[2], 'f', failures, 't', string.format('%d', now))
if failures >= hard_cap then
  redis.call('PERSIST', KEYS[2])
else
  redis.call('PEXPIRE', KEYS[2], failure_memory)
end
redis.call('HSET', KEYS[3], pair_n, pair_failures + 1, pair_t, string.format('%d', now))
redis.call('PEXPIRE', KEYS[3], pair_memory)

-- Bound the pair hash: drop expired pairs, then the oldest.
if redis.call('HLEN', KEYS[3]) > 2 * max_pairs then
  local all = redis.call('HGETALL', KEYS[3])
  local live = {}
  for i = 1, #all, 2 do
    if string.sub(all[i], 1, 2) == 't:' then
      local other = string.sub(all[i], 3)
      local at = tonumber(all[i + 1])
      if now - at >= pair_memory then
        redis.call('HDEL', KEYS[3], 'n:' .. other, 't:' .. other)
      else
        table.insert(live, {other, at})
      end
    end
  end
  if #live > max_pairs then
    table.sort(live, function(a, b) return a[2] < b[2] end)
    for i = 1, #live - max_pairs do
      redis.call('HDEL', KEYS[3], 'n:' .. live[i][1], 't:' .. live[i][1])
    end
  end
end
return {0, failures}
