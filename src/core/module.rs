//! What a module plugs into core, as one value: its settings, its outbox response handlers and
//! its periodic jobs. Each module exposes a `MODULE`; the crate root lists them
//! (`crate::MODULES`) and core reads that list, so core never names a module.

use super::outbox::handlers::{BatchHandler, Handler};
use super::schedules::Job;
use super::settings::Definition;

pub struct Module {
    /// The module's SQL schema, which prefixes its setting keys, handler and job names.
    pub name: &'static str,
    pub settings: &'static [Definition],
    /// Response handlers by name (`<module>.<handler>`), as deliveries reference them.
    pub handlers: &'static [(&'static str, Handler)],
    /// Optional batch forms of some of those handlers: one call for all of a recording round's
    /// deliveries with that handler (see `core::outbox::handlers::BatchHandler`).
    pub batch_handlers: &'static [(&'static str, BatchHandler)],
    pub jobs: &'static [Job],
    /// Identity providers whose verified requests redeem link codes in this module (Slack's
    /// signed commands in capacity): `flowgate.request_identity_link` issues codes for these
    /// only.
    pub identity_providers: &'static [&'static str],
}

/// A module's response handlers as its `MODULE` lists them. Handlers are Postgres code, so the
/// pure unit-test binary (`cargo test`, not loaded into a server) links none: there the list
/// is empty and only the settings and jobs are checked.
pub const fn handlers(
    list: &'static [(&'static str, Handler)],
) -> &'static [(&'static str, Handler)] {
    if cfg!(test) {
        &[]
    } else {
        list
    }
}

/// A module's batch handlers, empty in the pure unit-test binary like [`handlers`].
pub const fn batch_handlers(
    list: &'static [(&'static str, BatchHandler)],
) -> &'static [(&'static str, BatchHandler)] {
    if cfg!(test) {
        &[]
    } else {
        list
    }
}

/// Every module, in the order their settings, handlers and jobs are listed.
pub fn all() -> &'static [&'static Module] {
    crate::MODULES
}

/// The identity providers some module redeems link codes for, in module order.
pub fn identity_providers() -> Vec<&'static str> {
    all()
        .iter()
        .flat_map(|m| m.identity_providers.iter().copied())
        .collect()
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn every_registered_name_carries_its_module_prefix() {
        for m in all() {
            let prefix = format!("{}.", m.name);
            for d in m.settings {
                assert!(
                    d.key.starts_with(&prefix),
                    "setting {} of {}",
                    d.key,
                    m.name
                );
            }
            for (h, _) in m.handlers {
                assert!(h.starts_with(&prefix), "handler {h} of {}", m.name);
            }
            for (h, _) in m.batch_handlers {
                assert!(
                    m.handlers.iter().any(|(n, _)| n == h),
                    "batch handler {h} of {} has no single-delivery form",
                    m.name
                );
            }
            for j in m.jobs {
                assert!(j.name.starts_with(&prefix), "job {} of {}", j.name, m.name);
                assert!(
                    j.schedule_setting.starts_with(&prefix),
                    "job {} schedule {}",
                    j.name,
                    j.schedule_setting
                );
            }
        }
    }

    #[test]
    fn names_are_unique_across_modules() {
        let mut seen = std::collections::HashSet::new();
        for m in all() {
            assert!(seen.insert(m.name), "module {} twice", m.name);
            for (h, _) in m.handlers {
                assert!(seen.insert(h), "handler {h} twice");
            }
            for j in m.jobs {
                assert!(seen.insert(j.name), "job {} twice", j.name);
            }
        }
    }
}
