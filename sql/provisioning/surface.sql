-- provisioning surface: the jobs listing, privileges and documentation; loaded after every Rust
-- function it names (its requires in src/provisioning/mod.rs).

-- What an admin API's GET /clients/provisioning/jobs returns: jobs, newest first, optionally of one status.
CREATE FUNCTION provisioning.list_jobs(status text DEFAULT NULL, max_rows int DEFAULT 100)
RETURNS TABLE (job_id uuid, client_id uuid, slug text, job_type text, job_status text, attempts int, max_attempts int,
               next_attempt_at timestamptz, claimed_by text, claimed_at timestamptz, lease_expires_at timestamptz,
               last_error text, last_status_code int, created_at timestamptz, updated_at timestamptz)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT coalesce((flowgate.current_actor_info() ->> 'trusted')::boolean, false) THEN
        RAISE EXCEPTION USING ERRCODE = '42501',
            MESSAGE = format('permission denied: %s may not list provisioning jobs', flowgate.current_actor()),
            HINT = 'trusted sessions (superuser, or members of a role in flowgate.trusted_roles, e.g. service_role)';
    END IF;
    IF status IS NOT NULL AND status NOT IN ('queued', 'running', 'succeeded', 'failed') THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('invalid status: %L', status),
            HINT = 'allowed: queued, running, succeeded, failed, or NULL for all';
    END IF;
    RETURN QUERY
    SELECT j.job_id, j.client_id, c.slug, j.job_type, j.status, j.attempts, j.max_attempts, j.next_attempt_at, j.claimed_by,
           j.claimed_at, j.lease_expires_at, j.last_error, j.last_status_code, j.created_at, j.updated_at
      FROM provisioning.client_provisioning_jobs j JOIN provisioning.clients c ON c.client_id = j.client_id
     WHERE list_jobs.status IS NULL OR j.status = list_jobs.status
     ORDER BY j.created_at DESC, j.job_id
     LIMIT greatest(1, least(max_rows, 10000));
END
$$;

-- An admin page's view: clients not ready, with their latest job and error.
CREATE VIEW provisioning.v_admin_diagnostics WITH (security_invoker = true) AS
SELECT c.client_id, c.slug, c.display_name, c.provisioning_status, c.provisioning_error, c.schema_version, c.project_ref,
       j.job_id AS latest_job_id, j.job_type AS latest_job_type, j.status AS latest_job_status, j.attempts, j.max_attempts,
       j.next_attempt_at, j.claimed_by, j.last_error AS latest_job_error, j.last_status_code,
       c.created_at, c.updated_at
  FROM provisioning.clients c
  LEFT JOIN LATERAL (SELECT * FROM provisioning.client_provisioning_jobs j
                      WHERE j.client_id = c.client_id ORDER BY j.created_at DESC LIMIT 1) j ON true
 WHERE c.provisioning_status <> 'ready';
COMMENT ON VIEW provisioning.v_admin_diagnostics IS 'Queued, in-progress and failed clients with their latest job and most recent error.';

-- Provisioning latency per phase, from the job events: wait (enqueued → first claim) and run
-- (first claim → succeeded), over jobs that succeeded.
CREATE VIEW provisioning.v_phase_latency WITH (security_invoker = true) AS
WITH spans AS (
    SELECT j.job_type,
           min(e.created_at) FILTER (WHERE e.event_type = 'enqueued') AS enqueued_at,
           min(e.created_at) FILTER (WHERE e.event_type = 'claimed') AS first_claimed_at,
           max(e.created_at) FILTER (WHERE e.event_type = 'succeeded') AS succeeded_at,
           max(j.attempts) AS attempts
      FROM provisioning.client_provisioning_jobs j JOIN provisioning.job_events e ON e.job_id = j.job_id
     WHERE j.status = 'succeeded'
     GROUP BY j.job_id, j.job_type)
SELECT job_type, count(*) AS jobs,
       avg(attempts)::numeric(6, 2) AS avg_attempts,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM first_claimed_at - enqueued_at)) AS wait_p50_s,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM succeeded_at - first_claimed_at)) AS run_p50_s,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM succeeded_at - first_claimed_at)) AS run_p95_s,
       max(extract(epoch FROM succeeded_at - enqueued_at)) AS total_max_s
  FROM spans GROUP BY job_type;
COMMENT ON VIEW provisioning.v_phase_latency IS 'Provisioning latency per phase (job type): queue wait and run time, p50/p95, over succeeded jobs.';

-- Operators (trusted sessions) run everything. The operator functions are SECURITY DEFINER (the
-- tables are the owner's) and check trust themselves first; EXECUTE is not PUBLIC's either, and
-- service_role gets it here (grant it to other roles listed in flowgate.trusted_roles). Tenants
-- see nothing here: the tables hold project refs and encrypted keys.
REVOKE EXECUTE ON FUNCTION provisioning.enqueue_client(text, text, text, text, jsonb), provisioning.claim_job(text),
    provisioning.report_job(uuid, text, boolean, integer, text, integer), provisioning.retry(uuid), provisioning.retry(text), provisioning.sync_schema(text),
    provisioning.list_jobs(text, integer), provisioning.run_jobs(integer), provisioning.tenant_keys(uuid) FROM PUBLIC;
DO $grant$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
        GRANT USAGE ON SCHEMA provisioning TO service_role;
        GRANT SELECT ON ALL TABLES IN SCHEMA provisioning TO service_role;
        GRANT EXECUTE ON FUNCTION provisioning.enqueue_client(text, text, text, text, jsonb), provisioning.claim_job(text),
            provisioning.report_job(uuid, text, boolean, integer, text, integer), provisioning.retry(uuid), provisioning.retry(text), provisioning.sync_schema(text),
            provisioning.list_jobs(text, integer), provisioning.run_jobs(integer), provisioning.tenant_keys(uuid)
            TO service_role;
        CREATE POLICY service_role_reads ON provisioning.clients FOR SELECT TO service_role USING (true);
        CREATE POLICY service_role_reads ON provisioning.client_provisioning_jobs FOR SELECT TO service_role USING (true);
        CREATE POLICY service_role_reads ON provisioning.job_events FOR SELECT TO service_role USING (true);
        CREATE POLICY service_role_reads ON provisioning.migrations FOR SELECT TO service_role USING (true);
    END IF;
END
$grant$;
COMMENT ON FUNCTION provisioning.list_jobs(text, integer) IS 'Provisioning jobs, newest first, optionally of one status.';
