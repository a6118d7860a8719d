-- Capacity projections (Slack messages + thread replies, Linear issue + comments) through the
-- outbox against flowgate-testd on 127.0.0.1:5597, and Slack slash commands / buttons with
-- v0 signatures (computed here with pgcrypto's HMAC, as Slack computes them).
--
-- The projections are sent by CALL flowgate.run_outbox(), which cannot run inside a transaction
-- block: this file runs in autocommit. Where the background worker runs (it sends due
-- deliveries every 200 ms) whatever is checked before sending is enqueued and checked in one
-- transaction, and after a CALL the checks read the rows once the request's deliveries have
-- settled. Checks that must leave nothing behind run in a BEGIN … ROLLBACK block; the end
-- removes the request, its deliveries, the settings, secrets and group members it added.
-- Also run with the server clock moved to a weekend (test.sh, database flowgate_calendar,
-- no worker there: the CALLs send everything).
SELECT plan(58);
CREATE EXTENSION IF NOT EXISTS pgcrypto;

-- Until none of the request's deliveries is in flight or due (the worker may be sending them).
CREATE FUNCTION pg_temp.settle(cr text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1..100 LOOP
        IF NOT EXISTS (SELECT FROM flowgate.deliveries
                        WHERE owner_module = 'capacity' AND owner_id = cr
                          AND (status = 'in_flight' OR (status = 'pending' AND next_attempt_at <= clock_timestamp()))) THEN
            RETURN true;
        END IF;
        PERFORM pg_sleep(0.05);
    END LOOP;
    RAISE WARNING 'deliveries of % still in flight or due after 5 s', cr;
    RETURN false;
END $$;
-- The requests this file commits (owned by U0AE, requested by U0SA: also those a broken
-- earlier run left), with their deliveries and their history (append-only: removed with its
-- triggers off, which only a superuser can do)...
CREATE FUNCTION pg_temp.forget_requests() RETURNS void LANGUAGE plpgsql SET session_replication_role = replica AS $$
DECLARE
    ids text[] := ARRAY(SELECT id FROM capacity.capacity_requests WHERE commercial_owner_user_id = 'U0AE' AND requester_user_id = 'U0SA');
BEGIN
    DELETE FROM flowgate.deliveries WHERE owner_module = 'capacity' AND owner_id = ANY (ids);
    DELETE FROM capacity.capacity_request_events WHERE capacity_request_id = ANY (ids);
    DELETE FROM capacity.capacity_request_tasks WHERE capacity_request_id = ANY (ids);
    DELETE FROM capacity.capacity_requests WHERE id = ANY (ids);
END $$;
-- ... and the file's group members, settings and secrets.
CREATE FUNCTION pg_temp.cleanup() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_temp.forget_requests();
    DELETE FROM capacity.group_members WHERE (group_name, user_id) IN (('infra', 'U0INFRA'), ('commercial_approvers', 'U0AE'), ('commercial_approvers', 'ae-jwt-1'));
    PERFORM flowgate.reset_setting(k) FROM unnest(ARRAY['capacity.slack_channel', 'capacity.slack_api_url', 'capacity.linear_team_id',
                                                        'capacity.linear_api_url', 'capacity.warning_hours_before_deadline',
                                                        'flowgate.flow_limits']) k;
    PERFORM flowgate.drop_secret(s) FROM unnest(ARRAY['slack_bot_token', 'linear_api_key', 'slack_signing_secret']) s;
END $$;
SELECT pg_temp.cleanup() \g /dev/null

-- Committed: the outbox reads the secrets and the handlers the settings in their own transactions.
SELECT flowgate.set_setting('capacity.slack_channel', '"C0TEST"') \g /dev/null
-- Slack's one message per second per channel (the default flow limit, tested in the outbox
-- suites) would space this file's messages out by seconds: lift it for the test channel.
SELECT flowgate.set_setting('flowgate.flow_limits', '{"slack:C0TEST": {"per_second": 1000, "burst": 1000}}') \g /dev/null
SELECT flowgate.set_setting('capacity.slack_api_url', '"http://127.0.0.1:5597/slack"') \g /dev/null
SELECT flowgate.set_setting('capacity.linear_team_id', '"team-1"') \g /dev/null
SELECT flowgate.set_setting('capacity.linear_api_url', '"http://127.0.0.1:5597/linear/graphql"') \g /dev/null
SELECT flowgate.set_secret('slack_bot_token', 'xoxb-flowgate-test-token-7f3a') \g /dev/null
SELECT flowgate.set_secret('linear_api_key', 'lin_api_test') \g /dev/null
SELECT flowgate.set_secret('slack_signing_secret', 'sekrit-signing') \g /dev/null
INSERT INTO capacity.group_members VALUES ('infra', 'U0INFRA'), ('commercial_approvers', 'U0AE'), ('commercial_approvers', 'ae-jwt-1') \g /dev/null

-- === Projections ============================================================================
BEGIN;  -- (until it commits, the background worker cannot send what it enqueues)
SELECT capacity.create_capacity_request('U0AE', 'infra', '24XL', 2, 'us-east-1', requester_user_id => 'U0SA') -> 'request' ->> 'id' AS cr \gset
SELECT is((SELECT count(*)::int FROM flowgate.deliveries WHERE owner_id = :'cr'), 2, 'creating enqueues a Slack message and a Linear issue');
SELECT ok(NOT EXISTS (SELECT FROM flowgate.deliveries WHERE owner_id = :'cr' AND (body::text LIKE '%xoxb%' OR headers::text LIKE '%xoxb%')),
          'the bot token is not in the deliveries');
SELECT capacity.apply_event(:'cr', 'COMMERCIAL_APPROVED') \g /dev/null
SELECT is((SELECT count(*)::int FROM flowgate.deliveries WHERE owner_id = :'cr' AND next_attempt_at = 'infinity'), 2,
          'the thread reply and the comment wait (parked) until the message ts and issue id are known');
COMMIT;
CALL flowgate.run_outbox() \gset
SELECT pg_temp.settle(:'cr') \g /dev/null
SELECT is((SELECT string_agg(status || ' ' || attempts, ',' ORDER BY idempotency_key) FROM flowgate.deliveries
            WHERE idempotency_key IN ('capacity:' || :'cr' || ':linear:issue', 'capacity:' || :'cr' || ':slack:root')),
          'delivered 1,delivered 1', 'the outbox sends the message and the issue');
SELECT is((SELECT slack_channel_id || ' ' || (slack_thread_ts IS NOT NULL)::text FROM capacity.capacity_requests WHERE id = :'cr'), 'C0TEST true',
          'Slack''s channel and ts are stored');
SELECT is((SELECT linear_issue_id FROM capacity.capacity_requests WHERE id = :'cr'), 'lin-capacity:' || :'cr' || ':linear:issue', 'the Linear issue id is stored');
SELECT is((SELECT count(*)::int FROM flowgate.deliveries WHERE owner_id = :'cr' AND next_attempt_at = 'infinity'), 0, 'the parked deliveries were released');
SELECT is((SELECT count(*)::int FROM flowgate.deliveries r
             JOIN flowgate.deliveries root ON root.idempotency_key = 'capacity:' || :'cr'
                                              || CASE WHEN r.idempotency_key LIKE '%:slack:reply:%' THEN ':slack:root' ELSE ':linear:issue' END
            WHERE r.owner_id = :'cr' AND (r.idempotency_key LIKE '%:slack:reply:%' OR r.idempotency_key LIKE '%:linear:comment:%')
              AND r.status = 'delivered' AND r.attempts = 1 AND r.delivered_at > root.delivered_at), 2,
          'the reply and the comment are sent, once the message and the issue are delivered');
SELECT is((SELECT body ->> 'thread_ts' FROM flowgate.deliveries WHERE idempotency_key LIKE 'capacity:' || :'cr' || ':slack:reply:%'),
          (SELECT slack_thread_ts FROM capacity.capacity_requests WHERE id = :'cr'), 'the reply went into the request''s thread');
SELECT is((SELECT body -> 'variables' -> 'input' ->> 'issueId' FROM flowgate.deliveries WHERE idempotency_key LIKE 'capacity:' || :'cr' || ':linear:comment:%'),
          (SELECT linear_issue_id FROM capacity.capacity_requests WHERE id = :'cr'), 'the comment went onto the request''s issue');
BEGIN;
SELECT capacity.apply_event(:'cr', 'TECH_REVIEW_APPROVED') \g /dev/null
SELECT is((SELECT count(*)::int FROM flowgate.deliveries WHERE owner_id = :'cr' AND status = 'pending' AND next_attempt_at <= now()), 2,
          'once the ids are known, later replies are due at once');
-- The wide warning window is set and reset in this transaction: nothing else (such as the
-- worker's timers) ever runs with it.
SELECT flowgate.set_setting('capacity.warning_hours_before_deadline', '720') \g /dev/null
SELECT is(capacity.run_capacity_request_timers() ->> 'warned', '1', 'a deadline inside the warning window is warned about');
SELECT is((SELECT body ->> 'thread_ts' FROM flowgate.deliveries WHERE idempotency_key LIKE 'capacity:' || :'cr' || ':slack:reply:warning:%'),
          (SELECT slack_thread_ts FROM capacity.capacity_requests WHERE id = :'cr'), 'the warning goes into the request''s thread');
SELECT is(capacity.run_capacity_request_timers() ->> 'warned', '0', 'and only once');
SELECT flowgate.reset_setting('capacity.warning_hours_before_deadline') \g /dev/null
COMMIT;
CALL flowgate.run_outbox() \gset
SELECT pg_temp.settle(:'cr') \g /dev/null
SELECT is((SELECT string_agg(status::text, ',') FROM flowgate.deliveries WHERE owner_id = :'cr' AND status <> 'delivered'), NULL,
          'the later reply, comment and warning are delivered too: nothing of the request is left undelivered');
SELECT is((SELECT count(*)::int FROM flowgate.deliveries WHERE owner_id = :'cr'), 7,
          'seven deliveries in all: message, issue, two replies, two comments, the warning');

-- Slack answers HTTP 200 with ok: false when it posts nothing (here: a wrong bot token). That
-- message is not delivered: failed, saying why, and sent again by replay_dead once the token is
-- fixed (it posted nothing, so nothing is posted twice); its thread then gets its replies.
SELECT flowgate.set_secret('slack_bot_token', 'xoxb-wrong-token-0001') \g /dev/null
SELECT flowgate.set_setting('capacity.linear_team_id', '""') \g /dev/null
BEGIN;
SELECT capacity.create_capacity_request('U0AE', 'infra', '24XL', 1, 'us-east-1', requester_user_id => 'U0SA') -> 'request' ->> 'id' AS cr2 \gset
SELECT capacity.apply_event(:'cr2', 'COMMERCIAL_APPROVED') \g /dev/null
COMMIT;
CALL flowgate.run_outbox() \gset
SELECT pg_temp.settle(:'cr2') \g /dev/null
SELECT is((SELECT status::text || ' ' || (handler_error IS NULL) FROM flowgate.deliveries WHERE idempotency_key = 'capacity:' || :'cr2' || ':slack:root'),
          'failed true', 'a Slack answer of ok: false is not delivered (failed, not delivered with a handler error)');
SELECT ok((SELECT last_error LIKE 'Slack refused the request: invalid_auth%replay_dead%' FROM flowgate.deliveries
            WHERE idempotency_key = 'capacity:' || :'cr2' || ':slack:root'), 'it says what Slack answered and what to do');
SELECT flowgate.set_secret('slack_bot_token', 'xoxb-flowgate-test-token-7f3a') \g /dev/null
SELECT flowgate.replay_dead(ARRAY[(SELECT id FROM flowgate.deliveries WHERE idempotency_key = 'capacity:' || :'cr2' || ':slack:root')]) \g /dev/null
CALL flowgate.run_outbox() \gset
SELECT pg_temp.settle(:'cr2') \g /dev/null
CALL flowgate.run_outbox() \gset
SELECT pg_temp.settle(:'cr2') \g /dev/null
SELECT is((SELECT slack_thread_ts IS NOT NULL FROM capacity.capacity_requests WHERE id = :'cr2'), true,
          'replayed with the right token, the message is posted and its thread kept');
SELECT is((SELECT string_agg(status::text, ',') FROM flowgate.deliveries WHERE owner_id = :'cr2'), 'delivered,delivered',
          'and the reply waiting for it is sent');
SELECT flowgate.set_setting('capacity.linear_team_id', '"team-1"') \g /dev/null

-- === Slash commands, buttons and identities: checked, then rolled back =====================
BEGIN;
-- === Slack slash command ====================================================================
CREATE TEMP TABLE slack_req AS
SELECT 'command=%2Fcapacity&text=create+owner%3D%3C%40U0AE%7Cana%3E+group%3Dinfra+size%3D24XL+qty%3D2+region%3Dus-east-1+cost%3D48000'
       || '&user_id=U0SA&channel_id=C0TEST&trigger_id=13345224609.738474920.8088930838d88f008e0' AS body,
       extract(epoch FROM now())::bigint::text AS ts;
CREATE FUNCTION pg_temp.sig(body text, ts text, secret text DEFAULT 'sekrit-signing') RETURNS text LANGUAGE sql AS $$
    SELECT 'v0=' || encode(hmac('v0:' || ts || ':' || body, secret, 'sha256'), 'hex') $$;
-- The body of a click on a button of a message (form-encoded, as Slack posts it).
CREATE FUNCTION pg_temp.click(slack_user text, action_id text, value text, action_ts text, message_ts text DEFAULT '1700000000.000100')
RETURNS text LANGUAGE sql AS $$
    SELECT 'payload=' || replace(replace(jsonb_build_object(
               'type', 'block_actions', 'user', jsonb_build_object('id', slack_user),
               'channel', jsonb_build_object('id', 'C0TEST'), 'message', jsonb_build_object('ts', message_ts),
               'actions', jsonb_build_array(jsonb_build_object('action_id', action_id, 'value', value, 'action_ts', action_ts))
           )::text, '{', '%7B'), '}', '%7D') $$;

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
             FROM (SELECT replace(replace(body, 'owner%3D%3C%40U0AE%7Cana%3E', 'owner%3D%3C%40U0NOBODY%7Cx%3E'), 'trigger_id=', 'trigger_id=9') AS b, ts
                     FROM slack_req) x), 'ephemeral',
          'an owner who is not a commercial approver gets a private answer, not an error');
SELECT is((SELECT count(*)::int FROM capacity.capacity_requests WHERE commercial_owner_user_id = 'U0NOBODY'), 0, 'and nothing is created');
SELECT throws_ok($$SELECT capacity.handle_slack_command(repeat('a', 262145), ts, 'v0=00') FROM slack_req$$, '22023', NULL,
                 'a body over 256 KiB is refused before its signature is computed');
-- With capacity.slack_team_ids set, only users of those workspaces are served.
SELECT flowgate.set_setting('capacity.slack_team_ids', '["T0HOME"]') \g /dev/null
SELECT throws_ok($$SELECT capacity.handle_slack_command(b, ts, pg_temp.sig(b, ts)) FROM (SELECT body || '&team_id=T0EVIL' AS b, ts FROM slack_req) x$$,
                 '42501', NULL, 'a signed command from a workspace not in capacity.slack_team_ids is refused');
SELECT throws_ok($$SELECT capacity.handle_slack_command(body, ts, pg_temp.sig(body, ts)) FROM slack_req$$,
                 '42501', NULL, 'and one naming no workspace');
SELECT flowgate.reset_setting('capacity.slack_team_ids') \g /dev/null
SELECT throws_ok($$SELECT capacity.handle_slack_command(b, ts, pg_temp.sig(b, ts))
                     FROM (SELECT replace(body, 'trigger_id=', 'trigger_id=' || repeat('9', 300)) AS b, ts FROM slack_req) x$$,
                 '22023', NULL, 'a trigger_id too long for an idempotency key: 22023 before anything is written');
SELECT is((SELECT capacity.handle_slack_command(b, ts, pg_temp.sig(b, ts)) ->> 'response_type'
             FROM (SELECT replace(body, 'create+owner', 'frobnicate+owner') AS b, ts FROM slack_req) x), 'ephemeral',
          'a malformed command gets the usage, privately');

-- === Slack buttons ==========================================================================
CREATE TEMP TABLE slack_click AS
SELECT pg_temp.click(u, 'capacity:' || ev, :'cr' || ':' || ev, a) AS body, u, ev
  FROM (VALUES ('U0INFRA', 'CUSTOMER_CONFIRMED', '1700000100.1'), ('U0SA', 'CUSTOMER_CONFIRMED', '1700000101.1')) v(u, ev, a);
SELECT is((SELECT capacity.handle_slack_action(body, extract(epoch FROM now())::bigint::text, pg_temp.sig(body, extract(epoch FROM now())::bigint::text)) ->> 'response_type'
             FROM slack_click WHERE u = 'U0INFRA'), 'ephemeral', 'infra cannot confirm for the customer: a private refusal');
-- Another feature's button of the same Slack app (its clicks reach the same URL), with a value
-- shaped like capacity's: refused (22023), nothing recorded.
CREATE TEMP TABLE slack_foreign AS
SELECT pg_temp.click('U0SA', 'deploy:approve', :'cr' || ':CUSTOMER_CONFIRMED', '1700000099.1') AS body,
       extract(epoch FROM now())::bigint::text AS ts;
SELECT throws_ok(format('SELECT capacity.handle_slack_action(%L, %L, %L)', body, ts, pg_temp.sig(body, ts)), '22023', NULL,
                 'a click on another feature''s button is refused (22023)') FROM slack_foreign;
SELECT is((SELECT count(*)::int FROM capacity.capacity_request_events WHERE capacity_request_id = :'cr' AND event_type = 'CUSTOMER_CONFIRMED'), 0,
          'and confirms nothing');
-- A click refused in one state, sent again once the request has moved to a state that would
-- allow it (a replay, or a retry): the same refusal, nothing recorded.
CREATE TEMP TABLE slack_early AS
SELECT pg_temp.click('U0INFRA', 'capacity:AWS_CAPACITY_READY', :'cr' || ':AWS_CAPACITY_READY', '1700000102.1') AS body,
       extract(epoch FROM now())::bigint::text AS ts;
SELECT is((SELECT capacity.handle_slack_action(body, ts, pg_temp.sig(body, ts)) ->> 'response_type' FROM slack_early), 'ephemeral',
          'capacity ready before the customer confirmed: refused, privately');
SELECT is((SELECT capacity.handle_slack_action(body, extract(epoch FROM now())::bigint::text, pg_temp.sig(body, extract(epoch FROM now())::bigint::text)) ->> 'text'
             FROM slack_click WHERE u = 'U0SA'), :'cr' || ': CUSTOMER_CONFIRMED by <@U0SA> → PROVISIONING_IN_PROGRESS',
          'the requester''s click confirms');
SELECT is((SELECT capacity.handle_slack_action(body, ts, pg_temp.sig(body, ts)) ->> 'response_type' FROM slack_early), 'ephemeral',
          'the refused click sent again, now that the request is provisioning: the same refusal');
SELECT is((SELECT capacity.handle_slack_action(body, ts, 'v0=' || upper(substr(pg_temp.sig(body, ts), 4))) ->> 'response_type' FROM slack_early),
          'ephemeral', 'also with its signature''s hex digits in upper case');
SELECT is((SELECT count(*)::int FROM capacity.capacity_request_events WHERE capacity_request_id = :'cr' AND event_type = 'AWS_CAPACITY_READY'), 0,
          'and nothing was recorded: a refused click stays refused');
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
-- The commercial owner links her Slack id to her JWT subject herself: signed in (PostgREST) she
-- asks for a code, and sends it from Slack, whose signature says which Slack user she is.
CREATE TEMP TABLE slack_link (n int, code text);
GRANT SELECT, INSERT ON slack_link TO PUBLIC;
CREATE FUNCTION pg_temp.slack_link(code text) RETURNS jsonb LANGUAGE sql AS $$
    SELECT capacity.handle_slack_command(b, ts, pg_temp.sig(b, ts))
      FROM (SELECT 'command=%2Fcapacity&text=link+' || replace(code, ' ', '+') || '&user_id=U0AEJWT&channel_id=C0TEST&trigger_id=1.2.3' AS b,
                   extract(epoch FROM now())::bigint::text AS ts) x $$;
SET LOCAL SESSION AUTHORIZATION authenticator;
SET LOCAL ROLE authenticated;
SELECT set_config('request.jwt.claims', '{"sub":"ae-jwt-1","role":"authenticated"}', true) \g /dev/null
SELECT throws_ok($$SELECT flowgate.link_identity('slack', 'U0AEJWT')$$, '42501', NULL,
    'naming a Slack id does not link it: anyone could claim an approver''s id');
INSERT INTO slack_link SELECT 1, flowgate.request_identity_link('slack') ->> 'code';
INSERT INTO slack_link SELECT 2, flowgate.request_identity_link('slack') ->> 'code';
SELECT is((SELECT count(*)::int FROM slack_link WHERE code ~ '^[A-Z2-9]{4}-[A-Z2-9]{4}-[A-Z2-9]{4}$'), 2,
          'a signed-in person gets a one-time code (twice: the second replaces the first)');
RESET ROLE;
RESET SESSION AUTHORIZATION;
SELECT set_config('request.jwt.claims', '', true) \g /dev/null
SELECT matches(pg_temp.slack_link('AAAA-BBBB-CCCC') ->> 'text', 'may not link', 'from Slack, a wrong code links nothing (privately)');
SELECT matches(pg_temp.slack_link((SELECT code FROM slack_link WHERE n = 1)) ->> 'text', 'may not link', 'nor does a code a newer one replaced');
SELECT is((SELECT count(*)::int FROM flowgate.identity_links WHERE external_id = 'U0AEJWT'), 0, 'so far nothing is linked');
SELECT is(pg_temp.slack_link(lower((SELECT code FROM slack_link WHERE n = 2))) ->> 'text', 'Linked: as <@U0AEJWT>, you act from Slack as `ae-jwt-1`.',
          'the newest code, typed in lower case, links the Slack user who sent it to the person who asked for it');
SELECT matches(pg_temp.slack_link((SELECT code FROM slack_link WHERE n = 2)) ->> 'text', 'may not link', 'and is used up (a replayed request links nothing)');
SELECT is((SELECT actor_id || ' by ' || linked_by FROM flowgate.identity_links WHERE external_id = 'U0AEJWT'), 'ae-jwt-1 by ae-jwt-1', 'one link');
SET LOCAL SESSION AUTHORIZATION authenticator;
SET LOCAL ROLE authenticated;
SELECT set_config('request.jwt.claims', '{"sub":"ae-jwt-1","role":"authenticated"}', true) \g /dev/null
SELECT is(flowgate.link_identity('slack', 'U0AEJWT') ->> 'actor_id', 'ae-jwt-1', 'linking it again is a no-op for its owner');
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
SELECT pg_temp.click(u, 'capacity:COMMERCIAL_APPROVED', :'cr_api' || ':COMMERCIAL_APPROVED', a, '1700000000.000200') AS body, u
  FROM (VALUES ('U0STRANGER', '1700000200.1'), ('U0AEJWT', '1700000201.1')) v(u, a);
SELECT is((SELECT capacity.handle_slack_action(body, extract(epoch FROM now())::bigint::text, pg_temp.sig(body, extract(epoch FROM now())::bigint::text)) ->> 'response_type'
             FROM slack_approve WHERE u = 'U0STRANGER'), 'ephemeral', 'an unlinked Slack user is not the commercial owner');
SELECT is((SELECT capacity.handle_slack_action(body, extract(epoch FROM now())::bigint::text, pg_temp.sig(body, extract(epoch FROM now())::bigint::text)) ->> 'text'
             FROM slack_approve WHERE u = 'U0AEJWT'), :'cr_api' || ': COMMERCIAL_APPROVED by <@U0AEJWT> → TECHNICAL_REVIEW_REQUIRED',
          'the owner''s click in Slack approves the request created through the API');
SELECT is((SELECT actor_id || ' ' || actor_type FROM capacity.capacity_request_events WHERE capacity_request_id = :'cr_api' AND event_type = 'COMMERCIAL_APPROVED'),
          'ae-jwt-1 delegated', 'recorded as the one actor she is');
ROLLBACK;

-- ---- Clean up ---------------------------------------------------------------------------------
SELECT pg_temp.settle(:'cr') \g /dev/null
SELECT pg_temp.cleanup() \g /dev/null
SELECT is((SELECT count(*)::int FROM capacity.capacity_requests WHERE id = :'cr')
            + (SELECT count(*)::int FROM flowgate.deliveries WHERE owner_module = 'capacity' AND owner_id = :'cr')
            + (SELECT count(*)::int FROM capacity.group_members WHERE user_id IN ('U0INFRA', 'U0AE', 'ae-jwt-1'))
            + (SELECT count(*)::int FROM flowgate.settings WHERE key IN ('capacity.slack_channel', 'capacity.slack_api_url', 'capacity.linear_team_id',
                                                                           'capacity.linear_api_url', 'capacity.warning_hours_before_deadline')), 0,
          'the file leaves no request, delivery, group member or setting behind');

SELECT * FROM finish();
