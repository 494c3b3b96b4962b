-- Where email goes: each user's address and name, from UserRegistered.
CREATE TABLE recipients (
    user_id      TEXT PRIMARY KEY,
    email        TEXT NOT NULL,
    display_name TEXT NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Email to send: written in the transaction that handled the event (an
-- outbox whose relay is the SMTP mailer), once per event and user; sent,
-- retried with backoff, or given up on and dead-lettered.
CREATE TABLE emails (
    id              UUID PRIMARY KEY,
    user_id         TEXT NOT NULL,
    to_address      TEXT NOT NULL,
    -- Which template made it: welcome, or a NotificationKind's name.
    template        TEXT NOT NULL,
    subject         TEXT NOT NULL,
    body            TEXT NOT NULL,
    source_event_id UUID NOT NULL,
    status          TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent', 'dead')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_error      TEXT NOT NULL DEFAULT '',
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    sent_at         TIMESTAMPTZ,
    UNIQUE (user_id, source_event_id)
);

-- The mailer's scan.
CREATE INDEX emails_due ON emails (next_attempt_at) WHERE status = 'pending';
