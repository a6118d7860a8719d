//! Settings of the provisioning module (see `flowgate.setting_definitions()`).

use crate::core::settings::{Definition, Kind};

pub const DEFINITIONS: &[Definition] = &[
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
