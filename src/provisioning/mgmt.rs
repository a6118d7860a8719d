//! The Supabase Management API as provisioning speaks it: request bodies, response parsing and
//! the step names carried by each outbox delivery. Pure.
//!
//! | step | request |
//! |---|---|
//! | `lookup` (retries of create_project) | `GET /v1/projects`, find the project named after the client |
//! | `create` | `POST /v1/projects` `{organization_id, name, db_pass, region, plan}` → 201 `{id, region, ...}` |
//! | `api_keys` | `GET /v1/projects/{ref}/api-keys` → `[{name: "anon", api_key}, {name: "service_role", api_key}]` |
//! | `migration:N` | `POST /v1/projects/{ref}/database/query` `{query}` for migration N |
//! | `smoke` | `GET /v1/projects/{ref}` → 2xx |

use serde_json::{json, Value};

use crate::core::error::{CoreError, CoreResult};

/// One HTTP step of a job attempt, named in the delivery's owner_id
/// (`<job_id>:<attempt>:<step>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Lookup,
    Create,
    ApiKeys,
    Migration(i32),
    Smoke,
}

impl Step {
    pub fn as_string(&self) -> String {
        match self {
            Step::Lookup => "lookup".into(),
            Step::Create => "create".into(),
            Step::ApiKeys => "api_keys".into(),
            Step::Migration(v) => format!("migration:{v}"),
            Step::Smoke => "smoke".into(),
        }
    }

    pub fn parse(s: &str) -> Option<Step> {
        match s {
            "lookup" => Some(Step::Lookup),
            "create" => Some(Step::Create),
            "api_keys" => Some(Step::ApiKeys),
            "smoke" => Some(Step::Smoke),
            other => other
                .strip_prefix("migration:")
                .and_then(|v| v.parse().ok())
                .filter(|v: &i32| *v > 0)
                .map(Step::Migration),
        }
    }
}

/// `<job_id>:<attempt>:<step>`.
pub fn owner_id(job_id: &str, attempt: i32, step: &Step) -> String {
    format!("{job_id}:{attempt}:{}", step.as_string())
}

pub fn parse_owner_id(owner_id: &str) -> Option<(String, i32, Step)> {
    let mut parts = owner_id.splitn(3, ':');
    let job = parts.next()?.to_owned();
    let attempt = parts.next()?.parse().ok()?;
    let step = Step::parse(parts.next()?)?;
    Some((job, attempt, step))
}

/// The project as flowgate records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    pub project_ref: String,
    pub region: Option<String>,
    pub organization_id: Option<String>,
    pub created_at: Option<String>,
    pub status: Option<String>,
}

pub fn is_project_ref(s: &str) -> bool {
    s.len() == 20
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_owned)
}

fn project_of(v: &Value) -> Option<Project> {
    let project_ref = text(v, "id").or_else(|| text(v, "ref"))?;
    if !is_project_ref(&project_ref) {
        return None;
    }
    Some(Project {
        project_ref,
        region: text(v, "region"),
        organization_id: text(v, "organization_id"),
        created_at: text(v, "created_at"),
        status: text(v, "status"),
    })
}

/// The body of `POST /v1/projects` without `db_pass`, which the outbox sets from its secret when it
/// sends the request (`body_secrets`).
pub fn create_body(organization_id: &str, name: &str, region: &str, plan: &str) -> Value {
    json!({
        "organization_id": organization_id,
        "name": name,
        "region": region,
        "plan": plan,
    })
}

/// The project a 201 from `POST /v1/projects` describes.
pub fn parse_created(response: Option<&Value>) -> CoreResult<Project> {
    response.and_then(project_of).ok_or_else(|| {
        CoreError::invalid(
            "Management API response to POST /v1/projects",
            "it has no project id (20 lowercase letters and digits)",
            "a JSON object with \"id\" (the project ref)",
        )
    })
}

/// The project named `name` in the organization `organization_id`, in a `GET /v1/projects`
/// listing: the project an earlier create of this client made. The listing holds every
/// organization the token reaches, and a name is unique in none: a project of that name in
/// another organization is someone else's, and two in this one cannot be told apart (an error
/// for an operator, never a guess whose database gets the tenant's migrations and keys).
pub fn find_project(
    listing: Option<&Value>,
    name: &str,
    organization_id: &str,
) -> CoreResult<Option<Project>> {
    let Some(items) = listing.and_then(Value::as_array) else {
        return Err(CoreError::invalid(
            "Management API response to GET /v1/projects",
            "it is not a JSON array",
            "an array of projects",
        ));
    };
    let found: Vec<Project> = items
        .iter()
        .filter(|p| p.get("name").and_then(Value::as_str) == Some(name))
        .filter(|p| p.get("organization_id").and_then(Value::as_str) == Some(organization_id))
        .filter_map(project_of)
        .collect();
    match found.len() {
        0 | 1 => Ok(found.into_iter().next()),
        n => Err(CoreError::invalid(
            "Management API response to GET /v1/projects",
            format!("{n} projects are named {name:?} in organization {organization_id:?}"),
            "one: delete or rename the others, or set the client's project_ref by hand",
        )),
    }
}

/// The tenant keys in a `GET /v1/projects/{ref}/api-keys` answer: (anon, service_role).
pub fn parse_api_keys(response: Option<&Value>) -> CoreResult<(String, String)> {
    let bad = |problem: &str| {
        CoreError::invalid(
            "Management API response to GET /v1/projects/{ref}/api-keys",
            problem,
            "an array with the \"anon\" and \"service_role\" keys",
        )
    };
    let items = response
        .and_then(Value::as_array)
        .ok_or_else(|| bad("it is not a JSON array"))?;
    let key = |name: &str| {
        items
            .iter()
            .find(|k| k.get("name").and_then(Value::as_str) == Some(name))
            .and_then(|k| k.get("api_key").and_then(Value::as_str))
            .filter(|k| !k.is_empty())
            .map(str::to_owned)
    };
    match (key("anon"), key("service_role")) {
        (Some(a), Some(s)) => Ok((a, s)),
        _ => Err(bad("the anon or service_role key is missing")),
    }
}

/// A short message from an error answer (the API puts it in "message"), without echoing bodies
/// that might carry secrets.
pub fn api_message(response: Option<&Value>) -> Option<String> {
    response
        .and_then(|r| r.get("message").or_else(|| r.get("error")))
        .and_then(Value::as_str)
        .map(|m| m.chars().take(300).collect())
}

/// A database password: 32 characters from a 62-letter alphabet (190 bits), from the caller's
/// random source.
pub fn db_pass(mut next: impl FnMut() -> u32) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..32)
        .map(|_| ALPHABET[(next() as usize) % ALPHABET.len()] as char)
        .collect()
}

#[cfg(test)]
mod unit_tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn owner_ids_round_trip() {
        for step in [
            Step::Lookup,
            Step::Create,
            Step::ApiKeys,
            Step::Migration(7),
            Step::Smoke,
        ] {
            let id = owner_id("2b5c7e4e-0000-4000-8000-000000000001", 3, &step);
            assert_eq!(
                parse_owner_id(&id),
                Some(("2b5c7e4e-0000-4000-8000-000000000001".into(), 3, step))
            );
        }
        assert_eq!(parse_owner_id("x:1:migration:0"), None);
        assert_eq!(parse_owner_id("x:one:create"), None);
    }

    #[test]
    fn responses_are_read_as_the_api_documents_them() {
        let created = json!({"id": "abcdefghijklmnopqrst", "organization_id": "org1", "name": "acme", "region": "us-east-1",
                             "created_at": "2026-11-23T10:00:00Z", "status": "COMING_UP"});
        let p = parse_created(Some(&created)).unwrap();
        assert_eq!(p.project_ref, "abcdefghijklmnopqrst");
        assert_eq!(p.region.as_deref(), Some("us-east-1"));
        assert!(parse_created(Some(&json!({"id": "Not-A-Ref"}))).is_err());
        assert!(parse_created(None).is_err());
        let elsewhere =
            json!({"id": "cccccccccccccccccccc", "organization_id": "org2", "name": "acme"});
        let listing = json!([{"id": "bbbbbbbbbbbbbbbbbbbb", "name": "other"}, elsewhere, created]);
        assert_eq!(
            find_project(Some(&listing), "acme", "org1")
                .unwrap()
                .unwrap()
                .project_ref,
            "abcdefghijklmnopqrst"
        );
        assert_eq!(
            find_project(Some(&listing), "nobody", "org1").unwrap(),
            None
        );
        // Another organization's project of that name is never adopted.
        assert_eq!(find_project(Some(&listing), "acme", "org3").unwrap(), None);
        assert_eq!(
            find_project(Some(&json!([elsewhere])), "acme", "org1").unwrap(),
            None
        );
        // Two of that name in the organization: an error, not a guess.
        let twin = json!({"id": "dddddddddddddddddddd", "organization_id": "org1", "name": "acme"});
        assert!(find_project(Some(&json!([created, twin])), "acme", "org1").is_err());
        let keys = json!([{"name": "anon", "api_key": "a.b.c"}, {"name": "service_role", "api_key": "s.e.c"}]);
        assert_eq!(
            parse_api_keys(Some(&keys)).unwrap(),
            ("a.b.c".into(), "s.e.c".into())
        );
        assert!(parse_api_keys(Some(&json!([{"name": "anon", "api_key": "a"}]))).is_err());
        assert_eq!(
            api_message(Some(&json!({"message": "Unauthorized"}))).as_deref(),
            Some("Unauthorized")
        );
    }

    proptest! {
        #[test]
        fn passwords_are_32_alphanumerics(seed in any::<u64>()) {
            let mut x = seed;
            let p = db_pass(|| { x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); (x >> 33) as u32 });
            prop_assert_eq!(p.len(), 32);
            prop_assert!(p.bytes().all(|b| b.is_ascii_alphanumeric()));
        }

        #[test]
        fn arbitrary_owner_ids_never_panic(s in "\\PC{0,80}") {
            let _ = parse_owner_id(&s);
        }
    }
}
