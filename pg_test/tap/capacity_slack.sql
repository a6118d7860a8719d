-- Capacity projections (Slack messages + thread replies, Linear issue + comments) through the
-- outbox against flowgate-testd on 127.0.0.1:5597, and Slack slash commands / buttons with
-- v0 signatures (computed here with pgcrypto's HMAC, as Slack computes them).
BEGIN;
SELECT plan(31);
CREATE EXTENSION IF NOT EXISTS pgcrypto;

SELECT flowgate.set_setting('flowgate.http_transport', '"native"') \g /dev/null
SELECT flowgate.set_setting('capacity.slack_channel', '"C0TEST"') \g /dev/null
SELECT flowgate.set_setting('capacity.slack_api_url', '"http://127.0.0.1:5597/slack"') \g /dev/null
SELECT flowgate.set_setting('capacity.linear_team_id', '"team-1"') \g /dev/null
SELECT flowgate.set_setting('capacity.linear_api_url', '"http://127.0.0.1:5597/linear/graphql"') \g /dev/null
SELECT flowgate.set_secret('slack_bot_token', 'xoxb-flowgate-test-token-7f3a') \g /dev/null
SELECT flowgate.set_secret('linear_api_key', 'lin_api_test') \g /dev/null
SELECT flowgate.set_secret('slack_signing_secret', 'sekrit-signing') \g /dev/null
INSERT INTO capacity.group_members VALUES ('infra', 'U0INFRA'), ('commercial_approvers', 'U0AE'), ('commercial_approvers', 'ae-jwt-1');

-- === Projections ============================================================================
SELECT capacity.create_capacity_request('U0AE', 'infra', '24XL', 2, 'us-east-1', requester_user_id => 'U0SA') -> 'request' ->> 'id' AS cr \gset
SELECT is((SELECT count(*)::int FROM flowgate.deliveries WHERE owner_id = :'cr'), 2, 'creating enqueues a Slack message and a Linear issue');
SELECT ok(NOT EXISTS (SELECT FROM flowgate.deliveries WHERE owner_id = :'cr' AND (body::text LIKE '%xoxb%' OR headers::text LIKE '%xoxb%')),
          'the bot token is not in the deliveries');
SELECT capacity.apply_event(:'cr', 'COMMERCIAL_APPROVED') \g /dev/null
SELECT is((SELECT count(*)::int FROM flowgate.deliveries WHERE owner_id = :'cr' AND next_attempt_at = 'infinity'), 2,
          'the thread reply and the comment wait (parked) until the message ts and issue id are known');
SELECT is((flowgate.dispatch(50) ->> 'delivered')::int, 2, 'dispatch sends the message and the issue');
SELECT is((SELECT slack_channel_id || ' ' || (slack_thread_ts IS NOT NULL)::text FROM capacity.capacity_requests WHERE id = :'cr'), 'C0TEST true',
          'Slack''s channel and ts are stored');
SELECT is((SELECT linear_issue_id FROM capacity.capacity_requests WHERE id = :'cr'), 'lin-capacity:' || :'cr' || ':linear:issue', 'the Linear issue id is stored');
SELECT is((SELECT count(*)::int FROM flowgate.deliveries WHERE owner_id = :'cr' AND next_attempt_at = 'infinity'), 0, 'the parked deliveries were released');
SELECT is((flowgate.dispatch(50) ->> 'delivered')::int, 2, 'the reply and the comment are sent');
SELECT is((SELECT body ->> 'thread_ts' FROM flowgate.deliveries WHERE idempotency_key LIKE 'capacity:' || :'cr' || ':slack:reply:%'),
          (SELECT slack_thread_ts FROM capacity.capacity_requests WHERE id = :'cr'), 'the reply went into the request''s thread');
SELECT is((SELECT body -> 'variables' -> 'input' ->> 'issueId' FROM flowgate.deliveries WHERE idempotency_key LIKE 'capacity:' || :'cr' || ':linear:comment:%'),
          (SELECT linear_issue_id FROM capacity.capacity_requests WHERE id = :'cr'), 'the comment went onto the request''s issue');
SELECT capacity.apply_event(:'cr', 'TECH_REVIEW_APPROVED') \g /dev/null
SELECT is((SELECT count(*)::int FROM flowgate.deliveries WHERE owner_id = :'cr' AND status = 'pending' AND next_attempt_at <= now()), 2,
          'once the ids are known, later replies are due at once');
SELECT flowgate.set_setting('capacity.warning_hours_before_deadline', '720') \g /dev/null
SELECT is(capacity.run_capacity_request_timers() ->> 'warned', '1', 'a deadline inside the warning window is warned about');
SELECT is((SELECT body ->> 'thread_ts' FROM flowgate.deliveries WHERE idempotency_key LIKE 'capacity:' || :'cr' || ':slack:reply:warning:%'),
          (SELECT slack_thread_ts FROM capacity.capacity_requests WHERE id = :'cr'), 'the warning goes into the request''s thread');
SELECT is(capacity.run_capacity_request_timers() ->> 'warned', '0', 'and only once');

-- === Slack slash command ====================================================================
CREATE TEMP TABLE slack_req AS
SELECT 'command=%2Fcapacity&text=create+owner%3D%3C%40U0AE%7Cana%3E+group%3Dinfra+size%3D24XL+qty%3D2+region%3Dus-east-1+cost%3D48000'
       || '&user_id=U0SA&channel_id=C0TEST&trigger_id=13345224609.738474920.8088930838d88f008e0' AS body,
       extract(epoch FROM now())::bigint::text AS ts;
CREATE FUNCTION pg_temp.sig(body text, ts text, secret text DEFAULT 'sekrit-signing') RETURNS text LANGUAGE sql AS $$
    SELECT 'v0=' || encode(hmac('v0:' || ts || ':' || body, secret, 'sha256'), 'hex') $$;

SELECT matches((SELECT capacity.handle_slack_command(body, ts, pg_temp.sig(body, ts)) ->> 'text' FROM slack_req), '^Created CR-[0-9]{4}-[0-9]{6} \(COMMERCIAL_APPROVAL_REQUIRED\)$',
               'a signed slash command creates a request');
SELECT is((SELECT requester_user_id || ' ' || commercial_owner_user_id || ' ' || quantity FROM capacity.capacity_requests ORDER BY created_at DESC, id DESC LIMIT 1),
          'U0SA U0AE 2', 'for the Slack user, with the parsed owner and quantity');
SELECT is((SELECT capacity.handle_slack_command(body, ts, pg_temp.sig(body, ts)) ->> 'text' FROM slack_req),
          (SELECT 'Created ' || id || ' (COMMERCIAL_APPROVAL_REQUIRED)' FROM capacity.capacity_requests ORDER BY created_at DESC, id DESC LIMIT 1),
          'Slack retrying the same command (same trigger_id) creates nothing new');
SELECT throws_ok($$SELECT capacity.handle_slack_command(body, ts, pg_temp.sig(body || 'x', ts)) FROM slack_req$$, '42501', NULL,
                 'a signature over other bytes is refused');
SELECT throws_ok($$SELECT capacity.handle_slack_command(body, (ts::bigint - 400)::text, pg_temp.sig(body, (ts::bigint - 400)::text)) FROM slack_req$$, '42501', NULL,
                 'a request older than 5 minutes is refused');
SELECT throws_ok($$SELECT capacity.handle_slack_command(body, ts, pg_temp.sig(body, ts, 'wrong-secret')) FROM slack_req$$, '42501', NULL,
                 'a request signed with another secret is refused');
SELECT is((SELECT capacity.handle_slack_command(b, ts, pg_temp.sig(b, ts)) ->> 'response_type'
             FROM (SELECT replace(body, 'create+owner', 'frobnicate+owner') AS b, ts FROM slack_req) x), 'ephemeral',
          'a malformed command gets the usage, privately');

-- === Slack buttons ==========================================================================
CREATE TEMP TABLE slack_click AS
SELECT 'payload=' || replace(replace(jsonb_build_object(
           'type', 'block_actions', 'user', jsonb_build_object('id', u),
           'channel', jsonb_build_object('id', 'C0TEST'), 'message', jsonb_build_object('ts', '1700000000.000100'),
           'actions', jsonb_build_array(jsonb_build_object('action_id', 'capacity:' || ev, 'value', :'cr' || ':' || ev, 'action_ts', a))
       )::text, '{', '%7B'), '}', '%7D') AS body, u, ev
  FROM (VALUES ('U0INFRA', 'CUSTOMER_CONFIRMED', '1700000100.1'), ('U0SA', 'CUSTOMER_CONFIRMED', '1700000101.1')) v(u, ev, a);
SELECT is((SELECT capacity.handle_slack_action(body, extract(epoch FROM now())::bigint::text, pg_temp.sig(body, extract(epoch FROM now())::bigint::text)) ->> 'response_type'
             FROM slack_click WHERE u = 'U0INFRA'), 'ephemeral', 'infra cannot confirm for the customer: a private refusal');
SELECT is((SELECT capacity.handle_slack_action(body, extract(epoch FROM now())::bigint::text, pg_temp.sig(body, extract(epoch FROM now())::bigint::text)) ->> 'text'
             FROM slack_click WHERE u = 'U0SA'), :'cr' || ': CUSTOMER_CONFIRMED by <@U0SA> → PROVISIONING_IN_PROGRESS',
          'the requester''s click confirms');
SELECT is((SELECT count(*)::int FROM capacity.capacity_request_events WHERE capacity_request_id = :'cr' AND event_type = 'CUSTOMER_CONFIRMED'
              AND actor_id = 'U0SA' AND actor_type = 'delegated'), 1, 'recorded once, for the Slack user');
SELECT throws_ok($$SELECT capacity.handle_slack_action(body, extract(epoch FROM now())::bigint::text, 'v0=00') FROM slack_click WHERE u = 'U0SA'$$,
                 '42501', NULL, 'an unsigned click is refused');

-- === One person, one actor: created through PostgREST, approved from Slack ==================
DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'authenticated') THEN CREATE ROLE authenticated NOLOGIN; END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'authenticator') THEN CREATE ROLE authenticator LOGIN NOINHERIT; END IF;
END $$;
GRANT authenticated TO authenticator;
-- The commercial owner links her Slack id to her JWT subject herself, through PostgREST.
SET LOCAL SESSION AUTHORIZATION authenticator;
SET LOCAL ROLE authenticated;
SELECT set_config('request.jwt.claims', '{"sub":"ae-jwt-1","role":"authenticated"}', true) \g /dev/null
SELECT is(flowgate.link_identity('slack', 'U0AEJWT') ->> 'actor_id', 'ae-jwt-1', 'a person links her own Slack id to herself');
SELECT throws_ok($$SELECT flowgate.link_identity('slack', 'U0OTHER', 'someone-else')$$, '42501', NULL,
    'but not a Slack id to someone else');
SELECT set_config('request.jwt.claims', '{"sub":"sa-jwt-1","role":"authenticated"}', true) \g /dev/null
SELECT throws_ok($$SELECT flowgate.link_identity('slack', 'U0AEJWT')$$, '42501', NULL,
    'nor take over a Slack id linked to another person');
SELECT capacity.create_capacity_request('ae-jwt-1', 'infra', '24XL', 1, 'us-east-1') -> 'request' ->> 'id' AS cr_api \gset
RESET ROLE;
RESET SESSION AUTHORIZATION;
SELECT set_config('request.jwt.claims', '', true) \g /dev/null
CREATE TEMP TABLE slack_approve AS
SELECT 'payload=' || replace(replace(jsonb_build_object(
           'type', 'block_actions', 'user', jsonb_build_object('id', u),
           'channel', jsonb_build_object('id', 'C0TEST'), 'message', jsonb_build_object('ts', '1700000000.000200'),
           'actions', jsonb_build_array(jsonb_build_object('action_id', 'capacity:COMMERCIAL_APPROVED',
                                                           'value', :'cr_api' || ':COMMERCIAL_APPROVED', 'action_ts', a))
       )::text, '{', '%7B'), '}', '%7D') AS body, u
  FROM (VALUES ('U0STRANGER', '1700000200.1'), ('U0AEJWT', '1700000201.1')) v(u, a);
SELECT is((SELECT capacity.handle_slack_action(body, extract(epoch FROM now())::bigint::text, pg_temp.sig(body, extract(epoch FROM now())::bigint::text)) ->> 'response_type'
             FROM slack_approve WHERE u = 'U0STRANGER'), 'ephemeral', 'an unlinked Slack user is not the commercial owner');
SELECT is((SELECT capacity.handle_slack_action(body, extract(epoch FROM now())::bigint::text, pg_temp.sig(body, extract(epoch FROM now())::bigint::text)) ->> 'text'
             FROM slack_approve WHERE u = 'U0AEJWT'), :'cr_api' || ': COMMERCIAL_APPROVED by <@U0AEJWT> → TECHNICAL_REVIEW_REQUIRED',
          'the owner''s click in Slack approves the request created through the API');
SELECT is((SELECT actor_id || ' ' || actor_type FROM capacity.capacity_request_events WHERE capacity_request_id = :'cr_api' AND event_type = 'COMMERCIAL_APPROVED'),
          'ae-jwt-1 delegated', 'recorded as the one actor she is');

SELECT * FROM finish();
ROLLBACK;
