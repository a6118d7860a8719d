-- flowgate.current_actor() as PostgREST calls it: SET LOCAL ROLE + request.jwt.claims.
BEGIN;
SELECT plan(37);

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

-- A Supabase anonymous sign-in: a subject of its own, but a new one per sign-in.
SELECT set_config('request.jwt.claims', '{"sub":"0f7c-anon-signin-1","role":"authenticated","is_anonymous":true}', true);
SELECT is(flowgate.actor_is_anonymous(), true, 'a Supabase anonymous sign-in is anonymous');
SELECT throws_ok($$SELECT capacity.create_capacity_request('ae-1', 'infra', '24XL', 1, 'us-east-1')$$, '42501', NULL,
    'and may not write (a script would be a new user on every sign-in)');
RESET ROLE;
SELECT flowgate.set_setting('flowgate.allow_anonymous_users', 'true') \g /dev/null
SET LOCAL ROLE authenticated;
SELECT is(flowgate.actor_is_anonymous(), false, 'unless flowgate.allow_anonymous_users is on');
RESET ROLE;
SELECT flowgate.reset_setting('flowgate.allow_anonymous_users') \g /dev/null
SET LOCAL ROLE authenticated;

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

-- === Claims count only for PostgREST's login or a trusted one ===============================
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'authenticator') THEN CREATE ROLE authenticator LOGIN NOINHERIT; END IF;
    CREATE ROLE fg_mallory LOGIN;
END $$;
GRANT anon, authenticated, service_role TO authenticator;
GRANT authenticated TO fg_mallory;
SELECT is(flowgate.get_setting('flowgate.authenticator_roles'), '["authenticator"]'::jsonb,
    'flowgate.authenticator_roles defaults to Supabase''s PostgREST login');

-- What PostgREST does: log in as authenticator, SET LOCAL ROLE to the JWT's role, set the claims.
SET LOCAL SESSION AUTHORIZATION authenticator;
SET LOCAL ROLE authenticated;
SELECT set_config('request.jwt.claims', '{"sub":"u-postgrest","role":"authenticated"}', true) \g /dev/null
SELECT is(flowgate.current_actor() || ' ' || session_user || ' ' || current_user, 'u-postgrest authenticator authenticated',
    'a PostgREST-shaped call: the JWT subject is the actor');
SELECT is(flowgate.current_actor_info() ->> 'source', 'jwt', 'taken from the claims');
-- Link codes exist for the providers a module redeems them for (Slack, in capacity) only.
SELECT throws_ok($$SELECT flowgate.request_identity_link('github')$$, '22023', NULL,
    'a signed-in user gets no link code for a provider nothing redeems');
RESET ROLE;
RESET SESSION AUTHORIZATION;
SELECT is((SELECT count(*) FROM flowgate.identity_link_codes WHERE provider = 'github'), 0::bigint, 'and no code was stored');

-- A login role that writes the claims itself is itself, whatever it writes.
SET LOCAL SESSION AUTHORIZATION fg_mallory;
SELECT set_config('request.jwt.claims', '{"sub":"ae-1","role":"authenticated"}', true) \g /dev/null
SELECT is(flowgate.current_actor(), 'fg_mallory', 'a plain login role writing request.jwt.claims stays itself');
SET LOCAL ROLE authenticated;
SELECT is(flowgate.current_actor(), 'fg_mallory', 'also after SET ROLE: the actor is the login (one login is one actor, whatever role it sets)');
SELECT is(flowgate.current_actor_info() ->> 'source', 'session', 'recorded as a session role, not a JWT user');
SELECT set_config('request.jwt.claim.sub', 'ae-1', true) \g /dev/null
SELECT is(flowgate.current_actor(), 'fg_mallory', 'the PostgREST < 10 per-claim settings are ignored the same way');
SELECT set_config('request.jwt.claims', '{"sub":', true) \g /dev/null
SELECT is(flowgate.current_actor(), 'fg_mallory', 'and claims it cannot be believed are not even parsed');
SELECT set_config('request.jwt.claims', '', true) \g /dev/null
SELECT set_config('request.jwt.claim.sub', '', true) \g /dev/null
RESET ROLE;
RESET SESSION AUTHORIZATION;

-- The setting is the switch: a deployment whose PostgREST logs in under another name lists it.
SELECT flowgate.set_setting('flowgate.authenticator_roles', '["authenticator", "fg_mallory"]') \g /dev/null
SET LOCAL SESSION AUTHORIZATION fg_mallory;
SELECT set_config('request.jwt.claims', '{"sub":"u-custom-login","role":"authenticated"}', true) \g /dev/null
SELECT is(flowgate.current_actor(), 'u-custom-login', 'a role listed in flowgate.authenticator_roles has its claims believed');
RESET SESSION AUTHORIZATION;
SELECT flowgate.reset_setting('flowgate.authenticator_roles') \g /dev/null
SELECT set_config('request.jwt.claims', '', true) \g /dev/null

-- A caller's search_path cannot change who it is. flowgate.current_actor() runs with the
-- caller's search_path (row security policies call it); a login that puts a schema of its own
-- before pg_catalog, with an "=" that is always true, must still not pass as trusted or as an
-- authenticator, so its forged claims still do not count.
CREATE SCHEMA fg_mallory_ops AUTHORIZATION fg_mallory;
SET LOCAL SESSION AUTHORIZATION fg_mallory;
CREATE FUNCTION fg_mallory_ops.yes(name, text) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT true';
CREATE FUNCTION fg_mallory_ops.yes(text, text) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT true';
CREATE OPERATOR fg_mallory_ops.= (LEFTARG = name, RIGHTARG = text, FUNCTION = fg_mallory_ops.yes);
CREATE OPERATOR fg_mallory_ops.= (LEFTARG = text, RIGHTARG = text, FUNCTION = fg_mallory_ops.yes);
-- (What the calls return is kept and compared after the search_path is reset: pgTAP's own
-- comparisons would use the shadowing operator.)
CREATE TEMP TABLE mallory_seen (actor text, trusted text, on_behalf text);
SET LOCAL search_path = fg_mallory_ops, pg_catalog, pg_temp;
SELECT pg_catalog.set_config('request.jwt.claims', '{"sub":"u-victim","role":"authenticated"}', true) \g /dev/null
INSERT INTO mallory_seen (actor, trusted) SELECT flowgate.current_actor(), flowgate.current_actor_info() ->> 'trusted';
DO $$
BEGIN
    UPDATE mallory_seen SET on_behalf = flowgate.current_actor_info('u-victim') ->> 'id';
EXCEPTION WHEN insufficient_privilege THEN
    UPDATE mallory_seen SET on_behalf = '42501';
END $$;
RESET search_path;
SELECT set_config('request.jwt.claims', '', true) \g /dev/null
RESET SESSION AUTHORIZATION;
SELECT is((SELECT actor FROM mallory_seen), 'fg_mallory', 'an operator shadowing = in the caller''s search_path does not make its claims count');
SELECT is((SELECT trusted FROM mallory_seen), 'false', 'nor make it trusted');
SELECT is((SELECT on_behalf FROM mallory_seen), '42501', 'so it may not act on behalf of anyone (42501)');

-- The anon key has no subject: every anonymous caller would be one actor, so it links nothing.
SET LOCAL SESSION AUTHORIZATION authenticator;
SET LOCAL ROLE anon;
SELECT set_config('request.jwt.claims', '{"role":"anon"}', true) \g /dev/null
SELECT throws_ok($$SELECT flowgate.request_identity_link('slack')$$, '42501', NULL,
    'an anonymous caller may not ask for a Slack link code (the link would be everyone''s)');
RESET ROLE;
RESET SESSION AUTHORIZATION;
SELECT set_config('request.jwt.claims', '', true) \g /dev/null
SELECT is((SELECT count(*) FROM flowgate.identity_links WHERE external_id = 'U0ANON00001'), 0::bigint, 'and nothing was linked');

-- Nor has a signed-in role's token without a subject: every such caller would be the role.
SET LOCAL SESSION AUTHORIZATION authenticator;
SET LOCAL ROLE authenticated;
SELECT set_config('request.jwt.claims', '{"role":"authenticated"}', true) \g /dev/null
SELECT throws_ok($$SELECT flowgate.request_identity_link('slack')$$, '42501', NULL,
    'a token without sub may not ask for a link code either');
SELECT throws_ok($$SELECT capacity.create_capacity_request('ae-1', 'infra', '24XL', 1, 'us-east-1')$$, '42501', NULL,
    'nor create a capacity request in the role''s name');
RESET ROLE;
RESET SESSION AUTHORIZATION;
SELECT set_config('request.jwt.claims', '', true) \g /dev/null
SELECT is((SELECT count(*) FROM capacity.capacity_requests WHERE requester_user_id = 'authenticated'), 0::bigint, 'and nothing was written');
SELECT throws_ok($$SELECT flowgate.request_identity_link('slack')$$, '42501', NULL,
    'nor does a trusted login acting as its role (a code would link Slack users to that shared actor)');
SELECT is((SELECT count(*) FROM flowgate.identity_link_codes), 0::bigint, 'no link code was issued');

SELECT * FROM finish();
ROLLBACK;
