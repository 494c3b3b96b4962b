-- Users erased (UserErased), kept a day. A gateway replica sends the views
-- it collected about once a second, so a view taken just before a user was
-- erased can arrive after the erasure: it is dropped, not stored again.
CREATE TABLE erased_users (
    user_id   TEXT PRIMARY KEY,
    erased_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX erased_users_by_time ON erased_users (erased_at);
