-- 0012_dashboard.sql — the browser dashboards (billing/bill_dash*.c): logins the
-- admin issues, sessions, and the login throttle shared by every gateway.
--
-- dash_users: a customer's login (role 'customer', customer_id set) or an
--   operator's (role 'operator', no customer).  The password is made by the
--   server (128 random bits, shown once, like an API key), so a keyed hash
--   (HMAC-SHA256 with the server's key secret, as for API keys and admin
--   tokens) is enough: nothing to guess from a dictionary.
-- dash_sessions: one row per signed-in browser; the cookie holds a random
--   token, the table its keyed hash.  A session signed in with an API key
--   carries key_id and ends when that key is revoked or expires.  csrf is the
--   token every write must echo in X-CSRF-Token.
-- dash_login_throttle: failed logins per subject ('ip:<addr>', 'login:<name>')
--   in a sliding 15-minute window; past the limit a subject is refused until
--   locked_until.
CREATE TABLE dash_users (
    id            bigserial PRIMARY KEY,
    login         text NOT NULL UNIQUE CHECK (login ~ '^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$'),
    role          text NOT NULL CHECK (role IN ('customer', 'operator')),
    customer_id   bigint REFERENCES customers(id),
    password_hash text NOT NULL UNIQUE,
    created_by    text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz,
    CHECK ((role = 'customer') = (customer_id IS NOT NULL))
);

CREATE TABLE dash_sessions (
    token_hash   text PRIMARY KEY,
    user_id      bigint REFERENCES dash_users(id),
    key_id       bigint REFERENCES api_keys(id),
    customer_id  bigint REFERENCES customers(id),
    role         text NOT NULL CHECK (role IN ('customer', 'operator')),
    csrf         text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    CHECK ((user_id IS NULL) <> (key_id IS NULL)),
    CHECK ((role = 'customer') = (customer_id IS NOT NULL))
);
CREATE INDEX dash_sessions_expires ON dash_sessions (expires_at);

CREATE TABLE dash_login_throttle (
    subject      text PRIMARY KEY,
    failures     int NOT NULL,
    window_start timestamptz NOT NULL,
    locked_until timestamptz
);

-- The request log filtered by key pages through this index (the unfiltered
-- log and the other filters use usage (customer_id, received_at)).
CREATE INDEX usage_customer_key_received ON usage (customer_id, key_id, received_at);

-- The credit history (ledger rows other than usage debits) of one customer,
-- newest first, without walking its usage debits.
CREATE INDEX ledger_customer_credits ON ledger (customer_id, created_at) WHERE kind <> 'usage';
