//! Periodic jobs: registered with pg_cron by `flowgate.install_schedules()`, or run by the
//! optional background worker. Every job is an idempotent SQL statement that is safe to run
//! concurrently and repeatedly.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

use super::error::{CoreError, CoreResult};
use super::store;

/// A periodic job: its pg_cron name, the setting that holds its cron schedule, what it runs,
/// and whether the background worker runs it on every tick (housekeeping does not need to).
#[derive(Debug, Clone, Copy)]
pub struct Job {
    pub name: &'static str,
    pub schedule_setting: &'static str,
    pub command: &'static str,
    pub every_tick: bool,
}

/// Every periodic flowgate job. Modules add theirs here.
pub const JOBS: &[Job] = &[
    Job {
        name: "flowgate.dispatch",
        schedule_setting: "flowgate.dispatch_schedule",
        command: "SELECT flowgate.dispatch()",
        every_tick: true,
    },
    Job {
        name: "flowgate.collect",
        schedule_setting: "flowgate.collect_schedule",
        command: "SELECT flowgate.collect()",
        every_tick: true,
    },
    Job {
        name: "capacity.timers",
        schedule_setting: "capacity.timers_schedule",
        command: "SELECT capacity.run_capacity_request_timers()",
        every_tick: false,
    },
    Job {
        name: "intake.drain",
        schedule_setting: "intake.drain_schedule",
        command: "SELECT intake.drain_all()",
        every_tick: true,
    },
    Job {
        // Every tick of the worker, but a pool is sampled at most every 4.5 s.
        name: "intake.metrics",
        schedule_setting: "intake.metrics_schedule",
        command: "SELECT intake.collect_metrics(NULL, 4.5)",
        every_tick: true,
    },
    Job {
        // Gates bypassed by an exception that has since expired are re-evaluated.
        name: "ops.expiry",
        schedule_setting: "ops.expiry_schedule",
        command: "SELECT ops.expire_bypasses()",
        every_tick: false,
    },
    Job {
        name: "provisioning.run",
        schedule_setting: "provisioning.run_schedule",
        command: "SELECT provisioning.run_jobs()",
        every_tick: true,
    },
    Job {
        name: "flowgate.prune",
        schedule_setting: "flowgate.prune_schedule",
        command: "SELECT flowgate.prune_deliveries()",
        every_tick: false,
    },
];

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

/// Register (or update) every periodic job with pg_cron, using the schedules in settings.
#[pg_extern(volatile)]
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
        for job in JOBS {
            let mut schedule = store::get_text(job.schedule_setting)?;
            if !seconds_ok && schedule.trim_end().ends_with("seconds") {
                pgrx::notice!(
                    "{}: pg_cron before 1.5 has no {:?} schedules; running it every minute (the background worker runs it every tick)",
                    job.name,
                    schedule
                );
                schedule = "* * * * *".into();
            }
            let id = Spi::get_one_with_args::<i64>(
                "SELECT cron.schedule($1, $2, $3)",
                &[
                    job.name.into(),
                    schedule.as_str().into(),
                    job.command.into(),
                ],
            )?
            .ok_or_else(|| CoreError::Internal("cron.schedule returned NULL".into()))?;
            rows.push((job.name.to_owned(), schedule, job.command.to_owned(), id));
        }
        Ok(rows)
    };
    run()
        .map(TableIterator::new)
        .map_err(|e| e.into_report("flowgate.install_schedules"))
}

/// Remove every flowgate job from pg_cron; returns how many were removed.
#[pg_extern(volatile)]
fn uninstall_schedules() -> Result<i64, ErrorReport> {
    let run = || -> CoreResult<i64> {
        require_pg_cron()?;
        let names: Vec<&str> = JOBS.iter().map(|j| j.name).collect();
        Ok(Spi::get_one_with_args::<i64>(
            "SELECT count(cron.unschedule(jobname)) FROM cron.job WHERE jobname = ANY($1)",
            &[names.into()],
        )?
        .unwrap_or(0))
    };
    run().map_err(|e| e.into_report("flowgate.uninstall_schedules"))
}

/// Run the periodic jobs once, in order; returns how many ran. The background worker calls it
/// each tick with `include_housekeeping` false, and with true once a minute.
#[pg_extern(volatile)]
fn run_periodic(include_housekeeping: default!(bool, "true")) -> Result<i64, ErrorReport> {
    let run = || -> CoreResult<i64> {
        let mut ran = 0;
        for job in JOBS.iter().filter(|j| j.every_tick || include_housekeeping) {
            Spi::run(job.command)?;
            ran += 1;
        }
        Ok(ran)
    };
    run().map_err(|e| e.into_report("flowgate.run_periodic"))
}
