"""What happened, delivered: the change feed's public shape, webhook endpoints and their
deliveries, confirmation emails, all from the committed log (see dispatcher.py)."""

from inventoryd.outbox.changes import CHANGE_TYPES, Change, ChangeType, change_of
from inventoryd.outbox.dispatcher import Outbox

__all__ = ["CHANGE_TYPES", "Change", "ChangeType", "Outbox", "change_of"]
