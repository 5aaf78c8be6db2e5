//! Bodies the service refuses before reading them (over the payload limit, wrong key, no such
//! route) are still answered in JSON to a client that writes its whole body before it reads,
//! as Python's `urllib` and `requests` do, instead of a connection reset.

mod common;

use std::net::SocketAddr;
use std::path::Path;

use common::{Connection, TestServer};
use perceiver::Loader;

/// Over the default 1 MiB payload limit, as the issue's client sent.
const LARGE: usize = 8 << 20;

async fn start(configure: impl FnOnce(&mut perceiver_serve::ServeConfig)) -> TestServer {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/parity/tiny_qk_v_explicit");
    let model = Loader::new(dir.to_string_lossy()).load().unwrap();
    TestServer::start("tiny", model, configure).await
}

/// A JSON-looking body of `len` bytes.
fn body(len: usize) -> Vec<u8> {
    let mut body = br#"{"inputs": ""#.to_vec();
    body.resize(len - 2, b'a');
    body.extend_from_slice(br#""}"#);
    body
}

/// Sends the request in full, then reads the answer, then checks that the connection still
/// serves a second request (so the server read exactly the body, no more, no less).
fn send_all_then_read(addr: SocketAddr, head: &str, body: &[u8]) -> (u16, serde_json::Value) {
    let mut connection = Connection::open(addr).unwrap();
    connection
        .send(head, body)
        .unwrap_or_else(|e| panic!("{head:?}: writing the body failed: {e}"));
    let answer = connection
        .read_answer()
        .unwrap_or_else(|e| panic!("{head:?}: reading the answer failed: {e}"));
    assert_eq!(
        answer.header("content-type"),
        Some("application/json"),
        "{head:?}"
    );
    connection
        .send(&format!("GET /health HTTP/1.1\r\nHost: {addr}"), b"")
        .unwrap();
    let health = connection.read_answer().unwrap();
    assert_eq!(health.status, 200, "{head:?}: the connection serves on");
    (answer.status, answer.json())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_bodies_are_answered_to_clients_that_write_first() {
    let server = start(|c| c.api_key = Some("s3cret".into())).await;
    let addr = server.addr;
    let key = "Authorization: Bearer s3cret";
    tokio::task::spawn_blocking(move || {
        let large = body(LARGE);
        // (head, status, error_type)
        let cases = [
            (
                format!("POST /fill-mask HTTP/1.1\r\nHost: {addr}\r\n{key}\r\nContent-Type: application/json\r\nContent-Length: {LARGE}"),
                413,
                "payload_too_large",
            ),
            (
                format!("POST /fill-mask HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer wrong\r\nContent-Length: {LARGE}"),
                401,
                "unauthorized",
            ),
            (
                format!("POST /no-such-route HTTP/1.1\r\nHost: {addr}\r\n{key}\r\nContent-Length: {LARGE}"),
                404,
                "not_found",
            ),
            (
                format!("PUT /fill-mask HTTP/1.1\r\nHost: {addr}\r\n{key}\r\nContent-Length: {LARGE}"),
                405,
                "method_not_allowed",
            ),
        ];
        for (head, status, error_type) in &cases {
            let (got, error) = send_all_then_read(addr, head, &large);
            assert_eq!(got, *status, "{head:?}: {error}");
            assert_eq!(error["error_type"], *error_type, "{head:?}");
        }

        // No Content-Length: the limit is found while reading the chunks.
        let mut chunked = Vec::new();
        for piece in large.chunks(64 << 10) {
            chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            chunked.extend_from_slice(piece);
            chunked.extend_from_slice(b"\r\n");
        }
        chunked.extend_from_slice(b"0\r\n\r\n");
        let head = format!(
            "POST /fill-mask HTTP/1.1\r\nHost: {addr}\r\n{key}\r\nTransfer-Encoding: chunked"
        );
        let (status, error) = send_all_then_read(addr, &head, &chunked);
        assert_eq!((status, error["error_type"].as_str()), (413, Some("payload_too_large")));

        // The limit itself is unchanged: a body just under it is read and judged.
        let fits = body(1 << 20);
        let head = format!(
            "POST /fill-mask HTTP/1.1\r\nHost: {addr}\r\n{key}\r\nContent-Length: {}",
            fits.len()
        );
        let (status, error) = send_all_then_read(addr, &head, &fits);
        assert_eq!((status, error["error_type"].as_str()), (422, Some("validation")), "{error}");
    })
    .await
    .unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_waits_for_100_continue_is_refused_before_it_sends() {
    let server = start(|_| {}).await;
    let addr = server.addr;
    tokio::task::spawn_blocking(move || {
        let mut connection = Connection::open(addr).unwrap();
        let head = format!(
            "POST /fill-mask HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Expect: 100-continue\r\nContent-Length: {LARGE}"
        );
        // The head only: the client waits for `100 Continue`, which must not come.
        connection.send(&head, b"").unwrap();
        let answer = connection.read_answer().unwrap();
        assert_eq!(answer.status, 413, "{:?}", String::from_utf8_lossy(&answer.body));
        assert_eq!(answer.json()["error_type"], "payload_too_large");
    })
    .await
    .unwrap();
    server.stop().await;
}
