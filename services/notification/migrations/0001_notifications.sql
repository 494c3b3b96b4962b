-- Every user's in-app inbox. One notification per source event and user.
CREATE TABLE notifications (
    id              UUID PRIMARY KEY,
    user_id         TEXT NOT NULL,
    -- commerce.notification.v1.NotificationKind number.
    kind            INTEGER NOT NULL,
    title           TEXT NOT NULL,
    body            TEXT NOT NULL,
    order_id        TEXT NOT NULL DEFAULT '',
    -- commerce.notification.v1.Channel number (IN_APP only for now).
    channel         INTEGER NOT NULL,
    -- ce_id of the event the notification was made from.
    source_event_id UUID NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    read_at         TIMESTAMPTZ,
    UNIQUE (user_id, source_event_id)
);

CREATE INDEX notifications_by_user ON notifications (user_id, created_at DESC, id DESC);
CREATE INDEX notifications_unread ON notifications (user_id) WHERE read_at IS NULL;
