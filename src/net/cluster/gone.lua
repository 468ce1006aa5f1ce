-- ARGV: node. The node stops: its participants leave their rooms.
return remove_node(ARGV[1])
