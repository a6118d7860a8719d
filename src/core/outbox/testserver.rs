//! A real HTTP/1.1 server on 127.0.0.1 for tests: started in-process by unit tests and
//! `#[pg_test]`s, and as the `flowgate-testd` binary (pg_test/testd) for pgTAP, concurrency
//! suites and benchmarks. The request path picks the behaviour. Plain threads and sockets,
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
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
        let (mut len, mut key, mut auth) = (0usize, String::new(), String::new());
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
        let seen = {
            let mut h = match hits().lock() {
                Ok(h) => h,
                Err(p) => p.into_inner(),
            };
            let n = h.entry((path.clone(), key.clone())).or_insert(0);
            *n += 1;
            *n
        };
        let (status, extra, payload) =
            respond(&path, &key, &auth, &String::from_utf8_lossy(&body), seen);
        let reply = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n{payload}",
            payload.len()
        );
        if stream.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
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
        ("auth", _) if auth == format!("Bearer {TEST_TOKEN}") => ok(),
        ("auth", _) => (401, String::new(), "{\"error\":\"invalid_auth\"}".into()),
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
        _ => (404, String::new(), "{\"error\":\"no such test path\"}".into()),
    }
}
