"""The statements every message runs, built once with their values as parameters.

Building a statement and computing its cache key cost more than SQLite takes to run it
(profiled: about 0.2 ms each, a fifth of an instant reply's storage time); a statement
built once keeps its key. Each one executed as it is is `Prepared` (storage.prepared):
run with `.run(conn, params)`, on sqlite3 directly where that is possible.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    ColumnElement,
    bindparam,
    exists,
    func,
    insert,
    select,
    update,
)

from storage.models import Base, LLMCallRow, MessageRow, OutboxRow, SessionRow, ToolCallRow
from storage.prepared import Prepared

SESSIONS = Base.metadata.tables[SessionRow.__tablename__]
MESSAGES = Base.metadata.tables[MessageRow.__tablename__]
TOOL_CALLS = Base.metadata.tables[ToolCallRow.__tablename__]
OUTBOX = Base.metadata.tables[OutboxRow.__tablename__]

# Instant replies looked at to avoid repeats: more than one turn's worth in practice.
RECENT_INTERIMS = 20

# The conversation's active session, stamped; language and title change only when given.
TOUCH_ACTIVE_SESSION = Prepared(
    update(SESSIONS)
    .where(SESSIONS.c.active_key == bindparam("key"))
    .values(
        updated_at=bindparam("stamp", type_=SESSIONS.c.updated_at.type),
        language=func.coalesce(
            bindparam("new_language", type_=SESSIONS.c.language.type), SESSIONS.c.language
        ),
        chat_title=func.coalesce(
            bindparam("new_title", type_=SESSIONS.c.chat_title.type), SESSIONS.c.chat_title
        ),
    )
    .returning(*SESSIONS.c)
)

ADD_MESSAGE = Prepared(insert(MESSAGES))

ADD_MESSAGE_ID = Prepared(insert(MESSAGES).returning(MESSAGES.c.id))

QUEUED_MESSAGES = Prepared(
    select(
        MESSAGES.c.id,
        MESSAGES.c.content,
        MESSAGES.c.platform_message_id,
        MESSAGES.c.author_id,
        MESSAGES.c.kind,
    )
    .where(MESSAGES.c.session_id == bindparam("session_id"), MESSAGES.c.status == "queued")
    .order_by(MESSAGES.c.id)
)

LAST_POSITION = Prepared(
    select(func.max(MESSAGES.c.position)).where(MESSAGES.c.session_id == bindparam("session_id"))
)

# The session's next free history position, computed by the statement that takes it (one
# statement fewer than reading it first). An executemany runs its rows in order, so each
# row sees the ones before it.
NEXT_POSITION = (
    select(func.coalesce(func.max(MESSAGES.c.position), 0) + 1)
    .where(MESSAGES.c.session_id == bindparam("of_session"))
    .scalar_subquery()
)

ADD_HISTORY_MESSAGE = Prepared(insert(MESSAGES).values(position=NEXT_POSITION))

# Executed with one parameter set per message, in the order they join.
JOIN_HISTORY = Prepared(
    update(MESSAGES)
    .where(MESSAGES.c.id == bindparam("row_id"))
    .values(status="history", position=NEXT_POSITION, turn=bindparam("row_turn"))
)

# Each history row as (id, position, then `bot.store.HistoryEntry`'s fields).
_HISTORY_ROWS = select(
    MESSAGES.c.id,
    MESSAGES.c.position,
    MESSAGES.c.role,
    MESSAGES.c.content,
    MESSAGES.c.author_name,
    MESSAGES.c.tool_calls,
    MESSAGES.c.tool_call_id,
).where(MESSAGES.c.session_id == bindparam("session_id"), MESSAGES.c.position.is_not(None))

HISTORY = Prepared(_HISTORY_ROWS.order_by(MESSAGES.c.position))

# The newest `rows` of the history, newest first (the caller turns them around).
NEWEST_HISTORY = Prepared(
    _HISTORY_ROWS.order_by(MESSAGES.c.position.desc()).limit(bindparam("rows"))
)

HISTORY_VERSION = Prepared(
    select(SESSIONS.c.history_version).where(SESSIONS.c.id == bindparam("session_id"))
)

# The rows from position `since` on, if the session's history is still at `version`
# (storage.history_cache): none otherwise. One statement, so the version and the rows
# come from the same snapshot.
HISTORY_SINCE = Prepared(
    _HISTORY_ROWS.where(
        MESSAGES.c.position >= bindparam("since"),
        select(SESSIONS.c.history_version)
        .where(SESSIONS.c.id == bindparam("session_id"))
        .scalar_subquery()
        == bindparam("version"),
    ).order_by(MESSAGES.c.position)
)

# Every call of the session's open rounds, oldest round first, in the model's order.
OPEN_ROUND_CALLS = Prepared(
    select(TOOL_CALLS)
    .join(MESSAGES, TOOL_CALLS.c.message_id == MESSAGES.c.id)
    .where(MESSAGES.c.session_id == bindparam("session_id"), MESSAGES.c.status == "pending_calls")
    .order_by(MESSAGES.c.id, TOOL_CALLS.c.seq)
)

RECENT_INTERIM_REPLIES = Prepared(
    select(MESSAGES.c.turn, MESSAGES.c.content)
    .where(MESSAGES.c.session_id == bindparam("session_id"), MESSAGES.c.status == "interim")
    .order_by(MESSAGES.c.id.desc())
    .limit(RECENT_INTERIMS)
)

# Executed with one parameter set per message.
DEFER_MESSAGES = Prepared(
    update(MESSAGES)
    .where(MESSAGES.c.id == bindparam("row_id"))
    .values(status="deferred", turn=bindparam("row_turn"))
)

REQUEUE_MESSAGE = Prepared(
    update(MESSAGES).where(MESSAGES.c.id == bindparam("row_id")).values(status="queued")
)


def undelivered(session_id: Any) -> tuple[ColumnElement[bool], ...]:
    """A session's replies still to send (not sent, not given up on); `session_id` is a
    value or a bound parameter."""
    return (
        OUTBOX.c.session_id == session_id,
        OUTBOX.c.delivered_at.is_(None),
        OUTBOX.c.failed.is_(False),
    )


OLDER_UNDELIVERED = Prepared(
    select(OUTBOX.c.id).where(*undelivered(bindparam("session_id"))).limit(1)
)

ADD_OUTBOX = Prepared(insert(OUTBOX).returning(*OUTBOX.c, sort_by_parameter_order=True))

MARK_DELIVERED = Prepared(
    update(OUTBOX)
    .where(OUTBOX.c.id == bindparam("outbox_id"))
    .values(
        delivered_at=bindparam("stamp", type_=OUTBOX.c.delivered_at.type),
        last_attempt_at=bindparam("stamp", type_=OUTBOX.c.last_attempt_at.type),
        platform_message_id=bindparam("sent_id", type_=OUTBOX.c.platform_message_id.type),
        attempts=OUTBOX.c.attempts + 1,
        claimed_by=None,
        claimed_until=None,
    )
)

# idle -> llm: the turn starts, answering the last of its messages.
START_TURN = Prepared(
    update(SESSIONS)
    .where(SESSIONS.c.id == bindparam("session_id"), SESSIONS.c.state == "idle")
    .values(
        state="llm",
        updated_at=bindparam("stamp", type_=SESSIONS.c.updated_at.type),
        turn=bindparam("new_turn", type_=SESSIONS.c.turn.type),
        tool_rounds=0,
        reply_to_id=bindparam("reply_to", type_=SESSIONS.c.reply_to_id.type),
        reply_to_user_id=bindparam("turn_user", type_=SESSIONS.c.reply_to_user_id.type),
        turn_user_id=bindparam("turn_user", type_=SESSIONS.c.turn_user_id.type),
        turn_is_admin=bindparam("admin", type_=SESSIONS.c.turn_is_admin.type),
    )
    .returning(*SESSIONS.c)
)

# llm -> idle: the turn ends, with an answer (no error) or an apology (the error, stamped).
END_TURN = Prepared(
    update(SESSIONS)
    .where(SESSIONS.c.id == bindparam("session_id"), SESSIONS.c.state == "llm")
    .values(
        state="idle",
        updated_at=bindparam("stamp", type_=SESSIONS.c.updated_at.type),
        last_error=bindparam("error", type_=SESSIONS.c.last_error.type),
        last_error_at=func.coalesce(
            bindparam("error_at", type_=SESSIONS.c.last_error_at.type), SESSIONS.c.last_error_at
        ),
    )
    .returning(*SESSIONS.c)
)

# What the model's reply needs to know once the session row is locked (the compare-and-set
# that ends the turn or starts its tool round): whether messages came during the model
# call (they start the next step) and whether older replies still wait to be sent (then
# the new one is not claimed: replies go out in order). Not in that UPDATE's RETURNING: on
# PostgreSQL an UPDATE that waited for the row lock still reads other rows as they were
# when it started, and would miss what the lock holder wrote.
AFTER_MODEL_REPLY = Prepared(
    select(
        exists()
        .where(MESSAGES.c.session_id == bindparam("session_id"), MESSAGES.c.status == "queued")
        .label("has_queued"),
        exists().where(*undelivered(bindparam("session_id"))).label("has_unsent"),
    )
)

ADD_LLM_CALL = Prepared(insert(Base.metadata.tables[LLMCallRow.__tablename__]))
