//! Linear GraphQL payloads: an issue when a request is created, a comment per transition.
//! Linear is informational only: nothing it says changes a request. Pure.

use serde_json::{json, Value};

pub const ISSUE_CREATE: &str =
    "mutation IssueCreate($input: IssueCreateInput!) { issueCreate(input: $input) { success issue { id identifier url } } }";
pub const COMMENT_CREATE: &str =
    "mutation CommentCreate($input: CommentCreateInput!) { commentCreate(input: $input) { success comment { id } } }";

/// `text` as literal Markdown (Linear renders descriptions and comments): every character that
/// could start a link, an image, emphasis, a heading or HTML is backslash-escaped, so a size or
/// an actor id cannot put a tracking image or a link in the issue.
pub fn markdown_literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\`*_{}[]()#+-.!<>|~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

pub fn issue_create(team_id: &str, id: &str, request: &Value) -> Value {
    let title = format!(
        "{id}: {} x {} in {}",
        request["quantity"],
        request["requested_size"].as_str().unwrap_or("?"),
        request["region"].as_str().unwrap_or("?")
    );
    let description = format!(
        "Capacity Request **{id}** (state of record in Postgres; this issue is informational).\n\n\
         - requester: {}\n- commercial owner: {}\n- infra owner group: {}\n- needed by: {}\n- estimated monthly cost (USD): {}",
        markdown_literal(request["requester_user_id"].as_str().unwrap_or("?")),
        markdown_literal(request["commercial_owner_user_id"].as_str().unwrap_or("?")),
        markdown_literal(request["infra_owner_group"].as_str().unwrap_or("?")),
        markdown_literal(request["needed_by_date"].as_str().unwrap_or("-")),
        request["estimated_monthly_cost_usd"],
    );
    json!({"query": ISSUE_CREATE, "variables": {"input": {"teamId": team_id, "title": title, "description": description}}})
}

/// A comment; `issue_id` is filled in once the issue exists.
pub fn comment_create(issue_id: Option<&str>, body: &str) -> Value {
    json!({"query": COMMENT_CREATE, "variables": {"input": {"issueId": issue_id, "body": body}}})
}

/// The issue id from an issueCreate response, or why there is none.
pub fn created_issue_id(response: &Value) -> Result<String, String> {
    if let Some(errors) = response.get("errors") {
        return Err(format!("Linear returned errors: {errors}"));
    }
    let created = &response["data"]["issueCreate"];
    match (
        created["success"].as_bool(),
        created["issue"]["id"].as_str(),
    ) {
        (Some(true), Some(id)) => Ok(id.to_string()),
        _ => Err(format!("unexpected issueCreate response: {response}")),
    }
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn user_text_is_literal_markdown() {
        assert_eq!(
            markdown_literal("![](https://evil.example/p)"),
            "\\!\\[\\]\\(https://evil\\.example/p\\)"
        );
        assert_eq!(markdown_literal("ae-1"), "ae\\-1");
        let p = issue_create(
            "team-1",
            "CR-2026-000001",
            &json!({"requester_user_id": "[x](https://evil.example)"}),
        );
        let d = p["variables"]["input"]["description"].as_str().unwrap();
        assert!(!d.contains("[x](https"), "{d}");
    }

    #[test]
    fn payloads_follow_linears_graphql_shapes() {
        let p = issue_create(
            "team-1",
            "CR-2026-000001",
            &json!({"quantity": 2, "requested_size": "24XL", "region": "us-east-1"}),
        );
        assert_eq!(
            p["variables"]["input"]["title"],
            "CR-2026-000001: 2 x 24XL in us-east-1"
        );
        assert!(p["query"]
            .as_str()
            .unwrap()
            .starts_with("mutation IssueCreate"));
        assert_eq!(
            comment_create(None, "x")["variables"]["input"]["issueId"],
            Value::Null
        );
        let ok = json!({"data": {"issueCreate": {"success": true, "issue": {"id": "9cfb482a", "identifier": "INF-1"}}}});
        assert_eq!(created_issue_id(&ok).unwrap(), "9cfb482a");
        assert!(created_issue_id(&json!({"errors": [{"message": "auth"}]})).is_err());
    }
}
