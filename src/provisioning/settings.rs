//! Settings of the provisioning module (see `flowgate.setting_definitions()`).

use crate::core::settings::{Definition, Kind};

pub const DEFINITIONS: &[Definition] = &[
    Definition {
        key: "provisioning.management_api_url",
        kind: Kind::Text { max_len: 200 },
        default: r#""https://api.supabase.com""#,
        doc: "Base URL of the Supabase Management API (a local mock in tests).",
    },
    Definition {
        key: "provisioning.access_token_secret",
        kind: Kind::Text { max_len: 128 },
        default: r#""supabase_access_token""#,
        doc: "Name of the secret (Supabase Vault, else flowgate.secrets) holding the Management API access token; sent as Authorization: Bearer.",
    },
    Definition {
        key: "provisioning.organization_id",
        kind: Kind::Text { max_len: 100 },
        default: r#""""#,
        doc: "Supabase organization that new tenant projects are created in. Required.",
    },
    Definition {
        key: "provisioning.default_region",
        kind: Kind::Text { max_len: 32 },
        default: r#""us-east-1""#,
        doc: "Region of a new project when the client names none.",
    },
    Definition {
        key: "provisioning.default_plan",
        kind: Kind::OneOf(&["free", "pro", "team", "enterprise"]),
        default: r#""free""#,
        doc: "Plan of a new project when the client names none.",
    },
    Definition {
        key: "provisioning.request_timeout_ms",
        kind: Kind::Int { min: 100, max: 120000 },
        default: "30000",
        doc: "Timeout of one Management API request; a timeout is a transient failure of the job's attempt.",
    },
    Definition {
        key: "provisioning.run_schedule",
        kind: Kind::Schedule,
        default: r#""10 seconds""#,
        doc: "pg_cron schedule of provisioning.run_jobs(); second-level schedules need pg_cron 1.5+ (older versions get every minute).",
    },
    Definition {
        key: "provisioning.max_attempts",
        kind: Kind::Int { min: 1, max: 100 },
        default: "5",
        doc: "Attempts a provisioning job gets before it fails (transient errors only; 4xx fail at once).",
    },
    Definition {
        key: "provisioning.lease_seconds",
        kind: Kind::Int { min: 10, max: 86400 },
        default: "300",
        doc: "How long a claimed job stays with its worker; after that claim_job hands it to another worker and the attempt counts as failed.",
    },
    Definition {
        key: "provisioning.retry_base_seconds",
        kind: Kind::Int { min: 1, max: 3600 },
        default: "5",
        doc: "Back-off base: a job retries after a random delay up to base · 2^(attempt-1) seconds (full jitter).",
    },
    Definition {
        key: "provisioning.retry_cap_seconds",
        kind: Kind::Int { min: 1, max: 86400 },
        default: "600",
        doc: "Longest back-off between two attempts of a job.",
    },
];
