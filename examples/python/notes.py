"""A small multi-tenant notes service on pg_tenancy, the way an application wires it.

SQLAlchemy 2 over psycopg 3. The request's token sits in a context variable; one session hook
binds it at the start of every transaction, so every statement the ORM sends runs for the
request's tenant, and nothing else in the application knows about tenants.
"""

import contextvars

import psycopg

from sqlalchemy import BigInteger, String, Uuid, create_engine, event, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

# The token of the request being served (set by the web framework's middleware, here by the
# caller of `request`).
current_token: contextvars.ContextVar[str | None] = contextvars.ContextVar("current_token", default=None)


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "notes"
    __table_args__ = {"schema": "notes"}
    # The tenant column is filled by the database (DEFAULT tenancy.current_tenant()): the
    # application never names a tenant.
    tenant_id: Mapped[str] = mapped_column(Uuid, primary_key=True, server_default=text("tenancy.current_tenant()"))
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    body: Mapped[str] = mapped_column(String)


def make_sessions(url: str) -> sessionmaker:
    """Sessions that bind the request's token at the start of every transaction.

    Behind PgBouncer in transaction mode, psycopg must not prepare statements on the server
    (`prepare_threshold=None`): it prepares a statement after five executions by default, and
    the next transaction may run on another server connection, which does not have it
    ("prepared statement "_pg3_0" does not exist").
    """
    engine = create_engine(url, connect_args={"prepare_threshold": None}, pool_size=8, max_overflow=0)
    sessions = sessionmaker(engine)

    @event.listens_for(sessions, "after_begin")
    def bind_tenant(session: Session, transaction, connection) -> None:
        token = current_token.get()
        if token is None:
            # Refuse rather than run unbound: every protected table would refuse anyway, with
            # "no tenant bound"; failing here names the real mistake.
            raise RuntimeError("no token for this request")
        connection.execute(text("SELECT tenancy.bind(:token)"), {"token": token})

    return sessions


def request(sessions: sessionmaker, token: str, body: str) -> list[str]:
    """One request: add a note, then list the notes the request may see."""
    reset = current_token.set(token)
    try:
        with sessions() as s, s.begin():
            s.add(Note(body=body))
            s.flush()
            return list(s.scalars(select(Note.body).order_by(Note.id)))
    finally:
        current_token.reset(reset)


# pg_tenancy's machine-readable codes (README, "Errors an application can map") as HTTP statuses.
HTTP_STATUS = {
    **dict.fromkeys(
        ["token_missing", "token_invalid", "token_expired", "token_not_yet_valid", "token_revoked",
         "key_unknown", "key_expired", "key_wrong_tenant", "unknown_tenant", "binding_expired"], 401),
    **dict.fromkeys(
        ["tenant_unavailable", "membership_removed", "mapping_removed", "support_ended",
         "privilege_refused", "cross_tenant_write_refused"], 403),
    "wrong_region": 421,
}


def error_code(e: psycopg.Error) -> str | None:
    """The code in a pg_tenancy refusal's DETAIL ("pg_tenancy: <code>"), or None."""
    for line in (e.diag.message_detail or "").splitlines():
        if line.startswith("pg_tenancy: "):
            return line.removeprefix("pg_tenancy: ")
    return None


def http_status(e: psycopg.Error) -> int:
    """The HTTP status to answer a request that failed with `e`: anything unmapped is the
    application's own bug (500)."""
    return HTTP_STATUS.get(error_code(e) or "", 500)
