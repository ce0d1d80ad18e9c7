"""The Lua scripts that decide batches of admissions atomically in Redis.

Redis runs one script at a time, so every process sees one sequence of decisions: the sum
admitted into a window never exceeds its limit. One call carries everything a process has
gathered since its previous one.

Times are Redis's own clock (``TIME``) in integer milliseconds, so processes on different
hosts share one clock. Windows (:data:`WINDOWS`) have the semantics of
``engine.windows.SlidingWindow``: amounts are kept per bucket (``resolution_ms``); a bucket
remembers when its latest amount was added and leaves the window ``span_ms`` after that; a
correction changes the bucket its admission went to, never below zero, and does nothing once
that bucket has left. Each window is two keys (a list of its buckets and a hash of their
amounts, latest-add times and the total, see :data:`WINDOWS`); they expire a minute after
the window's span.

Epochs: a namespace's state (one deployment's; all keys' limits) has an epoch, a random name
given when it is first written. A Redis that restarted empty, or was flushed, gives it a new
one; a process that sees an epoch that is not the one it knew (``fresh``) puts back what it
admitted within the windows' spans (``restore``), instead of only what it admitted while
Redis was away (``add``).
"""

# The window library: load, add, correct, room, save. Every entry script starts with it.
# A window is a list of its bucket starts, oldest first, and a hash of "total" and, per
# bucket, "a:<start>" (amount) and "t:<start>" (latest add, ms). A call reads the total and
# drops the buckets that left; it reads other buckets only to correct one, or to tell a
# refusal when there will be room.
WINDOWS = r"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local req = cjson.decode(ARGV[1])

local function epoch_of(ekey)
  local epoch = redis.call('GET', ekey)
  if not epoch then
    epoch = req.new_epoch
    redis.call('SET', ekey, epoch)
  end
  return epoch, (req.epoch or '') ~= '' and req.epoch ~= epoch
end

-- spec: {limit, span_ms, resolution_ms, counts_requests (0|1)}
local function load_window(spec, lkey, hkey)
  local span = spec[2]
  local w = {limit = spec[1], span = span, res = spec[3], requests = spec[4] == 1,
             lkey = lkey, hkey = hkey, stored = {}, pending = {}, changed = false}
  local total = tonumber(redis.call('HGET', hkey, 'total')) or 0
  while true do
    local first = redis.call('LINDEX', lkey, 0)
    if not first then
      break
    end
    local v = redis.call('HMGET', hkey, 'a:' .. first, 't:' .. first)
    if (tonumber(v[2]) or 0) > now - span then
      break
    end
    total = total - (tonumber(v[1]) or 0)
    redis.call('LPOP', lkey)
    redis.call('HDEL', hkey, 'a:' .. first, 't:' .. first)
    w.changed = true
  end
  if redis.call('LLEN', lkey) == 0 then
    total = 0
  end
  w.total = math.max(total, 0)
  return w
end

local function bucket(w, at)
  return string.format('%d', at - at % w.res)
end

-- {amount, latest} of bucket b as stored and changed in this call, or nil if there is none
local function bucket_of(w, b)
  local s = w.stored[b]
  if s == nil then
    local v = redis.call('HMGET', w.hkey, 'a:' .. b, 't:' .. b)
    s = {tonumber(v[1]), tonumber(v[2]) or 0}
    w.stored[b] = s
  end
  local p = w.pending[b]
  if s[1] == nil and p == nil then
    return nil
  end
  return {(s[1] or 0) + (p and p[1] or 0), math.max(s[2], p and p[2] or 0)}
end

local function w_add(w, at, amount)
  if at <= now - w.span or at > now then
    return
  end
  local b = bucket(w, at)
  local p = w.pending[b] or {0, 0}
  p[1], p[2] = p[1] + amount, math.max(p[2], at)
  w.pending[b] = p
  w.total = w.total + amount
end

local function w_fix(w, at, delta)
  local b = bucket(w, at)
  local cur = bucket_of(w, b)
  if cur ~= nil then
    local change = math.max(delta, -cur[1])
    local p = w.pending[b] or {0, 0}
    p[1] = p[1] + change
    w.pending[b] = p
    w.total = w.total + change
  end
end

-- ms until amount more fits (at least 1), or -1 if it never can
local function w_room_in(w, amount)
  if amount > w.limit then
    return -1
  end
  local excess = w.total + amount - w.limit
  if excess <= 0 then
    return 0
  end
  local starts, seen = {}, {}
  for _, b in ipairs(redis.call('LRANGE', w.lkey, 0, -1)) do
    starts[#starts + 1], seen[b] = tonumber(b), true
  end
  for b, _ in pairs(w.pending) do
    if not seen[b] then
      starts[#starts + 1] = tonumber(b)
    end
  end
  table.sort(starts)
  for _, s in ipairs(starts) do
    local cur = bucket_of(w, string.format('%d', s))
    if cur ~= nil then
      excess = excess - cur[1]
      if excess <= 0 then
        return math.max(cur[2] + w.span - now, 1)
      end
    end
  end
  return w.span
end

-- writes what changed; returns {used, clear_at_ms}
local function w_save(w)
  local last = redis.call('LINDEX', w.lkey, -1)
  local fresh = {}
  for b, p in pairs(w.pending) do
    local cur = bucket_of(w, b)
    redis.call('HSET', w.hkey, 'a:' .. b, cur[1], 't:' .. b, cur[2])
    if w.stored[b][1] == nil then
      fresh[#fresh + 1] = tonumber(b)
    end
    w.changed = true
  end
  table.sort(fresh)
  for _, s in ipairs(fresh) do
    local b = string.format('%d', s)
    if not last or s > tonumber(last) then
      redis.call('RPUSH', w.lkey, b)
      last = b
    else
      -- older than the newest bucket (put back after Redis lost its state): keep the order
      local after = nil
      for _, other in ipairs(redis.call('LRANGE', w.lkey, 0, -1)) do
        if tonumber(other) > s then
          after = other
          break
        end
      end
      redis.call('LINSERT', w.lkey, 'BEFORE', after, b)
    end
  end
  if w.changed then
    redis.call('HSET', w.hkey, 'total', w.total)
    redis.call('PEXPIRE', w.lkey, w.span + 60000)
    redis.call('PEXPIRE', w.hkey, w.span + 60000)
  end
  local clear = now
  if last then
    clear = (tonumber(redis.call('HGET', w.hkey, 't:' .. last)) or now) + w.span
  end
  return {math.max(w.total, 0), clear}
end

-- The batch's windows (req.w; window k's keys are KEYS[first + 2k - 2] and the next), with
-- the batch's corrections applied, then what the process admitted alone (add) or, when the
-- state was lost (fresh), everything it admitted within the spans (restore).
local function windows_of(first, fresh)
  local windows = {}
  for k, spec in ipairs(req.w or {}) do
    windows[k] = load_window(spec, KEYS[first + 2 * k - 2], KEYS[first + 2 * k - 1])
  end
  for _, f in ipairs(req.fix or {}) do
    local w = windows[f[1]]
    if w ~= nil then
      w_fix(w, f[2], f[3])
    end
  end
  local entries = req.add or {}
  if fresh then
    entries = req.restore or {}
  end
  for _, e in ipairs(entries) do
    local w = windows[e[1]]
    if w ~= nil then
      w_add(w, e[2], e[3])
    end
  end
  return windows
end
"""

DEPLOYMENT_BATCH = (
    WINDOWS
    + r"""
-- One deployment: its windows, its health and its requests in flight, for one process's batch.
-- KEYS[1]: the health hash (state, until, probe); KEYS[2]: the epoch; KEYS[3]: requests in
-- flight per process ("count:reported_at_ms"); KEYS[2k+2], KEYS[2k+3]: window k's bucket
-- list and hash.
-- ARGV[1], JSON:
--   w     [[limit, span_ms, resolution_ms, counts_requests], ...]   one per window
--   h     [[op, ms], ...]  "cool" (a 429: cool down for ms), "open" (open the breaker for
--         ms), "ok" (the upstream answered: closes an open breaker), "release" (a probe
--         ended without telling anything: another may probe)
--   fix   [[window, at_ms, delta], ...]
--   epoch, new_epoch, add, restore: see the module's docstring ([[window, at_ms, amount], ...])
--   acq   [estimated_tokens, ...]
--   lease ms a half-open probe holds the deployment before another process may probe
--   inst, infl, stale: this process's name and its requests in flight before this batch;
--         a process that has not reported for stale ms no longer counts
-- Returns JSON {now, r, v, hs, hu, epoch, fresh, fin}: fin the requests in flight in every
-- process (this batch's admissions included); r one answer per admission, in order:
-- 0 (admitted), 1 (admitted as the half-open probe) or [reason, retry_ms] (reason "cooling",
-- "open", "probing", or the 1-based index of the full window; retry_ms -1: it can never
-- fit); v [[used, clear_at_ms], ...] per window; hs/hu the health state and when it ends.
local hkey = KEYS[1]
local epoch, fresh = epoch_of(KEYS[2])
local h = redis.call('HMGET', hkey, 'state', 'until', 'probe')
local state, hu, probe = h[1] or 'closed', tonumber(h[2]) or 0, tonumber(h[3]) or 0
local state0, hu0, probe0 = state, hu, probe
if state == 'cooling' and now >= hu then
  state = 'closed'
elseif state == 'open' and now >= hu then
  state, probe = 'half_open', 0
end
for _, ev in ipairs(req.h or {}) do
  local op, ms = ev[1], tonumber(ev[2]) or 0
  if op == 'cool' then
    if state == 'closed' then
      state, hu = 'cooling', now + ms
    elseif state == 'cooling' then
      hu = math.max(hu, now + ms)
    elseif state == 'half_open' then
      state, hu, probe = 'open', now + ms, 0
    end
  elseif op == 'open' then
    state, hu, probe = 'open', now + ms, 0
  elseif op == 'ok' then
    if state == 'open' or state == 'half_open' then
      state, probe = 'closed', 0
    end
  elseif op == 'release' then
    if state == 'half_open' then
      probe = 0
    end
  end
end

local windows = windows_of(4, fresh)

local answers = {}
local lease = tonumber(req.lease) or 30000
for i, est in ipairs(req.acq or {}) do
  local answer = nil
  if state == 'cooling' or state == 'open' then
    answer = {state, math.max(hu - now, 1)}
  elseif state == 'half_open' and probe > now then
    answer = {'probing', 1000}
  end
  if answer == nil then
    for k, w in ipairs(windows) do
      local amount = w.requests and 1 or est
      if w.total + amount > w.limit then
        answer = {k, w_room_in(w, amount)}
        break
      end
    end
  end
  if answer == nil then
    for _, w in ipairs(windows) do
      w_add(w, now, w.requests and 1 or est)
    end
    if state == 'half_open' then
      probe = now + lease
      answer = 1
    else
      answer = 0
    end
  end
  answers[i] = answer
end

local views = {}
for k, w in ipairs(windows) do
  views[k] = w_save(w)
end

local ikey, mine = KEYS[3], tonumber(req.infl) or 0
for _, answer in ipairs(answers) do
  if type(answer) == 'number' then
    mine = mine + 1
  end
end
local fin, gone = mine, {}
local seen = redis.call('HGETALL', ikey)
for i = 1, #seen, 2 do
  if seen[i] ~= req.inst then
    local count, at = string.match(seen[i + 1], '^(%d+):(%d+)$')
    if count and tonumber(at) > now - (tonumber(req.stale) or 3000) then
      fin = fin + tonumber(count)
    else
      gone[#gone + 1] = seen[i]
    end
  end
end
if #gone > 0 then
  redis.call('HDEL', ikey, unpack(gone))
end
redis.call('HSET', ikey, req.inst, string.format('%d:%d', mine, now))
redis.call('PEXPIRE', ikey, 3600000)

if state ~= state0 or hu ~= hu0 or probe ~= probe0 then
  if state == 'closed' then
    redis.call('DEL', hkey)
  else
    redis.call('HSET', hkey, 'state', state, 'until', hu, 'probe', probe)
    redis.call('PEXPIRE', hkey, math.max(hu, probe, now) - now + 3600000)
  end
end
return cjson.encode({now = now, r = answers, v = views, hs = state, hu = hu, epoch = epoch, fresh = fresh,
                     fin = fin})
"""
)

KEYS_BATCH = (
    WINDOWS
    + r"""
-- Developer keys' windows (requests and tokens per minute), many keys per batch.
-- KEYS[1]: the epoch of all keys' limits; KEYS[2k], KEYS[2k+1]: window k's bucket list and hash.
-- ARGV[1], JSON:
--   w     [[limit, span_ms, resolution_ms, 0], ...]   one per window
--   fix   [[window, at_ms, delta], ...]
--   epoch, new_epoch, add, restore: see the module's docstring
--   acq   [[window, amount], ...]  admissions, decided in order
-- Returns JSON {now, r, v, epoch, fresh}: r one answer per admission: 0 (admitted), or the
-- ms until it fits (-1: it never can); v [[used, clear_at_ms], ...] per window.
local epoch, fresh = epoch_of(KEYS[1])
local windows = windows_of(2, fresh)
local answers = {}
for i, a in ipairs(req.acq or {}) do
  local w, amount = windows[a[1]], a[2]
  if w.total + amount > w.limit then
    answers[i] = w_room_in(w, amount)
  else
    w_add(w, now, amount)
    answers[i] = 0
  end
end
local views = {}
for k, w in ipairs(windows) do
  views[k] = w_save(w)
end
return cjson.encode({now = now, r = answers, v = views, epoch = epoch, fresh = fresh})
"""
)
