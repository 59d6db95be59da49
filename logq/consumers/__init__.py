"""Consumer groups: delivery state, the group journal and its snapshots.

Internal: other logq packages import from here, never from the modules inside,
and users go through the public API in `logq`.
"""

from logq.consumers.group import Group
from logq.consumers.state import PartitionState

__all__ = ["Group", "PartitionState"]
