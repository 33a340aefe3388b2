"""Email over SMTP (plain, STARTTLS or TLS; authentication optional)."""

from __future__ import annotations

from email.message import EmailMessage
from email.utils import formatdate

import aiosmtplib

from domain.delivery import PermanentDeliveryError, TransientDeliveryError
from domain.notifications import Notice
from domain.settings import Settings


def build_email(notice: Notice, sender: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = notice.recipient
    message["Subject"] = notice.subject
    message["Date"] = formatdate(usegmt=True)
    for name, value in notice.headers.items():
        message[name] = value
    message.set_content(notice.text)
    return message


class SmtpChannel:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def send(self, notice: Notice) -> None:
        s = self.settings
        try:
            await aiosmtplib.send(
                build_email(notice, s.smtp_from),
                hostname=s.smtp_host,
                port=s.smtp_port,
                username=s.smtp_username,
                password=s.smtp_password,
                use_tls=s.smtp_tls,
                start_tls=s.smtp_starttls,
                timeout=s.smtp_timeout_s,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [refusal.code for refusal in exc.recipients]
            raise _classify(min(codes) if codes else 550, str(exc)) from exc
        except aiosmtplib.SMTPResponseException as exc:
            raise _classify(exc.code, f"{exc.code} {exc.message}") from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            # Connection refused, timeouts, dropped connections: the server may come back.
            raise TransientDeliveryError(f"{type(exc).__name__}: {exc}") from exc


def _classify(code: int, text: str) -> Exception:
    """SMTP 4xx means "try again later"; 5xx means the message will never be accepted."""
    if 400 <= code < 500:
        return TransientDeliveryError(f"SMTP {text}")
    return PermanentDeliveryError(f"SMTP {text}")
