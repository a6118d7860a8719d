//! What an intent sends at each stage of the drain: the validation webhook's or the ledger's
//! URL, secret, body and Idempotency-Key, and the outbox delivery that carries it.

use serde_json::Value;

use crate::core::error::{CoreError, CoreResult};
use crate::core::outbox::delivery::NewDelivery;
use crate::intake::drain::{self, Stage};
use crate::intake::pool::PoolId;
use crate::intake::pools::Config;
use crate::intake::store::Intent;

/// Where one stage of one read of an intent goes: URL (None: the ledger in this database),
/// secret name, body and the Idempotency-Key header. Shared by the drain and the external-worker API.
pub struct StageRequest {
    pub url: Option<String>,
    pub secret: Option<String>,
    pub body: Value,
    pub wire_key: String,
}

pub fn stage_request(cfg: &Config, pool: &PoolId, intent: &Intent, stage: Stage) -> StageRequest {
    let origin = drain::origin_msg_id(&intent.message, intent.msg_id);
    let (url, secret, body) = match stage {
        Stage::Validate => (
            cfg.webhook.clone(),
            cfg.webhook_secret.clone(),
            drain::validation_body(pool.as_str(), intent.msg_id, &intent.message),
        ),
        Stage::Commit => (
            cfg.commit_target.clone(),
            cfg.commit_secret.clone(),
            drain::commit_body(pool.as_str(), intent.msg_id, &intent.message),
        ),
    };
    StageRequest {
        url,
        secret,
        body,
        wire_key: drain::wire_key(pool.as_str(), origin, stage),
    }
}

/// The outbox delivery for one stage of an intent (re-armed on every read).
pub fn delivery(
    cfg: &Config,
    pool: &PoolId,
    intent: &Intent,
    stage: Stage,
) -> CoreResult<NewDelivery> {
    let req = stage_request(cfg, pool, intent, stage);
    let handler = match stage {
        Stage::Validate => "intake.validation",
        Stage::Commit => "intake.commit",
    };
    let url = req
        .url
        .ok_or_else(|| CoreError::Internal(format!("no URL for the {} stage", stage.as_str())))?;
    let mut d = NewDelivery::post_json(
        "intake",
        &format!("{}:{}", pool.as_str(), intent.msg_id),
        &url,
        req.body,
        &req.wire_key,
    );
    d.handler = Some(handler.into());
    d.auth_secret = req.secret;
    // A ledger behind Supabase's API gateway (`https://<project>.supabase.co/rest/v1/rpc/...`)
    // takes the service key as `apikey` (and a legacy JWT key as the bearer too).
    if stage == Stage::Commit && url_path_starts(&url, "/rest/v1/") {
        d.auth_header = crate::core::outbox::delivery::SUPABASE_AUTH.into();
        d.auth_scheme = String::new();
    }
    // Which read of the intent this is, beside the body (which stays the same bytes).
    d.headers
        .insert("Flowgate-Attempt".into(), intent.read_ct.to_string().into());
    // One attempt per read (outbox::rearm): the visibility timeout paces retries and read_ct
    // counts them.
    d.max_attempts = Some(1);
    d.timeout_ms = Some(cfg.timeout_ms);
    Ok(d)
}

/// Whether `url`'s path starts with `prefix` (scheme and authority skipped; the authority ends
/// at the first `/`, `?` or `#`, as `delivery::validate_url` reads it).
fn url_path_starts(url: &str, prefix: &str) -> bool {
    url.split_once("://")
        .map(|(_, rest)| rest)
        .and_then(|rest| rest.find(['/', '?', '#']).map(|i| &rest[i..]))
        .is_some_and(|path| path.starts_with(prefix))
}

#[cfg(test)]
mod unit_tests {
    use super::url_path_starts;

    #[test]
    fn only_a_path_counts() {
        assert!(url_path_starts(
            "https://x.supabase.co/rest/v1/rpc/f",
            "/rest/v1/"
        ));
        assert!(!url_path_starts(
            "https://ledger.example?next=/rest/v1/x",
            "/rest/v1/"
        ));
        assert!(!url_path_starts(
            "https://ledger.example#/rest/v1/",
            "/rest/v1/"
        ));
        assert!(!url_path_starts(
            "https://ledger.example//rest/v1/",
            "/rest/v1/"
        ));
        assert!(!url_path_starts(
            "https://ledger.example/api/rest/v1/",
            "/rest/v1/"
        ));
    }
}
