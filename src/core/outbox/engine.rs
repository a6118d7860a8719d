//! How the outbox sends: claim, send, record. Each step that touches the database is a
//! transaction of its own, and the send happens in none, so no snapshot, row lock or open
//! transaction waits on a remote server.
//!
//! 1. **Claim** (a short transaction): take due deliveries with `SKIP LOCKED`, mark them
//!    `in_flight` with their attempt number as the lease, and build their requests with secrets
//!    resolved. Deliveries pg_net can carry are queued with `net.http_*` here (pg_net sends
//!    them once this commits); those that cannot be sent at all (a missing secret) are recorded
//!    here.
//! 2. **Send** (no transaction): the native client sends the rest concurrently.
//! 3. **Record** (a new transaction): each outcome is written under its lease; a delivery with
//!    a response handler is recorded in a subtransaction (see [`record::record`]).
//!
//! A crash, cancel or timeout between the steps leaves rows `in_flight`; `flowgate.collect`
//! expires them after the lease and they are sent again with the same Idempotency-Key: at most
//! one extra request per lease, and an outcome once recorded is never lost. A late record
//! under an expired lease is skipped.

use std::time::{Duration, Instant};

use pgrx::prelude::*;
use serde_json::{json, Map, Value};

use pgrx::spi::SpiClient;

use super::flow;
use super::native;
use super::record::{self, Observation, Recorded};
use super::store::{self, Prepared};
use crate::core::error::{CoreError, CoreResult};
use crate::core::prepared;
use crate::core::store as settings;

pub use super::transport::Transport;

/// How many attempts ended which way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts([u32; 6]);

impl Counts {
    pub fn add(&mut self, r: Recorded) {
        self.0[Recorded::ALL.iter().position(|x| *x == r).unwrap_or(0)] += 1;
    }

    pub fn merge(&mut self, other: &Counts) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a += b;
        }
    }

    pub fn get(&self, r: Recorded) -> u32 {
        self.0[Recorded::ALL.iter().position(|x| *x == r).unwrap_or(0)]
    }

    pub fn to_json(&self) -> Map<String, Value> {
        Recorded::ALL
            .iter()
            .map(|r| (r.as_str().to_owned(), json!(self.get(*r))))
            .collect()
    }
}

/// A claimed delivery on its way to the native client.
#[derive(Debug)]
pub struct Leased {
    /// The claim it was taken under.
    pub lease: record::Lease,
    /// Its answer holds secrets (tenant API keys): never bound to a statement.
    pub sensitive: bool,
    pub max_attempts: i32,
    pub flow_key: String,
    pub request: native::Request,
}

/// One claimed row: its id, the claim (its lease), and what recording needs.
struct Lease {
    id: i64,
    lease: record::Lease,
    sensitive: bool,
    max_attempts: i32,
    flow_key: String,
}

/// What one claim took.
#[derive(Debug)]
pub struct Claimed {
    pub transport: Transport,
    pub claimed: usize,
    /// Handed to pg_net (sent after the claim commits; `flowgate.collect` records them).
    pub queued: usize,
    /// To be sent by the native client after the claim commits.
    pub native: Vec<Leased>,
    /// Recorded during the claim: deliveries that could not be sent at all.
    pub recorded: Counts,
    pub concurrency: usize,
}

/// A sent request's observation, with the lease it was sent under.
#[derive(Debug)]
pub struct Sent {
    pub id: i64,
    pub lease: record::Lease,
    pub sensitive: bool,
    pub max_attempts: i32,
    pub flow_key: String,
    pub observation: Observation,
    /// False when the request never left (a stop came first, or its lease would have run out):
    /// [`record`] puts it back to pending without counting the attempt.
    pub started: bool,
}

/// Claim up to `max` due deliveries, within each flow key's limits. Runs in the caller's
/// transaction, which must commit before [`send`].
pub fn claim(max: i64) -> CoreResult<Claimed> {
    let transport = Transport::current()?;
    let concurrency = settings::get_i64("flowgate.http_concurrency")?.max(1) as usize;
    let limits = flow::parse_limits(&settings::get_value("flowgate.flow_limits")?)
        .map_err(|p| CoreError::Internal(format!("stored flowgate.flow_limits: {p}")))?;
    let leases: Vec<Lease> =
        Spi::connect_mut(|client| claim_rows(client, max, transport, &limits))?;
    let mut claimed = Claimed {
        transport,
        claimed: leases.len(),
        queued: 0,
        native: Vec::new(),
        recorded: Counts::default(),
        concurrency,
    };
    if leases.is_empty() {
        return Ok(claimed);
    }
    let by_id: std::collections::HashMap<i64, &Lease> = leases.iter().map(|l| (l.id, l)).collect();
    let lease_of = |id: i64| {
        by_id.get(&id).copied().ok_or_else(|| {
            CoreError::Internal(format!("delivery {id} was prepared but not claimed"))
        })
    };
    let ids: Vec<i64> = leases.iter().map(|l| l.id).collect();
    // The pg_net epoch the requests queued here belong to, looked up by the first of them;
    // none before the update that brought epochs (`pg_net_epoch_supported`).
    let epochs = transport == Transport::PgNet && super::transport::pg_net_epoch_supported();
    let mut epoch: Option<String> = None;
    let mut for_pg_net = Vec::new();
    for p in store::prepare(&ids)? {
        match p {
            Prepared::Unsendable { id, reason } => {
                let lease = lease_of(id)?.lease;
                let r = record::record(id, Some(lease), &Observation::unsendable(reason))?;
                claimed.recorded.add(r);
            }
            Prepared::Send(request) => {
                let l = lease_of(request.id)?;
                let leased = Leased {
                    lease: l.lease,
                    sensitive: l.sensitive,
                    max_attempts: l.max_attempts,
                    flow_key: l.flow_key.clone(),
                    request,
                };
                if transport == Transport::PgNet && super::transport::pg_net_fits(&leased.request) {
                    for_pg_net.push(leased);
                } else {
                    claimed.native.push(leased);
                }
            }
        }
    }
    let requests: Vec<&native::Request> = for_pg_net.iter().map(|l| &l.request).collect();
    let queued = super::transport::queue_on_pg_net(&requests, epochs, &mut epoch)?;
    for (leased, queued) in for_pg_net.into_iter().zip(queued) {
        if queued {
            claimed.queued += 1;
        } else {
            claimed.native.push(leased);
        }
    }
    // Those pg_net cannot carry travel natively; say so on the row, with the run sending them.
    let native_ids: Vec<i64> = claimed.native.iter().map(|l| l.request.id).collect();
    if transport == Transport::PgNet && !native_ids.is_empty() {
        match native_run(Transport::Native)? {
            Some(run) => Spi::run_with_args(
                "UPDATE flowgate.deliveries SET transport = 'native', transport_epoch = $2::uuid WHERE id = ANY ($1)",
                &[native_ids.into(), run.into()],
            )?,
            None => Spi::run_with_args(
                "UPDATE flowgate.deliveries SET transport = 'native' WHERE id = ANY ($1)",
                &[native_ids.into()],
            )?,
        }
    }
    Ok(claimed)
}

/// The server run a native claim belongs to (`flowgate.server_run`); None on pg_net (its epoch
/// is set as each request is queued) and on a schema without runs.
fn native_run(transport: Transport) -> CoreResult<Option<String>> {
    if transport == Transport::Native && super::transport::server_run_supported() {
        Ok(Some(super::transport::server_run()?))
    } else {
        Ok(None)
    }
}

/// The claim itself: due rows in order, each flow key given at most its allowance (its cap on
/// requests in flight, its token bucket, no pause); rows of a limited key that must wait are
/// moved to when their turn comes, so they do not fill every claim.
fn claim_rows(
    client: &mut SpiClient<'_>,
    max: i64,
    transport: Transport,
    limits: &[(String, flow::Limit)],
) -> CoreResult<Vec<Lease>> {
    // Twice the batch: room for other keys when one key is held back.
    let candidates: Vec<(i64, String)> = {
        let rows = prepared::exec(
            client,
            "SELECT id, flow_key FROM flowgate.deliveries \
              WHERE status = 'pending' AND next_attempt_at <= clock_timestamp() \
              ORDER BY next_attempt_at, id \
              LIMIT $1 \
                FOR UPDATE SKIP LOCKED",
            &[(max.saturating_mul(2).min(20_000)).into()],
        )?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            out.push((
                row.get::<i64>(1)?.unwrap_or_default(),
                row.get::<String>(2)?.unwrap_or_default(),
            ));
        }
        out
    };
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let mut keys: Vec<&str> = candidates.iter().map(|(_, k)| k.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    let limited: Vec<(&str, flow::Limit)> = keys
        .iter()
        .filter_map(|k| flow::limit_for(limits, k).map(|l| (*k, l)))
        .collect();
    if !limited.is_empty() {
        let names: Vec<&str> = limited.iter().map(|(k, _)| *k).collect();
        let bursts: Vec<f64> = limited.iter().map(|(_, l)| l.burst).collect();
        prepared::exec(
            client,
            "INSERT INTO flowgate.flow_state (flow_key, tokens, refilled_at) \
             SELECT k, b, clock_timestamp() FROM unnest($1::text[], $2::float8[]) AS u(k, b) \
             ON CONFLICT (flow_key) DO NOTHING",
            &[names.into(), bursts.into()],
        )?;
    }
    // The state of every candidate key that has one (limited, or paused by a Retry-After),
    // locked in key order: runners take their shares one after another.
    let mut state: std::collections::HashMap<String, (Option<flow::Bucket>, u32)> =
        Default::default();
    let now: f64;
    {
        let rows = prepared::exec(
            client,
            "SELECT fs.flow_key, fs.tokens, extract(epoch FROM fs.refilled_at)::float8, \
                    extract(epoch FROM fs.paused_until)::float8 \
               FROM flowgate.flow_state fs WHERE fs.flow_key = ANY ($1) \
              ORDER BY fs.flow_key FOR UPDATE",
            &[keys.clone().into()],
        )?;
        for row in rows {
            let key: String = row.get(1)?.unwrap_or_default();
            let bucket = flow::Bucket {
                tokens: row.get::<f64>(2)?.unwrap_or(0.0),
                refilled_at: row.get::<f64>(3)?.unwrap_or(0.0),
                paused_until: row.get::<f64>(4)?,
            };
            state.insert(key, (Some(bucket), 0));
        }
        // Counted by a later statement than the lock's: its snapshot is taken after the wait,
        // so it sees the deliveries the lock's previous holder claimed (counted in the locking
        // statement, whose snapshot predates the wait, they were missed and the cap was taken
        // twice).
        let counts = prepared::exec(
            client,
            "SELECT d.flow_key, count(*)::int \
               FROM flowgate.deliveries d WHERE d.status = 'in_flight' AND d.flow_key = ANY ($1) \
              GROUP BY d.flow_key",
            &[keys.clone().into()],
        )?;
        for row in counts {
            let key: String = row.get(1)?.unwrap_or_default();
            if let Some(entry) = state.get_mut(&key) {
                entry.1 = row.get::<i32>(2)?.unwrap_or(0).max(0) as u32;
            }
        }
        now = Spi::get_one::<f64>("SELECT extract(epoch FROM clock_timestamp())::float8")?
            .unwrap_or_default();
    }
    // Allowance per key, decided once; then walk the candidates in due order.
    let mut allowance: std::collections::HashMap<&str, (u32, Option<flow::Bucket>, u32)> =
        Default::default();
    let mut chosen: Vec<i64> = Vec::new();
    let mut deferred: Vec<(i64, f64)> = Vec::new();
    for (id, key) in &candidates {
        let limit = flow::limit_for(limits, key);
        let entry = allowance.entry(key.as_str()).or_insert_with(|| {
            let (bucket, in_flight) = state.get(key).copied().unwrap_or((None, 0));
            let (n, b) = flow::allowance(limit.as_ref(), bucket, in_flight, now);
            (n, b, 0)
        });
        if entry.0 > 0 && (chosen.len() as i64) < max {
            entry.0 -= 1;
            if let Some(b) = entry.1 {
                if limit.and_then(|l| l.per_second).is_some() {
                    entry.1 = Some(flow::take(b, 1));
                }
            }
            chosen.push(*id);
        } else if entry.0 == 0 {
            // Held back by its key: move it to when its turn comes.
            entry.2 += 1;
            let wait = match (limit.as_ref(), entry.1.as_ref()) {
                (Some(l), Some(b)) => flow::wait_for(l, b, entry.2, now),
                (None, Some(b)) => b.paused_until.map_or(0.0, |u| (u - now).max(0.0)),
                _ => 0.0,
            };
            // Held back only by the cap on requests in flight: look again in a second.
            deferred.push((*id, if wait > 0.0 { wait } else { 1.0 }));
        }
    }
    // What each limited key took.
    let (names, tokens): (Vec<&str>, Vec<f64>) = allowance
        .iter()
        .filter_map(|(k, (_, b, _))| b.map(|b| (*k, b.tokens)))
        .unzip();
    if !names.is_empty() {
        prepared::exec(
            client,
            "UPDATE flowgate.flow_state fs SET tokens = u.t, refilled_at = to_timestamp($3) \
               FROM unnest($1::text[], $2::float8[]) AS u(k, t) WHERE fs.flow_key = u.k",
            &[names.into(), tokens.into(), now.into()],
        )?;
    }
    if !deferred.is_empty() {
        let (ids, waits): (Vec<i64>, Vec<f64>) = deferred.into_iter().unzip();
        prepared::exec(client, "UPDATE flowgate.deliveries d SET next_attempt_at = clock_timestamp() + make_interval(secs => u.w) \
               FROM unnest($1::bigint[], $2::float8[]) AS u(id, w) WHERE d.id = u.id", &[ids.into(), waits.into()],
        )?;
    }
    if chosen.is_empty() {
        return Ok(Vec::new());
    }
    // The epoch of the attempt: natively the server run that sends it; on pg_net the pg_net
    // epoch, set as each request is queued. Before `ALTER EXTENSION flowgate UPDATE` the table
    // may not have the epoch column yet.
    let mut args = vec![chosen.into(), transport.as_str().into()];
    let set_epoch = if super::transport::pg_net_epoch_supported() {
        args.push(native_run(transport)?.into());
        ", transport_epoch = $3::uuid"
    } else {
        ""
    };
    let rows = prepared::exec(
        client,
        &format!(
            "UPDATE flowgate.deliveries d \
                SET status = 'in_flight', attempts = d.attempts + 1, claimed_at = clock_timestamp(), \
                    transport = $2, transport_ref = NULL{set_epoch}, updated_at = clock_timestamp() \
              WHERE d.id = ANY ($1) \
             RETURNING d.id, d.attempts, d.max_attempts, d.flow_key, d.claimed_at, d.sensitive"
        ),
        &args,
    )?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let id = row.get::<i64>(1)?.unwrap_or_default();
        let claimed_at = row
            .get::<pgrx::datum::TimestampWithTimeZone>(5)?
            .ok_or_else(|| {
                CoreError::Internal(format!("delivery {id} was claimed without a claim time"))
            })?;
        out.push(Lease {
            id,
            lease: record::Lease {
                attempt: row.get::<i32>(2)?.unwrap_or_default(),
                claimed_at,
            },
            max_attempts: row.get::<i32>(3)?.unwrap_or(1),
            flow_key: row.get::<String>(4)?.unwrap_or_default(),
            sensitive: row.get::<bool>(6)?.unwrap_or(false),
        });
    }
    Ok(out)
}

/// Send the natively carried deliveries of a committed claim. Touches no Postgres API, so it
/// runs outside any transaction; `stop()` is asked between requests (a pending cancel).
pub fn send(batch: Vec<Leased>, concurrency: usize, stop: &dyn Fn() -> bool) -> Vec<Sent> {
    let mut requests = Vec::with_capacity(batch.len());
    let mut leases = Vec::with_capacity(batch.len());
    for l in batch {
        requests.push(l.request);
        leases.push((l.lease, l.sensitive, l.max_attempts, l.flow_key));
    }
    native::send_batch(&requests, concurrency, stop)
        .into_iter()
        .zip(leases)
        .map(|(r, (lease, sensitive, max_attempts, flow_key))| {
            let answered = r.status().is_some();
            Sent {
                id: r.id,
                lease,
                sensitive,
                max_attempts,
                flow_key,
                started: r.started,
                observation: Observation {
                    attempt: Ok(r.attempt),
                    body: answered.then_some(r.body),
                    content_type: r.content_type,
                },
            }
        })
        .collect()
}

/// Record what was sent, each under its lease, in a new transaction: one statement for the
/// round, then each owner's response handler in its own subtransaction. A request that never
/// left goes back to pending, due now, and its attempt does not count: a shutdown in the middle
/// of a batch (or a lease about to run out) must not use up the attempts of requests no server
/// saw, nor make a delivery allowed one attempt dead. Counted as `retry`.
pub fn record(sent: &[Sent]) -> CoreResult<Counts> {
    let policy = record::retry_policy()?;
    let mut counts = Counts::default();
    let (sent, unsent): (Vec<&Sent>, Vec<&Sent>) = sent.iter().partition(|s| s.started);
    if !unsent.is_empty() {
        let ids: Vec<i64> = unsent.iter().map(|s| s.id).collect();
        let leases: Vec<i32> = unsent.iter().map(|s| s.lease.attempt).collect();
        let claims: Vec<pgrx::datum::TimestampWithTimeZone> =
            unsent.iter().map(|s| s.lease.claimed_at).collect();
        let released = Spi::connect_mut(|client| {
            prepared::exec(
                client,
                "UPDATE flowgate.deliveries d \
                    SET status = 'pending', attempts = d.attempts - 1, next_attempt_at = clock_timestamp(), \
                        transport_ref = NULL, updated_at = clock_timestamp() \
                   FROM unnest($1::bigint[], $2::int[], $3::timestamptz[]) AS u(id, lease, claimed_at) \
                  WHERE d.id = u.id AND d.status = 'in_flight' AND d.attempts = u.lease \
                    AND d.claimed_at = u.claimed_at \
                 RETURNING d.id",
                &[ids.into(), leases.into(), claims.into()],
            )
            .map(|t| t.len())
        })?;
        for _ in 0..released {
            counts.add(Recorded::Retry);
        }
        for _ in released..unsent.len() {
            counts.add(Recorded::Skipped);
        }
    }
    let items: Vec<record::Batched<'_>> = sent
        .iter()
        .map(|s| record::Batched {
            id: s.id,
            lease: s.lease,
            sensitive: s.sensitive,
            max_attempts: s.max_attempts,
            observed: &s.observation,
        })
        .collect();
    for r in record::record_batch(&items, &policy)? {
        counts.add(r);
    }
    let pauses: Vec<(&str, std::time::Duration)> = sent
        .iter()
        .filter_map(|s| record::pause_of(&s.observation, &policy).map(|d| (s.flow_key.as_str(), d)))
        .collect();
    record::pause_flows(&pauses)?;
    Ok(counts)
}

/// Where the transaction boundaries of a run are: a procedure commits through SPI, the
/// background worker starts and commits its own transactions.
pub trait Transactions {
    /// Run `step` in a transaction of its own and commit it; roll it back when it fails.
    fn step<R>(&mut self, step: impl FnOnce() -> CoreResult<R>) -> CoreResult<R>;
    /// Called after a claim has committed and before the send: from here until the next step
    /// this backend holds no transaction resources.
    fn between(&mut self) {}
    /// A cancel or shutdown is pending: stop sending and claiming.
    fn stopping(&self) -> bool;
}

/// Bounds of one run.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most deliveries one claim takes.
    pub batch: i64,
    /// Most deliveries the whole run claims.
    pub max_deliveries: i64,
    /// No new claim after this long.
    pub budget: Duration,
}

impl Limits {
    /// `max_deliveries` is NULL or 1 to 1,000,000.
    pub fn check_max(max_deliveries: Option<i64>) -> CoreResult<()> {
        match max_deliveries {
            Some(m) if !(1..=1_000_000).contains(&m) => Err(CoreError::invalid(
                "max_deliveries",
                m.to_string(),
                "1 to 1000000, or NULL for as many as are due within flowgate.outbox_run_seconds",
            )),
            _ => Ok(()),
        }
    }

    /// From settings; `max_deliveries` NULL means no count limit within the time budget.
    pub fn from_settings(max_deliveries: Option<i64>) -> CoreResult<Limits> {
        Self::check_max(max_deliveries)?;
        Ok(Limits {
            batch: settings::get_i64("flowgate.dispatch_batch_size")?.max(1),
            max_deliveries: max_deliveries.unwrap_or(i64::MAX),
            budget: Duration::from_secs(
                settings::get_i64("flowgate.outbox_run_seconds")?.max(1) as u64
            ),
        })
    }
}

/// What a run did, as the procedure returns it and the job history records it.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub transport: Option<Transport>,
    pub rounds: u32,
    pub claimed: usize,
    pub queued: usize,
    pub sent: usize,
    pub counts: Counts,
}

impl Summary {
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert(
            "transport".into(),
            json!(self.transport.map(Transport::as_str)),
        );
        m.insert("rounds".into(), json!(self.rounds));
        m.insert("claimed".into(), json!(self.claimed));
        m.insert("queued".into(), json!(self.queued));
        m.insert("sent".into(), json!(self.sent));
        m.extend(self.counts.to_json());
        Value::Object(m)
    }
}

/// Claim, send and record in rounds until nothing is due, the run has claimed
/// `max_deliveries`, its time budget is spent, or a cancel is pending.
pub fn run(tx: &mut impl Transactions, limits: Limits) -> CoreResult<Summary> {
    let started = Instant::now();
    let mut summary = Summary::default();
    while (summary.claimed as i64) < limits.max_deliveries
        && started.elapsed() < limits.budget
        && !tx.stopping()
    {
        let want = limits
            .batch
            .min(limits.max_deliveries - summary.claimed as i64);
        let claimed = tx.step(|| claim(want))?;
        summary.rounds += 1;
        summary.transport = Some(claimed.transport);
        summary.claimed += claimed.claimed;
        summary.queued += claimed.queued;
        summary.counts.merge(&claimed.recorded);
        if claimed.claimed == 0 {
            break;
        }
        if claimed.native.is_empty() {
            continue;
        }
        tx.between();
        let sent = send(claimed.native, claimed.concurrency, &|| tx.stopping());
        summary.sent += sent.iter().filter(|s| s.started).count();
        // A cancel or timeout that arrived during the send ends the call here: the claims stay
        // leased and are sent once more, with the same key, after the lease. (Recording first
        // under held interrupts is not possible: Postgres's regex engine, which the table's
        // CHECKs use, aborts on a pending cancel regardless.)
        pgrx::check_for_interrupts!();
        let counts = tx.step(|| record(&sent))?;
        summary.counts.merge(&counts);
    }
    Ok(summary)
}

/// Run the steps inside the caller's one transaction (tests only: a `#[pg_test]` cannot
/// commit, and nothing else may send inside a transaction).
#[cfg(any(test, feature = "pg_test"))]
pub struct InOneTransaction;

#[cfg(any(test, feature = "pg_test"))]
impl Transactions for InOneTransaction {
    fn step<R>(&mut self, step: impl FnOnce() -> CoreResult<R>) -> CoreResult<R> {
        step()
    }
    fn stopping(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod unit_tests;
