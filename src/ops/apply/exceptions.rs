//! Exceptions: exception_requested, exception_decided.

use pgrx::spi::SpiClient;

use super::{first_text, gate_id, read, write, Applied, Apply};
use crate::ops::envelope::{ExceptionDecided, ExceptionRequest};
use crate::ops::error::{OpsError, OpsResult};

/// Longest an exception may run.
pub const MAX_EXCEPTION_DAYS: i64 = 90;

/// A requested exception on a gate, expiring after now and within [`MAX_EXCEPTION_DAYS`].
pub(super) fn request(
    client: &mut SpiClient<'_>,
    ctx: &Apply<'_>,
    r: &str,
    b: &ExceptionRequest,
    out: &mut Applied,
) -> OpsResult<()> {
    // Days of 24 hours: `interval 'N days'` added to a time follows the session's time zone
    // (a day across a daylight-saving change is 23 or 25 hours), and the limit may not.
    let hours = (MAX_EXCEPTION_DAYS * 24).to_string();
    let t = read(
        client,
        "SELECT $1::timestamptz > clock_timestamp() AND $1::timestamptz <= now() + make_interval(hours => $2::int)",
        &[Some(&b.expires_at), Some(&hours)],
    )?;
    if t.first().get_one::<bool>()? != Some(true) {
        return Err(OpsError::invalid(
            "expires_at",
            format!(
                "{} is not in the future within {MAX_EXCEPTION_DAYS} days",
                b.expires_at
            ),
            format!("a time after now and at most {MAX_EXCEPTION_DAYS} days ahead"),
        ));
    }
    let g = gate_id(client, r, b.gate)?;
    let t = write(
        client,
        "INSERT INTO ops.exceptions (exception_id, release_id, gate_id, reason, requested_by, expires_at, ingest_id) \
         VALUES (coalesce($1::uuid, gen_random_uuid()), $2::uuid, $3::uuid, $4, $5, $6::timestamptz, $7::uuid) \
         ON CONFLICT (exception_id) DO NOTHING RETURNING exception_id::text",
        &[
            b.exception_id.as_deref(),
            Some(r),
            Some(&g),
            Some(&b.reason),
            Some(&ctx.caller.actor_id),
            Some(&b.expires_at),
            Some(ctx.ingest_id),
        ],
    )?;
    let id = first_text(t)?.ok_or_else(|| {
        OpsError::Conflict(format!(
            "exception {} already exists",
            b.exception_id.as_deref().unwrap_or_default()
        ))
    })?;
    out.set("exception_id", id);
    out.set("gate_code", b.gate.as_str());
    out.set("exception_status", "requested");
    Ok(())
}

/// requested -> approved | rejected, approved -> revoked; an expired exception is not
/// approved; the requester does not decide (four eyes).
pub(super) fn decide(
    client: &mut SpiClient<'_>,
    ctx: &Apply<'_>,
    r: &str,
    b: &ExceptionDecided,
    out: &mut Applied,
) -> OpsResult<()> {
    let t = write(
        client,
        "SELECT status, requested_by, expires_at <= clock_timestamp() FROM ops.exceptions \
          WHERE exception_id = $1::uuid AND release_id = $2::uuid FOR UPDATE",
        &[Some(&b.exception_id), Some(r)],
    )?;
    if t.is_empty() {
        return Err(OpsError::UnknownReference {
            kind: "exception".into(),
            id: format!("{} of release {r}", b.exception_id),
        });
    }
    let (status, requested_by, expired) = t.first().get_three::<String, String, bool>()?;
    let status = status.unwrap_or_default();
    let allowed = matches!(
        (status.as_str(), b.decision.as_str()),
        ("requested", "approved" | "rejected") | ("approved", "revoked")
    );
    if !allowed {
        return Err(OpsError::Conflict(format!(
            "exception {} is {status}; a requested exception may be approved or rejected, an approved one revoked",
            b.exception_id
        )));
    }
    if b.decision == "approved" && expired == Some(true) {
        return Err(OpsError::Conflict(format!(
            "exception {} has already expired; request a new one",
            b.exception_id
        )));
    }
    if requested_by.as_deref() == Some(ctx.caller.actor_id.as_str()) {
        return Err(OpsError::Forbidden {
            actor: ctx.caller.actor_id.clone(),
            action: "decide an exception they requested".into(),
            allowed: "another release manager decides (four eyes)".into(),
        });
    }
    // A revocation is recorded beside the approval it withdraws, which stays as it was. A
    // schema without the revocation columns (an earlier version's, before `ALTER EXTENSION
    // flowgate UPDATE`) records the revoker as the decider, as that version did.
    let revocation_columns =
        crate::core::store::column_exists(c"ops", c"exceptions", c"revoked_by");
    let sql = if b.decision == "revoked" && revocation_columns {
        "UPDATE ops.exceptions SET status = $2, revoked_by = $3, revoked_at = now(), revoke_comment = $4 \
          WHERE exception_id = $1::uuid"
    } else {
        "UPDATE ops.exceptions SET status = $2, decided_by = $3, decided_at = now(), decision_comment = $4 \
          WHERE exception_id = $1::uuid"
    };
    write(
        client,
        sql,
        &[
            Some(&b.exception_id),
            Some(&b.decision),
            Some(&ctx.caller.actor_id),
            b.comment.as_deref(),
        ],
    )?;
    out.set("exception_id", b.exception_id.as_str());
    out.set("exception_status", b.decision.as_str());
    Ok(())
}
