//! The native transport: sends a batch of HTTP requests concurrently with per-request
//! timeouts, using the `ureq` client on plain worker threads.
//!
//! Pure Rust: requests go in as owned data and results come out as owned data, so nothing
//! here touches a Postgres API (which must only ever run on the backend's main thread).

use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use super::policy::Attempt;

/// Bodies longer than this are truncated before they are stored; no more of a response is read
/// (256 requests in flight hold at most 16 MiB of answers).
pub const MAX_STORED_BODY: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub struct Request {
    pub id: i64,
    pub method: String,
    pub url: String,
    /// Header name/value pairs, secrets already resolved. Never logged.
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    pub timeout: Duration,
    /// True when the request holds a resolved secret (a header, a body field) or the delivery
    /// is sensitive (its answer holds secrets): such requests never go through pg_net.
    pub carries_secret: bool,
    /// The secret values the request carries (resolved from the secret store, never logged):
    /// an answer that repeats one has it replaced before the answer is stored.
    pub secret_values: Vec<String>,
    /// The latest moment the request may start and still be answered (or time out) before its
    /// claim's lease runs out; `None`: no limit. A request still waiting for a free sender then
    /// is not sent (its delivery goes back to pending, the attempt not counted), so it never
    /// goes out while a runner that took it over after the lease sends it too.
    pub start_by: Option<Instant>,
}

#[derive(Debug, Clone)]
pub struct Response {
    pub id: i64,
    pub attempt: Attempt,
    /// Response body (possibly truncated); empty when there was no response.
    pub body: String,
    pub content_type: Option<String>,
    pub elapsed: Duration,
    /// False when the request never left: a stop came first, or its lease would have run out.
    /// Its delivery goes back to pending without the attempt counting (`engine::record`).
    pub started: bool,
}

impl Response {
    pub fn status(&self) -> Option<u16> {
        match &self.attempt {
            Attempt::Response { status, .. } => Some(*status),
            _ => None,
        }
    }
}

fn agent(concurrency: usize) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .max_idle_connections(concurrency.max(1) * 2)
        .max_idle_connections_per_host(concurrency.max(1))
        .user_agent(concat!("flowgate/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

fn classify(err: &ureq::Error) -> Attempt {
    match err {
        ureq::Error::Timeout(_) => Attempt::Timeout,
        ureq::Error::Io(e) if e.kind() == std::io::ErrorKind::TimedOut => Attempt::Timeout,
        ureq::Error::HostNotFound | ureq::Error::ConnectionFailed => {
            Attempt::Connect(err.to_string())
        }
        ureq::Error::Io(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::NotConnected
            ) =>
        {
            Attempt::Connect(e.to_string())
        }
        other => Attempt::Transport(other.to_string()),
    }
}

/// A response's text as it can be stored in a `text` column: at most `MAX_STORED_BODY` bytes
/// cut on a character boundary, bytes that are not UTF-8 replaced (a character the cut split is
/// dropped), and NUL, which `text` cannot hold (it would end the value early in every reader
/// and in a dump), replaced too.
pub fn stored_text(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(MAX_STORED_BODY)];
    let text = match std::str::from_utf8(cut) {
        Ok(s) => s.to_owned(),
        // Only the end is incomplete: the character the cut (or the sender) split.
        Err(e) if e.error_len().is_none() => {
            String::from_utf8_lossy(&cut[..e.valid_up_to()]).into_owned()
        }
        Err(_) => String::from_utf8_lossy(cut).into_owned(),
    };
    truncate(without_nul(text))
}

/// What a destination's answer is stored as when it repeats a secret the request carried (a
/// gateway echoing the Authorization header in its 401, say): `[secret]` in its place.
const SECRET_MARK: &str = "[secret]";

/// `body` with each of `secrets` (as sent, and as written inside a JSON string) replaced by
/// [`SECRET_MARK`]. Values shorter than 4 bytes are left alone: they would match ordinary text.
pub fn without_secrets(mut body: String, secrets: &[String]) -> String {
    for secret in secrets.iter().filter(|s| s.len() >= 4) {
        let escaped = serde_json::to_string(secret)
            .map(|q| q[1..q.len() - 1].to_owned())
            .unwrap_or_default();
        for form in [secret.as_str(), escaped.as_str()] {
            if form.len() >= 4 && body.contains(form) {
                body = body.replace(form, SECRET_MARK);
            }
        }
    }
    body
}

/// `s` with NUL replaced by U+FFFD.
fn without_nul(s: String) -> String {
    if s.contains('\0') {
        s.replace('\0', "\u{FFFD}")
    } else {
        s
    }
}

fn truncate(mut s: String) -> String {
    if s.len() > MAX_STORED_BODY {
        let mut cut = MAX_STORED_BODY;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

fn send_one(agent: &ureq::Agent, req: &Request) -> Response {
    let started = Instant::now();
    let failed = |attempt: Attempt| Response {
        id: req.id,
        attempt,
        body: String::new(),
        content_type: None,
        elapsed: started.elapsed(),
        started: true,
    };
    let mut builder = ureq::http::Request::builder()
        .method(req.method.as_str())
        .uri(req.url.as_str());
    for (name, value) in &req.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    let request = match builder.body(req.body.clone().unwrap_or_default()) {
        Ok(r) => r,
        Err(e) => return failed(Attempt::Invalid(format!("invalid request: {e}"))),
    };
    let request = agent
        .configure_request(request)
        .timeout_global(Some(req.timeout))
        .build();
    match agent.run(request) {
        Ok(mut resp) => {
            let status = resp.status().as_u16();
            let header = |name: &str| {
                resp.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let retry_after = header("retry-after");
            let content_type = header("content-type");
            // The part of the body that is stored, read as bytes: a longer answer, or one that
            // is not UTF-8, keeps its beginning as text (see stored_text).
            let mut bytes = Vec::new();
            let body = match resp
                .body_mut()
                .as_reader()
                .take(MAX_STORED_BODY as u64)
                .read_to_end(&mut bytes)
            {
                Ok(_) => without_secrets(stored_text(&bytes), &req.secret_values),
                // The status arrived; an unreadable body does not change the outcome.
                Err(e) => format!("(body unreadable: {e})"),
            };
            Response {
                id: req.id,
                attempt: Attempt::Response {
                    status,
                    retry_after,
                },
                body,
                content_type,
                elapsed: started.elapsed(),
                started: true,
            }
        }
        Err(e) => failed(classify(&e)),
    }
}

/// Send every request, at most `concurrency` at a time; results come back in input order.
///
/// The calling thread only waits: it wakes when the last request finishes, and asks `stop()`
/// every 20 ms meanwhile; once that returns true no new
/// request is started (those in flight finish within their timeouts) and the ones never started
/// come back as transport errors that were not `started`. The backend passes "is a cancel or
/// shutdown pending?".
pub fn send_batch(
    requests: &[Request],
    concurrency: usize,
    stop: &dyn Fn() -> bool,
) -> Vec<Response> {
    if requests.is_empty() {
        return Vec::new();
    }
    let workers = concurrency.clamp(1, requests.len());
    let agent = agent(workers);
    let next = AtomicUsize::new(0);
    // How many requests have finished, and a signal for each one.
    let finished = (Mutex::new(0usize), Condvar::new());
    let stopping = std::sync::atomic::AtomicBool::new(false);
    let results: Mutex<Vec<Option<Response>>> = Mutex::new(vec![None; requests.len()]);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                if stopping.load(Ordering::Relaxed) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(req) = requests.get(i) else { break };
                let started = Instant::now();
                if req.start_by.is_some_and(|by| started > by) {
                    // Sending now could overlap the send of the runner that takes the delivery
                    // over once this lease has run out.
                    if let Ok(mut slots) = results.lock() {
                        slots[i] = Some(Response {
                            id: req.id,
                            attempt: Attempt::Transport(
                                "not sent: its lease would have run out before an answer".into(),
                            ),
                            body: String::new(),
                            content_type: None,
                            elapsed: Duration::ZERO,
                            started: false,
                        });
                    }
                    let (count, signal) = &finished;
                    *count.lock().unwrap_or_else(|p| p.into_inner()) += 1;
                    signal.notify_one();
                    continue;
                }
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    send_one(&agent, req)
                }))
                .unwrap_or_else(|_| Response {
                    id: req.id,
                    attempt: Attempt::Transport("the HTTP client panicked".into()),
                    body: String::new(),
                    content_type: None,
                    elapsed: started.elapsed(),
                    started: true,
                });
                if let Ok(mut slots) = results.lock() {
                    slots[i] = Some(outcome);
                }
                let (count, signal) = &finished;
                *count.lock().unwrap_or_else(|p| p.into_inner()) += 1;
                signal.notify_one();
            });
        }
        let (count, signal) = &finished;
        let mut done = count.lock().unwrap_or_else(|p| p.into_inner());
        while *done < requests.len() && !stopping.load(Ordering::Relaxed) {
            done = signal
                .wait_timeout(done, Duration::from_millis(20))
                .unwrap_or_else(|p| p.into_inner())
                .0;
            if stop() {
                stopping.store(true, Ordering::Relaxed);
            }
        }
    });
    let slots = results
        .into_inner()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    slots
        .into_iter()
        .zip(requests)
        .map(|(slot, req)| {
            slot.unwrap_or_else(|| Response {
                id: req.id,
                attempt: Attempt::Transport("not sent: the dispatch was interrupted".into()),
                body: String::new(),
                content_type: None,
                elapsed: Duration::ZERO,
                started: false,
            })
        })
        .collect()
}

#[cfg(test)]
mod unit_tests {
    use super::*;
    use flowgate_testserver::{base_url, closed_url};

    fn req(id: i64, url: String) -> Request {
        Request {
            id,
            method: "POST".into(),
            url,
            headers: vec![
                ("Idempotency-Key".into(), format!("k-{id}")),
                ("Content-Type".into(), "application/json".into()),
            ],
            body: Some(b"{\"a\":1}".to_vec()),
            timeout: Duration::from_millis(500),
            carries_secret: false,
            secret_values: Vec::new(),
            start_by: None,
        }
    }

    #[test]
    fn an_answer_repeating_a_secret_is_stored_without_it() {
        let secrets = vec!["sk-live-\"abc\"".to_owned(), "abc".to_owned()];
        assert_eq!(
            without_secrets(
                r#"{"got": "Bearer sk-live-\"abc\""} raw: sk-live-"abc" abc"#.to_owned(),
                &secrets
            ),
            r#"{"got": "Bearer [secret]"} raw: [secret] abc"#
        );
        assert_eq!(
            without_secrets("nothing here".into(), &secrets),
            "nothing here"
        );
    }

    #[test]
    fn a_request_past_its_start_by_is_not_sent() {
        let base = base_url();
        let mut late = req(901, format!("{base}/ok"));
        late.start_by = Some(Instant::now() - Duration::from_secs(1));
        let out = send_batch(&[late], 1, &|| false);
        assert_eq!(out[0].status(), None);
        assert!(
            matches!(&out[0].attempt, Attempt::Transport(m) if m.contains("lease")),
            "{:?}",
            out[0].attempt
        );
        assert!(!out[0].started);
        // The server never saw the key: the next send of it is its first.
        let mut on_time = req(901, format!("{base}/ok"));
        on_time.start_by = Some(Instant::now() + Duration::from_secs(60));
        let out = send_batch(&[on_time], 1, &|| false);
        assert!(out[0].body.contains("\"seen\":1"), "{}", out[0].body);
    }

    #[test]
    fn a_secret_the_destination_repeats_is_not_kept() {
        let base = base_url();
        let mut r = req(902, format!("{base}/echo-auth"));
        r.headers
            .push(("Authorization".into(), "Bearer sk-echo-\"7Qx\"".into()));
        r.secret_values = vec!["sk-echo-\"7Qx\"".into()];
        let out = send_batch(&[r], 1, &|| false);
        assert_eq!(out[0].status(), Some(401));
        assert_eq!(
            out[0].body,
            r#"{"error":"invalid_auth","received":"Bearer [secret]"}"#
        );
    }

    #[test]
    fn a_batch_against_a_real_local_server_covers_every_outcome() {
        let base = base_url();
        let closed = closed_url();
        let batch = vec![
            req(1, format!("{base}/ok")),
            req(2, format!("{base}/status/400")),
            req(3, format!("{base}/ratelimit/7")),
            req(4, format!("{base}/status/503")),
            req(5, format!("{base}/slow/1500")),
            req(6, format!("{closed}/ok")),
        ];
        let out = send_batch(&batch, 4, &|| false);
        assert_eq!(
            out.iter().map(|r| r.id).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5, 6]
        );
        assert_eq!(out[0].status(), Some(200));
        assert_eq!(
            out[0].body, "{\"ok\":true,\"key\":\"k-1\",\"len\":7,\"seen\":1}",
            "key and body reached the server"
        );
        assert_eq!(out[0].content_type.as_deref(), Some("application/json"));
        assert_eq!(out[1].status(), Some(400));
        assert_eq!(
            out[2].attempt,
            Attempt::Response {
                status: 429,
                retry_after: Some("7".into())
            }
        );
        assert_eq!(out[3].status(), Some(503));
        assert_eq!(
            out[4].attempt,
            Attempt::Timeout,
            "the 1.5 s response exceeds the 500 ms timeout"
        );
        assert!(out[4].elapsed < Duration::from_millis(1400));
        assert!(
            matches!(out[5].attempt, Attempt::Connect(_)),
            "{:?}",
            out[5].attempt
        );
    }

    #[test]
    fn a_thousand_requests_in_one_batch() {
        let base = base_url();
        let batch: Vec<Request> = (0..1000).map(|i| req(i, format!("{base}/ok"))).collect();
        let out = send_batch(&batch, 32, &|| false);
        assert_eq!(out.len(), 1000);
        assert!(out.iter().all(|r| r.status() == Some(200)));
        assert!(out
            .iter()
            .enumerate()
            .all(|(i, r)| r.body.contains(&format!("\"k-{i}\""))));
    }

    #[test]
    fn a_stop_request_leaves_unstarted_requests_unsent() {
        let base = base_url();
        let batch: Vec<Request> = (0..20)
            .map(|i| req(100 + i, format!("{base}/slow/300")))
            .collect();
        let started = std::time::Instant::now();
        let out = send_batch(&batch, 2, &|| {
            started.elapsed() > Duration::from_millis(100)
        });
        assert_eq!(out.len(), 20);
        let sent = out.iter().filter(|r| r.status() == Some(200)).count();
        assert!(
            (1..=4).contains(&sent),
            "only the requests already in flight finish ({sent})"
        );
        assert!(out
            .iter()
            .filter(|r| r.status().is_none())
            .all(|r| matches!(r.attempt, Attempt::Transport(_)) && !r.started));
        assert!(out
            .iter()
            .filter(|r| r.status().is_some())
            .all(|r| r.started));
        assert!(started.elapsed() < Duration::from_millis(1500));
    }

    #[test]
    fn stored_text_is_valid_text() {
        assert_eq!(stored_text(b"Caf\xe9!"), "Caf\u{FFFD}!");
        assert_eq!(stored_text(b"a\0b"), "a\u{FFFD}b");
        assert_eq!(stored_text("ok é".as_bytes()), "ok é");
        // A character split by the cut is dropped, not replaced.
        let mut long = vec![b'a'; MAX_STORED_BODY - 1];
        long.extend_from_slice("é".as_bytes());
        let t = stored_text(&long);
        assert_eq!(t.len(), MAX_STORED_BODY - 1);
        assert!(t.bytes().all(|b| b == b'a'));
        // NUL replaced near the limit still fits it.
        let t = stored_text(&vec![0u8; MAX_STORED_BODY + 10]);
        assert!(t.len() <= MAX_STORED_BODY && !t.contains('\0'));
    }

    #[test]
    fn bodies_are_truncated_on_a_char_boundary() {
        let s = "é".repeat(MAX_STORED_BODY);
        let t = truncate(s);
        assert!(t.len() <= MAX_STORED_BODY);
        assert!(t.chars().all(|c| c == 'é'));
        assert!(send_batch(&[], 8, &|| false).is_empty());
    }
}
