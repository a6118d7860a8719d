//! Periodic jobs: registered with pg_cron by `flowgate.install_schedules()`, or run by the
//! optional background worker. Every job is an idempotent SQL statement that is safe to run
//! concurrently and repeatedly.

use flowgate_macros::documented;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

use super::error::{CoreError, CoreResult};
use super::store;
use crate::core::error::SqlError;

/// A periodic job: its pg_cron name, the setting that holds its cron schedule, what it runs,
/// and whether the background worker runs it on every tick (housekeeping does not need to).
/// A command is one `SELECT f(...)` run in a transaction, or a `CALL` of a procedure that
/// controls its own transactions (and records its own outcome).
#[derive(Debug, Clone, Copy)]
pub struct Job {
    pub name: &'static str,
    pub schedule_setting: &'static str,
    pub command: &'static str,
    pub every_tick: bool,
}

impl Job {
    /// A procedure that commits between its steps: never run inside another transaction.
    pub fn is_procedure(&self) -> bool {
        self.command.starts_with("CALL ")
    }

    /// Whether the background worker bounds this job's lock waits
    /// (`flowgate.worker_lock_timeout_ms`): a job that gives up fails for that tick, rolled back,
    /// and runs again on the next. Not collect: it runs the response handlers of the deliveries
    /// it records, and keeps a handler's error with its delivery for good (a lock timeout there
    /// would need `flowgate.rerun_handlers`). Nor the outbox (a procedure, `is_procedure`).
    pub fn gives_way_to_locks(&self) -> bool {
        self.name != "flowgate.collect"
    }

    /// What pg_cron runs: through flowgate.run_job, so that flowgate records the outcome,
    /// duration and error of every run (pg_cron 1.4 records only "SELECT 1"); a procedure is
    /// called directly and records its own.
    pub fn cron_command(&self) -> String {
        match self.command.strip_suffix("()") {
            Some(call) if self.is_procedure() => format!("{call}(runner => 'pg_cron')"),
            _ => format!("SELECT flowgate.run_job('{}', 'pg_cron')", self.name),
        }
    }
}

/// Core's periodic jobs; each module adds its own (`core::module`).
const CORE_JOBS: &[Job] = &[
    Job {
        // A procedure: it commits between claiming, sending and recording.
        name: "flowgate.dispatch",
        schedule_setting: "flowgate.dispatch_schedule",
        command: "CALL flowgate.run_outbox()",
        every_tick: true,
    },
    Job {
        name: "flowgate.collect",
        schedule_setting: "flowgate.collect_schedule",
        command: "SELECT flowgate.collect()",
        every_tick: true,
    },
    Job {
        name: "flowgate.prune",
        schedule_setting: "flowgate.prune_schedule",
        command: "SELECT flowgate.prune_deliveries()",
        every_tick: false,
    },
];

/// Every periodic flowgate job: the modules' first (what they enqueue, the outbox sends in
/// the same worker tick), then core's.
pub fn jobs() -> impl Iterator<Item = &'static Job> {
    super::module::all()
        .iter()
        .flat_map(|m| m.jobs.iter())
        .chain(CORE_JOBS.iter())
}

fn require_pg_cron() -> CoreResult<()> {
    let present = Spi::get_one::<bool>(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'pg_cron')",
    )?
    .unwrap_or(false);
    if present {
        Ok(())
    } else {
        Err(CoreError::MissingDependency {
            feature: "flowgate.install_schedules()".into(),
            dependency: "pg_cron in this database".into(),
            hint: "add pg_cron to shared_preload_libraries, set cron.database_name to this database and CREATE EXTENSION pg_cron; \
                   or preload flowgate and set flowgate.worker_database to run the jobs in flowgate's background worker"
                .into(),
        })
    }
}

/// Register (or update) every periodic flowgate job with pg_cron, using the schedules in
/// settings; idempotent. Returns one row per job (job_name, schedule, command, jobid); 0A000
/// when pg_cron is not installed in this database. Extension owner only.
///
/// On pg_cron before 1.5, which has no second-level schedules, such a job is scheduled every
/// minute instead, with a notice.
#[documented]
#[pg_extern(volatile)]
#[search_path(pg_catalog, pg_temp)]
fn install_schedules() -> Result<
    TableIterator<
        'static,
        (
            name!(job_name, String),
            name!(schedule, String),
            name!(command, String),
            name!(jobid, i64),
        ),
    >,
    ErrorReport,
> {
    let run = || -> CoreResult<Vec<(String, String, String, i64)>> {
        require_pg_cron()?;
        // pg_cron < 1.5 has no second-level schedules: those jobs run every minute there.
        let seconds_ok = Spi::get_one::<bool>(
            "SELECT string_to_array(split_part(extversion, '-', 1), '.')::int[] >= '{1,5}' FROM pg_catalog.pg_extension WHERE extname = 'pg_cron'",
        )?
        .unwrap_or(false);
        let mut rows = Vec::new();
        for job in jobs() {
            let mut schedule = store::get_text(job.schedule_setting)?;
            let in_seconds = {
                let s = schedule.trim_end();
                s.ends_with(" seconds") || s.ends_with(" second")
            };
            if !seconds_ok && in_seconds {
                pgrx::notice!(
                    "{}: pg_cron before 1.5 has no {:?} schedules; running it every minute (the background worker runs it every tick)",
                    job.name,
                    schedule
                );
                schedule = "* * * * *".into();
            }
            let command = job.cron_command();
            let id = Spi::get_one_with_args::<i64>(
                "SELECT cron.schedule($1, $2, $3)",
                &[
                    job.name.into(),
                    schedule.as_str().into(),
                    command.as_str().into(),
                ],
            )?
            .ok_or_else(|| CoreError::Internal("cron.schedule returned NULL".into()))?;
            rows.push((job.name.to_owned(), schedule, command, id));
        }
        Ok(rows)
    };
    Ok(run().map(TableIterator::new)?)
}

/// Remove every flowgate job from pg_cron; returns how many were removed (0A000 when pg_cron
/// is not installed). Extension owner only.
#[documented]
#[pg_extern(volatile)]
#[search_path(pg_catalog, pg_temp)]
fn uninstall_schedules() -> Result<i64, ErrorReport> {
    let run = || -> CoreResult<i64> {
        require_pg_cron()?;
        let names: Vec<&str> = jobs().map(|j| j.name).collect();
        // By id: pg_cron names a job by (name, user), and cron.unschedule(name) finds only the
        // caller's. The caller's own jobs in this database; for a superuser, every role's, and
        // those for a database this server does not have (a restored dump brings its jobs with
        // the source's role and database name, which a quiet copy must lose).
        Ok(Spi::get_one_with_args::<i64>(
            "SELECT count(cron.unschedule(j.jobid)) FROM cron.job j \
              WHERE j.jobname = ANY($1) \
                AND ((j.database = pg_catalog.current_database() AND j.username = current_user) \
                     OR ((SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user) \
                         AND (j.database = pg_catalog.current_database() \
                              OR NOT EXISTS (SELECT FROM pg_catalog.pg_database d WHERE d.datname = j.database))))",
            &[names.into()],
        )?
        .unwrap_or(0))
    };
    Ok(run()?)
}

/// Who ran a job, as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runner {
    PgCron,
    Worker,
    Manual,
}

impl Runner {
    pub fn as_str(self) -> &'static str {
        match self {
            Runner::PgCron => "pg_cron",
            Runner::Worker => "worker",
            Runner::Manual => "manual",
        }
    }

    pub fn parse(s: &str) -> CoreResult<Runner> {
        match s {
            "pg_cron" => Ok(Runner::PgCron),
            "worker" => Ok(Runner::Worker),
            "manual" => Ok(Runner::Manual),
            other => Err(CoreError::invalid(
                "runner",
                format!("{:?}", other.chars().take(32).collect::<String>()),
                "pg_cron, worker or manual",
            )),
        }
    }
}

/// The job called `name`.
pub fn job(name: &str) -> CoreResult<&'static Job> {
    jobs().find(|j| j.name == name).ok_or_else(|| {
        CoreError::invalid(
            "job",
            format!(
                "{:?} is not a flowgate job",
                name.chars().take(64).collect::<String>()
            ),
            jobs().map(|j| j.name).collect::<Vec<_>>().join(", "),
        )
    })
}

/// What one run of a job ended with.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub ok: bool,
    /// The job's result as text (ok) or "SQLSTATE: message" (error), at most 1,000 characters.
    pub text: String,
    pub duration_ms: f64,
}

fn clip(s: &str) -> String {
    s.chars().take(1000).collect()
}

/// Run one job in a subtransaction, so that its failure undoes only its own writes, then record
/// the outcome (flowgate.job_status always; flowgate.job_runs for pg_cron and manual runs and
/// for every failure). The caller's transaction holds nothing else of another job.
pub fn run_recorded(job: &Job, runner: Runner) -> CoreResult<Outcome> {
    if job.is_procedure() {
        return Err(CoreError::NeedsOwnTransactions {
            what: job.command.trim_start_matches("CALL ").into(),
            hint: format!(
                "job {} is not run through flowgate.run_job: {} in autocommit mode (psql, pg_cron), or let the background worker run it",
                job.name, job.command
            ),
        });
    }
    // First of all, before any table of flowgate's: a DROP EXTENSION waits for this job.
    super::store::require_extension()?;
    let started = Spi::get_one::<pgrx::datum::TimestampWithTimeZone>("SELECT clock_timestamp()")?;
    let t0 = std::time::Instant::now();
    // Every command is one "SELECT f(...)": its result is read as text.
    let as_text = format!(
        "SELECT ({})::text",
        job.command.strip_prefix("SELECT ").unwrap_or(job.command)
    );
    let result = super::subxact::run(|| -> CoreResult<Option<String>> {
        Ok(Spi::get_one::<String>(&as_text)?)
    });
    let duration_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let (ok, text) = match result {
        Ok(Ok(r)) => (true, clip(&r.unwrap_or_default())),
        Ok(Err(e)) => (false, clip(&format!("{}: {e}", e.sqlstate()))),
        Err(c) => (false, clip(&format!("{}: {}", c.sqlstate, c.message))),
    };
    record_outcome(job.name, runner, started, duration_ms, ok, &text)?;
    Ok(Outcome {
        ok,
        text,
        duration_ms,
    })
}

/// Record how one run of a job ended: flowgate.job_status always; flowgate.job_runs for
/// pg_cron and manual runs and for every failure (the worker's successful ticks would be tens
/// of rows a second).
pub fn record_outcome(
    job: &str,
    runner: Runner,
    started: Option<pgrx::datum::TimestampWithTimeZone>,
    duration_ms: f64,
    ok: bool,
    text: &str,
) -> CoreResult<()> {
    if !ok {
        pgrx::warning!("flowgate job {job} ({}) failed: {text}", runner.as_str());
    }
    let keep_history = runner != Runner::Worker || !ok;
    let started = match started {
        Some(t) => Some(t),
        None => Spi::get_one_with_args::<pgrx::datum::TimestampWithTimeZone>(
            "SELECT clock_timestamp() - make_interval(secs => $1 / 1000)",
            &[duration_ms.into()],
        )?,
    };
    // A job's status row held by an open transaction (a `run_job` inside a transaction not yet
    // committed) is not waited for: the worker would stop every job behind it until that
    // transaction ends. The run is then kept in flowgate.job_runs only (a failure always is).
    let held = Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT FROM flowgate.job_status WHERE job = $1) \
            AND NOT EXISTS (SELECT FROM flowgate.job_status WHERE job = $1 FOR UPDATE SKIP LOCKED)",
        &[job.into()],
    )?
    .unwrap_or(false);
    if held {
        if keep_history {
            Spi::run_with_args(
                "INSERT INTO flowgate.job_runs (job, runner, started_at, duration_ms, status, result, error) \
                 VALUES ($1, $2, $3, $4, CASE WHEN $5 THEN 'ok' ELSE 'error' END, CASE WHEN $5 THEN $6 END, \
                         CASE WHEN $5 THEN NULL ELSE $6 END)",
                &[
                    job.into(),
                    runner.as_str().into(),
                    started.into(),
                    duration_ms.into(),
                    ok.into(),
                    clip(text).into(),
                ],
            )?;
        }
        return Ok(());
    }
    Spi::run_with_args(
        "WITH latest AS ( \
           INSERT INTO flowgate.job_status AS s (job, runs, failures, last_runner, last_started_at, last_duration_ms, \
                  last_status, last_result, last_error, last_error_at) \
           VALUES ($1, 1, CASE WHEN $5 THEN 0 ELSE 1 END, $2, $3, $4, CASE WHEN $5 THEN 'ok' ELSE 'error' END, \
                   CASE WHEN $5 THEN $6 END, CASE WHEN $5 THEN NULL ELSE $6 END, CASE WHEN $5 THEN NULL ELSE $3 END) \
           ON CONFLICT (job) DO UPDATE SET runs = s.runs + 1, failures = s.failures + EXCLUDED.failures, \
                  last_runner = EXCLUDED.last_runner, last_started_at = EXCLUDED.last_started_at, \
                  last_duration_ms = EXCLUDED.last_duration_ms, last_status = EXCLUDED.last_status, \
                  last_result = EXCLUDED.last_result, \
                  last_error = coalesce(EXCLUDED.last_error, s.last_error), \
                  last_error_at = coalesce(EXCLUDED.last_error_at, s.last_error_at)) \
         INSERT INTO flowgate.job_runs (job, runner, started_at, duration_ms, status, result, error) \
         SELECT $1, $2, $3, $4, CASE WHEN $5 THEN 'ok' ELSE 'error' END, CASE WHEN $5 THEN $6 END, \
                CASE WHEN $5 THEN NULL ELSE $6 END \
          WHERE $7",
        &[
            job.into(),
            runner.as_str().into(),
            started.into(),
            duration_ms.into(),
            ok.into(),
            clip(text).into(),
            keep_history.into(),
        ],
    )?;
    Ok(())
}

/// Run one periodic job now, in its own subtransaction, and record its outcome, duration and
/// error (flowgate.job_status, flowgate.job_runs); returns
/// `{job, status, duration_ms, result | error}`. A failing job is recorded and answered, not
/// raised. What pg_cron schedules; extension owner only.
///
/// pg_cron runs `SELECT flowgate.run_job('<job>', 'pg_cron')`; operators may call it by hand
/// (`runner` defaults to 'manual'). An unknown job or runner is 22023; the outbox job, a
/// procedure that commits between its steps, is 2D000.
#[documented]
#[pg_extern(volatile)]
#[search_path(pg_catalog, pg_temp)]
fn run_job(job: &str, runner: default!(&str, "'manual'")) -> Result<pgrx::JsonB, ErrorReport> {
    let run = || -> CoreResult<serde_json::Value> {
        let j = self::job(job)?;
        let o = run_recorded(j, Runner::parse(runner)?)?;
        let mut v = serde_json::json!({
            "job": j.name,
            "status": if o.ok { "ok" } else { "error" },
            "duration_ms": (o.duration_ms * 1000.0).round() / 1000.0,
        });
        // A job's result is usually JSON: shown as JSON, not as a string holding it.
        v[if o.ok { "result" } else { "error" }] = if o.ok {
            serde_json::from_str(&o.text).unwrap_or(serde_json::Value::String(o.text))
        } else {
            o.text.into()
        };
        Ok(v)
    };
    Ok(run().map(pgrx::JsonB)?)
}

/// Run the periodic jobs once by hand, in order, each in its own subtransaction with its
/// outcome recorded (flowgate.job_status, flowgate.job_runs); returns how many ran without
/// error. `include_housekeeping` false skips jobs such as pruning. The outbox is not run: use
/// `CALL flowgate.run_outbox()`.
///
/// A failing job undoes only its own work. The outbox sends outside any transaction, so it
/// cannot run inside this call. The background worker instead runs each job in a transaction
/// of its own.
#[documented]
#[pg_extern(volatile)]
#[search_path(pg_catalog, pg_temp)]
fn run_periodic(include_housekeeping: default!(bool, "true")) -> Result<i64, ErrorReport> {
    let run = || -> CoreResult<i64> {
        let mut ok = 0;
        // Procedures (the outbox) commit between steps and cannot run inside this call.
        for job in jobs().filter(|j| (j.every_tick || include_housekeeping) && !j.is_procedure()) {
            if run_recorded(job, Runner::Manual)?.ok {
                ok += 1;
            }
        }
        Ok(ok)
    };
    Ok(run()?)
}
