//! The claim hot path: one statement per claim in the common case.
//!
//! A claim counts the user under the pool's per-user limit, takes the next slot number from the
//! pool's sequence, locks that slot by primary key and sends the intent to the pool's pgmq
//! queue. All of that, and the reading of the pool's configuration, is one prepared statement
//! (one executor run): the pool's live `engine_config` row gates it, so a paused, missing or
//! sold-out pool writes nothing and a read-only look at the pool ([`standing`]) says why. A
//! backend's first claim on a pool makes that look first, and rebuilds a pool a crash or a
//! restore emptied. Slots are taken by primary key, never searched for, so the cost of a
//! claim does not grow as the pool drains; the only row locks are the user's counter and the
//! claimed slot.

use std::cell::RefCell;
use std::collections::HashSet;
use std::ffi::CString;

use pgrx::pg_sys;
use pgrx::spi::SpiClient;
use serde_json::{json, Value};

use crate::core::answer::{Answer, JsonbAnswer};
use crate::core::error::{CoreError, CoreResult};
use crate::core::prepared::{self, TEXT};
use crate::core::store::relation_id;
use crate::intake::pool::PoolId;
use crate::intake::recovery;

/// How many slot numbers one claim may try after its first one was taken by a racing reclaim.
const MAX_RETAKES: usize = 16;

/// What the one-statement attempt found.
struct Attempt {
    /// The pool's per-user limit; `None` when the pool did not let the claim in (missing,
    /// paused, its UNLOGGED state lost, or sold out with nothing given back).
    max_claims: Option<i32>,
    /// The slot number taken once the user was counted; `None` at the user's limit.
    slot: Option<i32>,
    /// The claim's answer as the statement built it (the resource, the slot, the intent's queue
    /// message), when the slot was still available.
    answer: Option<JsonbAnswer>,
}

thread_local! {
    /// Pools this backend has found intact (their UNLOGGED state and slot sequence present).
    /// A crash ends every backend and a restore is another database, so a pool found intact
    /// stays so for the backend's life: the claim statement does not look at the crash marker
    /// again. (A pool dropped meanwhile fails the statement's configuration gate; a marker
    /// deleted by hand only makes a later backend rebuild an intact pool, as recover_pool does.)
    static INTACT: RefCell<HashSet<String>> = RefCell::new(HashSet::new());
}

fn known_intact(pool: &PoolId) -> bool {
    INTACT.with(|s| s.borrow().contains(pool.as_str()))
}

fn remember(pool: &PoolId, intact: bool) {
    INTACT.with(|s| {
        let mut s = s.borrow_mut();
        if intact {
            s.insert(pool.as_str().to_string());
        } else {
            s.remove(pool.as_str());
        }
    });
}

/// Claim one resource of `pool` for `user` (already validated), answering with the claim or
/// with why there was none (`sold_out`, `limit_reached`, `paused`). Must run in the function's
/// own `Spi::connect`: a claim's answer is the datum its statement built.
///
/// A backend's first claim on a pool checks, read-only, that the pool is intact, and rebuilds
/// it first if a crash or a restore emptied it. That check comes before any write: the claim
/// statement locks the pool's queue table, which the rebuild locks exclusively.
pub fn claim(client: &mut SpiClient<'_>, pool: &PoolId, user: &str) -> CoreResult<Answer> {
    let mut healed = false;
    // At most: the first check, the claim, and the claim again after a rebuild.
    for _ in 0..3 {
        if !(known_intact(pool) && sequence_exists(pool)) {
            match standing(client, pool)? {
                Standing::Paused => return Ok(Answer::Value(paused(pool))),
                Standing::Intact => {}
                Standing::Healed => healed = true,
            }
            remember(pool, true);
            continue;
        }
        let attempt = try_claim(client, pool, user)?;
        if attempt.max_claims.is_none() {
            // The statement let no claim in: paused, sold out, or the pool's state lost.
            remember(pool, false);
            match standing(client, pool)? {
                Standing::Paused => return Ok(Answer::Value(paused(pool))),
                Standing::Intact => {
                    remember(pool, true);
                    return Ok(Answer::Value(sold_out(pool)));
                }
                Standing::Healed if !healed => {
                    healed = true;
                    remember(pool, true);
                    continue;
                }
                Standing::Healed => break,
            }
        }
        return settle(client, pool, user, attempt);
    }
    Err(CoreError::Busy {
        what: format!("pool {}", pool.as_str()),
        hint: "the pool was being rebuilt after a restart; claim again".into(),
    })
}

/// What a claim that passed the pool's gate comes to.
fn settle(
    client: &mut SpiClient<'_>,
    pool: &PoolId,
    user: &str,
    attempt: Attempt,
) -> CoreResult<Answer> {
    let max_claims = attempt.max_claims.unwrap_or(1);
    let Some(slot) = attempt.slot else {
        return Ok(Answer::Value(
            json!({"status": "limit_reached", "pool_id": pool.as_str(), "max_claims_per_user": max_claims}),
        ));
    };
    match attempt.answer {
        Some(answer) => Ok(Answer::Built(answer)),
        None => retake(client, pool, user, slot).map(Answer::Value),
    }
}

fn paused(pool: &PoolId) -> Value {
    json!({"status": "paused", "pool_id": pool.as_str()})
}

/// Whether the pool's slot sequence exists: looked up in the catalog cache, then locked
/// (`AccessShareLock`, which the claim statement takes on it anyway) and looked up again. A
/// pool being dropped has its sequence dropped first, so a claim arriving meanwhile waits here
/// for the drop and then finds the pool gone (P0002), instead of failing inside its statement
/// on the vanished relation.
fn sequence_exists(pool: &PoolId) -> bool {
    let Ok(name) = CString::new(pool.slot_sequence_name()) else {
        return false;
    };
    let Some(seq) = relation_id(c"intake", &name) else {
        return false;
    };
    // SAFETY: the lock is taken by OID and kept to the end of the transaction, as a statement's
    // would be. Locking processes the invalidations of a drop committed meanwhile, so the
    // second look-up sees it.
    unsafe { pg_sys::LockRelationOid(seq, pg_sys::AccessShareLock as _) };
    relation_id(c"intake", &name) == Some(seq)
}

fn claimed(pool: &PoolId, slot: i32, resource: &str, msg_id: Option<i64>) -> Value {
    json!({"status": "claimed", "pool_id": pool.as_str(), "resource_id": resource, "slot": slot, "msg_id": msg_id})
}

fn sold_out(pool: &PoolId) -> Value {
    json!({"status": "sold_out", "pool_id": pool.as_str()})
}

/// The whole claim in one statement, for a pool this backend found intact: unless the pool is
/// paused, missing, or its counter is past the inventory with nothing given back (then nothing
/// is written), count the user's claim under the limit, take the next slot number, lock that slot
/// if it is still available and send the intent to the pool's queue. The queue write is what
/// `pgmq.send` does, as a prepared INSERT into the queue's table (`pgmq.send` plans its
/// statement on every call).
fn try_claim(client: &mut SpiClient<'_>, pool: &PoolId, user: &str) -> CoreResult<Attempt> {
    // Each value the later steps need is a scalar subquery (an InitPlan run once): the slot's
    // primary-key lookup then never depends on join statistics, which a new pool lacks.
    let sql = format!(
        "WITH open AS ( \
           SELECT c.inventory, c.max_claims_per_user FROM intake.engine_config c \
            WHERE c.pool_id = $1 AND NOT c.paused \
              AND ((SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {seq}) < c.inventory \
                   OR EXISTS (SELECT FROM intake.released_slots r WHERE r.pool_id = $1))), \
         counted AS ( \
           INSERT INTO intake.user_claims AS u (pool_id, user_id, claims) SELECT $1, $2, 1 FROM open \
           ON CONFLICT (pool_id, user_id) DO UPDATE SET claims = u.claims + 1 \
            WHERE u.claims < (SELECT max_claims_per_user FROM open) \
           RETURNING nextval('{seq}')::int AS slot), \
         taken AS ( \
           UPDATE intake.allocations a SET status = 'locked', locked_by = $2, locked_at = now() \
            WHERE a.pool_id = $1 AND a.slot = (SELECT slot FROM counted) \
              AND a.slot <= (SELECT inventory FROM open) AND a.status = 'available' \
           RETURNING a.slot, a.resource_id), \
         sent AS ( \
           INSERT INTO {queue} (vt, message) \
           SELECT clock_timestamp(), jsonb_build_object('pool_id', $1, 'slot', slot, 'resource_id', resource_id, 'user_id', $2) \
             FROM taken RETURNING msg_id) \
         SELECT m, s, CASE WHEN r IS NOT NULL THEN jsonb_build_object( \
                  'status', 'claimed', 'pool_id', $1, 'resource_id', r, 'slot', s, 'msg_id', i) END \
           FROM (SELECT (SELECT max_claims_per_user FROM open) AS m, (SELECT slot FROM counted) AS s, \
                        (SELECT resource_id::text FROM taken) AS r, (SELECT msg_id FROM sent) AS i) x",
        seq = pool.slot_sequence(),
        queue = pool.queue_table()
    );
    let rows = prepared::run(
        client,
        &sql,
        &[TEXT, TEXT],
        &[pool.as_str().into(), user.into()],
    )?;
    let row = rows.first();
    Ok(Attempt {
        max_claims: row.get::<i32>(1)?,
        slot: row.get::<i32>(2)?,
        answer: JsonbAnswer::from_current(&row, 3)?,
    })
}

/// A pool's standing, read without writing anything.
enum Standing {
    Paused,
    /// Intact and not paused.
    Intact,
    /// Its UNLOGGED state or slot sequence had been lost (a crash or a restore) and is rebuilt
    /// now, by this call or by a concurrent claim it waited for.
    Healed,
}

fn standing(client: &mut SpiClient<'_>, pool: &PoolId) -> CoreResult<Standing> {
    let cfg = prepared::query(
        client,
        "SELECT c.paused, EXISTS (SELECT FROM intake.pool_state s WHERE s.pool_id = c.pool_id) \
           FROM intake.engine_config c WHERE c.pool_id = $1",
        &[TEXT],
        &[pool.as_str().into()],
    )?;
    if cfg.is_empty() {
        return Err(CoreError::not_found("pool", pool.as_str()));
    }
    let (paused, intact) = cfg.first().get_two::<bool, bool>()?;
    if intact != Some(true) || !sequence_exists(pool) {
        recovery::heal(client, pool)?;
        return Ok(Standing::Healed);
    }
    Ok(if paused == Some(true) {
        Standing::Paused
    } else {
        Standing::Intact
    })
}

/// The rare path: the user is counted and holds slot number `first`, but that number was past
/// the inventory (then a given-back slot is taken instead) or its slot was taken meanwhile (a
/// reclaim raced a slow claim; then the next number is tried). Sold out after all: the user's
/// count is given back.
fn retake(client: &mut SpiClient<'_>, pool: &PoolId, user: &str, first: i32) -> CoreResult<Value> {
    let int4 = pgrx::pg_sys::PgOid::BuiltIn(pgrx::pg_sys::PgBuiltInOids::INT4OID);
    let inventory = prepared::query(
        client,
        "SELECT inventory FROM intake.engine_config WHERE pool_id = $1",
        &[TEXT],
        &[pool.as_str().into()],
    )?
    .first()
    .get_one::<i32>()?
    .unwrap_or(0);
    let seq = pool.slot_sequence();
    let mut next = Some(first);
    for _ in 0..MAX_RETAKES {
        let mut slot = match next.take() {
            Some(s) => s,
            None => prepared::run(client, &format!("SELECT nextval('{seq}')::int"), &[], &[])?
                .first()
                .get_one::<i32>()?
                .unwrap_or(i32::MAX),
        };
        if slot > inventory {
            let back = prepared::run(
                client,
                // One given-back slot, picked once (an InitPlan): as a joined subquery the pick
                // could be re-run per outer row and delete several slots while returning one,
                // losing the others under contention.
                "DELETE FROM intake.released_slots WHERE pool_id = $1 AND slot = \
                 (SELECT slot FROM intake.released_slots WHERE pool_id = $1 LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING slot",
                &[TEXT],
                &[pool.as_str().into()],
            )?;
            if back.is_empty() {
                prepared::run(
                    client,
                    "UPDATE intake.user_claims SET claims = claims - 1 WHERE pool_id = $1 AND user_id = $2",
                    &[TEXT, TEXT],
                    &[pool.as_str().into(), user.into()],
                )?;
                return Ok(sold_out(pool));
            }
            slot = back.first().get_one::<i32>()?.unwrap_or(i32::MAX);
        }
        let taken = prepared::run(
            client,
            "UPDATE intake.allocations SET status = 'locked', locked_by = $3, locked_at = now() \
             WHERE pool_id = $1 AND slot = $2 AND status = 'available' RETURNING resource_id::text",
            &[TEXT, int4, TEXT],
            &[pool.as_str().into(), slot.into(), user.into()],
        )?;
        if taken.is_empty() {
            continue; // given back twice (a reclaim raced a slow claim): take another
        }
        let resource: String = taken.first().get_one::<String>()?.unwrap_or_default();
        let intent = json!({"pool_id": pool.as_str(), "slot": slot, "resource_id": resource, "user_id": user});
        let msg_id = prepared::run(
            client,
            &format!(
                "INSERT INTO {} (vt, message) VALUES (clock_timestamp(), $1) RETURNING msg_id",
                pool.queue_table()
            ),
            &[prepared::JSONB],
            &[pgrx::JsonB(intent).into()],
        )?
        .first()
        .get_one::<i64>()?;
        return Ok(claimed(pool, slot, &resource, msg_id));
    }
    Err(CoreError::Busy {
        what: format!("pool {}", pool.as_str()),
        hint: format!("{MAX_RETAKES} slots in a row were taken by concurrent claims; claim again"),
    })
}
