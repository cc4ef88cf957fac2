"""The Lua scripts of the Redis frontier (``crawl/redis_frontier.py``): one script per operation, so each is
atomic on the server. ``LIB`` holds the helpers every script starts with; every time is ``TIME`` in ms."""

# Shared helpers, prepended to every script. P is the key prefix (ARGV[1]); now is Redis's clock in ms.
LIB = r"""
local P = ARGV[1]
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end
local function hnum(key, f, default)
  local v = redis.call('HGET', key, f)
  if v then return tonumber(v) end
  return default
end
local function refresh(host, per_host)
  local hk = P .. 'host:' .. host
  if redis.call('HEXISTS', hk, 'skipped') == 0 and redis.call('LLEN', P .. 'q:' .. host) > 0
     and hnum(hk, 'inflight', 0) < per_host then
    local at = math.max(hnum(hk, 'next', 0), hnum(hk, 'held', 0))
    redis.call('ZADD', P .. 'ready', at, host)
  else
    redis.call('ZREM', P .. 'ready', host)
  end
end
local function release_slot(slot, per_host)
  local host = redis.call('HGET', P .. 'slots', slot)
  if not host then return nil end
  redis.call('HDEL', P .. 'slots', slot)
  redis.call('ZREM', P .. 'slotz', slot)
  local hk = P .. 'host:' .. host
  if hnum(hk, 'inflight', 0) > 0 then redis.call('HINCRBY', hk, 'inflight', -1) end
  refresh(host, per_host)
  return host
end
-- Scripts that change state and return it (TAKE, PUSH, SKIP) end with a request id (ARGV[#ARGV]): the reply is
-- kept 120 s under it, so a call that redis-py sends again after a lost connection gets the same reply
-- instead of taking a second URL, or of finding its URLs seen and its host skipped by itself.
local RID = P .. 'rid:' .. ARGV[#ARGV]
local function replayed()
  local v = redis.call('GET', RID)
  if v then return cjson.decode(v) end
  return nil
end
local function remember(out)
  redis.call('SET', RID, cjson.encode(out), 'EX', 120)
  return out
end
local function lease_back(url, lease, per_host)
  -- A leased URL no process records (its lease expired, or its process gave it back): to the head of its
  -- host's queue; or, when the host was skipped meanwhile, recorded as dropped with the skip's reason, counted
  -- for the lease's owner (queued for a skipped host, it would never be taken and the crawl never end).
  local f = {}
  for part in string.gmatch(lease, '[^\t]+') do f[#f + 1] = part end  -- token, owner, depth, tries, host
  local skipped = redis.call('HGET', P .. 'host:' .. f[5], 'skipped')
  if skipped then
    if redis.call('HSETNX', P .. 'done', url, skipped) == 1 then
      local rank = string.match(f[2], '^(%d+)/') or '0'
      redis.call('HINCRBY', P .. 'count', 'drop:' .. skipped, 1)
      redis.call('HINCRBY', P .. 'rcount:' .. rank, 'drop:' .. skipped, 1)
    end
    return
  end
  redis.call('LPUSH', P .. 'q:' .. f[5], f[3] .. '\t' .. f[4] .. '\t' .. url)
  redis.call('INCR', P .. 'queued')
  refresh(f[5], per_host)
end
local function reclaim(now, per_host)
  -- Leases and slots of a process that stopped renewing them (it died, or lost Redis for too long).
  local n = 0
  for _, url in ipairs(redis.call('ZRANGEBYSCORE', P .. 'leasez', '-inf', now, 'LIMIT', 0, 256)) do
    local lease = redis.call('HGET', P .. 'lease', url)
    redis.call('ZREM', P .. 'leasez', url)
    redis.call('HDEL', P .. 'lease', url)
    if lease and redis.call('HEXISTS', P .. 'done', url) == 0 then
      redis.call('HINCRBY', P .. 'count', 'count:lease_expired', 1)
      lease_back(url, lease, per_host)
      n = n + 1
    end
  end
  for _, slot in ipairs(redis.call('ZRANGEBYSCORE', P .. 'slotz', '-inf', now, 'LIMIT', 0, 256)) do
    release_slot(slot, per_host)
  end
  return n
end
local function acquire(host, now, per_host, base_delay, lease_ms)
  local hk = P .. 'host:' .. host
  local gate_before = hnum(hk, 'next', 0)
  local delay = hnum(hk, 'delay', base_delay)
  redis.call('HSET', hk, 'next', tostring(now + delay))
  local gate_no = redis.call('HINCRBY', hk, 'gate_no', 1)
  redis.call('HINCRBY', hk, 'inflight', 1)
  local slot = tostring(redis.call('INCR', P .. 'slotno'))
  redis.call('HSET', P .. 'slots', slot, host)
  redis.call('ZADD', P .. 'slotz', now + lease_ms, slot)
  refresh(host, per_host)
  return slot, gate_before, gate_no
end
"""

# ARGV: P, owner, lease_ms, per_host, base_delay_ms, n_local, local hosts...
# Returns {kind, now, ...}: kind 'local' (host, slot, gate_before, gate_no), 'shared' (host, slot, gate_before,
# gate_no, token, url, depth, tries), 'wait' (ms until the first host may start; -1: none queued anywhere).
TAKE = r"""
local owner, lease_ms, per_host, base_delay = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local now = now_ms()
local again = replayed()
if again then
  -- Sent again after its reply was lost (a Redis restart): maybe long after, past the slot's and the lease's
  -- expiry. Still held: both start again from now (else the next take by any process frees the host's slot
  -- while this one's request is in flight). Freed meanwhile: the ticket is void; the caller takes again.
  local slot = again[4]
  local ok = redis.call('HEXISTS', P .. 'slots', slot) == 1
  local lease = nil
  if again[1] == 'shared' then
    lease = redis.call('HGET', P .. 'lease', again[8])
    ok = ok and lease ~= false and string.sub(lease, 1, #again[7] + 1) == again[7] .. '\t'
  end
  if ok then
    redis.call('ZADD', P .. 'slotz', now + lease_ms, slot)
    if again[1] == 'shared' then redis.call('ZADD', P .. 'leasez', now + lease_ms, again[8]) end
    again[2] = tostring(now)
    return again
  end
  redis.call('DEL', RID)
  release_slot(slot, per_host)
  if lease and string.sub(lease, 1, #again[7] + 1) == again[7] .. '\t' then
    redis.call('HDEL', P .. 'lease', again[8])
    redis.call('ZREM', P .. 'leasez', again[8])
    lease_back(again[8], lease, per_host)
  end
  return {'wait', tostring(now), '0'}
end
reclaim(now, per_host)
local soonest = -1
local n_local = tonumber(ARGV[6])
for i = 1, n_local do
  local host = ARGV[6 + i]
  local hk = P .. 'host:' .. host
  if hnum(hk, 'inflight', 0) < per_host then
    local at = math.max(hnum(hk, 'next', 0), hnum(hk, 'held', 0))
    if at <= now then
      local slot, gb, gn = acquire(host, now, per_host, base_delay, lease_ms)
      return remember({'local', tostring(now), host, slot, tostring(gb), tostring(gn)})
    end
    if soonest < 0 or at - now < soonest then soonest = at - now end
  end
end
local top = redis.call('ZRANGE', P .. 'ready', 0, 0, 'WITHSCORES')
if #top == 0 then return {'wait', tostring(now), tostring(soonest)} end
local host, at = top[1], tonumber(top[2])
if at > now then
  if soonest < 0 or at - now < soonest then soonest = at - now end
  return {'wait', tostring(now), tostring(soonest)}
end
local entry = redis.call('LPOP', P .. 'q:' .. host)
if not entry then
  refresh(host, per_host)
  return {'wait', tostring(now), '0'}
end
redis.call('DECR', P .. 'queued')
local slot, gb, gn = acquire(host, now, per_host, base_delay, lease_ms)
local d1 = string.find(entry, '\t', 1, true)
local d2 = string.find(entry, '\t', d1 + 1, true)
local depth, tries, url = string.sub(entry, 1, d1 - 1), string.sub(entry, d1 + 1, d2 - 1), string.sub(entry, d2 + 1)
local token = tostring(redis.call('INCR', P .. 'fence'))
redis.call('HSET', P .. 'lease', url, token .. '\t' .. owner .. '\t' .. depth .. '\t' .. tries .. '\t' .. host)
redis.call('ZADD', P .. 'leasez', now + lease_ms, url)
return remember({'shared', tostring(now), host, slot, tostring(gb), tostring(gn), token, url, depth, tries})
"""

# ARGV: P, slot, per_host, base_delay_ms, mode ('end': the next start waits the delay from now; 'start': from
# start_ms when later than the take; 'none'), start_ms, take_ms
DONE = r"""
local slot, per_host, base_delay, mode = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local host = redis.call('HGET', P .. 'slots', slot)
if not host then return 0 end
local hk = P .. 'host:' .. host
local delay = hnum(hk, 'delay', base_delay)
local start = nil
if mode == 'end' then start = now_ms() elseif mode == 'start' then start = tonumber(ARGV[6]) end
if start and start > tonumber(ARGV[7]) then
  redis.call('HSET', hk, 'next', tostring(math.max(hnum(hk, 'next', 0), start + delay)))
  redis.call('HINCRBY', hk, 'gate_no', 1)
end
release_slot(slot, per_host)
return 1
"""

# ARGV: P, slot, per_host, gate_before, gate_no: no request was made; give the start back unless it moved.
CANCEL = r"""
local slot, per_host = ARGV[2], tonumber(ARGV[3])
local host = redis.call('HGET', P .. 'slots', slot)
if not host then return 0 end
local hk = P .. 'host:' .. host
if hnum(hk, 'gate_no', 0) == tonumber(ARGV[5]) then redis.call('HSET', hk, 'next', ARGV[4]) end
release_slot(slot, per_host)
return 1
"""

# ARGV: P, per_host, n, then n × (url, host, depth, tries, front: '1' ahead of the host's queue, '0' behind,
# 'c' a claim: mark seen, queue nothing; 'w' a depth refusal: noted in ``deep``, not seen). Returns per URL: '' queued (claimed), '=' seen already, else the
# host's skip reason; then the number of hosts that may start a request now and could not before.
PUSH = r"""
local again = replayed()
if again then return again end
local per_host, n = tonumber(ARGV[2]), tonumber(ARGV[3])
local out = {}
local touched = {}
for i = 0, n - 1 do
  local url, host, depth, tries, front = ARGV[4 + 5*i], ARGV[5 + 5*i], ARGV[6 + 5*i], ARGV[7 + 5*i], ARGV[8 + 5*i]
  local skipped = nil
  if front ~= 'w' then skipped = redis.call('HGET', P .. 'host:' .. host, 'skipped') end
  if front == 'w' then
    -- Too deep by this path: noted, not seen (a shorter path may still queue it before the crawl ends).
    if redis.call('SISMEMBER', P .. 'seen', url) == 0 then redis.call('HSETNX', P .. 'deep', url, '1') end
    out[#out + 1] = '='
  elseif redis.call('SADD', P .. 'seen', url) == 0 then
    out[#out + 1] = '='
  elseif front == 'c' then
    out[#out + 1] = ''  -- a claim: seen now, not queued (its process records why)
  elseif skipped then
    out[#out + 1] = skipped
  else
    local e = depth .. '\t' .. tries .. '\t' .. url
    if front == '1' then redis.call('LPUSH', P .. 'q:' .. host, e) else redis.call('RPUSH', P .. 'q:' .. host, e) end
    redis.call('INCR', P .. 'queued')
    touched[host] = true
    out[#out + 1] = ''
  end
end
-- Last: how many hosts became ready to start now (a sleeping taker is woken only for those).
local became = 0
local now = nil
for host, _ in pairs(touched) do
  local before = redis.call('ZSCORE', P .. 'ready', host)
  refresh(host, per_host)
  local after = redis.call('ZSCORE', P .. 'ready', host)
  if not before and after then
    now = now or now_ms()
    if tonumber(after) <= now then became = became + 1 end
  end
end
out[#out + 1] = tostring(became)
return remember(out)
"""

# ARGV: P, host, until_ms, per_host
HOLD = r"""
local hk = P .. 'host:' .. ARGV[2]
if tonumber(ARGV[3]) > hnum(hk, 'held', 0) then redis.call('HSET', hk, 'held', ARGV[3]) end
refresh(ARGV[2], tonumber(ARGV[4]))
return 1
"""

# ARGV: P, host, reason. Returns the URLs that were queued for the host (its caller drops them).
SKIP = r"""
local again = replayed()
if again then return again end
local host = ARGV[2]
local hk = P .. 'host:' .. host
if redis.call('HSETNX', hk, 'skipped', ARGV[3]) == 0 then return remember({}) end
local urls = {}
for _, e in ipairs(redis.call('LRANGE', P .. 'q:' .. host, 0, -1)) do
  local d1 = string.find(e, '\t', 1, true)
  local d2 = string.find(e, '\t', d1 + 1, true)
  urls[#urls + 1] = string.sub(e, d2 + 1)
end
redis.call('DEL', P .. 'q:' .. host)
redis.call('DECRBY', P .. 'queued', #urls)
redis.call('ZREM', P .. 'ready', host)
return remember(urls)
"""

# ARGV: P, lease_ms, n_leases, n × (url, token), then slots... Returns the URLs whose lease was lost.
RENEW = r"""
local now = now_ms()
local lease_ms, n = tonumber(ARGV[2]), tonumber(ARGV[3])
local lost = {}
for i = 0, n - 1 do
  local url, token = ARGV[4 + 2*i], ARGV[5 + 2*i]
  local lease = redis.call('HGET', P .. 'lease', url)
  if lease and string.sub(lease, 1, #token + 1) == token .. '\t' then
    redis.call('ZADD', P .. 'leasez', now + lease_ms, url)
  else
    lost[#lost + 1] = url
  end
end
for i = 4 + 2*n, #ARGV do
  if redis.call('HEXISTS', P .. 'slots', ARGV[i]) == 1 then redis.call('ZADD', P .. 'slotz', now + lease_ms, ARGV[i]) end
end
return lost
"""

# ARGV: P, commit_id, rank, segment_name ('' none), segment_json, n_done, n_counts, n_pages, then
# n_done × (url, reason ('' stored), token ('' no lease)), n_counts × (key, value), n_pages × (url, json).
# Returns the stored URLs not recorded (fenced, or stored by another process first); '=' when a commit with
# this id was applied already (its reply was lost).
COMMIT = r"""
if redis.call('SADD', P .. 'commits', ARGV[2]) == 0 then return {'='} end
local rank, seg = ARGV[3], ARGV[4]
local n_done, n_counts, n_pages = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local rc = P .. 'rcount:' .. rank
local excluded = {}
local i = 9
for _ = 1, n_done do
  local url, reason, token = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  i = i + 3
  local ok = true
  if token ~= '' then
    local lease = redis.call('HGET', P .. 'lease', url)
    if lease and string.sub(lease, 1, #token + 1) == token .. '\t' then
      redis.call('HDEL', P .. 'lease', url)
      redis.call('ZREM', P .. 'leasez', url)
    else
      ok = false
      redis.call('HINCRBY', P .. 'count', 'count:fenced', 1)
      redis.call('HINCRBY', rc, 'count:fenced', 1)
    end
  end
  local value = reason
  if reason == '' then value = '=' .. seg end
  if reason == 'redirect_target' then
    -- A redirect's target, fetched as its source's hop: seen (never queued again), not recorded as done, so
    -- a process that had queued the target itself still records its page.
    redis.call('SADD', P .. 'seen', url)
    ok = false
  end
  if ok and redis.call('HSETNX', P .. 'done', url, value) == 1 then
    if reason == '' then
      redis.call('HINCRBY', P .. 'count', 'count:stored', 1)
      redis.call('HINCRBY', rc, 'count:stored', 1)
    elseif reason ~= 'redirect_target' then
      redis.call('HINCRBY', P .. 'count', 'drop:' .. reason, 1)
      redis.call('HINCRBY', rc, 'drop:' .. reason, 1)
    end
  elseif reason == '' then
    excluded[#excluded + 1] = url
  end
end
for _ = 1, n_counts do
  redis.call('HINCRBY', P .. 'count', 'count:' .. ARGV[i], ARGV[i + 1])
  redis.call('HINCRBY', rc, 'count:' .. ARGV[i], ARGV[i + 1])
  i = i + 2
end
for _ = 1, n_pages do
  redis.call('HSET', P .. 'pages', ARGV[i], ARGV[i + 1])
  i = i + 2
end
if seg ~= '' then
  local rec = cjson.decode(ARGV[5])
  rec['excluded'] = excluded
  rec['rank'] = tonumber(rank)
  if #excluded == 0 then rec['excluded'] = nil end
  redis.call('HSET', P .. 'segments', seg, cjson.encode(rec))
end
return excluded
"""

# ARGV: P, per_host, then (url, token)...: leases this process gives back unrecorded (a stop): each URL goes
# back to the head of its host's queue at once instead of waiting out its expiry.
RELEASE = r"""
local per_host = tonumber(ARGV[2])
local n = 0
for i = 3, #ARGV, 2 do
  local url, token = ARGV[i], ARGV[i + 1]
  local lease = redis.call('HGET', P .. 'lease', url)
  if lease and string.sub(lease, 1, #token + 1) == token .. '\t' and redis.call('HEXISTS', P .. 'done', url) == 0 then
    redis.call('HDEL', P .. 'lease', url)
    redis.call('ZREM', P .. 'leasez', url)
    lease_back(url, lease, per_host)
    n = n + 1
  end
end
return n
"""

# ARGV: P. Returns {queued, leases, slots, stored, done, hosts ready, hosts known}.
STATUS = r"""
return {
  tonumber(redis.call('GET', P .. 'queued') or '0'),
  redis.call('ZCARD', P .. 'leasez'),
  redis.call('ZCARD', P .. 'slotz'),
  tonumber(redis.call('HGET', P .. 'count', 'count:stored') or '0'),
  redis.call('HLEN', P .. 'done'),
  redis.call('ZCARD', P .. 'ready'),
  tostring(now_ms()),
}
"""

# ARGV: P, rank, then URLs noted in ``deep``: each one no process queued is recorded as refused (trap_depth),
# counted for ``rank``. Idempotent (a URL recorded once stays recorded).
SETTLE_DEEP = r"""
local rc = P .. 'rcount:' .. ARGV[2]
local n = 0
for i = 3, #ARGV do
  local url = ARGV[i]
  if redis.call('SISMEMBER', P .. 'seen', url) == 0 and redis.call('HSETNX', P .. 'done', url, 'trap_depth') == 1 then
    redis.call('HINCRBY', P .. 'count', 'drop:trap_depth', 1)
    redis.call('HINCRBY', rc, 'drop:trap_depth', 1)
    n = n + 1
  end
  redis.call('HDEL', P .. 'deep', url)
end
return n
"""
