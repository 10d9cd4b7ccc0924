-- 0004_admin_ledger.sql — named admin tokens with roles, idempotent admin
-- writes, and the ledger's adjustments and refunds.
--
-- Admin tokens: `admin` reads and writes, `readonly` only reads (reports, the
-- operator dashboard).  A token is stored as HMAC-SHA256(server secret, token)
-- like an API key, never in clear.  The bootstrap token (var/admin.token) is
-- not in this table: it is the root admin, actor `root` in admin_audit.
--
-- Idempotency: an admin write sent with an `Idempotency-Key` header stores its
-- answer here in the same statement (so in the same transaction) as the write
-- itself; the same key again (same token) replays that answer, or is refused
-- when the request differs (request_hash: SHA-256 of method, path, query and
-- body).  Only writes that took effect are stored: a refused write changed
-- nothing and may simply be sent again.
--
-- Ledger: `topup` (a credit, > 0), `adjustment` (either sign, a correction),
-- `refund` (< 0: unused prepaid credit paid back to the customer), `usage`
-- (< 0, one per usage row).  Every admin ledger row carries its reason in
-- `note`.

CREATE TABLE admin_tokens (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$' AND name <> 'root'),
    role        text NOT NULL CHECK (role IN ('admin', 'readonly')),
    token_hash  text NOT NULL UNIQUE CHECK (token_hash ~ '^[0-9a-f]{64}$'),
    prefix      text NOT NULL,               -- "tga_1a2b3c4d", for display
    created_by  text NOT NULL,               -- the actor that created it
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

CREATE TABLE admin_idempotency (
    actor        text NOT NULL,              -- idempotency keys are per admin token
    key          text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    request_hash text NOT NULL,              -- SHA-256 hex of method, path, query, body
    status       integer NOT NULL,           -- the HTTP status answered
    response     text NOT NULL,              -- the body answered (an API key or token never: see README)
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (actor, key)
);

-- Raise an error from plain SQL (CASE WHEN bad THEN tg_raise(...) END):
-- SQLSTATE 22023 (a 400 from the admin API) unless another is given.
CREATE FUNCTION tg_raise(msg text, state text DEFAULT '22023') RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '%', msg USING ERRCODE = state;
END $$;

ALTER TABLE ledger DROP CONSTRAINT ledger_kind_check;
ALTER TABLE ledger ADD CONSTRAINT ledger_kind_check CHECK (kind IN ('topup', 'usage', 'adjustment', 'refund'));
ALTER TABLE ledger ADD CONSTRAINT ledger_adjustment_nonzero CHECK (kind <> 'adjustment' OR amount_pico <> 0);
-- (0001's CHECK already makes a refund's amount <= 0 and a topup's > 0.)
ALTER TABLE ledger ADD CONSTRAINT ledger_refund_negative CHECK (kind <> 'refund' OR amount_pico < 0);
