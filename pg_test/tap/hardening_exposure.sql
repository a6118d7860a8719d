-- Exposure and small holes: what PUBLIC, anon and authenticated may read (pool configuration,
-- settings naming URLs and secrets); bounded capacity arguments, in the functions and in the
-- tables' CHECKs; Slack text that cannot ping or link; capacity.my_standing for signed-in users;
-- the provisioning operator functions for service_role and for nobody untrusted.
BEGIN;
SELECT plan(100);

-- A Supabase project has anon, authenticated and service_role before any extension is installed,
-- and its installing role may carry default privileges that grant every new table, sequence and
-- function to anon and authenticated. Install flowgate again under both, so that what is checked
-- below is what such a project gets.
DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'anon') THEN CREATE ROLE anon NOLOGIN; END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'authenticated') THEN CREATE ROLE authenticated NOLOGIN; END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'service_role') THEN CREATE ROLE service_role NOLOGIN; END IF;
END $$;
-- So may they name other roles: a reporting role, and a persona that exists already.
DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'fg_reporting') THEN CREATE ROLE fg_reporting NOLOGIN; END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'developer') THEN CREATE ROLE developer NOLOGIN; END IF;
END $$;
ALTER DEFAULT PRIVILEGES GRANT ALL ON TABLES TO anon, authenticated, fg_reporting, developer, service_role;
ALTER DEFAULT PRIVILEGES GRANT ALL ON SEQUENCES TO anon, authenticated, fg_reporting, developer, service_role;
ALTER DEFAULT PRIVILEGES GRANT EXECUTE ON FUNCTIONS TO anon, authenticated, fg_reporting, developer, service_role;
-- And revoke EXECUTE from PUBLIC on new functions, as Supabase's guide to securing the API
-- suggests.
ALTER DEFAULT PRIVILEGES REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
CREATE TEMP TABLE defaults_before AS SELECT defaclacl::text AS acl FROM pg_default_acl
 WHERE defaclrole = current_user::regrole AND defaclnamespace = 0 AND defaclobjtype = 'f';
DROP EXTENSION flowgate;
CREATE EXTENSION flowgate;
SELECT is((SELECT defaclacl::text FROM pg_default_acl WHERE defaclrole = current_user::regrole AND defaclnamespace = 0 AND defaclobjtype = 'f'),
          (SELECT acl FROM defaults_before), 'the installing role''s default privileges are as they were after the install');
SELECT ok(has_function_privilege('public', 'flowgate.current_actor()', 'EXECUTE')
          AND has_function_privilege('public', 'capacity.create_capacity_request(text, text, text, integer, text, jsonb, date, integer, numeric, text, text)', 'EXECUTE')
          AND NOT has_function_privilege('public', 'flowgate.set_secret(text, text)', 'EXECUTE'),
          'under defaults that revoke EXECUTE from PUBLIC, the public surface stays callable (current_actor for row-level security, the user entry points) and operator functions stay revoked');
ALTER DEFAULT PRIVILEGES GRANT EXECUTE ON FUNCTIONS TO PUBLIC;
ALTER DEFAULT PRIVILEGES REVOKE ALL ON TABLES FROM anon, authenticated, fg_reporting, developer, service_role;
ALTER DEFAULT PRIVILEGES REVOKE ALL ON SEQUENCES FROM anon, authenticated, fg_reporting, developer, service_role;
ALTER DEFAULT PRIVILEGES REVOKE EXECUTE ON FUNCTIONS FROM anon, authenticated, fg_reporting, developer, service_role;
SELECT is((SELECT string_agg(DISTINCT c.oid::regclass::text, ', ') FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) a
            WHERE c.relnamespace::regnamespace::text IN ('flowgate', 'capacity', 'intake', 'provisioning', 'ops')
              AND a.grantee = 'fg_reporting'::regrole), NULL,
          'a role the installing role''s default privileges name gets nothing on flowgate''s tables, sequences or views');
SELECT is((SELECT string_agg(p.oid::regprocedure::text, ', ') FROM pg_proc p CROSS JOIN LATERAL aclexplode(p.proacl) a
            WHERE p.pronamespace::regnamespace::text IN ('flowgate', 'capacity', 'intake', 'provisioning', 'ops')
              AND a.grantee = 'fg_reporting'::regrole), NULL,
          'nor on its functions (beyond what PUBLIC gets)');
SELECT ok(NOT has_table_privilege('developer', 'flowgate.secrets', 'SELECT') AND NOT has_table_privilege('developer', 'ops.approvals', 'SELECT')
          AND NOT has_table_privilege('developer', 'ops.releases', 'UPDATE'),
          'a persona named by them gets no more than the persona matrix: not flowgate.secrets, not ops.approvals, no UPDATE of releases');
SELECT ok(has_table_privilege('developer', 'ops.releases', 'SELECT') AND has_table_privilege('developer', 'ops.exceptions', 'INSERT')
          AND has_function_privilege('developer', 'ops.ingest_event(jsonb)', 'EXECUTE'),
          'and keeps what the matrix gives it');
SELECT is((SELECT string_agg(DISTINCT c.oid::regclass::text || ' ' || a.privilege_type, ', ')
             FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) a
            WHERE c.relnamespace::regnamespace::text IN ('flowgate', 'capacity', 'intake', 'provisioning', 'ops')
              AND a.grantee = 'service_role'::regrole
              AND (a.privilege_type <> 'SELECT' OR c.relkind = 'S' OR c.oid = 'flowgate.secrets'::regclass)), NULL,
          'service_role named by them keeps only reads: no write, TRUNCATE, trigger or sequence, nor flowgate.secrets');
-- PostgREST exposing every schema: the worst case for what follows.
GRANT USAGE ON SCHEMA flowgate, capacity, intake, provisioning TO anon, authenticated, service_role;

-- The error a statement raises, as "SQLSTATE: message | hint" (NULL when it succeeds).
CREATE FUNCTION pg_temp.error_of(statement text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE s text; m text; h text;
BEGIN
    EXECUTE statement;
    RETURN NULL;
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS s = RETURNED_SQLSTATE, m = MESSAGE_TEXT, h = PG_EXCEPTION_HINT;
    RETURN s || ': ' || m || ' | ' || h;
END $$;
GRANT EXECUTE ON FUNCTION pg_temp.error_of(text) TO PUBLIC;
CREATE TEMP TABLE counts AS
SELECT (SELECT count(*) FROM capacity.capacity_requests) AS requests,
       (SELECT count(*) FROM capacity.capacity_request_events) AS events,
       (SELECT count(*) FROM provisioning.clients) AS clients;
GRANT SELECT ON counts TO PUBLIC;

-- =============================================================================================
-- (a) Exposure: pool configuration and settings that name URLs and secrets
-- =============================================================================================
SELECT intake.create_pool('tap_expose', 2, '{"validation_webhook_url": "https://payments.internal.example/validate",
                                             "validation_auth_secret": "payments_api_key"}') \g /dev/null

SET LOCAL ROLE anon;
SELECT throws_ok('SELECT validation_webhook_url, validation_auth_secret FROM intake.engine_config', '42501', NULL,
    'anon cannot read intake.engine_config (webhook URLs, secret names)');
SET LOCAL ROLE authenticated;
SELECT throws_ok('SELECT validation_webhook_url, validation_auth_secret FROM intake.engine_config', '42501', NULL,
    'nor can authenticated');
SET LOCAL ROLE service_role;
SELECT is((SELECT validation_webhook_url || ' ' || validation_auth_secret FROM intake.engine_config WHERE pool_id = 'tap_expose'),
    'https://payments.internal.example/validate payments_api_key', 'service_role, a trusted operator, reads the pool configuration');
RESET ROLE;

SELECT is((SELECT count(*)::int FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, aclexplode(c.relacl) a
            WHERE n.nspname IN ('flowgate', 'capacity', 'intake', 'provisioning', 'ops')
              AND a.grantee IN ('anon'::regrole, 'authenticated'::regrole)), 0,
    'default privileges notwithstanding, anon and authenticated hold no privilege on any table, view or sequence of flowgate''s schemas');
SELECT is((SELECT count(*)::int FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace, aclexplode(p.proacl) a
            WHERE n.nspname IN ('flowgate', 'capacity', 'intake', 'provisioning', 'ops')
              AND a.grantee IN ('anon'::regrole, 'authenticated'::regrole)), 0,
    'nor any function of their own: they call what PUBLIC may');
SELECT ok(NOT has_function_privilege('anon', 'flowgate.set_secret(text, text)', 'EXECUTE')
          AND NOT has_function_privilege('authenticated', 'provisioning.tenant_keys(uuid)', 'EXECUTE')
          AND NOT has_table_privilege('anon', 'flowgate.secrets', 'SELECT'),
    'so the owner-only functions and tables stay out of their reach');

-- Every relation PUBLIC can read in flowgate's schemas: rows under RLS, invoker views over them,
-- the settings (RLS hides the sensitive keys) and pool metrics (counts only).
SELECT is((SELECT array_agg(n.nspname || '.' || c.relname ORDER BY n.nspname, c.relname)
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, aclexplode(c.relacl) a
            WHERE n.nspname IN ('flowgate', 'capacity', 'intake', 'provisioning', 'ops')
              AND a.grantee = 0 AND a.privilege_type = 'SELECT'),
    ARRAY['capacity.capacity_request_events', 'capacity.capacity_request_tasks', 'capacity.capacity_requests',
          'capacity.v_approval_latency', 'capacity.v_metrics', 'capacity.v_time_in_state',
          'flowgate.settings', 'intake.engine_metrics', 'intake.transactions'],
    'PUBLIC reads only the request record, the settings, pool metrics and the ledger');
SELECT is((SELECT array_agg(n.nspname || '.' || c.relname ORDER BY n.nspname, c.relname)
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, aclexplode(c.relacl) a
            WHERE n.nspname IN ('flowgate', 'capacity', 'intake', 'provisioning', 'ops')
              AND a.grantee = 0 AND a.privilege_type = 'SELECT' AND c.relkind = 'r' AND NOT c.relrowsecurity),
    ARRAY['intake.engine_metrics'], 'and every such table but the metrics is under row-level security');
SELECT is((SELECT count(*)::int FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, aclexplode(c.relacl) a
            WHERE n.nspname IN ('flowgate', 'capacity', 'intake', 'provisioning', 'ops')
              AND a.grantee = 0 AND c.relkind = 'v' AND NOT coalesce('security_invoker=true' = ANY (c.reloptions), false)), 0,
    'and every such view runs as its reader (security_invoker)');
SELECT is((SELECT count(*)::int FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, aclexplode(c.relacl) a
            WHERE n.nspname IN ('flowgate', 'capacity', 'intake', 'provisioning', 'ops')
              AND a.grantee = 0 AND a.privilege_type <> 'SELECT'), 0,
    'PUBLIC writes to none of them');

-- Settings naming endpoints, secrets, channels, organisations and people.
SELECT flowgate.set_setting('capacity.slack_api_url', '"https://slack-proxy.internal.example/api"') \g /dev/null
SELECT flowgate.set_setting('capacity.slack_token_secret', '"prod_slack_bot_token"') \g /dev/null
SELECT flowgate.set_setting('capacity.slack_channel', '"C0PRIVATE"') \g /dev/null
SELECT flowgate.set_setting('provisioning.organization_id', '"org-acme-private"') \g /dev/null
SELECT flowgate.set_setting('capacity.admins', '["admin-7"]') \g /dev/null
SELECT flowgate.set_setting('flowgate.http_timeout_ms', '5000') \g /dev/null
SET LOCAL ROLE anon;
SELECT is((SELECT array_agg(key ORDER BY key) FROM flowgate.settings), ARRAY['flowgate.http_timeout_ms'],
    'anon sees the stored settings that name nothing sensitive, and only those');
SELECT is(flowgate.get_setting('capacity.slack_api_url'), '"https://slack.com/api"'::jsonb,
    'a hidden setting reads as its documented default, not the stored URL');
SELECT is((SELECT count(*)::int FROM flowgate.setting_definitions() WHERE value::text ~ '(internal\.example|prod_slack|C0PRIVATE|org-acme|admin-7)'), 0,
    'setting_definitions() shows none of the stored values either');
SET LOCAL ROLE authenticated;
SELECT set_config('request.jwt.claims', '{"sub":"u-settings","role":"authenticated"}', true) \g /dev/null
SELECT is((SELECT count(*)::int FROM flowgate.settings WHERE value::text ~ 'https?://' OR key ~ '(secret|token|channel|organization|admins)'), 0,
    'authenticated sees no URL, secret name, channel, organisation or admin list');
SELECT is(flowgate.current_actor() || ' ' || flowgate.get_setting('flowgate.trusted_roles')::text, 'u-settings ["service_role"]',
    'while the role lists that identity needs stay readable: current_actor() works for a signed-in user');
SELECT set_config('request.jwt.claims', '', true) \g /dev/null
SET LOCAL ROLE service_role;
SELECT is((SELECT count(*)::int FROM flowgate.settings), 6, 'service_role reads every stored setting');
RESET ROLE;
SELECT is((SELECT array_agg(key ORDER BY key) FROM flowgate.setting_definitions()
            WHERE (default_value::text ~ '^"https?://' OR key ~ '(secret|token|password|passphrase|channel|team|organization|admins|flow_limits)')
              AND key !~ '(_url|_secret|_token|_key|_password|_passphrase|_id|_ids|_channel|admins|flow_limits)$'), NULL,
    'every documented key that names a URL, secret, channel, team, organisation or admins is one the policy hides');

-- =============================================================================================
-- (b) Bounded capacity arguments: 22023 with a hint from the functions, CHECKs for direct writes
-- =============================================================================================
INSERT INTO capacity.group_members VALUES ('infra', 'infra-1'), ('commercial_approvers', 'ae-1'), ('commercial_approvers', 'U9> <!channel'), ('commercial_approvers', 'U0AE');
SET LOCAL ROLE authenticated;
SELECT set_config('request.jwt.claims', '{"sub":"sa-1","role":"authenticated"}', true) \g /dev/null
SELECT throws_ok($$SELECT capacity.create_capacity_request('ae-1', 'infra', '24XL', 1, 'us-east-1',
                     jsonb_build_object('blob', repeat('x', 20 * 1024 * 1024)))$$, '22023', NULL,
    'a 20 MB customer_ref is refused with 22023');
SELECT alike(pg_temp.error_of($$SELECT capacity.create_capacity_request('ae-1', 'infra', '24XL', 1, 'us-east-1',
                     jsonb_build_object('blob', repeat('x', 4085)))$$),
    '22023: invalid customer_ref: it is 4097 bytes of JSON text | allowed: a JSON object such as % at most 4096 bytes of JSON text and nested at most 5 levels deep',
    'one byte over 4 KiB of JSON text is refused, with the limits in the hint');
SELECT alike(pg_temp.error_of($$SELECT capacity.create_capacity_request('ae-1', 'infra', '24XL', 1, 'us-east-1',
                     '{"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}}')$$),
    '22023: invalid customer_ref: it is nested 6 levels deep | allowed: %', 'six levels of nesting are refused');
SELECT throws_ok($$SELECT capacity.create_capacity_request('ae-1', 'infra', '24XL', 1, 'us-east-1', '{"ids": [[[[[["deep"]]]]]]}')$$, '22023', NULL,
    'arrays count as levels too');
SELECT throws_ok($$SELECT capacity.create_capacity_request('ae-1', 'infra', repeat('X', 33), 1, 'us-east-1')$$, '22023', NULL,
    'requested_size over 32 characters: 22023');
SELECT throws_ok($$SELECT capacity.create_capacity_request('ae-1', 'infra', E'24XL\n<!channel>', 1, 'us-east-1')$$, '22023', NULL,
    'requested_size with a control character: 22023');
SELECT throws_ok($$SELECT capacity.create_capacity_request('ae-1', 'infra', '24XL', 1, 'us' || repeat('-east', 10) || '-1')$$, '22023', NULL,
    'a region of 54 characters (which the pattern alone would allow): 22023');
SELECT throws_ok($$SELECT capacity.create_capacity_request('ae-1', repeat('g', 64), '24XL', 1, 'us-east-1')$$, '22023', NULL,
    'an infra group name over 63 characters: 22023');
SELECT throws_ok($$SELECT capacity.create_capacity_request(repeat('o', 257), 'infra', '24XL', 1, 'us-east-1')$$, '22023', NULL,
    'a commercial owner id over 256 characters: 22023');
RESET ROLE;
SELECT is((SELECT count(*) FROM capacity.capacity_requests) || ' ' || (SELECT count(*) FROM capacity.capacity_request_events),
          (SELECT requests || ' ' || events FROM counts), 'the refused creations wrote nothing');
SET LOCAL ROLE authenticated;
SELECT capacity.create_capacity_request('ae-1', 'infra', '24XL', 1, 'us-east-1', jsonb_build_object('blob', repeat('x', 4084)))
       -> 'request' ->> 'id' AS cr_big \gset
SELECT is((SELECT octet_length(customer_ref::text) FROM capacity.capacity_requests WHERE id = :'cr_big'), 4096,
    'exactly 4 KiB of JSON text is accepted');
SELECT capacity.create_capacity_request('ae-1', 'infra', '24XL', 1, 'us-east-1', '{"a": {"b": {"c": {"d": {"e": 1}}}}}', idempotency_key => 'deep-5')
       -> 'request' ->> 'id' AS cr1 \gset
SELECT is(capacity.get_capacity_request(:'cr1') -> 'request' -> 'customer_ref' #>> '{a,b,c,d,e}', '1', 'and five levels of nesting');

RESET ROLE;
CREATE TEMP TABLE events_before AS SELECT count(*) AS n FROM capacity.capacity_request_events;
SET LOCAL ROLE authenticated;
SELECT set_config('request.jwt.claims', '{"sub":"ae-1","role":"authenticated"}', true) \g /dev/null
SELECT throws_ok(format($$SELECT capacity.record_capacity_event(%L, 'COMMERCIAL_REJECTED', jsonb_build_object('note', repeat('x', 17000)))$$, :'cr1'),
    '22023', NULL, 'an event payload over 16 KiB of JSON text: 22023');
SELECT throws_ok(format($$SELECT capacity.record_capacity_event(%L, 'COMMERCIAL_REJECTED', '{"a": [[[[[[[[1]]]]]]]]}')$$, :'cr1'),
    '22023', NULL, 'an event payload nested 9 levels deep: 22023');
SELECT throws_ok(format($$SELECT capacity.record_capacity_event(%L, 'COMMERCIAL_REJECTED', jsonb_build_object('reason', repeat('r', 2001)))$$, :'cr1'),
    '22023', NULL, 'a reason over 2000 characters: 22023');
SELECT is(pg_temp.error_of($$SELECT capacity.record_capacity_event(repeat('CR-2026-', 100000), 'COMMERCIAL_APPROVED')$$),
    '22023: invalid request_id: it is 800000 bytes long | allowed: at most 64 bytes, e.g. CR-2026-000123 or COMMERCIAL_APPROVED',
    'an 800 kB request id is refused without being looked up or repeated back');
SELECT is(pg_temp.error_of(format($$SELECT capacity.record_capacity_event(%L, repeat('APPROVE', 100000))$$, :'cr1')),
    '22023: invalid event_type: it is 700000 bytes long | allowed: at most 64 bytes, e.g. CR-2026-000123 or COMMERCIAL_APPROVED',
    'so is a 700 kB event name');
SELECT throws_ok($$SELECT capacity.get_capacity_request(repeat('CR', 1000))$$, '22023', NULL, 'get_capacity_request bounds the id too');
RESET ROLE;
SELECT set_config('request.jwt.claims', '', true) \g /dev/null
SELECT is((SELECT count(*) FROM capacity.capacity_request_events), (SELECT n FROM events_before), 'the refused events wrote nothing');
SELECT is(capacity.get_capacity_request(:'cr1') -> 'request' ->> 'state', 'COMMERCIAL_APPROVAL_REQUIRED', 'and the request did not move');

-- Direct writes (the owner, or anyone granted INSERT) meet the same limits in the tables' CHECKs.
SELECT throws_ok($$INSERT INTO capacity.capacity_requests (id, state, requester_user_id, commercial_owner_user_id, infra_owner_group,
                       customer_ref, requested_size, quantity, region)
                   VALUES ('CR-2026-999001', 'COMMERCIAL_APPROVAL_REQUIRED', 'sa-1', 'ae-1', 'infra',
                       jsonb_build_object('blob', repeat('x', 20 * 1024 * 1024)), '24XL', 1, 'us-east-1')$$,
    '23514', NULL, 'a direct insert of a 20 MB customer_ref violates the CHECK');
SELECT throws_ok(format($$UPDATE capacity.capacity_requests SET customer_ref = jsonb_build_object('blob', repeat('x', 4085)) WHERE id = %L$$, :'cr_big'),
    '23514', NULL, 'a direct update one byte over 4 KiB violates it too');
SELECT throws_ok(format($$UPDATE capacity.capacity_requests SET customer_ref = '{"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}}' WHERE id = %L$$, :'cr_big'),
    '23514', NULL, 'as does a direct update nested six levels deep');
SELECT throws_ok(format($$UPDATE capacity.capacity_requests SET region = 'us' || repeat('-east', 10) || '-1' WHERE id = %L$$, :'cr_big'),
    '23514', NULL, 'and a region over 32 characters that matches the pattern');
SELECT throws_ok(format($$UPDATE capacity.capacity_requests SET cancellation_reason = repeat('r', 2001) WHERE id = %L$$, :'cr_big'),
    '23514', NULL, 'and a cancellation reason over 2000 characters');
SELECT throws_ok(format($$INSERT INTO capacity.capacity_request_events (capacity_request_id, event_type, actor_type, actor_id, payload, to_state)
                          VALUES (%L, 'AWS_PROCUREMENT_STARTED', 'user', 'sa-1', jsonb_build_object('x', repeat('x', 16384)), 'PROVISIONING_IN_PROGRESS')$$, :'cr_big'),
    '23514', NULL, 'an event row with a payload over 16 KiB violates the events CHECK');
SELECT throws_ok($$INSERT INTO capacity.group_members VALUES ('infra', repeat('u', 257))$$, '23514', NULL,
    'and a group member id over 256 characters the group_members CHECK');
SELECT is((SELECT octet_length(customer_ref::text) FROM capacity.capacity_requests WHERE id = :'cr_big')
          || ' ' || (SELECT count(*) FROM capacity.capacity_requests WHERE id = 'CR-2026-999001'), '4096 0',
    'the refused direct writes changed nothing');

-- =============================================================================================
-- (c) Slack text: user-supplied values are escaped; only Slack user ids become mentions
-- =============================================================================================
SELECT flowgate.set_setting('flowgate.http_transport', '"native"') \g /dev/null
SELECT flowgate.set_setting('capacity.slack_channel', '"C0TEST"') \g /dev/null
SELECT flowgate.set_setting('capacity.slack_api_url', '"http://127.0.0.1:5597/slack"') \g /dev/null
SELECT flowgate.set_setting('capacity.warning_hours_before_deadline', '720') \g /dev/null
SELECT capacity.create_capacity_request('U9> <!channel', 'infra', '24XL', 1, 'us-east-1', requester_user_id => 'U0SA')
       -> 'request' ->> 'id' AS cr_evil \gset
SELECT capacity.apply_event(:'cr_evil', 'COMMERCIAL_APPROVED') \g /dev/null
SELECT capacity.apply_event(:'cr_evil', 'TECH_REVIEW_APPROVED') \g /dev/null
SELECT capacity.create_capacity_request('U0AE', 'infra', '24XL', 1, 'us-east-1', requester_user_id => 'sa-1')
       -> 'request' ->> 'id' AS cr_good \gset
SELECT capacity.apply_event(:'cr_good', 'COMMERCIAL_APPROVED') \g /dev/null
SELECT capacity.apply_event(:'cr_good', 'TECH_REVIEW_APPROVED') \g /dev/null
SELECT is(capacity.run_capacity_request_timers() ->> 'warned', '2', 'both requests are warned about their confirmation deadline');
SELECT is((SELECT body ->> 'text' FROM flowgate.deliveries WHERE idempotency_key LIKE 'capacity:' || :'cr_evil' || ':slack:reply:warning:%'),
    (SELECT format('%s: the customer''s confirmation is due by %s; `U9&gt; &lt;!channel` please chase it, or the request expires',
                   id, to_char(customer_confirmation_deadline_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'))
       FROM capacity.capacity_requests WHERE id = :'cr_evil'),
    'the confirmation warning shows the owner id `U9> <!channel` as escaped inline code: no channel ping, no mention, no link');
SELECT alike((SELECT body ->> 'text' FROM flowgate.deliveries WHERE idempotency_key LIKE 'capacity:' || :'cr_good' || ':slack:reply:warning:%'),
    '%; <@U0AE> please chase it, or the request expires', 'a Slack user id as owner is mentioned');
SELECT is((SELECT body ->> 'text' FROM flowgate.deliveries WHERE idempotency_key = 'capacity:' || :'cr_evil' || ':slack:root'),
    :'cr_evil' || ': 1 x `24XL` in `us-east-1` requested by <@U0SA> (commercial owner `U9&gt; &lt;!channel`, infra `infra`)',
    'the root message escapes the owner and mentions the requester');
SELECT is((SELECT count(*)::int FROM flowgate.deliveries
            WHERE owner_module = 'capacity' AND (body::text ~ '<[!#]' OR body::text ~ '<@[^UW]' OR body::text ~ '<https?:')), 0,
    'no message flowgate queued for Slack carries a channel ping, a non-user mention or a link');
SELECT is((SELECT count(*)::int FROM flowgate.deliveries
            WHERE owner_module = 'capacity' AND idempotency_key LIKE 'capacity:' || :'cr_good' || ':slack:%'
              AND body ->> 'text' LIKE '%sa-1%' AND body ->> 'text' NOT LIKE '%<@sa-1>%'), 1,
    'a JWT subject is written as plain text, not as a mention Slack cannot resolve');

-- =============================================================================================
-- (d) capacity.my_standing for signed-in users
-- =============================================================================================
SELECT is((SELECT prosecdef::text || ' ' || array_to_string(proconfig, ',') FROM pg_proc WHERE oid = 'capacity.my_standing(text)'::regprocedure),
    'true search_path=pg_catalog, pg_temp', 'capacity.my_standing is SECURITY DEFINER with a pinned search_path');
SET LOCAL ROLE authenticated;
SELECT set_config('request.jwt.claims', '{"sub":"infra-1","role":"authenticated"}', true) \g /dev/null
SELECT is(capacity.my_standing(:'cr1'),
    '{"actor": "infra-1", "admin": false, "requester": false, "infra_group": true, "commercial_owner": false}'::jsonb,
    'an infra group member learns their standing (the membership table stays unreadable to them)');
SELECT throws_ok('SELECT count(*) FROM capacity.group_members', '42501', NULL, 'group_members itself is still not readable');
SELECT set_config('request.jwt.claims', '{"sub":"sa-1","role":"authenticated"}', true) \g /dev/null
SELECT is(capacity.my_standing(:'cr1') ->> 'requester', 'true', 'the requester is the requester');
SELECT set_config('request.jwt.claims', '{"sub":"ae-1","role":"authenticated"}', true) \g /dev/null
SELECT is(capacity.my_standing(:'cr1') ->> 'commercial_owner', 'true', 'the commercial owner is the commercial owner');
SELECT set_config('request.jwt.claims', '{"sub":"stranger","role":"authenticated"}', true) \g /dev/null
SELECT throws_ok(format($$SELECT capacity.my_standing(%L)$$, :'cr1'), 'P0002', NULL,
    'a stranger learns nothing, not even that the request exists (P0002, as under RLS)');
SELECT throws_ok($$SELECT capacity.my_standing('CR-2026-999999')$$, 'P0002', NULL, 'the same answer as for a request that does not exist');
SELECT throws_ok($$SELECT capacity.my_standing(repeat('CR', 1000))$$, '22023', NULL, 'an oversized id is 22023');
SET LOCAL ROLE anon;
SELECT set_config('request.jwt.claims', '{"role":"anon"}', true) \g /dev/null
SELECT throws_ok(format($$SELECT capacity.my_standing(%L)$$, :'cr1'), 'P0002', NULL, 'anon learns nothing either');
SET LOCAL ROLE service_role;
SELECT set_config('request.jwt.claims', '{"role":"service_role"}', true) \g /dev/null
SELECT is(capacity.my_standing(:'cr1') ->> 'admin', 'true', 'a trusted session has admin standing');
RESET ROLE;
SELECT set_config('request.jwt.claims', '', true) \g /dev/null

-- =============================================================================================
-- (e) Provisioning operator functions: service_role yes, untrusted roles no
-- =============================================================================================
SELECT is((SELECT array_agg(p.oid::regprocedure::text ORDER BY p.oid::regprocedure::text)
             FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
            WHERE n.nspname = 'provisioning' AND p.proname IN ('enqueue_client', 'claim_job', 'report_job', 'retry', 'run_jobs', 'tenant_keys', 'list_jobs', 'sync_schema')
              AND p.prosecdef AND p.proconfig = ARRAY['search_path=pg_catalog, pg_temp']
              AND has_function_privilege('service_role', p.oid, 'EXECUTE')
              AND NOT has_function_privilege('authenticated', p.oid, 'EXECUTE')
              AND NOT has_function_privilege('anon', p.oid, 'EXECUTE')),
    ARRAY['provisioning.claim_job(text)', 'provisioning.enqueue_client(text,text,text,text,jsonb)', 'provisioning.list_jobs(text,integer)',
          'provisioning.report_job(uuid,text,boolean,integer,text,integer)', 'provisioning.retry(text)', 'provisioning.retry(uuid)', 'provisioning.run_jobs(integer)', 'provisioning.sync_schema(text)',
          'provisioning.tenant_keys(uuid)'],
    'every operator function is SECURITY DEFINER with a pinned search_path, executable by service_role and not by anon or authenticated');

SET LOCAL ROLE service_role;
SELECT is(provisioning.enqueue_client('svc-tenant', 'Service Tenant', 'us-east-1', 'pro') #>> '{job,job_type}', 'create_project',
    'service_role onboards a tenant');
CREATE TEMP TABLE svc_claim AS SELECT provisioning.claim_job('svc-worker') AS j;
GRANT SELECT ON svc_claim TO PUBLIC;
SELECT is((SELECT j ->> 'status' FROM svc_claim), 'running', 'service_role claims its job');
SELECT is(provisioning.report_job((SELECT (j ->> 'job_id')::uuid FROM svc_claim), 'svc-worker', false, 503, 'HTTP 503') ->> 'status', 'queued',
    'and reports a transient failure');
SELECT is((SELECT count(*)::int FROM provisioning.list_jobs()), 1, 'service_role lists the jobs');
SELECT is((SELECT slug FROM provisioning.v_admin_diagnostics), 'svc-tenant', 'and reads the diagnostics');
SELECT is((SELECT coalesce(anon_key, 'none') FROM provisioning.tenant_keys((SELECT client_id FROM provisioning.clients WHERE slug = 'svc-tenant'))),
    'none', 'service_role may read tenant keys (none stored yet)');
SELECT throws_ok($$SELECT provisioning.retry('00000000-0000-4000-8000-000000000000')$$, 'P0002', NULL,
    'retry runs for service_role (an unknown client is P0002)');
SELECT is(provisioning.run_jobs(0), '{"started": []}'::jsonb,
    'run_jobs runs for service_role (reading the hidden organisation setting with the owner''s rights)');
RESET ROLE;
UPDATE counts SET clients = (SELECT count(*) FROM provisioning.clients);

SET LOCAL ROLE authenticated;
SELECT set_config('request.jwt.claims', '{"sub":"tenant-admin","role":"authenticated"}', true) \g /dev/null
SELECT throws_ok($$SELECT provisioning.enqueue_client('evil-tenant', 'Evil')$$, '42501', NULL, 'authenticated cannot onboard tenants');
SELECT throws_ok($$SELECT * FROM provisioning.tenant_keys('00000000-0000-4000-8000-000000000000')$$, '42501', NULL,
    'nor read tenant keys');
SELECT throws_ok($$SELECT * FROM provisioning.list_jobs()$$, '42501', NULL, 'nor list jobs');
SET LOCAL ROLE anon;
SELECT set_config('request.jwt.claims', '{"role":"anon"}', true) \g /dev/null
SELECT throws_ok($$SELECT provisioning.claim_job('anon-worker')$$, '42501', NULL, 'anon cannot claim jobs');
RESET ROLE;
SELECT set_config('request.jwt.claims', '', true) \g /dev/null

-- A careless GRANT EXECUTE does not let an untrusted role in: each function checks trust first.
GRANT EXECUTE ON FUNCTION provisioning.enqueue_client(text, text, text, text, jsonb), provisioning.claim_job(text),
    provisioning.report_job(uuid, text, boolean, integer, text, integer), provisioning.retry(uuid), provisioning.run_jobs(integer),
    provisioning.tenant_keys(uuid), provisioning.list_jobs(text, integer) TO authenticated;
SET LOCAL ROLE authenticated;
SELECT set_config('request.jwt.claims', '{"sub":"tenant-admin","role":"authenticated"}', true) \g /dev/null
SELECT throws_ok($$SELECT provisioning.enqueue_client('evil-tenant', 'Evil')$$, '42501', NULL,
    'even with EXECUTE, authenticated cannot onboard a tenant');
SELECT throws_ok($$SELECT provisioning.claim_job('evil-worker')$$, '42501', NULL, 'nor claim a job');
SELECT throws_ok(format($$SELECT provisioning.report_job(%L, 'svc-worker', true)$$, (SELECT j ->> 'job_id' FROM svc_claim)), '42501', NULL,
    'nor report one');
SELECT throws_ok($$SELECT provisioning.retry('00000000-0000-4000-8000-000000000000')$$, '42501', NULL, 'nor retry');
SELECT throws_ok($$SELECT provisioning.run_jobs(10)$$, '42501', NULL, 'nor run jobs');
SELECT throws_ok(format($$SELECT * FROM provisioning.tenant_keys(%L)$$, (SELECT j ->> 'client_id' FROM svc_claim)), '42501', NULL,
    'nor read tenant keys');
SELECT throws_ok($$SELECT * FROM provisioning.list_jobs()$$, '42501', NULL, 'nor list jobs');
SELECT throws_ok('SELECT * FROM provisioning.clients', '42501', NULL, 'and the tables stay closed');
RESET ROLE;
SELECT set_config('request.jwt.claims', '', true) \g /dev/null
SELECT is((SELECT count(*) FROM provisioning.clients) || ' ' || (SELECT string_agg(status || ':' || attempts, ',') FROM provisioning.client_provisioning_jobs),
    (SELECT clients FROM counts) || ' queued:1', 'the refused calls wrote nothing: one client, its job still queued after one attempt');

-- A cost that numeric(14,2) would round up to 10^12 is refused before the write (22023, not 22003).
SELECT throws_ok($$SELECT capacity.create_capacity_request('ae-1', 'infra', '24XL', 1, 'us-east-1', estimated_monthly_cost_usd => 999999999999.995)$$,
                 '22023', NULL, 'a cost that rounds to 10^12 USD: 22023');
SELECT throws_ok($$SELECT capacity.handle_slack_action('payload=x', '1', repeat('a', 68))$$, '22023', NULL,
                 'a Slack signature longer than v0= and 64 hex digits: 22023 before anything is hashed');

-- A NULL where a value is required is 22023 (PostgREST would otherwise answer 200 with null).
SELECT throws_ok($$SELECT intake.claim(NULL)$$, '22023', NULL, 'intake.claim(NULL): 22023');
SELECT throws_ok($$SELECT capacity.get_capacity_request(NULL)$$, '22023', NULL, 'capacity.get_capacity_request(NULL): 22023');
SELECT throws_ok($$SELECT capacity.get_capacity_request('CR-2026-000001', NULL)$$, '22023', NULL, 'and with recent_events NULL');
SELECT throws_ok($$SELECT capacity.my_standing(NULL)$$, '22023', NULL, 'capacity.my_standing(NULL): 22023');
SELECT throws_ok($$SELECT capacity.handle_slack_command(NULL, NULL, NULL)$$, '22023', NULL, 'capacity.handle_slack_command(NULL, ...): 22023');
SELECT throws_ok($$SELECT capacity.handle_slack_action('payload=x', '1', NULL)$$, '22023', NULL, 'capacity.handle_slack_action(..., NULL): 22023');
SELECT throws_ok($$SELECT flowgate.unlink_identity(NULL, 'U1')$$, '22023', NULL, 'flowgate.unlink_identity(NULL, ...): 22023');
SELECT throws_ok($$SELECT flowgate.get_setting(NULL)$$, '22023', NULL, 'flowgate.get_setting(NULL): 22023');

SELECT * FROM finish();
ROLLBACK;
