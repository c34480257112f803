"""Confirmation emails: the message a confirmed reservation's buyer gets (a template an operator may
replace), and sending it over SMTP with aiosmtplib. Sent from the outbox, after the confirmation
committed: never from inside the booking's transaction, never on the reserve path."""

from __future__ import annotations

import string
import urllib.parse
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path

import aiosmtplib

from inventoryd import limits
from inventoryd.domain import EventDefinition, Reservation

DEFAULT_TEMPLATE = """Subject: Your tickets for $event_name

Hello,

your reservation $reservation_id for $event_name is confirmed.

  When:    $starts_at
  Where:   $venue
  Tickets: $quantity × $ticket_type$seats_line
  Amount:  $amount $currency

Your ticket ids (show them at the door):
$ticket_ids

Thank you.
"""
FIELDS = (
    "event_name", "event_id", "starts_at", "venue", "reservation_id", "ticket_type", "quantity", "amount", "currency",
    "seats", "seats_line", "ticket_ids",
)


@dataclass(frozen=True, slots=True)
class Template:
    subject: string.Template
    body: string.Template

    @classmethod
    def parse(cls, text: str) -> Template:
        """A template: a `Subject:` line, a blank line, the body; $names from FIELDS. SystemExit
        (at start) for one that would fail on the first email."""
        head, _, body = text.partition("\n\n")
        if not head.startswith("Subject:") or "\n" in head.strip():
            raise SystemExit("an email template starts with one 'Subject: …' line and a blank line")
        template = cls(string.Template(head.removeprefix("Subject:").strip()), string.Template(body))
        for part in (template.subject, template.body):
            unknown = set(part.get_identifiers()) - set(FIELDS)
            if unknown or not part.is_valid():
                raise SystemExit(f"the email template names unknown fields {sorted(unknown)} (known: {', '.join(FIELDS)})")
        return template

    @classmethod
    def load(cls, path: Path | None) -> Template:
        if path is None:
            return cls.parse(DEFAULT_TEMPLATE)
        try:
            raw = path.read_bytes()
        except OSError as error:
            raise SystemExit(f"INVENTORYD_EMAIL_TEMPLATE: cannot read {path}: {error}") from None
        if len(raw) > limits.EMAIL_TEMPLATE_BYTES_MAX:
            raise SystemExit(f"INVENTORYD_EMAIL_TEMPLATE: larger than {limits.EMAIL_TEMPLATE_BYTES_MAX} bytes")
        return cls.parse(raw.decode("utf-8"))

    def message(self, sender: str, to: str, definition: EventDefinition, reservation: Reservation) -> EmailMessage:
        major, minor = divmod(reservation.amount, 100)
        fields = {
            "event_name": definition.name,
            "event_id": definition.id,
            "starts_at": definition.starts_at.isoformat(),
            "venue": definition.venue or "",
            "reservation_id": reservation.id,
            "ticket_type": reservation.ticket_type,
            "quantity": str(reservation.quantity),
            "amount": f"{major}.{minor:02d}",
            "currency": definition.currency,
            "seats": ", ".join(reservation.seats),
            "seats_line": f"\n  Seats:   {', '.join(reservation.seats)}" if reservation.seats else "",
            "ticket_ids": "\n".join(f"  {ticket.id}" for ticket in reservation.tickets),
        }
        message = EmailMessage()
        message["From"] = sender
        message["To"] = to
        message["Subject"] = self.subject.substitute(fields)
        message["Date"] = formatdate(usegmt=True)
        # The same for every attempt: a mail system that sees it twice knows it is one message.
        message["Message-ID"] = f"<confirmation.{reservation.id}@inventoryd>"
        message.set_content(self.body.substitute(fields))
        return message


class PermanentFailure(Exception):
    """The mail server refused this message for good (a 5xx reply): trying again will not help."""


@dataclass(frozen=True, slots=True)
class Mailer:
    hostname: str
    port: int
    use_tls: bool
    username: str | None
    password: str | None
    sender: str

    @classmethod
    def from_url(cls, url: str, sender: str) -> Mailer:
        parts = urllib.parse.urlsplit(url)
        tls = parts.scheme == "smtps"
        return cls(
            hostname=parts.hostname or "localhost",
            port=parts.port or (465 if tls else 25),
            use_tls=tls,
            username=urllib.parse.unquote(parts.username) if parts.username else None,
            password=urllib.parse.unquote(parts.password) if parts.password else None,
            sender=sender,
        )

    async def send(self, message: EmailMessage) -> None:
        """Hand the message to the server; PermanentFailure for a 5xx refusal, OSError or
        aiosmtplib's errors for what may pass."""
        try:
            await aiosmtplib.send(
                message,
                hostname=self.hostname,
                port=self.port,
                use_tls=self.use_tls,
                username=self.username,
                password=self.password,
                timeout=limits.EMAIL_TIMEOUT_S,
            )
        except aiosmtplib.SMTPRecipientsRefused as error:
            raise PermanentFailure(str(error)) from None
        except aiosmtplib.SMTPResponseException as error:
            if 500 <= error.code < 600:
                raise PermanentFailure(f"{error.code} {error.message}") from None
            raise
