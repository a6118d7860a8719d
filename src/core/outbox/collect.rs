//! Collection: the outcomes of deliveries no run is waiting for. Responses pg_net stored for
//! the deliveries it carried are recorded, and deliveries in flight past their lease are
//! recorded as timed out, to be sent again with the same key.

use pgrx::prelude::*;
use serde_json::{json, Map, Value};

use super::engine::Counts;
use super::record::{self, Observation};
use crate::core::error::{CoreError, CoreResult};
use crate::core::prepared;
use crate::core::store as settings;

/// What one collection did: pg_net responses recorded, leases expired, and their outcomes.
#[derive(Debug, Clone, Default)]
pub struct Collected {
    pub collected: u32,
    pub expired: u32,
    pub counts: Counts,
}

impl Collected {
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("collected".into(), json!(self.collected));
        m.insert("expired".into(), json!(self.expired));
        m.extend(self.counts.to_json());
        Value::Object(m)
    }
}

/// Most rows one collection looks at per kind: a bound, the schedule comes back for the rest.
const COLLECT_BATCH: i64 = 500;

/// Record the responses pg_net has stored for deliveries it carried in the current pg_net epoch,
/// and expire deliveries in flight past their lease (and never less than their own timeout
/// plus 30 s) as timed-out attempts, and those pg_net carried in an earlier epoch as lost ones:
/// both are retried with the same key. No HTTP; one short transaction.
pub fn collect() -> CoreResult<Collected> {
    let policy = record::retry_policy()?;
    let lease = settings::get_i64("flowgate.in_flight_lease_seconds")?;
    let mut out = Collected::default();
    // The flow pauses the recorded answers ask for: applied together at the end, in key order.
    let mut pauses: Vec<(String, std::time::Duration)> = Vec::new();
    // pg_net's responses, where this role may read them (a role pg_net was closed to finds
    // none: its in-flight pg_net deliveries lapse, and everything else is still collected).
    let has_pg_net = Spi::get_one::<bool>(
        "SELECT CASE WHEN to_regclass('net._http_response') IS NULL THEN false \
                     ELSE has_table_privilege('net._http_response', 'SELECT') END",
    )?
    .unwrap_or(false);
    // Before `ALTER EXTENSION flowgate UPDATE` the schema may have no epoch: ids are matched
    // alone, as before.
    let epochs = super::transport::pg_net_epoch_supported();
    // Within an epoch a request id names one request, so its response is this attempt's. (Without
    // epochs, a response older than the claim is an earlier request's under a reused id. With
    // them, that test would miss responses: pg_net stamps a response with its batch's start,
    // which can precede a claim that committed before the batch read its queue.)
    let same_epoch = if epochs {
        format!(
            "AND d.transport_epoch = {}",
            super::transport::CURRENT_EPOCH
        )
    } else {
        "AND resp.created >= d.claimed_at".to_owned()
    };
    if has_pg_net {
        let answered: Vec<(i64, bool, Option<i64>, record::Observed)> = Spi::connect_mut(
            |client| {
                let rows = prepared::exec(
                client,
                // pg_net stores what the server sent without checking its encoding: its text
                // is read as bytes and made valid here (`native::stored_text`).
                &format!("SELECT d.id, d.sensitive, d.transport_ref, resp.status_code, \
                        (SELECT pg_catalog.textsend(h.value) FROM jsonb_each_text(coalesce(resp.headers, '{{}}'::jsonb)) h \
                          WHERE lower(h.key) = 'retry-after' LIMIT 1), \
                        substring(pg_catalog.textsend(resp.content) FROM 1 FOR {max}), pg_catalog.textsend(resp.content_type), \
                        CASE WHEN resp.timed_out THEN 'timeout' WHEN resp.error_msg IS NOT NULL THEN 'transport' END, \
                        pg_catalog.textsend(resp.error_msg) \
                   FROM flowgate.deliveries d \
                   JOIN net._http_response resp ON resp.id = d.transport_ref \
                  WHERE d.status = 'in_flight' AND d.transport = 'pg_net' {same_epoch} \
                  ORDER BY d.id LIMIT $1 \
                    FOR UPDATE OF d SKIP LOCKED", max = super::native::MAX_STORED_BODY),
                &[COLLECT_BATCH.into()],
            )?;
                let mut v = Vec::with_capacity(rows.len());
                for row in rows {
                    v.push((
                        row.get::<i64>(1)?.unwrap_or_default(),
                        row.get::<bool>(2)?.unwrap_or(false),
                        row.get::<i64>(3)?,
                        record::Observed {
                            status_code: row.get(4)?,
                            retry_after: text_of(row.get(5)?),
                            body: text_of(row.get(6)?),
                            content_type: text_of(row.get(7)?),
                            error_kind: row.get(8)?,
                            error: text_of(row.get(9)?),
                        },
                    ));
                }
                Ok::<_, CoreError>(v)
            },
        )?;
        for (id, sensitive, transport_ref, observed) in answered {
            out.counts.add(record::record_deferring_pause(
                id,
                None,
                &observed.typed(),
                &policy,
                &mut pauses,
            )?);
            // pg_net keeps responses for hours: a sensitive one (API keys) goes once read.
            if sensitive {
                Spi::run_with_args(
                    "DELETE FROM net._http_response WHERE id = $1",
                    &[transport_ref.into()],
                )?;
            }
            out.collected += 1;
        }
    }
    // In flight past the lease; or carried by pg_net in an earlier pg_net epoch (its request
    // and response went when pg_net's unlogged tables were reset, and its request id may name
    // another request now): at once, not after the lease.
    // (An epoch of none: a delivery queued before the update that brought epochs.)
    let gone = if epochs {
        format!(
            "(transport = 'pg_net' AND (transport_epoch IS NULL OR transport_epoch IS DISTINCT FROM {}))",
            super::transport::CURRENT_EPOCH
        )
    } else {
        "false".to_owned()
    };
    let lapsed = "claimed_at < clock_timestamp() - make_interval(secs => greatest($1::float8, timeout_ms / 1000.0 + 30))";
    // Sent natively in an earlier run of the server (it restarted or crashed since: a killed
    // backend reinitializes every session): its sender is gone, so its response will never be
    // recorded. (A delivery claimed before the update that brought runs has none: its lease.)
    let restarted = if super::transport::server_run_supported() {
        format!(
            "(transport = 'native' AND transport_epoch IS NOT NULL AND transport_epoch IS DISTINCT FROM {})",
            super::transport::CURRENT_RUN
        )
    } else {
        "false".to_owned()
    };
    // Answered in this epoch and waiting to be collected (more answers than one collection
    // reads, after collect did not run for a while): recorded by the next collection with its
    // answer, never expired as timed out and sent again.
    let answered = if has_pg_net {
        format!(
            "(transport = 'pg_net' AND EXISTS (SELECT FROM net._http_response resp \
                                             WHERE resp.id = d.transport_ref {same_epoch}))"
        )
    } else {
        "false".to_owned()
    };
    let expired: Vec<(i64, Gone, Option<i64>)> = Spi::connect_mut(|client| {
        let rows = prepared::exec(
            client,
            &format!(
                "SELECT id, CASE WHEN {lapsed} THEN 0 WHEN {gone} THEN 1 ELSE 2 END, \
                        CASE WHEN transport = 'pg_net' AND NOT {gone} THEN transport_ref END FROM flowgate.deliveries d \
                  WHERE status = 'in_flight' AND ({lapsed} OR {gone} OR {restarted}) AND NOT {answered} \
                  ORDER BY id LIMIT $2 \
                    FOR UPDATE SKIP LOCKED"
            ),
            &[(lease as f64).into(), COLLECT_BATCH.into()],
        )?;
        let mut v = Vec::with_capacity(rows.len());
        for row in rows {
            let why = match row.get::<i32>(2)?.unwrap_or(0) {
                1 => Gone::PgNetEpoch,
                2 => Gone::Restarted,
                _ => Gone::Lapsed,
            };
            // Its request id names it only within its epoch: one from an earlier epoch is never
            // withdrawn by id (without epochs: none is).
            let pg_net_ref = if epochs { row.get::<i64>(3)? } else { None };
            v.push((row.get::<i64>(1)?.unwrap_or_default(), why, pg_net_ref));
        }
        Ok::<_, CoreError>(v)
    })?;
    let observed = |attempt: super::policy::Attempt| Observation {
        attempt: Ok(attempt),
        body: None,
        content_type: None,
    };
    let timed_out = observed(super::policy::Attempt::Timeout);
    let lost = observed(super::policy::Attempt::Transport(
        "pg_net lost the request: its tables were reset (a crash, a restore or a promoted standby) before the response was collected"
            .into(),
    ));
    let restarted = observed(super::policy::Attempt::Transport(
        "the server restarted while the request was in flight: its sender is gone and its response was never recorded"
            .into(),
    ));
    let withdrawn = observed(super::policy::Attempt::Transport(
        "pg_net had not sent the request when its lease ran out: it was withdrawn from pg_net's queue"
            .into(),
    ));
    for (id, why, pg_net_ref) in expired {
        // Any attempt: the lease of whoever claimed it has passed (timed out), or else its
        // pg_net epoch has, or its sender's server restarted (lost). A lapsed request pg_net
        // still holds is withdrawn (never sent: sending it again is no duplicate), or left while
        // pg_net's worker is sending it; one pg_net no longer holds has gone out, and times out.
        let observed = match (why, pg_net_ref) {
            (Gone::Lapsed, Some(r)) => match withdraw_from_pg_net(r) {
                Queued::Withdrawn => &withdrawn,
                Queued::Sending => continue,
                Queued::Gone => &timed_out,
            },
            (Gone::Lapsed, None) => &timed_out,
            (Gone::PgNetEpoch, _) => &lost,
            (Gone::Restarted, _) => &restarted,
        };
        out.counts.add(record::record_deferring_pause(
            id,
            None,
            observed,
            &policy,
            &mut pauses,
        )?);
        out.expired += 1;
    }
    let pauses: Vec<(&str, std::time::Duration)> =
        pauses.iter().map(|(k, d)| (k.as_str(), *d)).collect();
    record::pause_flows(&pauses)?;
    Ok(out)
}

/// Where a lapsed pg_net request is.
enum Queued {
    /// Still queued, not taken by pg_net's worker: deleted now, it will never be sent.
    Withdrawn,
    /// Queued and locked: pg_net's worker is sending it now.
    Sending,
    /// Not in the queue (sent), or the queue cannot be read or written by this role.
    Gone,
}

/// Take the request `id` out of pg_net's queue if pg_net's worker has not taken it (its batch
/// deletes the rows it sends, so a locked row is being sent). In a subtransaction: a role that
/// may not write pg_net's queue, or a pg_net without one, leaves the lapse as it was.
fn withdraw_from_pg_net(id: i64) -> Queued {
    let step = || -> CoreResult<Queued> {
        let deleted = Spi::get_one_with_args::<bool>(
            "WITH w AS (DELETE FROM net.http_request_queue q \
                         WHERE q.id = (SELECT x.id FROM net.http_request_queue x WHERE x.id = $1 FOR UPDATE SKIP LOCKED) \
                         RETURNING 1) \
             SELECT EXISTS (SELECT FROM w)",
            &[id.into()],
        )?
        .unwrap_or(false);
        if deleted {
            return Ok(Queued::Withdrawn);
        }
        let held = Spi::get_one_with_args::<bool>(
            "SELECT EXISTS (SELECT FROM net.http_request_queue WHERE id = $1)",
            &[id.into()],
        )?
        .unwrap_or(false);
        Ok(if held { Queued::Sending } else { Queued::Gone })
    };
    match crate::core::subxact::run(step) {
        Ok(Ok(q)) => q,
        _ => Queued::Gone,
    }
}

/// Bytes pg_net stored as text, as text a `text` column can hold.
fn text_of(bytes: Option<Vec<u8>>) -> Option<String> {
    bytes.map(|b| super::native::stored_text(&b))
}

/// Why an in-flight delivery is recorded without its response.
#[derive(Clone, Copy)]
enum Gone {
    /// Its lease has passed: a timed-out attempt.
    Lapsed,
    /// Carried by pg_net in an earlier pg_net epoch.
    PgNetEpoch,
    /// Sent natively before the server last started.
    Restarted,
}
