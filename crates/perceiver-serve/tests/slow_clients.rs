//! Clients that are slow, silent or gone: every connection they hold is closed or answered
//! within the service's timeouts, a body being read holds a request slot, and a shutdown ends
//! whatever they do.

mod common;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{post_json, Connection, TestServer};
use perceiver::Loader;
use serde_json::json;

async fn start(configure: impl FnOnce(&mut perceiver_serve::ServeConfig)) -> TestServer {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/parity/tiny_qk_v_explicit");
    let model = Loader::new(dir.to_string_lossy()).load().unwrap();
    TestServer::start("tiny", model, configure).await
}

/// A valid fill-mask request padded with spaces to `len` bytes.
fn padded_request(len: usize) -> Vec<u8> {
    let mut body = br#"{"inputs": "a[MASK]c"}"#.to_vec();
    body.resize(len, b' ');
    body
}

/// The first bytes sent by this many, the rest of a body held back.
const SENT_FIRST: usize = 10;

/// A fill-mask request whose `body` is on its way: its headers and first bytes sent.
fn request_under_way(addr: SocketAddr, body: &[u8]) -> Connection {
    let mut connection = Connection::open(addr).unwrap();
    let head = format!(
        "POST /fill-mask HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}",
        body.len()
    );
    connection.send(&head, &body[..SENT_FIRST]).unwrap();
    connection
}

/// The value of one `perceiver_requests_total` outcome.
async fn outcome(server: &TestServer, outcome: &str) -> u64 {
    let addr = server.addr;
    let metrics = tokio::task::spawn_blocking(move || common::request(addr, "GET", "/metrics", &[], b""))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(metrics.body).unwrap();
    let needle = format!("perceiver_requests_total{{outcome=\"{outcome}\",task=\"fill-mask\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&needle))
        .unwrap_or_else(|| panic!("no {needle} in {text}"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_silent_connections_are_closed_in_time() {
    let server = start(|c| {
        c.header_timeout = Duration::from_secs(1);
        c.body_timeout = Duration::from_secs(1);
    })
    .await;
    let addr = server.addr;
    tokio::task::spawn_blocking(move || {
        let limit = Duration::from_secs(10);
        // Nothing at all.
        let started = Instant::now();
        let mut silent = Connection::open(addr).unwrap();
        assert!(silent.closed_within(limit), "a silent connection stays open");
        assert!(
            started.elapsed() >= Duration::from_millis(900),
            "{:?}",
            started.elapsed()
        );
        // Part of the headers.
        let mut partial = Connection::open(addr).unwrap();
        partial
            .stream()
            .write_all(format!("POST /fill-mask HTTP/1.1\r\nHost: {addr}\r\n").as_bytes())
            .unwrap();
        assert!(
            partial.closed_within(limit),
            "a connection with half its headers stays open"
        );
        // Idle after an answer (keep-alive).
        let mut idle = Connection::open(addr).unwrap();
        idle.send(&format!("GET /health HTTP/1.1\r\nHost: {addr}"), b"")
            .unwrap();
        assert_eq!(idle.read_answer().unwrap().status, 200);
        assert!(
            idle.closed_within(limit),
            "an idle keep-alive connection stays open"
        );
        // Headers that promise 100 bytes, and 5 of them: 408 once the body timeout is past.
        let started = Instant::now();
        let mut short = Connection::open(addr).unwrap();
        short
            .send(
                &format!("POST /fill-mask HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 100"),
                b"{\"inp",
            )
            .unwrap();
        short.stream().set_read_timeout(Some(limit)).unwrap();
        let answer = short.read_answer().unwrap();
        assert_eq!(answer.status, 408, "{:?}", String::from_utf8_lossy(&answer.body));
        let took = started.elapsed();
        assert!(took < Duration::from_secs(3), "the 408 took {took:?}");
        assert_eq!(answer.json()["error_type"], "request_timeout");
        // Some of the body came, so the message must not say that none did.
        assert_eq!(
            answer.json()["error"],
            "the request body stalled: no byte arrived for 1 s"
        );
        assert!(
            short.closed_within(limit),
            "a timed-out body's connection stays open"
        );
    })
    .await
    .unwrap();
    assert_eq!(outcome(&server, "request_timeout").await, 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_being_read_holds_a_request_slot() {
    let server = start(|c| c.max_concurrent_requests = 1).await;
    let addr = server.addr;
    let body = padded_request(1000);
    // A request whose body is on its way: it holds the one slot.
    let mut slow = request_under_way(addr, &body);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = post_json(addr, "/fill-mask", &json!({"inputs": "a[MASK]c"})).await;
    assert_eq!(
        refused.status,
        429,
        "{:?}",
        String::from_utf8_lossy(&refused.body)
    );
    assert_eq!(refused.json()["error_type"], "overloaded");
    // The rest of the body: the slow request is answered, and the slot is free again.
    let answer = tokio::task::spawn_blocking(move || {
        slow.stream().write_all(&body[SENT_FIRST..]).unwrap();
        slow.read_answer().unwrap()
    })
    .await
    .unwrap();
    assert_eq!(answer.status, 200, "{:?}", String::from_utf8_lossy(&answer.body));
    let again = post_json(addr, "/fill-mask", &json!({"inputs": "a[MASK]c"})).await;
    assert_eq!(again.status, 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_mid_body_is_cancelled_not_invalid() {
    let server = start(|_| {}).await;
    let addr = server.addr;
    let mut leaving = Connection::open(addr).unwrap();
    leaving
        .send(
            &format!("POST /fill-mask HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 100"),
            b"{\"inp",
        )
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(leaving);
    let started = Instant::now();
    while outcome(&server, "cancelled").await == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never counted as cancelled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(outcome(&server, "cancelled").await, 1);
    assert_eq!(outcome(&server, "invalid_json").await, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_requests_in_flight_and_drops_silent_clients_at_its_deadline() {
    let mut server = start(|c| {
        c.shutdown_timeout = Duration::from_secs(1);
        // Longer than the test: only the shutdown's deadline can end these connections.
        c.header_timeout = Duration::from_secs(600);
        c.body_timeout = Duration::from_secs(600);
    })
    .await;
    let addr = server.addr;
    let mut silent = Connection::open(addr).unwrap();
    let mut partial = Connection::open(addr).unwrap();
    partial
        .stream()
        .write_all(format!("POST /fill-mask HTTP/1.1\r\nHost: {addr}\r\n").as_bytes())
        .unwrap();
    let mut idle = Connection::open(addr).unwrap();
    idle.send(&format!("GET /health HTTP/1.1\r\nHost: {addr}"), b"")
        .unwrap();
    assert_eq!(idle.read_answer().unwrap().status, 200);
    let body = padded_request(1000);
    let mut in_flight = request_under_way(addr, &body);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    server.begin_stop();
    let clients = tokio::task::spawn_blocking(move || {
        assert!(
            idle.closed_within(Duration::from_secs(5)),
            "an idle connection outlived the shutdown"
        );
        // A request under way is finished and answered.
        in_flight.stream().write_all(&body[SENT_FIRST..]).unwrap();
        let answer = in_flight.read_answer().unwrap();
        assert_eq!(answer.status, 200, "{:?}", String::from_utf8_lossy(&answer.body));
        assert!(
            silent.closed_within(Duration::from_secs(10)),
            "a silent client outlived the shutdown"
        );
        assert!(
            partial.closed_within(Duration::from_secs(10)),
            "a slow client outlived the shutdown"
        );
    });
    tokio::time::timeout(Duration::from_secs(20), server.stopped())
        .await
        .expect("the shutdown waits for silent clients");
    clients.await.unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(10),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_past_the_buffer_are_431() {
    let server = start(|_| {}).await;
    let addr = server.addr;
    tokio::task::spawn_blocking(move || {
        let within = "a".repeat(perceiver_serve::MAX_HEADER_BYTES - 1024);
        let answer = common::request(addr, "GET", "/health", &[("X-Big", &within)], b"").unwrap();
        assert_eq!(answer.status, 200);
        let beyond = "a".repeat(perceiver_serve::MAX_HEADER_BYTES + 1024);
        let answer = common::request(addr, "GET", "/health", &[("X-Big", &beyond)], b"").unwrap();
        assert_eq!(answer.status, 431);
    })
    .await
    .unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_answers_loses_its_connection() {
    let server = start(|c| {
        c.max_connections = 1;
        c.body_timeout = Duration::from_secs(1);
    })
    .await;
    let addr = server.addr;
    tokio::task::spawn_blocking(move || {
        // The largest file served; enough copies of it that the socket buffers cannot hold them.
        let path = "/docs/swagger-ui-bundle.js";
        let file = common::request(addr, "GET", path, &[], b"").unwrap();
        assert_eq!(file.status, 200);
        assert!(file.body.len() > 100_000, "{} bytes", file.body.len());
        let copies = (64 << 20) / file.body.len() + 1;
        let mut stalled = Connection::open(addr).unwrap();
        let requests = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").repeat(copies);
        stalled.stream().write_all(requests.as_bytes()).unwrap();
        // It holds the one connection; another client is served only once it is closed.
        let started = Instant::now();
        let mut next = Connection::open(addr).unwrap();
        next.stream()
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        next.send(&format!("GET /health HTTP/1.1\r\nHost: {addr}"), b"")
            .unwrap();
        let answer = next
            .read_answer()
            .expect("a client that reads nothing holds its connection forever");
        assert_eq!(answer.status, 200);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        drop(stalled);
    })
    .await
    .unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_body_timeout_cuts_silence_and_trickles_not_a_steady_body() {
    let server = start(|c| c.body_timeout = Duration::from_secs(1)).await;
    let addr = server.addr;
    tokio::task::spawn_blocking(move || {
        let send_slowly = |body: &[u8], chunk: usize, pause: Duration| {
            let mut connection = Connection::open(addr).unwrap();
            let head = format!(
                "POST /fill-mask HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            connection.stream().write_all(head.as_bytes()).unwrap();
            for part in body.chunks(chunk) {
                std::thread::sleep(pause);
                if connection.stream().write_all(part).is_err() {
                    break; // answered 408 and closed
                }
            }
            let started = Instant::now();
            let answer = connection.read_answer().unwrap();
            (answer, started.elapsed())
        };
        // 64 KiB in 4 parts over 2 s, never silent for the timeout: longer than the timeout
        // in all, and answered.
        let (answer, _) = send_slowly(&padded_request(64 << 10), 16 << 10, Duration::from_millis(500));
        assert_eq!(answer.status, 200, "{:?}", String::from_utf8_lossy(&answer.body));
        // 100 bytes, 10 every 300 ms: never silent for the timeout, but far below the least rate.
        let (answer, _) = send_slowly(&padded_request(100), 10, Duration::from_millis(300));
        assert_eq!(answer.status, 408, "{:?}", String::from_utf8_lossy(&answer.body));
        assert!(answer.json()["error"].as_str().unwrap().contains("on average"));
    })
    .await
    .unwrap();
    server.stop().await;
}
