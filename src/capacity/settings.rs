//! Settings of the capacity module (see `flowgate.setting_definitions()`).

use crate::core::settings::{Definition, Kind};

pub const DEFINITIONS: &[Definition] = &[
    Definition {
        key: "capacity.confirmation_ttl_business_days",
        kind: Kind::Int { min: 1, max: 60 },
        default: "5",
        doc: "Business days (Monday to Friday, in UTC, at the time of day of the approval) the customer has to confirm after technical approval; then the request EXPIRES.",
    },
    Definition {
        key: "capacity.auto_approve_below_usd",
        kind: Kind::Int { min: 0, max: 1_000_000_000 },
        default: "0",
        doc: "Requests whose estimated monthly cost is below this skip commercial approval (recorded as COMMERCIAL_APPROVED by system); 0 disables.",
    },
    Definition {
        key: "capacity.auto_approve_requester_estimates",
        kind: Kind::Bool,
        default: "false",
        doc: "Whether auto-approval (capacity.auto_approve_below_usd) may rely on a cost estimate typed by the requester (a user or a Slack command); by default only a trusted session's own estimate auto-approves.",
    },
    Definition {
        key: "capacity.commercial_approvers_group",
        kind: Kind::Text { max_len: 63 },
        default: r#""commercial_approvers""#,
        doc: "The capacity group (capacity.group_members) whose members may be named commercial owner; \"\" lets any actor be named (not recommended: a requester could name her own second account).",
    },
    Definition {
        key: "capacity.warning_hours_before_deadline",
        kind: Kind::Int { min: 0, max: 720 },
        default: "24",
        doc: "The timers send one warning this many hours before a confirmation deadline; 0 disables.",
    },
    Definition {
        key: "capacity.admins",
        kind: Kind::ActorList,
        default: "[]",
        doc: "Actor ids allowed to send any event (trusted sessions always may).",
    },
    Definition {
        key: "capacity.timers_schedule",
        kind: Kind::Schedule,
        default: r#""*/15 * * * *""#,
        doc: "pg_cron schedule of capacity.run_capacity_request_timers().",
    },
    Definition {
        key: "capacity.slack_channel",
        kind: Kind::Text { max_len: 64 },
        default: r#""""#,
        doc: "Slack channel id for request messages (a root message per request, a thread reply per transition); empty disables Slack.",
    },
    Definition {
        key: "capacity.slack_api_url",
        kind: Kind::Text { max_len: 200 },
        default: r#""https://slack.com/api""#,
        doc: "Base URL of Slack's Web API.",
    },
    Definition {
        key: "capacity.slack_token_secret",
        kind: Kind::Text { max_len: 128 },
        default: r#""slack_bot_token""#,
        doc: "Name of the secret (Vault or flowgate.secrets) holding the Slack bot token (xoxb-...).",
    },
    Definition {
        key: "capacity.slack_signing_secret",
        kind: Kind::Text { max_len: 128 },
        default: r#""slack_signing_secret""#,
        doc: "Name of the secret holding the Slack app's signing secret, used to verify slash commands and button clicks.",
    },
    Definition {
        key: "capacity.slack_team_ids",
        kind: Kind::ActorList,
        default: "[]",
        doc: "Slack workspace (team) ids whose users may use the slash command and buttons (the request's team and, in a shared channel, the user's own); empty allows any workspace the app is installed in.",
    },
    Definition {
        key: "capacity.linear_team_id",
        kind: Kind::Text { max_len: 64 },
        default: r#""""#,
        doc: "Linear team id for request issues (one issue per request, a comment per transition); empty disables Linear.",
    },
    Definition {
        key: "capacity.linear_api_url",
        kind: Kind::Text { max_len: 200 },
        default: r#""https://api.linear.app/graphql""#,
        doc: "Linear's GraphQL endpoint.",
    },
    Definition {
        key: "capacity.linear_token_secret",
        kind: Kind::Text { max_len: 128 },
        default: r#""linear_api_key""#,
        doc: "Name of the secret holding the Linear API key.",
    },
];
