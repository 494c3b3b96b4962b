-- Sign-in throttle per account (domain::decide_login): attempts in a row
-- that did not succeed, and until when sign-ins are refused unheard.
ALTER TABLE users
    ADD COLUMN login_failures     integer     NOT NULL DEFAULT 0 CHECK (login_failures >= 0),
    ADD COLUMN login_paused_until timestamptz;
