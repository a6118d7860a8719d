//! `flowgate-testd serve PORT` runs flowgate's test HTTP server (the same code the Rust tests
//! start in-process) on 127.0.0.1:PORT.
//! `flowgate-testd blast URL N CONCURRENCY` sends N JSON POSTs with distinct Idempotency-Keys,
//! CONCURRENCY at a time, with a plain ureq client, and prints `requests seconds per_second`:
//! the baseline the outbox benchmark compares against.
//! `flowgate-testd hold PORT` listens on 127.0.0.1:PORT (0: any free port, printed) and never
//! accepts: a destination whose connections wait in the backlog with no request ever read, for
//! fault tests that need a sender stopped before anything reached the server.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use flowgate_testserver as testserver;

fn usage() -> ! {
    eprintln!("usage: flowgate-testd serve PORT | flowgate-testd blast URL N CONCURRENCY | flowgate-testd hold PORT");
    std::process::exit(2)
}

/// A listener on 127.0.0.1 at the port argument (0: any free port); exits when it cannot bind.
fn listen(port: Option<&String>) -> std::net::TcpListener {
    let port: u16 = port.and_then(|p| p.parse().ok()).unwrap_or_else(|| usage());
    std::net::TcpListener::bind(("127.0.0.1", port)).unwrap_or_else(|e| {
        eprintln!("cannot listen on 127.0.0.1:{port}: {e}");
        std::process::exit(1)
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("serve") => testserver::serve(listen(args.get(2))),
        Some("hold") => {
            let listener = listen(args.get(2));
            let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
            println!("{port}");
            use std::io::Write;
            let _ = std::io::stdout().flush();
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        Some("blast") => {
            let url = args.get(2).cloned().unwrap_or_else(|| usage());
            let n: usize = args
                .get(3)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| usage());
            let concurrency: usize = args
                .get(4)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| usage());
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .max_idle_connections(concurrency * 2)
                .max_idle_connections_per_host(concurrency)
                .timeout_global(Some(Duration::from_secs(10)))
                .build()
                .into();
            let next = AtomicUsize::new(0);
            let failures = AtomicUsize::new(0);
            let started = Instant::now();
            std::thread::scope(|s| {
                for _ in 0..concurrency {
                    s.spawn(|| loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            break;
                        }
                        let ok = agent
                            .post(&url)
                            .header("Content-Type", "application/json")
                            .header("Idempotency-Key", &format!("blast-{i}"))
                            .send(format!("{{\"i\": {i}}}"))
                            .map(|r| r.status().is_success())
                            .unwrap_or(false);
                        if !ok {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    });
                }
            });
            let secs = started.elapsed().as_secs_f64();
            let failed = failures.load(Ordering::Relaxed);
            println!("{n} {secs:.3} {:.0}", n as f64 / secs);
            if failed > 0 {
                eprintln!("{failed} requests failed");
                std::process::exit(1);
            }
        }
        _ => usage(),
    }
}
