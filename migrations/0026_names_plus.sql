-- 0026: names may hold '+' (customers, admin tokens, dashboard logins), as
-- e-mail addresses with a sub-address do ("team+prod@example.com").
--
-- The admin API reads its query strings as RFC 3986 does (percent-decoding
-- only: '+' is a plus sign), so such a name round-trips through
-- ?customer=NAME however the client writes the '+', and tollgatectl sends it
-- as %2B in paths and queries.  The same rule is adm_name_ok's in C.
ALTER TABLE customers DROP CONSTRAINT customers_name_check,
    ADD CONSTRAINT customers_name_check CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$');
ALTER TABLE admin_tokens DROP CONSTRAINT admin_tokens_name_check,
    ADD CONSTRAINT admin_tokens_name_check CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$' AND name <> 'root');
ALTER TABLE dash_users DROP CONSTRAINT dash_users_login_check,
    ADD CONSTRAINT dash_users_login_check CHECK (login ~ '^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$');
