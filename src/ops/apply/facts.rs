//! What a gate is decided on: check results (build_complete, check_result), decisions
//! (gate_signoff, approval) and evidence (evidence_attached).

use pgrx::spi::SpiClient;

use super::{first_text, gate_id, insert_artifact, read, unknown_gate, write, Applied, Apply};
use crate::ops::envelope::{Artifact, Attachment, CheckReport, Envelope, EventType, Signoff};
use crate::ops::error::{OpsError, OpsResult};
use crate::ops::evaluation::{insert_check, NewCheck};
use crate::ops::roles;

/// A check's result on a gate of the release; the envelope's evidence goes to the check, which
/// is therefore a row of its own. Without evidence, the result is left for the evaluation to
/// record, with the look at the check's latest result that spares both the row and the
/// evaluation when it is repeated (the hot path: CI reports checks all day).
pub(super) fn check<'a>(
    client: &mut SpiClient<'_>,
    ctx: &Apply<'a>,
    env: &'a Envelope,
    r: &str,
    b: &'a CheckReport,
    out: &mut Applied<'a>,
) -> OpsResult<()> {
    out.set("gate_code", b.gate.as_str());
    let check = NewCheck {
        report: b,
        reported_by: &ctx.caller.actor_id,
        source_system: &env.source_system,
        ingest_id: ctx.ingest_id,
    };
    if env.evidence.is_empty() {
        out.new_check = Some(check);
        return Ok(());
    }
    let check_id = insert_check(client, r, &check)?.ok_or_else(|| unknown_gate(r, b.gate))?;
    out.set("check_id", check_id.as_str());
    out.attach_gate = Some(b.gate);
    out.attach_check = Some(check_id);
    Ok(())
}

/// A decision on G2 or G3 under the persona the caller approves as (`roles`); a gate_signoff
/// is QA evidence itself.
pub(super) fn signoff(
    client: &mut SpiClient<'_>,
    ctx: &Apply<'_>,
    env: &Envelope,
    r: &str,
    b: &Signoff,
    out: &mut Applied,
) -> OpsResult<()> {
    // In this order: a gate without approvals (400), someone else named (403), the persona.
    roles::check_takes_approvals(b.gate)?;
    let approver = ctx.caller.identity("approver_id", &b.approver_id)?;
    let persona = ctx.caller.approver_persona(b.gate, &b.persona_role)?;
    let g = gate_id(client, r, b.gate)?;
    let decision = if b.approved { "approved" } else { "rejected" };
    let t = write(
        client,
        "INSERT INTO ops.approvals (release_id, gate_id, approver_id, persona_role, decision, comment, ingest_id) \
         VALUES ($1::uuid, $2::uuid, $3, $4, $5, $6, $7::uuid) RETURNING approval_id::text",
        &[
            Some(r),
            Some(&g),
            Some(&approver),
            Some(&persona),
            Some(decision),
            b.comment.as_deref(),
            Some(ctx.ingest_id),
        ],
    )?;
    out.set("approval_id", first_text(t)?);
    out.set("gate_code", b.gate.as_str());
    out.set("approver_id", approver.as_str());
    out.set("persona_role", persona.as_str());
    if env.event_type == EventType::GateSignoff {
        // The signoff itself is QA evidence: its report, or this ingest record.
        let uri = b
            .report_url
            .clone()
            .unwrap_or_else(|| format!("urn:flowgate:ops:ingest:{}", ctx.ingest_id));
        let a = Artifact {
            artifact_type: "qa_signoff".into(),
            uri,
            sha256: None,
            description: Some(format!(
                "{} signoff ({}): {decision}",
                b.gate,
                persona.as_str()
            )),
        };
        // Every persona reads evidence; who signed off stays in ops.approvals, which row
        // security shows to fewer of them: the row names the persona, in its description and
        // as its submitter, never the signer.
        let submitter = format!("{} (gate_signoff)", persona.as_str());
        insert_artifact(client, ctx, r, Some(&g), None, &a, &submitter)?;
    }
    out.attach_gate = Some(b.gate);
    out.evidence_submitter = Some(format!(
        "{} ({})",
        persona.as_str(),
        env.event_type.as_str()
    ));
    Ok(())
}

/// An artifact on the release, or on one of its gates or checks (404 for a check of another
/// release).
pub(super) fn attach(
    client: &mut SpiClient<'_>,
    ctx: &Apply<'_>,
    r: &str,
    b: &Attachment,
    out: &mut Applied,
) -> OpsResult<()> {
    let g = b.gate.map(|g| gate_id(client, r, g)).transpose()?;
    if let Some(c) = &b.check_id {
        // A check of the release, and of the gate the envelope names, if it names one.
        let t = read(
            client,
            "SELECT 1 FROM ops.gate_checks WHERE check_id = $1::uuid AND release_id = $2::uuid \
                AND ($3::uuid IS NULL OR gate_id = $3::uuid)",
            &[Some(c), Some(r), g.as_deref()],
        )?;
        if t.is_empty() {
            return Err(OpsError::UnknownReference {
                kind: "check".into(),
                id: match b.gate {
                    Some(gate) => format!("{c} of gate {} of release {r}", gate.as_str()),
                    None => format!("{c} of release {r}"),
                },
            });
        }
    }
    let id = insert_artifact(
        client,
        ctx,
        r,
        g.as_deref(),
        b.check_id.as_deref(),
        &b.artifact,
        &ctx.caller.actor_id,
    )?;
    out.set("artifact_id", id);
    Ok(())
}
