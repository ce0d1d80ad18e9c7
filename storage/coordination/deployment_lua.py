"""The Lua script that decides a batch of admissions to one deployment, atomically in Redis.

One call carries everything a process has for one deployment since its last call: health
events (in order), corrections of admitted estimates, admissions made while the process ran
without Redis (added as they were), and the admissions to decide now (in order). Redis runs a
script alone, so every process sees one sequence of decisions: the sum admitted into a window
never exceeds its limit.

Times are Redis's own clock (``TIME``), in integer milliseconds, so processes on different
hosts share one clock. The windows have the semantics of ``engine.windows.SlidingWindow``:
amounts are kept per bucket (``resolution_ms``), a bucket remembers when its latest amount was
added and leaves the window ``span_ms`` after that; a correction changes the bucket its
admission went to, never below zero, and does nothing once that bucket has left.

KEYS[1]: the health hash (state, until, probe). KEYS[2]: the deployment's epoch, a random
name its state got when it was first written (a Redis that restarted empty, or was flushed,
gives it a new one). KEYS[2k+1], KEYS[2k+2]: window k's amounts and latest-add times, hashes
keyed by bucket start.

ARGV[1], JSON:
  w     [[limit, span_ms, resolution_ms, counts_requests (0|1)], ...]   one per window
  h     [[op, ms], ...]  "cool" (a 429: cool down for ms), "open" (open the breaker for ms),
        "ok" (the upstream answered: closes an open breaker), "release" (a probe ended
        without telling anything: another may probe)
  fix   [[window, at_ms, delta], ...]
  epoch the epoch the process last saw ("" if none); ``new_epoch``: the name to give a new one
  add   [[window, at_ms, amount], ...]  applied when the epoch is the process's own
  restore [[window, at_ms, amount], ...]  applied instead when it is not (the state was lost:
        the process puts back what it admitted in the windows' spans)
  acq   [estimated_tokens, ...]
  lease ms a half-open probe holds the deployment before another process may probe

Returns JSON: {now, r, v, hs, hu, epoch, fresh}: ``fresh`` true when the epoch was not the
process's own (it should restore, if this batch did not); ``r`` one answer per admission, in order: 0 (admitted), 1
(admitted as the half-open probe) or [reason, retry_ms] (reason "cooling", "open",
"probing", or the 1-based index of the full window; retry_ms -1: it can never fit); ``v``
[[used, clear_at_ms], ...] per window after the batch; ``hs``/``hu`` the health state and
until when it changes next.
"""

DEPLOYMENT_BATCH = r"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local req = cjson.decode(ARGV[1])
local windows = req.w or {}
local nw = #windows

local hkey, ekey = KEYS[1], KEYS[2]
local epoch = redis.call('GET', ekey)
if not epoch then
  epoch = req.new_epoch
  redis.call('SET', ekey, epoch)
end
local fresh = (req.epoch or '') ~= '' and req.epoch ~= epoch
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

local amounts, times, total, dirty = {}, {}, {}, {}
for k = 1, nw do
  local akey, tkey, span = KEYS[2 * k + 1], KEYS[2 * k + 2], windows[k][2]
  local a = redis.call('HGETALL', akey)
  local l = redis.call('HGETALL', tkey)
  local am, tm, sum, gone = {}, {}, 0, {}
  for i = 1, #l, 2 do
    tm[l[i]] = tonumber(l[i + 1])
  end
  for i = 1, #a, 2 do
    local b, v = a[i], tonumber(a[i + 1])
    if (tm[b] or 0) <= now - span then
      gone[#gone + 1] = b
      tm[b] = nil
    else
      am[b] = v
      sum = sum + v
    end
  end
  for b, _ in pairs(tm) do
    if am[b] == nil then
      gone[#gone + 1] = b
    end
  end
  for _, b in ipairs(gone) do
    tm[b] = nil
  end
  if #gone > 0 then
    redis.call('HDEL', akey, unpack(gone))
    redis.call('HDEL', tkey, unpack(gone))
  end
  amounts[k], times[k], total[k], dirty[k] = am, tm, sum, {}
end

local function bucket(k, at)
  local res = windows[k][3]
  return string.format('%d', at - at % res)
end

local function add(k, at, amount)
  local b = bucket(k, at)
  amounts[k][b] = (amounts[k][b] or 0) + amount
  times[k][b] = math.max(times[k][b] or 0, at)
  total[k] = total[k] + amount
  dirty[k][b] = true
end

for _, f in ipairs(req.fix or {}) do
  local k, at, delta = f[1], f[2], f[3]
  if k >= 1 and k <= nw then
    local b = bucket(k, at)
    local v = amounts[k][b]
    if v ~= nil then
      local change = math.max(delta, -v)
      amounts[k][b] = v + change
      total[k] = total[k] + change
      dirty[k][b] = true
    end
  end
end

local replay = req.add or {}
if fresh then
  replay = req.restore or {}
end
for _, e in ipairs(replay) do
  local k, at, amount = e[1], e[2], e[3]
  if k >= 1 and k <= nw and at > now - windows[k][2] and at <= now then
    add(k, at, amount)
  end
end

local function room_in(k, amount)
  local w = windows[k]
  if amount > w[1] then
    return -1
  end
  local excess = total[k] + amount - w[1]
  local starts = {}
  for b, _ in pairs(amounts[k]) do
    starts[#starts + 1] = tonumber(b)
  end
  table.sort(starts)
  for _, s in ipairs(starts) do
    local b = string.format('%d', s)
    excess = excess - amounts[k][b]
    if excess <= 0 then
      return math.max(times[k][b] + w[2] - now, 1)
    end
  end
  return w[2]
end

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
    for k = 1, nw do
      local amount = est
      if windows[k][4] == 1 then
        amount = 1
      end
      if total[k] + amount > windows[k][1] then
        answer = {k, room_in(k, amount)}
        break
      end
    end
  end
  if answer == nil then
    for k = 1, nw do
      local amount = est
      if windows[k][4] == 1 then
        amount = 1
      end
      add(k, now, amount)
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
for k = 1, nw do
  local akey, tkey, span = KEYS[2 * k + 1], KEYS[2 * k + 2], windows[k][2]
  local aset, tset, latest = {}, {}, 0
  for b, _ in pairs(dirty[k]) do
    aset[#aset + 1] = b
    aset[#aset + 1] = amounts[k][b]
    tset[#tset + 1] = b
    tset[#tset + 1] = times[k][b]
  end
  if #aset > 0 then
    redis.call('HSET', akey, unpack(aset))
    redis.call('HSET', tkey, unpack(tset))
    redis.call('PEXPIRE', akey, span + 60000)
    redis.call('PEXPIRE', tkey, span + 60000)
  end
  for _, at in pairs(times[k]) do
    latest = math.max(latest, at)
  end
  local clear = now
  if latest > 0 then
    clear = latest + span
  end
  views[k] = {math.max(total[k], 0), clear}
end

if state ~= state0 or hu ~= hu0 or probe ~= probe0 then
  if state == 'closed' then
    redis.call('DEL', hkey)
  else
    redis.call('HSET', hkey, 'state', state, 'until', hu, 'probe', probe)
    redis.call('PEXPIRE', hkey, math.max(hu, probe, now) - now + 3600000)
  end
end

return cjson.encode({now = now, r = answers, v = views, hs = state, hu = hu, epoch = epoch, fresh = fresh})
"""
