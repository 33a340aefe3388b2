"""The declarative base every mapped table shares, and the column types they repeat. In a module
of its own so that table modules next to domain/models.py (domain/sla_clocks.py) can map onto it
without importing the models, which import them."""

from __future__ import annotations

from sqlalchemy import DateTime, String
from sqlalchemy.orm import DeclarativeBase

ID = String(26)
TZ = DateTime(timezone=True)


class Base(DeclarativeBase):
    pass
