//! A real HTTP/1.1 server on 127.0.0.1 for flowgate's tests: started in-process by its unit
//! tests and `#[pg_test]`s, and served by the `flowgate-testd` binary (pg_test/testd) for the
//! pgTAP, concurrency and benchmark suites. The request path picks the behaviour. Plain threads and sockets,
//! std only, no Postgres API.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Slack message timestamps handed out by the fake chat.postMessage.
static SLACK_TS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(100);

/// The only Authorization value `/auth` accepts.
pub const TEST_TOKEN: &str = "xoxb-flowgate-test-token-7f3a";

/// Requests seen per (path, idempotency key).
fn hits() -> &'static Mutex<HashMap<(String, String), u32>> {
    static HITS: OnceLock<Mutex<HashMap<(String, String), u32>>> = OnceLock::new();
    HITS.get_or_init(|| Mutex::new(HashMap::new()))
}

/// How many requests reached `path` with `key`.
pub fn hit_count(path: &str, key: &str) -> u32 {
    hits()
        .lock()
        .map(|h| {
            h.get(&(path.to_string(), key.to_string()))
                .copied()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

/// Totals over the requests whose idempotency key starts with `prefix`: (requests, distinct
/// keys, most requests for one key). Served at `/_stats/<prefix>` so scripts can check "each
/// key exactly once".
pub fn stats(prefix: &str) -> (u64, u64, u32) {
    let h = match hits().lock() {
        Ok(h) => h,
        Err(p) => p.into_inner(),
    };
    let mut per_key: HashMap<&str, u32> = HashMap::new();
    for ((_, key), n) in h.iter().filter(|((_, k), _)| k.starts_with(prefix)) {
        *per_key.entry(key.as_str()).or_insert(0) += n;
    }
    let requests = per_key.values().map(|n| u64::from(*n)).sum();
    (
        requests,
        per_key.len() as u64,
        per_key.values().copied().max().unwrap_or(0),
    )
}

/// Serve on `listener` until the process ends, one thread per connection.
pub fn serve(listener: TcpListener) {
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || handle(stream));
    }
}

/// Start the server once per process; returns its base URL (`http://127.0.0.1:PORT`).
pub fn base_url() -> String {
    static BASE: OnceLock<String> = OnceLock::new();
    BASE.get_or_init(|| {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let base = format!("http://{}", listener.local_addr().expect("local addr"));
        std::thread::spawn(move || serve(listener));
        base
    })
    .clone()
}

/// A URL on which nothing listens (connection refused).
pub fn closed_url() -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", l.local_addr().expect("addr"));
    drop(l);
    url
}

fn handle(stream: TcpStream) {
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut stream = stream;
    // Keep-alive: serve requests until the client closes.
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let method = line.split_whitespace().next().unwrap_or("GET").to_string();
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
        let (mut len, mut key, mut auth, mut apikey) =
            (0usize, String::new(), String::new(), String::new());
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                break;
            }
            if let Some((name, value)) = h.split_once(':') {
                let value = value.trim().to_string();
                match name.trim().to_ascii_lowercase().as_str() {
                    "content-length" => len = value.parse().unwrap_or(0),
                    "idempotency-key" => key = value,
                    "authorization" => auth = value,
                    "apikey" => apikey = value,
                    _ => {}
                }
            }
        }
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if let Some(prefix) = path.strip_prefix("/_stats") {
            let (requests, keys, max) = stats(prefix.trim_start_matches('/'));
            let payload = format!(
                "{{\"requests\":{requests},\"distinct_keys\":{keys},\"max_per_key\":{max}}}"
            );
            let reply = format!("HTTP/1.1 200 X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{payload}", payload.len());
            if stream.write_all(reply.as_bytes()).is_err() {
                return;
            }
            continue;
        }
        // Bodies that are not valid text: Latin-1 (not UTF-8), and UTF-8 holding a NUL, as
        // servers do send; and a 2 MiB answer whose 64 KiB-th byte falls inside a character
        // ("é" is two bytes); each with a 500, so the response is kept on the delivery.
        let huge: Vec<u8> = if path == "/huge" {
            let mut b = b"<".to_vec();
            b.extend("é".repeat(1024 * 1024).into_bytes());
            b
        } else {
            Vec::new()
        };
        let raw: Option<&[u8]> = match path.as_str() {
            "/latin1" => Some(b"<p>Caf\xe9</p>"),
            "/nul" => Some(b"<p>a\x00b</p>"),
            "/huge" => Some(&huge),
            _ => None,
        };
        if let Some(payload) = raw {
            let head = format!(
                "HTTP/1.1 500 X\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n",
                payload.len()
            );
            if stream.write_all(head.as_bytes()).is_err() || stream.write_all(payload).is_err() {
                return;
            }
            continue;
        }
        let seen = {
            let mut h = match hits().lock() {
                Ok(h) => h,
                Err(p) => p.into_inner(),
            };
            let n = h.entry((path.clone(), key.clone())).or_insert(0);
            *n += 1;
            *n
        };
        let body = String::from_utf8_lossy(&body);
        let (status, extra, payload) = match path.strip_prefix("/mgmt/") {
            Some(rest) => management_api(&method, rest, &auth, &body),
            None if path.starts_with("/rest/v1/") && !supabase_gateway_admits(&apikey, &auth) => (
                401,
                String::new(),
                "{\"message\":\"No API key found in request\",\"hint\":\"No `apikey` request header or url param was found.\"}".into(),
            ),
            None => respond(&path, &key, &auth, &body, seen),
        };
        let reply = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n{payload}",
            payload.len()
        );
        if stream.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

/// Supabase's API gateway in front of PostgREST (`/rest/v1/...`): the project's key in the
/// `apikey` header; a legacy JWT key also as `Authorization: Bearer`, and a new `sb_` secret
/// key never there.
/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn supabase_gateway_admits(apikey: &str, auth: &str) -> bool {
    let key_ok = apikey == TEST_TOKEN || apikey == format!("sb_secret_{TEST_TOKEN}");
    let bearer_ok = if apikey.starts_with("sb_") {
        auth.is_empty()
    } else {
        auth == format!("Bearer {apikey}")
    };
    key_ok && bearer_ok
}

fn respond(path: &str, key: &str, auth: &str, body: &str, seen: u32) -> (u16, String, String) {
    let len = body.len();
    let ok = || {
        (
            200,
            String::new(),
            format!("{{\"ok\":true,\"key\":\"{key}\",\"len\":{len},\"seen\":{seen}}}"),
        )
    };
    let mut parts = path.trim_start_matches('/').split('/');
    match (parts.next().unwrap_or(""), parts.next()) {
        ("ok", _) => ok(),
        // A 2xx whose JSON holds a NUL escape, which no text or jsonb value can store.
        ("nuljson", _) => (200, String::new(), r#"{"ok":true,"ts":"1\u00002"}"#.into()),
        ("auth", _) if auth == format!("Bearer {TEST_TOKEN}") => ok(),
        ("auth", _) => (401, String::new(), "{\"error\":\"invalid_auth\"}".into()),
        // A gateway that repeats the credential it refused in its answer.
        ("echo-auth", _) => (
            401,
            String::new(),
            format!("{{\"error\":\"invalid_auth\",\"received\":{}}}", json_string(auth)),
        ),
        ("status", Some(code)) => (
            code.parse().unwrap_or(500),
            String::new(),
            "{\"error\":\"as requested\"}".into(),
        ),
        // Fails `n` times per idempotency key with 500, then succeeds.
        ("flaky", Some(n)) if seen <= n.parse().unwrap_or(0) => {
            (500, String::new(), "{\"error\":\"flaky\"}".into())
        }
        ("flaky", _) => ok(),
        // 429 with Retry-After: `secs` on the first request per key, then success.
        ("ratelimit", Some(secs)) if seen == 1 => {
            (429, format!("Retry-After: {secs}\r\n"), String::new())
        }
        ("ratelimit", _) => ok(),
        // Answers after `ms` milliseconds.
        ("slow", Some(ms)) => {
            std::thread::sleep(Duration::from_millis(ms.parse().unwrap_or(1000)));
            ok()
        }
        // Slack Web API: errors are HTTP 200 with ok=false, as Slack does.
        ("slack", Some("chat.postMessage")) if auth == format!("Bearer {TEST_TOKEN}") => {
            let ts = format!("1700000000.{:06}", SLACK_TS.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
            (200, String::new(), format!("{{\"ok\":true,\"channel\":\"C0TEST\",\"ts\":\"{ts}\"}}"))
        }
        ("slack", Some(_)) => (200, String::new(), "{\"ok\":false,\"error\":\"invalid_auth\"}".into()),
        // Linear GraphQL: issueCreate and commentCreate (a comment needs an issue id).
        ("linear", Some("graphql")) if body.contains("IssueCreate") => (
            200,
            String::new(),
            format!(
                "{{\"data\":{{\"issueCreate\":{{\"success\":true,\"issue\":{{\"id\":\"lin-{key}\",\"identifier\":\"INF-1\"}}}}}}}}"
            ),
        ),
        ("linear", Some("graphql")) if body.contains("CommentCreate") && !body.contains("\"issueId\": null") => (
            200,
            String::new(),
            "{\"data\":{\"commentCreate\":{\"success\":true,\"comment\":{\"id\":\"c1\"}}}}".into(),
        ),
        ("linear", _) => (200, String::new(), "{\"errors\":[{\"message\":\"Argument Validation Error\"}]}".into()),
        // PostgREST's RPC: the function is picked by the body's keys, so a body for
        // finalize_transaction(payload jsonb) is an object whose only key is "payload".
        ("rest", Some("v1")) if path.ends_with("/rpc/finalize_transaction") => {
            if top_level_keys(body) == ["payload"] {
                (200, String::new(), "{\"status\":\"finalized\"}".into())
            } else {
                (
                    404,
                    String::new(),
                    "{\"code\":\"PGRST202\",\"message\":\"Could not find the function public.finalize_transaction with the given arguments\"}".into(),
                )
            }
        }
        // A server that keeps Idempotency-Keys (the IETF draft, Stripe): a key sent again to
        // the same path with another body is refused with 422.
        // `/strict/<n>/...` answers 500 to the first `n` requests per key.
        ("strict", n) => {
            let fails: u32 = n.and_then(|n| n.parse().ok()).unwrap_or(0);
            let same = {
                let mut b = match bodies().lock() {
                    Ok(b) => b,
                    Err(p) => p.into_inner(),
                };
                b.entry(format!("{path} {key}"))
                    .or_insert_with(|| body.to_string())
                    == body
            };
            if !same {
                (422, String::new(), "{\"error\":\"idempotency_key_reused_with_another_body\"}".into())
            } else if seen <= fails {
                (500, String::new(), "{\"error\":\"flaky\"}".into())
            } else {
                ok()
            }
        }
        _ => (404, String::new(), "{\"error\":\"no such test path\"}".into()),
    }
}

/// The first body sent with each Idempotency-Key to each `/strict/...` path.
fn bodies() -> &'static Mutex<HashMap<String, String>> {
    static B: OnceLock<Mutex<HashMap<String, String>>> = OnceLock::new();
    B.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The keys of a JSON object's top level, in order (empty for anything else). A scanner, not a
/// parser: strings and nesting are tracked, nothing is validated.
fn top_level_keys(body: &str) -> Vec<String> {
    let text = body.trim();
    if !text.starts_with('{') {
        return Vec::new();
    }
    let (mut keys, mut depth, mut in_string, mut escaped) = (Vec::new(), 0usize, false, false);
    let mut current = String::new();
    let mut expect_key = true;
    for c in text.chars() {
        if in_string {
            if escaped {
                escaped = false;
                current.push(c);
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
                if depth == 1 && expect_key {
                    keys.push(std::mem::take(&mut current));
                    expect_key = false;
                }
            } else {
                current.push(c);
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                current.clear();
            }
            '{' | '[' => depth += 1,
            '}' | ']' => depth = depth.saturating_sub(1),
            ',' if depth == 1 => expect_key = true,
            _ => {}
        }
    }
    keys
}

/// Projects the fake Management API has created: name → (ref, number of POSTs that created or
/// re-created it).
/// Projects by name: ref, creates, organization, region.
type Projects = HashMap<String, (String, u32, String, String)>;

fn projects() -> &'static Mutex<Projects> {
    static P: OnceLock<Mutex<Projects>> = OnceLock::new();
    P.get_or_init(|| Mutex::new(HashMap::new()))
}

/// A 20-letter project ref derived from the name (FNV-1a, base 36).
fn project_ref(name: &str) -> String {
    let mut h: u128 = 0x6c62272e07bb014262b821756295c58d;
    for b in name.bytes() {
        h ^= u128::from(b);
        h = h.wrapping_mul(0x0000000001000000000000000000013B);
    }
    let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..20)
        .map(|i| alphabet[((h >> (i * 6)) % 36) as usize] as char)
        .collect()
}

/// The fake tenant keys of a project: what tests look for everywhere to prove they are
/// never stored in plain text.
pub fn tenant_keys_of(project_ref: &str) -> (String, String) {
    (
        format!("eyJhbGciOiJIUzI1NiJ9.anon-{project_ref}.fgtestsig"),
        format!("eyJhbGciOiJIUzI1NiJ9.service-role-{project_ref}.fgtestsig"),
    )
}

fn json_field<'a>(body: &'a str, key: &str) -> Option<&'a str> {
    let start = body.find(&format!("\"{key}\""))? + key.len() + 2;
    let rest = body[start..]
        .trim_start()
        .strip_prefix(':')?
        .trim_start()
        .strip_prefix('"')?;
    rest.split('"').next()
}

/// The Supabase Management API, as far as provisioning uses it, at `/mgmt/<mode>/v1/...`.
/// Modes: `ok`; `flaky` (the first create of a name answers 500); `ratelimit` (the first
/// create of a name answers 429 with Retry-After: 1); `auth` (401 unless the bearer is
/// TEST_TOKEN); `slow` (creates the project, then answers after 3 s, past a short timeout).
/// A migration whose SQL contains `flowgate_test_fail` answers 400 like a syntax error.
/// `GET /mgmt/_projects/<name>` tells how many times a project was created.
fn management_api(method: &str, rest: &str, auth: &str, body: &str) -> (u16, String, String) {
    let mut parts = rest.splitn(2, '/');
    let mode = parts.next().unwrap_or("ok");
    let path = format!("/{}", parts.next().unwrap_or(""));
    let json = |status: u16, payload: String| (status, String::new(), payload);
    if mode == "_projects" {
        let name = path.trim_start_matches('/');
        let creates = projects()
            .lock()
            .map(|p| p.get(name).map_or(0, |e| e.1))
            .unwrap_or(0);
        return json(200, format!("{{\"creates\":{creates}}}"));
    }
    let authorized = !auth.is_empty() && (mode != "auth" || auth == format!("Bearer {TEST_TOKEN}"));
    if !authorized {
        return json(401, "{\"message\":\"Unauthorized\"}".into());
    }
    if mode == "ratelimit" && method == "POST" && path == "/v1/projects" {
        // The first create of each project name is turned away.
        static SEEN: OnceLock<Mutex<std::collections::HashSet<String>>> = OnceLock::new();
        let first = SEEN
            .get_or_init(|| Mutex::new(std::collections::HashSet::new()))
            .lock()
            .map(|mut s| {
                s.insert(format!(
                    "{method} {path} {}",
                    json_field(body, "name").unwrap_or("")
                ))
            })
            .unwrap_or(false);
        if first {
            return (
                429,
                "Retry-After: 1\r\n".into(),
                "{\"message\":\"Too many requests\"}".into(),
            );
        }
    }
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        ("GET", ["v1", "projects"]) => {
            let list: Vec<String> = projects()
                .lock()
                .map(|p| {
                    p.iter()
                        .map(|(name, (r, _, org, region))| format!("{{\"id\":\"{r}\",\"name\":\"{name}\",\"region\":\"{region}\",\"organization_id\":\"{org}\",\"status\":\"ACTIVE_HEALTHY\"}}"))
                        .collect()
                })
                .unwrap_or_default();
            json(200, format!("[{}]", list.join(",")))
        }
        ("POST", ["v1", "projects"]) => {
            let Some(name) = json_field(body, "name") else {
                return json(400, "{\"message\":\"name is required\"}".into());
            };
            // As the Management API: a project needs its database password.
            if json_field(body, "db_pass").is_none_or(str::is_empty) {
                return json(400, "{\"message\":\"db_pass is required\"}".into());
            }
            let region = json_field(body, "region").unwrap_or("us-east-1").to_string();
            let org = json_field(body, "organization_id").unwrap_or("").to_string();
            if mode == "flaky" {
                // The first create of each name fails with 500 and creates nothing.
                static FAILED: OnceLock<Mutex<std::collections::HashSet<String>>> = OnceLock::new();
                let first = FAILED
                    .get_or_init(|| Mutex::new(std::collections::HashSet::new()))
                    .lock()
                    .map(|mut s| s.insert(name.to_string()))
                    .unwrap_or(false);
                if first {
                    return json(500, "{\"message\":\"Internal server error\"}".into());
                }
            }
            let r = project_ref(name);
            if let Ok(mut p) = projects().lock() {
                p.entry(name.to_string())
                    .or_insert((r.clone(), 0, org.clone(), region.clone()))
                    .1 += 1;
            }
            if mode == "slow" {
                std::thread::sleep(Duration::from_secs(3));
            }
            json(
                201,
                format!("{{\"id\":\"{r}\",\"ref\":\"{r}\",\"organization_id\":\"{org}\",\"name\":\"{name}\",\"region\":\"{region}\",\"created_at\":\"2026-11-23T12:00:00Z\",\"status\":\"COMING_UP\"}}"),
            )
        }
        ("GET", ["v1", "projects", r, "api-keys"]) => {
            let (anon, service) = tenant_keys_of(r);
            json(200, format!("[{{\"name\":\"anon\",\"api_key\":\"{anon}\"}},{{\"name\":\"service_role\",\"api_key\":\"{service}\"}}]"))
        }
        ("GET", ["v1", "projects", r]) => json(200, format!("{{\"id\":\"{r}\",\"status\":\"ACTIVE_HEALTHY\"}}")),
        ("POST", ["v1", "projects", _r, "database", "query"]) if body.contains("flowgate_test_fail") => {
            json(400, "{\"message\":\"Failed to run sql query: ERROR:  42601: syntax error at or near \\\"flowgate_test_fail\\\"\"}".into())
        }
        ("POST", ["v1", "projects", _r, "database", "query"]) => json(201, "[]".into()),
        _ => json(404, "{\"message\":\"Not found\"}".into()),
    }
}
