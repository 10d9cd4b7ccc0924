-- 0003_key_lifecycle.sql — API keys as customers expect them: a name, an
-- expiry, an allowed-models scope, the last use, rotation with a grace period,
-- and an append-only audit of admin writes.
--
-- State of a key (tg_key_state), in this order of precedence:
--   revoked   revoked_at is set
--   expired   expires_at <= now()            (a rotated key after its grace)
--   expiring  expires_at is set and the key was rotated (in its grace
--             period) or expires within 7 days
--   active    otherwise
-- Admission refuses a revoked key (401 invalid_api_key) and an expired one
-- (401 api_key_expired); a key whose `models` does not hold the requested
-- model gets 403 model_not_allowed.  NULL models: every model.
--
-- last_used_at / last_used_ip are written by the gateway in batches (at most
-- one write per key per flush interval, default 60 s), never per request.

ALTER TABLE api_keys
    ADD COLUMN name text NOT NULL DEFAULT '' CHECK (length(name) <= 200),
    ADD COLUMN expires_at timestamptz,
    ADD COLUMN models text[] CHECK (models IS NULL OR (cardinality(models) BETWEEN 1 AND 64
                                    AND array_position(models, NULL) IS NULL)),
    ADD COLUMN last_used_at timestamptz,
    ADD COLUMN last_used_ip inet,
    ADD COLUMN rotated_from bigint REFERENCES api_keys(id),
    ADD COLUMN replaced_by bigint REFERENCES api_keys(id);

CREATE FUNCTION tg_key_state(revoked_at timestamptz, expires_at timestamptz, replaced_by bigint)
RETURNS text LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN revoked_at IS NOT NULL THEN 'revoked'
        WHEN expires_at IS NOT NULL AND expires_at <= now() THEN 'expired'
        WHEN expires_at IS NOT NULL AND (replaced_by IS NOT NULL OR expires_at <= now() + interval '7 days')
            THEN 'expiring'
        ELSE 'active' END
$$;

-- The expiry of a new or updated key: now + in_seconds, else at; one in the
-- past is refused (SQLSTATE 22023, a 400 from the admin API).
CREATE FUNCTION tg_key_expiry(at timestamptz, in_seconds bigint) RETURNS timestamptz LANGUAGE plpgsql AS $$
DECLARE t timestamptz := coalesce(now() + in_seconds * interval '1 second', at);
BEGIN
    IF t IS NOT NULL AND t <= now() THEN
        RAISE EXCEPTION 'the expiry % is not in the future', t USING ERRCODE = '22023';
    END IF;
    RETURN t;
END $$;

-- Every admin write, with what it changed.  Rows are never changed or deleted.
CREATE TABLE admin_audit (
    id         bigserial PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor      text NOT NULL,           -- which admin token
    action     text NOT NULL,           -- "key.create", "key.update", "key.rotate", "key.revoke"
    target     text NOT NULL,           -- "key:42"
    before     jsonb,                   -- the row before (NULL for a create)
    after      jsonb                    -- the row after
);
CREATE INDEX admin_audit_target ON admin_audit (target, at);

CREATE FUNCTION admin_audit_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'admin_audit rows are never changed or deleted';
END $$;
CREATE TRIGGER admin_audit_immutable BEFORE UPDATE OR DELETE ON admin_audit
    FOR EACH ROW EXECUTE FUNCTION admin_audit_immutable();
