-- 0023: an expired key stays expired, and a rotated key's grace period can be
-- shortened but not extended.
--
-- A key's expiry could be changed by any update (PATCH /admin/v1/keys/{id},
-- tollgatectl key update --no-expiry / --expires-in / --expires-at): an
-- update with "expires_at": null revived a key that had expired, or a rotated
-- key after its grace period, and made it work again beside the key that
-- replaced it — a leaked old key came back to life.  Now, whatever statement
-- writes expires_at:
--   - a key whose expiry has passed keeps it (renewing access means a new key:
--     create one, or rotate a key that still works);
--   - a rotated key (replaced_by set) may only get an earlier expiry, still in
--     the future (tg_key_expiry refuses the past): ending the grace sooner;
-- else SQLSTATE 55000 (object_not_in_prerequisite_state), a 409 "conflict"
-- from the admin API.  Rotation itself (replaced_by set in the same update,
-- the expiry brought forward) and revocation are unaffected.
CREATE FUNCTION tg_key_expiry_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.expires_at IS NOT DISTINCT FROM OLD.expires_at THEN
        RETURN NEW;
    END IF;
    IF OLD.expires_at IS NOT NULL AND OLD.expires_at <= now() THEN
        RAISE EXCEPTION 'key % has expired and stays expired: create a new key', OLD.id USING ERRCODE = '55000';
    END IF;
    IF OLD.replaced_by IS NOT NULL AND (NEW.expires_at IS NULL OR NEW.expires_at > OLD.expires_at) THEN
        RAISE EXCEPTION 'key % was rotated (replaced by key %): its grace period can be shortened, not extended',
            OLD.id, OLD.replaced_by USING ERRCODE = '55000';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER api_keys_expiry_guard BEFORE UPDATE OF expires_at ON api_keys
    FOR EACH ROW EXECUTE FUNCTION tg_key_expiry_guard();
