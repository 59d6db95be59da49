"""Consumer groups: delivery state, selection, the group journal and the priority index.

Internal: other logq packages import from here, never from the modules inside,
and users go through the public API in `logq`.
"""

from logq.consumers.config import GroupConfig
from logq.consumers.group import Group
from logq.consumers.priority_index import PriorityIndex
from logq.consumers.selection import Candidate, PartitionSelector
from logq.consumers.state import DeliveryState, PartitionState, Pending

__all__ = [
    "Candidate",
    "DeliveryState",
    "Group",
    "GroupConfig",
    "PartitionSelector",
    "PartitionState",
    "Pending",
    "PriorityIndex",
]
