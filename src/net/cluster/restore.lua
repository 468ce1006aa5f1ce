-- ARGV: node, its participants now (JSON list of {room, id, name}). After the store was
-- unreachable (or lost its data): the node's participants become exactly these.
local node = ARGV[1]
local wanted = cjson.decode(ARGV[2])
local keep = {}
for _, m in ipairs(wanted) do keep[m.id] = m.room end
local current = redis.call('HGETALL', members_key(node))
for i = 1, #current, 2 do
  local id, room = current[i], current[i + 1]
  if keep[id] ~= room then
    remove_member(room, id, node)
    redis.call('HDEL', members_key(node), id)
  end
end
for _, m in ipairs(wanted) do
  if redis.call('HEXISTS', room_key(m.room), m.id) == 0 then
    add_member(m.room, m.id, m.name, node)
  end
end
redis.call('SADD', P .. 'nodes', node)
return 'ok'
