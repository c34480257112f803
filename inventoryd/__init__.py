"""inventoryd: ticket inventory for on-sales. One actor per event, a group-committed PostgreSQL log."""

__version__ = "0.1.0"
