-- The audit trail: one row per domain event, each carrying the hash of the
-- row before it (SHA-256 over the previous hash and the row's fields).
CREATE TABLE audit_entries (
    sequence      BIGINT PRIMARY KEY CHECK (sequence > 0),
    event_id      UUID NOT NULL UNIQUE,
    event_type    TEXT NOT NULL,
    source        TEXT NOT NULL,
    subject       TEXT NOT NULL,
    actor_id      TEXT NOT NULL,
    trace_id      TEXT NOT NULL,
    occurred_at   TIMESTAMPTZ NOT NULL,
    recorded_at   TIMESTAMPTZ NOT NULL,
    -- The event's protobuf payload as published: the hash covers these bytes,
    -- and the JSON shown to readers is rendered from them.
    payload       BYTEA NOT NULL,
    previous_hash BYTEA NOT NULL CHECK (length(previous_hash) = 32),
    hash          BYTEA NOT NULL CHECK (length(hash) = 32)
);

CREATE INDEX audit_entries_by_type ON audit_entries (event_type, sequence);
CREATE INDEX audit_entries_by_actor ON audit_entries (actor_id, sequence) WHERE actor_id <> '';
CREATE INDEX audit_entries_by_subject ON audit_entries (subject, sequence);
CREATE INDEX audit_entries_by_time ON audit_entries (occurred_at);
CREATE INDEX audit_entries_by_recorded ON audit_entries (recorded_at);

-- The chain's ends, one row: the newest entry (appends lock this row, so
-- entries get consecutive sequences in commit order) and the last entry
-- removed by retention (verification starts after it).
CREATE TABLE audit_chain (
    singleton       BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    head_sequence   BIGINT NOT NULL,
    head_hash       BYTEA NOT NULL CHECK (length(head_hash) = 32),
    anchor_sequence BIGINT NOT NULL,
    anchor_hash     BYTEA NOT NULL CHECK (length(anchor_hash) = 32)
);

INSERT INTO audit_chain (head_sequence, head_hash, anchor_sequence, anchor_hash)
VALUES (0, '\x0000000000000000000000000000000000000000000000000000000000000000',
        0, '\x0000000000000000000000000000000000000000000000000000000000000000');

-- Append-only: an entry is never changed. (Retention deletes from the start
-- of the chain.) Whoever can disable this trigger can still tamper, and the
-- chain is what shows it.
CREATE FUNCTION audit_entries_refuse_update() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'audit entries are append-only (sequence %)', OLD.sequence;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER audit_entries_append_only
    BEFORE UPDATE ON audit_entries
    FOR EACH ROW EXECUTE FUNCTION audit_entries_refuse_update();
