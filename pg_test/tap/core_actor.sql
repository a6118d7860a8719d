-- flowgate.current_actor() as PostgREST calls it: SET LOCAL ROLE + request.jwt.claims.
BEGIN;
SELECT plan(13);

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'anon') THEN CREATE ROLE anon NOLOGIN; END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'authenticated') THEN CREATE ROLE authenticated NOLOGIN; END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'service_role') THEN CREATE ROLE service_role NOLOGIN; END IF;
END $$;

SELECT is(flowgate.current_actor(), current_user::text, 'without a JWT the actor is current_user');
SELECT is(flowgate.current_actor_info() ->> 'source', 'session', 'source is the session');
SELECT is((flowgate.current_actor_info() ->> 'trusted')::boolean, true, 'a superuser is trusted');

-- An authenticated request.
SET LOCAL ROLE authenticated;
SELECT set_config('request.jwt.claims', '{"sub":"6a1f3c2e-0d4b-4f8e-9a77-2b1c0e5d9f10","role":"authenticated","aud":"authenticated"}', true);
SELECT is(flowgate.current_actor(), '6a1f3c2e-0d4b-4f8e-9a77-2b1c0e5d9f10', 'the JWT subject is the actor');
SELECT is(flowgate.current_actor_info() ->> 'actor_type', 'user', 'recorded as a user');
SELECT is((flowgate.current_actor_info() ->> 'trusted')::boolean, false, 'authenticated is not trusted');
SELECT throws_ok($$SELECT flowgate.current_actor_info('U024BE7LH')$$, '42501', NULL,
    'an untrusted session may not act on behalf of someone else');
SELECT is(flowgate.current_actor_info('6a1f3c2e-0d4b-4f8e-9a77-2b1c0e5d9f10') ->> 'source', 'jwt',
    'naming yourself is allowed');

-- The anon key: a JWT without sub.
SET LOCAL ROLE anon;
SELECT set_config('request.jwt.claims', '{"role":"anon"}', true);
SELECT is(flowgate.current_actor(), 'anon', 'no sub: the role is the actor');

-- Broken claims are an error, not a silent fallback.
SELECT set_config('request.jwt.claims', '{"sub":', true);
SELECT throws_ok('SELECT flowgate.current_actor()', '22P02', NULL, 'malformed request.jwt.claims raises 22P02');
SELECT set_config('request.jwt.claims', '{"sub":12}', true);
SELECT throws_ok('SELECT flowgate.current_actor()', '22023', NULL, 'a non-string sub raises 22023');

-- The service role (a trusted role by default) acting for a Slack user.
SET LOCAL ROLE service_role;
SELECT set_config('request.jwt.claims', '{"role":"service_role"}', true);
SELECT is(flowgate.current_actor_info('U024BE7LH') ->> 'id', 'U024BE7LH', 'service_role may act on behalf of a Slack user');
SELECT is(flowgate.current_actor_info('U024BE7LH') ->> 'delegated_by', 'service_role', 'and the delegation is recorded');

RESET ROLE;
SELECT * FROM finish();
ROLLBACK;
