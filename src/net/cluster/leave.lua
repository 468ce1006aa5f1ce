-- ARGV: room, id, node. The participant left through its node.
local raw = redis.call('HGET', room_key(ARGV[1]), ARGV[2])
if raw and cjson.decode(raw).node == ARGV[3] then remove_member(ARGV[1], ARGV[2], ARGV[3]) end
return 'ok'
