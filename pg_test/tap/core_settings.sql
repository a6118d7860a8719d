-- flowgate.settings: documented keys, validated values, owner-only writes.
BEGIN;
SELECT plan(30);

DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'authenticated') THEN CREATE ROLE authenticated NOLOGIN; END IF;
END $$;
CREATE TEMP TABLE before_count AS SELECT count(*) AS n FROM flowgate.settings;
GRANT SELECT ON before_count TO PUBLIC;

SELECT is(flowgate.get_setting('flowgate.trusted_roles'), '["service_role"]'::jsonb, 'default applies when unset');
SELECT is(flowgate.set_setting('flowgate.trusted_roles', '["service_role","ops_admin"]'),
    '["service_role","ops_admin"]'::jsonb, 'set_setting returns the stored value');
SELECT is(flowgate.get_setting('flowgate.trusted_roles'), '["service_role","ops_admin"]'::jsonb, 'get_setting reads it back');
SELECT is((SELECT updated_by FROM flowgate.settings WHERE key = 'flowgate.trusted_roles'), current_user::text,
    'the writer is recorded');
SELECT is(flowgate.reset_setting('flowgate.trusted_roles'), '["service_role"]'::jsonb, 'reset returns the default');

SELECT throws_ok($$SELECT flowgate.set_setting('flowgate.trusted_roles', '"service_role"')$$, '22023', NULL,
    'a value of the wrong type raises 22023');
SELECT throws_ok($$SELECT flowgate.set_setting('flowgate.trusted_roles', NULL)$$, '22023', NULL,
    'a NULL value raises 22023 (not a NULL answer that stored nothing)');
SELECT throws_ok($$SELECT flowgate.set_secret('tap_null_secret', NULL)$$, '22023', NULL,
    'so does a NULL secret');
SELECT throws_ok($$SELECT flowgate.drop_secret('provisioning/acme/db_pass')$$, '22023', NULL,
    'drop_secret refuses a name set_secret never stores (a tenant key''s)');
SELECT throws_ok($$SELECT flowgate.drop_secret(NULL)$$, '22023', NULL, 'and a NULL name');
SELECT throws_ok($$SELECT flowgate.set_setting('capacity.slack_api_url', '"slack.com/api"')$$, '22023', NULL,
    'a *_url setting must be an http(s) endpoint (else every request enqueued to it fails the user''s call)');
SELECT throws_ok($$SELECT flowgate.set_setting('capacity.slack_token_secret', '"slack bot token"')$$, '22023', NULL,
    'and a *_secret setting a secret''s name');
SELECT throws_ok($$SELECT flowgate.set_setting('flowgate.nope', '1')$$, '22023', NULL, 'an unknown key raises 22023');
SELECT throws_ok($$SELECT flowgate.get_setting('flowgate.nope')$$, '22023', NULL, 'reading an unknown key raises 22023');
SELECT throws_ok($$INSERT INTO flowgate.settings (key, value) VALUES ('capacity.slack_api_url', '"https://bot:hunter2@slack.example/api"')$$, '22023', NULL,
                 'a direct write holds to set_setting''s rules too: a URL with credentials is refused (22023)');
SELECT throws_ok($$INSERT INTO flowgate.settings (key, value) VALUES ('flowgate.trusted_roles', '[1]')$$, '22023', NULL,
    'the trigger validates direct writes too');
SELECT is((SELECT count(*) FROM flowgate.settings), (SELECT n FROM before_count), 'rejected writes stored nothing');

SET LOCAL ROLE authenticated;
SELECT is(flowgate.get_setting('flowgate.trusted_roles'), '["service_role"]'::jsonb, 'any role may read settings');
SELECT throws_ok($$SELECT flowgate.set_setting('flowgate.trusted_roles', '["authenticated"]')$$, '42501', NULL,
    'only the owner may write settings');
SELECT throws_ok($$SELECT flowgate.reset_setting('no.such_key')$$, '42501', NULL,
    'nor reset them: refused before the key is looked at');
SELECT is((SELECT count(*) FROM flowgate.settings), (SELECT n FROM before_count), 'the refused write stored nothing');
RESET ROLE;
-- A role granted writes on the table but under its row security (which has no write policy)
-- could change nothing: it is refused, not told a reset happened that did not.
SELECT flowgate.set_setting('flowgate.http_timeout_ms', '7000') \g /dev/null
CREATE ROLE tap_settings_writer;
GRANT USAGE ON SCHEMA flowgate TO tap_settings_writer;
GRANT SELECT, INSERT, UPDATE, DELETE ON flowgate.settings TO tap_settings_writer;
SET LOCAL ROLE tap_settings_writer;
SELECT throws_ok($$SELECT flowgate.reset_setting('flowgate.http_timeout_ms')$$, '42501', NULL,
    'a role granted DELETE on the table but under its row security is refused the reset');
RESET ROLE;
SELECT is(flowgate.get_setting('flowgate.http_timeout_ms'), '7000'::jsonb, 'and the setting keeps its value');
SELECT flowgate.reset_setting('flowgate.http_timeout_ms') \g /dev/null

SELECT ok((SELECT count(*) > 0 FROM flowgate.setting_definitions() WHERE description <> ''),
    'every setting is documented');

-- Flow limits: a shape checked before it is stored.
SELECT ok(flowgate.get_setting('flowgate.flow_limits') ? 'slack:*', 'Slack''s per-channel limit is on by default');
SELECT throws_ok($$SELECT flowgate.set_setting('flowgate.flow_limits', '{"slack:*": {"per_second": 0}}')$$, '22023', NULL,
    'a rate of zero is refused');
SELECT throws_ok($$SELECT flowgate.set_setting('flowgate.flow_limits', '{"x": {"max_in_flight": 2, "rate": 1}}')$$, '22023', NULL,
    'so is an unknown limit');
SELECT is((SELECT count(*)::int FROM flowgate.settings WHERE key = 'flowgate.flow_limits'), 0, 'and nothing was stored');

-- A restore (a COPY into flowgate.settings by a role row security does not apply to, as
-- pg_restore runs) keeps when and by whom each setting was written; any other write is stamped.
COPY flowgate.settings (key, value, updated_at, updated_by) FROM stdin;
capacity.confirmation_ttl_business_days	7	2026-01-05 10:00:00+00	alice
\.
SELECT is((SELECT (updated_at = '2026-01-05 10:00:00+00', updated_by) FROM flowgate.settings
            WHERE key = 'capacity.confirmation_ttl_business_days'), (true, 'alice'::text),
    'a restore keeps updated_at and updated_by as the dump has them');
INSERT INTO flowgate.settings (key, value, updated_at, updated_by)
VALUES ('capacity.auto_approve_below_usd', '100', '2026-01-05 10:00:00+00', 'alice');
SELECT ok((SELECT updated_at = now() AND updated_by = current_user FROM flowgate.settings
             WHERE key = 'capacity.auto_approve_below_usd'),
    'an INSERT that is not a restore is stamped with its own time and writer');

SELECT * FROM finish();
ROLLBACK;
