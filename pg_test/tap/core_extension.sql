-- The extension itself: objects, dependencies, DROP/CREATE cycles, pg_dump registration.
BEGIN;
SELECT plan(19);

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

-- Every function and procedure of the extension says what it is for (\df+, PostgREST's OpenAPI):
-- Rust functions through their doc comment (#[documented]), SQL ones through a COMMENT.
SELECT is_empty($$
    SELECT p.oid::regprocedure::text FROM pg_catalog.pg_proc p
      JOIN pg_catalog.pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
      JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid AND e.extname = 'flowgate'
     WHERE coalesce(obj_description(p.oid, 'pg_proc'), '') = ''$$,
    'every function of the extension has a COMMENT');
SELECT cmp_ok(
    (SELECT count(*)::int FROM pg_catalog.pg_proc p
      JOIN pg_catalog.pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
      JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid AND e.extname = 'flowgate'
     WHERE p.probin = '$libdir/flowgate'), '>=', 50,
    'the Rust functions are among them');
SELECT is(obj_description('ops.ingest_event(jsonb)'::regprocedure, 'pg_proc'),
    (SELECT obj_description('ops.ingest_event(jsonb)'::regprocedure, 'pg_proc') WHERE obj_description('ops.ingest_event(jsonb)'::regprocedure, 'pg_proc') !~ '`'),
    'a doc comment becomes the COMMENT without Markdown backticks');

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
