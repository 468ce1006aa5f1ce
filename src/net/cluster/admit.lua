-- ARGV: room, id, name, node, room size. Admits the participant if the room has space:
-- the size holds across the fleet because scripts run one at a time.
local room, id, name, node, size = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
-- Ids are unique across the fleet, not only in the room.
if redis.call('HEXISTS', P .. 'participants', id) == 1 then return 'taken' end
if redis.call('HLEN', room_key(room)) >= size then return 'full' end
add_member(room, id, name, node)
return 'ok'
