//! Settings of the intake module (see `flowgate.setting_definitions()`). Per-pool tuning lives
//! in `intake.engine_config`; these are the schedules.

use crate::core::settings::{Definition, Kind};

pub const DEFINITIONS: &[Definition] = &[
    Definition {
        key: "intake.drain_schedule",
        kind: Kind::Schedule,
        default: r#""5 seconds""#,
        doc: "pg_cron schedule of intake.drain_all(); second-level schedules need pg_cron 1.5+ (older versions get every minute).",
    },
    Definition {
        key: "intake.metrics_schedule",
        kind: Kind::Schedule,
        default: r#""5 seconds""#,
        doc: "pg_cron schedule of intake.collect_metrics(); second-level schedules need pg_cron 1.5+ (older versions get every minute).",
    },
];
