-- Privileges as a feature: flowgate.grant_api(role, modules) gives a backend role exactly what
-- calling the modules' API needs; trusted-only entry points still check trust themselves.
BEGIN;
SELECT plan(12);
DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'service_role') THEN CREATE ROLE service_role NOLOGIN; END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'anon') THEN CREATE ROLE anon NOLOGIN; END IF;
    CREATE ROLE fg_backend LOGIN;
    CREATE ROLE fg_trusted_backend LOGIN;
END $$;
GRANT service_role TO fg_trusted_backend;
SELECT intake.create_pool('tap_grants', 5, '{"drain_mode": "external"}') \g /dev/null

SELECT ok(NOT has_function_privilege('fg_backend', 'intake.claim_resource(text, text)', 'EXECUTE'), 'a new role cannot call the claim API');
SELECT is((SELECT count(*)::int FROM flowgate.grant_api('fg_backend', ARRAY['intake'])), 4, 'grant_api(role, intake) grants the schema and three entry points');
SELECT ok(has_function_privilege('fg_backend', 'intake.claim(text)', 'EXECUTE') AND has_schema_privilege('fg_backend', 'intake', 'USAGE'),
          'after which it may call them');
SELECT ok(NOT has_table_privilege('fg_backend', 'intake.allocations', 'SELECT') AND NOT has_table_privilege('fg_backend', 'intake.engine_config', 'SELECT'),
          'and nothing else: no table of the module');

SET LOCAL SESSION AUTHORIZATION fg_backend;
SELECT throws_ok($$SELECT intake.claim_resource('tap_grants', 'u1')$$, '42501', NULL,
    'an untrusted backend still may not claim in a named user''s name');
RESET SESSION AUTHORIZATION;
SELECT flowgate.grant_api('fg_trusted_backend', ARRAY['intake']) \g /dev/null
SET LOCAL SESSION AUTHORIZATION fg_trusted_backend;
SELECT is(intake.claim_resource('tap_grants', 'u1') ->> 'status', 'claimed', 'a trusted backend (a member of service_role) claims through claim_resource');
SELECT throws_ok($$SELECT * FROM flowgate.grant_api('fg_backend')$$, '42501', NULL, 'only the owner grants the API');
RESET SESSION AUTHORIZATION;

SELECT throws_ok($$SELECT * FROM flowgate.grant_api('no_such_role')$$, '22023', NULL, 'an unknown role is 22023');
SELECT throws_ok($$SELECT * FROM flowgate.grant_api('anon')$$, '22023', NULL, 'anon is never granted the API');
SELECT throws_ok($$SELECT * FROM flowgate.grant_api('fg_backend', ARRAY['ops'])$$, '22023', NULL, 'ops is by persona (the hint says which to grant)');
SELECT throws_ok($$SELECT * FROM flowgate.grant_api('fg_backend', ARRAY['payments'])$$, '22023', NULL, 'an unknown module is 22023');
-- (What the install does where service_role exists; this server may have created it later.)
SELECT flowgate.grant_api('service_role', ARRAY['flowgate', 'capacity', 'intake']) \g /dev/null
SELECT ok(has_function_privilege('service_role', 'capacity.create_capacity_request(text, text, text, integer, text, jsonb, date, integer, numeric, text, text)', 'EXECUTE')
          AND has_function_privilege('service_role', 'intake.claim_resource(text, text)', 'EXECUTE'),
          'service_role gets the flowgate, capacity and intake APIs');

SELECT * FROM finish();
ROLLBACK;
