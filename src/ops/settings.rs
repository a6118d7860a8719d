//! Settings of the release-gates module (see `flowgate.setting_definitions()`).

use crate::core::settings::{Definition, Kind};

pub const DEFINITIONS: &[Definition] = &[Definition {
    key: "ops.expiry_schedule",
    kind: Kind::Schedule,
    default: r#""* * * * *""#,
    doc: "pg_cron schedule of ops.expire_bypasses(), which re-evaluates gates whose bypassing exception expired.",
}];
