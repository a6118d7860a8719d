//! The pure half of the event-store runner: the reducer contract every workflow implements,
//! and the helpers the runner uses to turn a reducer's answer into row changes.
//!
//! A workflow is `(state, event, actor) -> new state + effects | error`. The runner
//! (`eventstore.rs`) loads the state under a row lock, calls [`Reducer::reduce`], writes the
//! columns that changed, appends the event and hands the effects to the workflow, all in the
//! caller's transaction. Nothing here touches Postgres, so reducers are tested with `#[test]`
//! and proptest alone.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

use super::actor::Actor;
use super::error::{CoreError, CoreResult};

/// What a reducer decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition<S, E> {
    /// The projection after the event.
    pub state: S,
    /// Side effects to enqueue in the same transaction (notifications, tasks, deliveries).
    pub effects: Vec<E>,
}

impl<S, E> Transition<S, E> {
    pub fn to(state: S) -> Self {
        Transition {
            state,
            effects: Vec::new(),
        }
    }

    pub fn with(mut self, effect: E) -> Self {
        self.effects.push(effect);
        self
    }
}

/// A workflow's pure decision function.
pub trait Reducer {
    /// The projection row, (de)serialised through `to_jsonb(row)`; field names are column names.
    /// Fields the state does not declare are left untouched by the runner.
    type State: Serialize + DeserializeOwned + Clone;
    /// One input to the machine.
    type Event;
    /// A side effect the workflow enqueues after a transition.
    type Effect;
    /// The module's error enum; it must be able to carry the runner's own errors.
    type Error: From<CoreError>;

    /// Decide the next state. `state` is `None` when the entity does not exist yet, so
    /// creation is an event like any other.
    fn reduce(
        state: Option<&Self::State>,
        event: &Self::Event,
        actor: &Actor,
    ) -> Result<Transition<Self::State, Self::Effect>, Self::Error>;

    /// The event's type as stored in the event table's `event_type` column.
    fn event_type(event: &Self::Event) -> String;

    /// The event's payload as stored in the `payload` column.
    fn event_payload(event: &Self::Event) -> Value;

    /// Extra event-table columns (for example `from_state`/`to_state`). Default: none.
    fn event_extra(_before: Option<&Self::State>, _after: &Self::State) -> Map<String, Value> {
        Map::new()
    }
}

/// Serialise a state into the JSON object whose keys are projection columns.
pub fn state_columns<S: Serialize>(state: &S) -> CoreResult<Map<String, Value>> {
    match serde_json::to_value(state)? {
        Value::Object(map) => Ok(map),
        other => Err(CoreError::Internal(format!(
            "a workflow state must serialise to a JSON object, got {other}"
        ))),
    }
}

/// The columns whose values differ between `before` and `after` (keys of `after` only).
pub fn changed_columns(
    before: &Map<String, Value>,
    after: &Map<String, Value>,
) -> Map<String, Value> {
    after
        .iter()
        .filter(|(k, v)| before.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// A Postgres identifier that flowgate builds into SQL: lower-case ASCII letters, digits and
/// underscores, starting with a letter or underscore, at most 63 bytes. Anything else is
/// refused before it can reach a query; accepted names are still quoted when used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ident(String);

impl Ident {
    pub fn new(name: &str) -> CoreResult<Ident> {
        let valid = !name.is_empty()
            && name.len() <= 63
            && name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if valid {
            Ok(Ident(name.to_owned()))
        } else {
            Err(CoreError::invalid(
                "identifier",
                format!("{name:?} is not a safe identifier"),
                "1 to 63 characters from a-z, 0-9 and _, not starting with a digit",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The identifier double-quoted for SQL (always valid since the name is restricted).
    pub fn quoted(&self) -> String {
        format!("\"{}\"", self.0)
    }
}

/// `schema.table`, both parts [`Ident`]s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QualifiedName {
    pub schema: Ident,
    pub name: Ident,
}

impl QualifiedName {
    pub fn parse(qualified: &str) -> CoreResult<QualifiedName> {
        match qualified.split_once('.') {
            Some((s, n)) => Ok(QualifiedName {
                schema: Ident::new(s)?,
                name: Ident::new(n)?,
            }),
            None => Err(CoreError::invalid(
                "table name",
                format!("{qualified:?} is not schema-qualified"),
                "schema.table",
            )),
        }
    }

    pub fn quoted(&self) -> String {
        format!("{}.{}", self.schema.quoted(), self.name.quoted())
    }
}

/// A comma-separated, quoted column list from JSON object keys, each checked as an [`Ident`].
pub fn column_list<'a>(keys: impl Iterator<Item = &'a String>) -> CoreResult<Vec<Ident>> {
    keys.map(|k| Ident::new(k)).collect()
}

#[cfg(test)]
mod unit_tests {
    use super::*;
    use crate::core::error::SqlError;
    use serde_json::json;

    #[test]
    fn diff_keeps_only_changed_keys_of_the_new_state() {
        let before = json!({"state": "OPEN", "count": 1, "note": null})
            .as_object()
            .unwrap()
            .clone();
        let after = json!({"state": "CLOSED", "count": 1, "note": "x"})
            .as_object()
            .unwrap()
            .clone();
        let d = changed_columns(&before, &after);
        assert_eq!(Value::Object(d), json!({"state": "CLOSED", "note": "x"}));
        assert!(changed_columns(&after, &after).is_empty());
    }

    #[test]
    fn identifiers_are_restricted() {
        for ok in ["a", "_x", "capacity_requests", "t1", &"a".repeat(63)] {
            assert!(Ident::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "A",
            "1a",
            "a-b",
            "a b",
            "a\"b",
            "a;drop",
            &"a".repeat(64),
            "é",
        ] {
            assert_eq!(Ident::new(bad).unwrap_err().sqlstate(), "22023", "{bad}");
        }
        assert_eq!(
            QualifiedName::parse("capacity.capacity_requests")
                .unwrap()
                .quoted(),
            "\"capacity\".\"capacity_requests\""
        );
        assert!(QualifiedName::parse("nodot").is_err());
        assert!(QualifiedName::parse("a.b.c").is_err());
    }

    #[test]
    fn states_must_be_objects() {
        assert!(state_columns(&json!({"a": 1})).is_ok());
        assert_eq!(state_columns(&json!([1])).unwrap_err().sqlstate(), "XX000");
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;
        use serde_json::json;

        proptest! {
            /// Applying the diff to `before` always yields `after` (for keys of `after`).
            #[test]
            fn diff_then_patch_is_after(
                before in proptest::collection::btree_map("[a-c]", 0i64..3, 0..4),
                after in proptest::collection::btree_map("[a-c]", 0i64..3, 0..4),
            ) {
                let b: Map<String, Value> = before.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
                let a: Map<String, Value> = after.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
                let mut patched = b.clone();
                for (k, v) in changed_columns(&b, &a) { patched.insert(k, v); }
                for (k, v) in &a { prop_assert_eq!(patched.get(k), Some(v)); }
            }

            /// Whatever string arrives, an accepted identifier quotes to exactly `"name"`.
            #[test]
            fn accepted_identifiers_need_no_escaping(s in "\\PC{0,70}") {
                if let Ok(id) = Ident::new(&s) {
                    prop_assert!(!s.contains('"'));
                    prop_assert_eq!(id.quoted(), format!("\"{s}\""));
                }
            }
        }
    }
}
