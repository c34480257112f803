"""The pure state machine: one event's inventory, with no I/O and no asyncio.

It is split by phase, as TigerBeetle's state machine is:

- `decide.py` — `decide(state, command, now) -> Decision(records, reply)`: what a command produces
  and what it earns; expected outcomes (`sold_out`, `hold_expired`, …) are reply values.
- `apply.py` — `apply(state, seq, record)`: fold one log record into the state, one function per
  record kind. The actor calls it live after each decision; recovery calls it over the log.
- `invariants.py` — what must never be: checked on what each record touched, after every apply,
  and in full after a replay and in audits (`invariant()`, which `python -O` cannot strip).
- `snapshots.py` — snapshot, restore, replay: state is a fold of the log.

The data they share: `records.py` (the event's definition and the log records: the durable
schema), `commands.py` (commands and replies), `state.py` (the state, its values, the one rule for
how a reservation's status moves the counters, and the undo log that lets the actor roll a failed
batch back), `ids.py` (identifiers that carry their event's key). `Inventory` (`inventory.py`) is
the state with the phases as methods.
"""

from inventoryd.domain.checks import InvariantViolation, invariant, present
from inventoryd.domain.commands import (
    EVENT_FIELDS_UPDATABLE,
    Accepted,
    AddTicketType,
    Cancel,
    CancelEvent,
    ChangeTicketType,
    CheckIn,
    Command,
    Confirm,
    CreateEvent,
    Decision,
    ExpireDue,
    Rejected,
    RejectionCode,
    Reply,
    Reserve,
    UpdateEvent,
)
from inventoryd.domain.decide import rfc3339
from inventoryd.domain.ids import (
    EVENT_PREFIX,
    RESERVATION_PREFIX,
    TICKET_PREFIX,
    event_id_of,
    event_key,
    reservation_id_for,
    reservation_id_of_ticket,
    ticket_id_for,
)
from inventoryd.domain.inventory import Inventory
from inventoryd.domain.records import (
    CATALOGUE_RECORDS,
    RECORD_DECODER,
    EventCancelled,
    EventCreated,
    EventDefinition,
    EventUpdated,
    HoldExpired,
    Record,
    ReservationCancelled,
    ReservationConfirmed,
    ReservationHeld,
    ReservationWaitlisted,
    TicketCheckedIn,
    TicketTypeAdded,
    TicketTypeChanged,
    TicketTypeDefinition,
    WaitlistPromoted,
    definition_problem,
    record_kind,
)
from inventoryd.domain.snapshots import InventorySnapshot, TicketTypeSnapshot
from inventoryd.domain.state import (
    COUNTED_STATUSES,
    RESERVATION_STATUSES,
    TICKET_STATUSES,
    EventStatus,
    EventSummary,
    Reservation,
    ReservationStatus,
    ShownEventStatus,
    Ticket,
    TicketStatus,
    TicketTypeState,
    TicketTypeSummary,
)

__all__ = [
    "CATALOGUE_RECORDS",
    "COUNTED_STATUSES",
    "EVENT_FIELDS_UPDATABLE",
    "EVENT_PREFIX",
    "RECORD_DECODER",
    "RESERVATION_PREFIX",
    "RESERVATION_STATUSES",
    "TICKET_PREFIX",
    "TICKET_STATUSES",
    "Accepted",
    "AddTicketType",
    "Cancel",
    "CancelEvent",
    "ChangeTicketType",
    "CheckIn",
    "Command",
    "Confirm",
    "CreateEvent",
    "Decision",
    "EventCancelled",
    "EventCreated",
    "EventDefinition",
    "EventStatus",
    "EventSummary",
    "EventUpdated",
    "ExpireDue",
    "HoldExpired",
    "InvariantViolation",
    "Inventory",
    "InventorySnapshot",
    "Record",
    "Rejected",
    "RejectionCode",
    "Reply",
    "Reservation",
    "ReservationCancelled",
    "ReservationConfirmed",
    "ReservationHeld",
    "ReservationStatus",
    "ReservationWaitlisted",
    "Reserve",
    "ShownEventStatus",
    "Ticket",
    "TicketCheckedIn",
    "TicketStatus",
    "TicketTypeAdded",
    "TicketTypeChanged",
    "TicketTypeDefinition",
    "TicketTypeSnapshot",
    "TicketTypeState",
    "TicketTypeSummary",
    "UpdateEvent",
    "WaitlistPromoted",
    "definition_problem",
    "event_id_of",
    "event_key",
    "invariant",
    "present",
    "record_kind",
    "reservation_id_for",
    "reservation_id_of_ticket",
    "rfc3339",
    "ticket_id_for",
]
