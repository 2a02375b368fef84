"""The cluster seam: slot map, shard leadership and fencing, kept in etcd (never a consensus of our own).

``coord`` talks to etcd (``aetcd``): the slot map, each shard's leader key on a lease (its
create-revision is the shard's fencing epoch) and the members' registrations. The data itself
travels in our own log. See docs/cluster.md.
"""
