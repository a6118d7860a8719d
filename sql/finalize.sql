-- The whole extension (runs last, after every module): what spans modules — the operator
-- dashboard, grant_api (each module's API for a backend role) and the exposure rule for
-- PostgREST's anon and authenticated roles. Each module's own SQL is in sql/<module>/.

-- ==== Dashboard ===================================================================================
-- One self-contained HTML page (inline SVG, no external asset, no script) that PostgREST serves
-- as text/html: a function returning the "text/html" domain is PostgREST's media-type handler,
-- so GET /rest/v1/rpc/dashboard with `Accept: text/html` returns the page. It reads as its
-- caller (SECURITY INVOKER): each reader sees what their privileges and row-level security show.
CREATE DOMAIN flowgate."text/html" AS text;
COMMENT ON DOMAIN flowgate."text/html" IS 'HTML text; PostgREST answers a function returning it with Content-Type text/html.';

CREATE FUNCTION flowgate.html(t text) RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT replace(replace(replace(replace(replace(coalesce(t, ''), '&', '&amp;'), '<', '&lt;'), '>', '&gt;'), '"', '&quot;'), '''', '&#39;')
$$;
COMMENT ON FUNCTION flowgate.html(text) IS 'The text escaped for HTML (& < > " ''); NULL is empty.';

-- An SVG polyline of the values, oldest first, scaled into a width x height box.
CREATE FUNCTION flowgate.svg_line(vals numeric[], colour text, width int DEFAULT 320, height int DEFAULT 60) RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN coalesce(array_length(vals, 1), 0) = 0 THEN '' ELSE
      format('<polyline fill="none" stroke="%s" stroke-width="1.5" data-points="%s" points="%s"/>',
             flowgate.html(colour), array_length(vals, 1),
             (SELECT string_agg(
                       round(CASE WHEN n = 1 THEN 0 ELSE (i - 1) * width::numeric / (n - 1) END, 1)::text || ',' ||
                       round(height - CASE WHEN hi = lo THEN height / 2.0 ELSE (v - lo) * height / (hi - lo) END, 1)::text, ' ' ORDER BY i)
                FROM (SELECT v, i, count(*) OVER () AS n, min(v) OVER () AS lo, max(v) OVER () AS hi
                        FROM unnest(vals) WITH ORDINALITY AS u(v, i)) x))
    END
$$;
COMMENT ON FUNCTION flowgate.svg_line(numeric[], text, integer, integer) IS
  'An SVG polyline of the values, oldest first, scaled into a width x height box (for the dashboard).';

CREATE FUNCTION flowgate.dashboard(refresh_seconds int DEFAULT 10, samples int DEFAULT 60) RETURNS flowgate."text/html"
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    page text;
    part text;
    r record;
BEGIN
    IF refresh_seconds IS NULL OR refresh_seconds NOT BETWEEN 1 AND 3600 OR samples IS NULL OR samples NOT BETWEEN 2 AND 1440 THEN
        RAISE EXCEPTION 'invalid dashboard arguments: refresh_seconds %, samples %', refresh_seconds, samples
              USING ERRCODE = '22023', HINT = 'refresh_seconds 1 to 3600, samples 2 to 1440';
    END IF;
    page := format('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="%s">'
        '<title>flowgate</title><style>body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}'
        'table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}'
        'th{background:#f3f3f3}svg{background:#fafafa;border:1px solid #ddd}.pool{margin:0 0 1.5em}'
        '.muted{color:#777}</style></head><body><h1>flowgate</h1><p class="muted">as of %s; refreshes every %s s</p>',
        refresh_seconds, flowgate.html(to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS "UTC"')), refresh_seconds);

    -- Pools: drain over time from engine_metrics.
    page := page || '<h2>Intake pools</h2>';
    part := '';
    FOR r IN
        SELECT m.pool_id, array_agg(m.available_slots::numeric ORDER BY m.collected_at) AS available,
               array_agg(m.queue_depth::numeric ORDER BY m.collected_at) AS queue,
               array_agg(m.processing_velocity ORDER BY m.collected_at) AS velocity,
               array_agg(m.dlq_depth::numeric ORDER BY m.collected_at) AS dlq,
               (array_agg(m.available_slots ORDER BY m.collected_at DESC))[1] AS last_available,
               (array_agg(m.queue_depth ORDER BY m.collected_at DESC))[1] AS last_queue,
               (array_agg(m.processing_velocity ORDER BY m.collected_at DESC))[1] AS last_velocity,
               (array_agg(m.dlq_depth ORDER BY m.collected_at DESC))[1] AS last_dlq
          FROM (SELECT *, row_number() OVER (PARTITION BY pool_id ORDER BY collected_at DESC) AS rn FROM intake.engine_metrics) m
         WHERE m.rn <= samples
         GROUP BY m.pool_id ORDER BY m.pool_id
    LOOP
        part := part || format('<div class="pool" id="pool-%s"><h3>%s</h3><p>available %s · queue %s · %s committed/s · DLQ %s</p>'
            '<svg width="320" height="60" viewBox="0 0 320 60" role="img" aria-label="pool %s over time">%s%s%s%s</svg></div>',
            flowgate.html(r.pool_id), flowgate.html(r.pool_id), r.last_available, r.last_queue, r.last_velocity, r.last_dlq,
            flowgate.html(r.pool_id),
            flowgate.svg_line(r.available, '#2a7'), flowgate.svg_line(r.queue, '#27c'),
            flowgate.svg_line(r.velocity, '#c72'), flowgate.svg_line(r.dlq, '#c22'));
    END LOOP;
    page := page || coalesce(nullif(part, ''), '<p class="muted">no pool metrics yet</p>');

    -- Outbox health per destination.
    page := page || '<h2>Outbox</h2><table id="outbox"><tr><th>module</th><th>destination</th><th>status</th><th>deliveries</th><th>oldest</th><th>latest error</th></tr>';
    FOR r IN SELECT * FROM flowgate.outbox_summary ORDER BY module, destination, status LOOP
        page := page || format('<tr><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td></tr>',
            flowgate.html(r.module), flowgate.html(r.destination), flowgate.html(r.status::text), r.deliveries,
            flowgate.html(to_char(r.oldest AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI')), flowgate.html(r.last_error));
    END LOOP;
    page := page || '</table>';

    -- Capacity requests that wait for someone: their age and who holds the next decision.
    page := page || '<h2>Capacity requests</h2><table id="capacity"><tr><th>request</th><th>state</th><th>waiting</th><th>next decision</th></tr>';
    FOR r IN
        SELECT id, state, now() - updated_at AS age,
               CASE state WHEN 'COMMERCIAL_APPROVAL_REQUIRED' THEN 'commercial owner ' || commercial_owner_user_id
                          WHEN 'TECHNICAL_REVIEW_REQUIRED' THEN 'infra group ' || infra_owner_group
                          WHEN 'CUSTOMER_CONFIRMATION_REQUIRED' THEN 'customer, via requester ' || requester_user_id
                          WHEN 'PROVISIONING_IN_PROGRESS' THEN 'infra group ' || infra_owner_group
                          WHEN 'READY_FOR_CUSTOMER' THEN 'requester ' || requester_user_id
                          WHEN 'EXPIRED' THEN 'commercial owner ' || commercial_owner_user_id END AS holder
          FROM capacity.capacity_requests
         WHERE state NOT IN ('ACTIVATED', 'CANCELLED', 'FAILED')
         ORDER BY updated_at LIMIT 200
    LOOP
        page := page || format('<tr><td>%s</td><td>%s</td><td>%s</td><td>%s</td></tr>', flowgate.html(r.id), flowgate.html(r.state::text),
            flowgate.html(justify_interval(date_trunc('minute', r.age))::text), flowgate.html(r.holder));
    END LOOP;
    page := page || '</table>';

    -- Release gates per release.
    page := page || '<h2>Release gates</h2><table id="gates"><tr><th>release</th><th>status</th><th>G1</th><th>G2</th><th>G3</th><th>G4</th></tr>';
    FOR r IN
        SELECT rel.version, rel.status,
               max(g.status) FILTER (WHERE g.gate_code = 'G1') AS g1, max(g.status) FILTER (WHERE g.gate_code = 'G2') AS g2,
               max(g.status) FILTER (WHERE g.gate_code = 'G3') AS g3, max(g.status) FILTER (WHERE g.gate_code = 'G4') AS g4
          FROM ops.releases rel LEFT JOIN ops.release_gates g ON g.release_id = rel.release_id
         GROUP BY rel.release_id, rel.version, rel.status, rel.created_at ORDER BY rel.created_at DESC LIMIT 50
    LOOP
        page := page || format('<tr><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td></tr>',
            flowgate.html(r.version), flowgate.html(r.status), flowgate.html(r.g1), flowgate.html(r.g2), flowgate.html(r.g3), flowgate.html(r.g4));
    END LOOP;
    page := page || '</table></body></html>';
    RETURN page;
END
$$;
REVOKE EXECUTE ON FUNCTION flowgate.dashboard(int, int) FROM PUBLIC;
COMMENT ON FUNCTION flowgate.dashboard(int, int) IS
  'One self-contained HTML page (inline SVG, no script) of pool drains, outbox health, capacity requests and release gates; '
  'served by PostgREST as text/html (Accept: text/html). Runs with the caller''s rights; owner only by default.';

-- ==== Privileges as a feature ======================================================================
-- What a backend role (or PostgREST's authenticated role) needs to call each module's API, and
-- nothing more. Operator functions stay owner-only; trusted-only entry points check trust
-- themselves, so granting them to an untrusted role gives it nothing but a 42501.
CREATE FUNCTION flowgate.grant_api(role_name text, modules text[] DEFAULT ARRAY['flowgate', 'capacity', 'intake', 'provisioning'])
RETURNS TABLE (module text, granted text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    m text;
    f text;
    api jsonb := '{
      "flowgate": ["flowgate.current_actor()", "flowgate.current_actor_info(text)", "flowgate.link_identity(text, text, text)",
                   "flowgate.request_identity_link(text)", "flowgate.unlink_identity(text, text)",
                   "flowgate.get_setting(text)", "flowgate.setting_definitions()"],
      "capacity": ["capacity.create_capacity_request(text, text, text, integer, text, jsonb, date, integer, numeric, text, text)",
                   "capacity.record_capacity_event(text, text, jsonb, text, text)", "capacity.get_capacity_request(text, integer)",
                   "capacity.my_standing(text)", "capacity.handle_slack_command(text, text, text)",
                   "capacity.handle_slack_action(text, text, text)"],
      "intake": ["intake.claim(text)", "intake.claim_resource(text, text)", "intake.finalize_transaction(jsonb)"],
      "provisioning": ["provisioning.enqueue_client(text, text, text, text, jsonb)", "provisioning.claim_job(text)",
                       "provisioning.report_job(uuid, text, boolean, integer, text, integer)", "provisioning.retry(uuid)", "provisioning.retry(text)", "provisioning.sync_schema(text)",
                       "provisioning.list_jobs(text, integer)", "provisioning.run_jobs(integer)", "provisioning.tenant_keys(uuid)"]
    }';
BEGIN
    IF role_name IS NULL OR NOT EXISTS (SELECT FROM pg_roles WHERE rolname = role_name) THEN
        RAISE EXCEPTION 'role % does not exist', quote_literal(coalesce(role_name, 'NULL'))
              USING ERRCODE = '22023', HINT = 'CREATE ROLE it first, or name an existing role such as service_role';
    END IF;
    IF role_name IN ('anon', 'public') THEN
        RAISE EXCEPTION 'the API is not granted to %', role_name
              USING ERRCODE = '22023', HINT = 'anonymous callers get only what PUBLIC gets; grant to authenticated or a backend role';
    END IF;
    FOREACH m IN ARRAY coalesce(modules, '{}') LOOP
        IF m = 'ops' THEN
            RAISE EXCEPTION 'ops access is by persona, not by grant_api'
                  USING ERRCODE = '22023', HINT = format('GRANT ci_service_role (or release_manager, qa_tester, sre, developer, audit_reader) TO %I', role_name);
        END IF;
        IF NOT api ? m THEN
            RAISE EXCEPTION 'unknown module %', quote_literal(m)
                  USING ERRCODE = '22023', HINT = 'one of: flowgate, capacity, intake, provisioning';
        END IF;
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', m, role_name);
        module := m; granted := 'USAGE ON SCHEMA ' || m; RETURN NEXT;
        FOR f IN SELECT jsonb_array_elements_text(api -> m) LOOP
            EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %I', f, role_name);
            module := m; granted := 'EXECUTE ON FUNCTION ' || f; RETURN NEXT;
        END LOOP;
    END LOOP;
END
$$;
REVOKE EXECUTE ON FUNCTION flowgate.grant_api(text, text[]) FROM PUBLIC;
COMMENT ON FUNCTION flowgate.grant_api(text, text[]) IS
  'Grant a role exactly what calling the modules'' API needs (schema usage, EXECUTE on the entry points); owner only. '
  'Trusted-only entry points (claim_resource, provisioning) still check trust. ops is by persona membership.';
DO $grant_backend$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
        PERFORM flowgate.grant_api('service_role', ARRAY['flowgate', 'capacity', 'intake']);
    END IF;
END
$grant_backend$;

-- ==== Exposure ====================================================================================
-- PostgREST's anon and authenticated roles get what PUBLIC gets above (reads under row-level
-- security, the SECURITY DEFINER entry points) and nothing more; so does every other role the
-- installing role's default privileges name (for every schema or for one of these), the ops
-- personas included: whatever those defaults granted on these schemas' tables, sequences and
-- functions is taken back, and the personas get the persona matrix's grants again. service_role
-- (trusted, granted its API above) keeps its reads and API, and loses any owner's rights the
-- defaults gave it; PUBLIC's defaults are the operator's.
DO $exposure$
DECLARE
    r text;
    s text;
BEGIN
    FOR r IN
        SELECT rolname FROM pg_catalog.pg_roles WHERE rolname IN ('anon', 'authenticated')
        UNION
        SELECT g.rolname
          FROM pg_catalog.pg_default_acl d
         CROSS JOIN LATERAL pg_catalog.aclexplode(d.defaclacl) a
          JOIN pg_catalog.pg_roles g ON g.oid = a.grantee
         WHERE d.defaclrole = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user)
           AND (d.defaclnamespace = 0 OR d.defaclnamespace IN (SELECT oid FROM pg_catalog.pg_namespace
                                                                WHERE nspname IN ('flowgate', 'capacity', 'intake', 'provisioning', 'ops')))
           AND g.rolname NOT IN ('service_role', current_user)
    LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON ALL TABLES IN SCHEMA flowgate, capacity, intake, provisioning, ops FROM %I', r);
        EXECUTE pg_catalog.format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA flowgate, capacity, intake, provisioning, ops FROM %I', r);
        EXECUTE pg_catalog.format('REVOKE ALL ON ALL ROUTINES IN SCHEMA flowgate, capacity, intake, provisioning, ops FROM %I', r);
        -- Nor may they create objects in these schemas (a later upgrade script would find them).
        EXECUTE pg_catalog.format('REVOKE CREATE ON SCHEMA flowgate, capacity, intake, provisioning, ops FROM %I', r);
    END LOOP;
    FOR s IN SELECT x FROM ops.persona_privileges() x WHERE x LIKE 'GRANT %' LOOP
        EXECUTE s;
    END LOOP;
    -- service_role keeps its reads and its API, never an owner's rights: what defaults gave it
    -- beyond that (writes, TRUNCATE, triggers, references, sequences, CREATE, the secrets'
    -- ciphertext) is taken back. A table write would let it trust every role (settings), skip
    -- a state, re-point a delivery with its secrets, or hang a trigger on a table the owner's
    -- jobs write, which would run as the owner.
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'service_role') AND current_user <> 'service_role' THEN
        REVOKE INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER
            ON ALL TABLES IN SCHEMA flowgate, capacity, intake, provisioning, ops FROM service_role;
        REVOKE ALL ON ALL SEQUENCES IN SCHEMA flowgate, capacity, intake, provisioning, ops FROM service_role;
        REVOKE CREATE ON SCHEMA flowgate, capacity, intake, provisioning, ops FROM service_role;
        REVOKE ALL ON TABLE flowgate.secrets FROM service_role;
        REVOKE ALL ON TABLE ops.release_locks FROM service_role;  -- holds no data: owner only
    END IF;
END
$exposure$;

-- The installing role's default privileges as they were (lifted by the bootstrap, tables.sql).
DO $defaults$
BEGIN
    IF pg_catalog.current_setting('flowgate_install.lifted_public_execute', true) = 'on' THEN
        ALTER DEFAULT PRIVILEGES REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
        PERFORM pg_catalog.set_config('flowgate_install.lifted_public_execute', '', true);
    END IF;
END
$defaults$;
