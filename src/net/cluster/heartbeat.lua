-- ARGV: node, presence TTL in ms, reap ("1": remove the participants of nodes whose
-- presence expired). Returns how many participants were removed, and 1 if this node's own
-- presence was still there (0: it had expired, and others may have removed its
-- participants: the node registers them again).
local node, ttl, reap = ARGV[1], ARGV[2], ARGV[3] == '1'
local was_present = redis.call('EXISTS', alive_key(node))
redis.call('SET', alive_key(node), '1', 'PX', ttl)
redis.call('SADD', P .. 'nodes', node)
local removed = 0
if reap then
  for _, other in ipairs(redis.call('SMEMBERS', P .. 'nodes')) do
    if redis.call('EXISTS', alive_key(other)) == 0 then
      removed = removed + remove_node(other)
    end
  end
end
return {removed, was_present}
