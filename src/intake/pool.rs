//! Pool ids and the names derived from them (pgmq queues, slot sequences). Pure.

use crate::core::error::{CoreError, CoreResult};

/// A validated pool id: `[a-z][a-z0-9_]{0,35}`, so every derived identifier (`intake_<id>`,
/// `intake_<id>_dlq`, `slots_<id>`) is a safe, short Postgres name (pgmq adds `q_`/`a_`), and
/// the dead-letter queue's name fits pgmq's limit of 47 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolId(String);

/// The longest pool id: `intake_<id>_dlq` is then pgmq's longest queue name (47 characters).
const MAX_LEN: usize = 36;

impl PoolId {
    pub fn parse(id: &str) -> CoreResult<PoolId> {
        let ok = (1..=MAX_LEN).contains(&id.len())
            && id.starts_with(|c: char| c.is_ascii_lowercase())
            && id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if ok {
            Ok(PoolId(id.to_string()))
        } else {
            Err(CoreError::invalid(
                "pool_id",
                crate::core::error::quoted(id),
                "1 to 36 characters from a-z, 0-9 and _, starting with a letter",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The pgmq queue holding the pool's intents.
    pub fn queue(&self) -> String {
        format!("intake_{}", self.0)
    }

    /// The tables and sequences pgmq made for the pool's queue and dead-letter queue,
    /// schema-qualified and quoted (pgmq's `q_<queue>`, `a_<queue>`, `q_<queue>_msg_id_seq`).
    pub fn queue_relations(&self) -> Vec<String> {
        [self.queue(), self.dlq()]
            .iter()
            .flat_map(|q| {
                [
                    format!("pgmq.\"q_{q}\""),
                    format!("pgmq.\"a_{q}\""),
                    format!("pgmq.\"q_{q}_msg_id_seq\""),
                ]
            })
            .collect()
    }

    /// The queue's table, schema-qualified and quoted (pgmq's `q_<queue>` layout).
    pub fn queue_table(&self) -> String {
        format!("pgmq.\"q_intake_{}\"", self.0)
    }

    /// The queue's archive table (pgmq's `a_<queue>` layout).
    pub fn archive_table(&self) -> String {
        format!("pgmq.\"a_intake_{}\"", self.0)
    }

    /// Its dead-letter queue.
    pub fn dlq(&self) -> String {
        format!("intake_{}_dlq", self.0)
    }

    /// The sequence handing out slot numbers, schema-qualified and quoted.
    pub fn slot_sequence(&self) -> String {
        format!("intake.\"{}\"", self.slot_sequence_name())
    }

    /// The slot sequence's name in schema `intake`, unquoted (for catalog lookups).
    pub fn slot_sequence_name(&self) -> String {
        format!("slots_{}", self.0)
    }
}

#[cfg(test)]
mod unit_tests {
    use super::*;
    use crate::core::error::SqlError;

    #[test]
    fn pool_ids_are_safe_identifiers() {
        let p = PoolId::parse("taylor_swift_2027").unwrap();
        assert_eq!(p.queue(), "intake_taylor_swift_2027");
        assert_eq!(p.dlq(), "intake_taylor_swift_2027_dlq");
        assert_eq!(p.slot_sequence(), "intake.\"slots_taylor_swift_2027\"");
        assert_eq!(p.queue_table(), "pgmq.\"q_intake_taylor_swift_2027\"");
        for bad in [
            "",
            "Drop",
            "1abc",
            "a-b",
            "a;drop table x",
            "a\"b",
            &"a".repeat(37),
            "é",
        ] {
            assert_eq!(PoolId::parse(bad).unwrap_err().sqlstate(), "22023", "{bad}");
        }
        assert!(PoolId::parse(&"a".repeat(36)).is_ok());
        // The longest id's dead-letter queue name is pgmq's longest.
        assert_eq!(PoolId::parse(&"a".repeat(36)).unwrap().dlq().len(), 47);
    }
}
