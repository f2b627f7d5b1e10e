-- list_waiting: a page of waiting job ids, grouped jobs included (those wait
-- in their group's own set, gwait:<group>, not in `wait`). Reads only.
--
-- KEYS[1] wait   KEYS[2] group_names
--
-- ARGV[1] prefix   ARGV[2] now (unused)   ARGV[3] maxlen (unused)
--         (the head: include/common.lua)
-- ARGV[4] start: 0-based   ARGV[5] limit
--
-- Order: the ungrouped jobs in the order they run, then each group's jobs in
-- the order they run, groups sorted by name. (Groups take turns with the
-- ungrouped jobs, so this is not the order of the whole queue.)
local prefix, start, limit = ARGV[1], tonumber(ARGV[4]), tonumber(ARGV[5])
local ids = {}
local function page(set_key)
  local size = redis.call('ZCARD', set_key)
  if start >= size then  -- the page starts past this set
    start = start - size
    return
  end
  local got = redis.call('ZRANGE', set_key, start, start + limit - #ids - 1)
  start = 0
  for _, id in ipairs(got) do ids[#ids + 1] = id end
end
page(KEYS[1])
local groups = redis.call('SMEMBERS', KEYS[2])
table.sort(groups)
for _, group in ipairs(groups) do
  if #ids >= limit then break end
  page(prefix .. 'gwait:' .. group)
end
return ids
