-- The extension itself: objects, dependencies, DROP/CREATE cycles, pg_dump registration.
BEGIN;
SELECT plan(16);

SELECT has_extension('flowgate', 'flowgate is installed');
SELECT has_extension('pgmq', 'pgmq is installed');
SELECT has_schema('flowgate', 'schema flowgate exists');
SELECT has_table('flowgate', 'settings', 'flowgate.settings exists');
SELECT has_function('flowgate', 'current_actor', ARRAY[]::text[], 'flowgate.current_actor() exists');
SELECT has_function('flowgate', 'forbid_mutation', ARRAY[]::text[], 'flowgate.forbid_mutation() exists');
SELECT is((SELECT extrelocatable FROM pg_extension WHERE extname = 'flowgate'), false, 'flowgate is not relocatable');
SELECT ok(
    (SELECT 'flowgate.settings'::regclass::oid = ANY (extconfig) FROM pg_extension WHERE extname = 'flowgate'),
    'flowgate.settings is registered with pg_extension_config_dump');

SELECT throws_ok('DROP EXTENSION pgmq', '2BP01', NULL, 'pgmq cannot be dropped while flowgate needs it');

SELECT lives_ok('DROP EXTENSION flowgate', 'DROP EXTENSION flowgate');
SELECT lives_ok('CREATE EXTENSION flowgate', 'CREATE EXTENSION flowgate again');
SELECT is(flowgate.get_setting('flowgate.trusted_roles'), '["service_role"]'::jsonb, 'the re-created extension works');

SELECT lives_ok('DROP EXTENSION flowgate; DROP EXTENSION pgmq', 'drop flowgate and pgmq');
SELECT throws_ok('CREATE EXTENSION flowgate', '42704', 'required extension "pgmq" is not installed',
    'without pgmq, CREATE EXTENSION names the missing dependency');
SELECT lives_ok('CREATE EXTENSION flowgate CASCADE', 'CREATE EXTENSION flowgate CASCADE installs pgmq too');
SELECT has_extension('pgmq', 'pgmq came back with CASCADE');

SELECT * FROM finish();
ROLLBACK;
