//! What the playground and large-body tests share: a server on a free loopback port, and an
//! HTTP/1.1 client on a plain `TcpStream`, so that the tests see exactly the bytes on the wire.

// Each test file uses its own part of this module.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use perceiver_serve::{ServeConfig, ServeError, ServeModel, Server};

pub mod clip;
use serde_json::Value;

/// A server on a free loopback port; stops when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    running: Option<tokio::task::JoinHandle<Result<(), ServeError>>>,
}

impl TestServer {
    pub async fn start(
        model_id: &str,
        model: impl Into<ServeModel>,
        configure: impl FnOnce(&mut ServeConfig),
    ) -> Self {
        let mut config = ServeConfig::new(model_id);
        config.port = 0;
        configure(&mut config);
        let server = Server::bind(config, model).await.unwrap();
        let addr = server.local_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(server.run(async {
            stopped.await.ok();
        }));
        Self {
            addr,
            stop: Some(stop),
            running: Some(running),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Starts a graceful shutdown (as SIGTERM does) without waiting for it.
    pub fn begin_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop.send(()).ok();
        }
    }

    /// Waits for the server to stop (after [`TestServer::begin_stop`]) and checks it ended
    /// cleanly.
    pub async fn stopped(mut self) {
        self.running.take().unwrap().await.unwrap().unwrap();
    }

    /// Stops the server and checks it ended cleanly.
    pub async fn stop(mut self) {
        self.stop.take().unwrap().send(()).ok();
        self.running.take().unwrap().await.unwrap().unwrap();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop.send(()).ok();
        }
    }
}

/// One HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// Names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
}

/// A connection whose requests are written in full before anything is read, as Python's
/// `urllib` and `requests` do.
pub struct Connection {
    reader: BufReader<TcpStream>,
}

impl Connection {
    pub fn open(addr: SocketAddr) -> std::io::Result<Self> {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(120)))?;
        stream.set_write_timeout(Some(Duration::from_secs(120)))?;
        Ok(Self {
            reader: BufReader::new(stream),
        })
    }

    pub fn stream(&mut self) -> &mut TcpStream {
        self.reader.get_mut()
    }

    /// Whether the server closes the connection (end of stream or reset) within `limit`,
    /// reading and dropping anything it sends first.
    pub fn closed_within(&mut self, limit: Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        let mut buffer = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            self.reader.get_ref().set_read_timeout(Some(left)).unwrap();
            match self.reader.read(&mut buffer) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return false
                }
                Err(_) => return true,
            }
        }
    }

    /// Writes `head` (the request line and headers, without the blank line) and `body`, all
    /// of it, in 64 KiB writes.
    pub fn send(&mut self, head: &str, body: &[u8]) -> std::io::Result<()> {
        let stream = self.stream();
        stream.write_all(format!("{head}\r\n\r\n").as_bytes())?;
        for chunk in body.chunks(64 << 10) {
            stream.write_all(chunk)?;
        }
        stream.flush()
    }

    /// Reads one answer (its body by `Content-Length`, or to the end of the stream).
    pub fn read_answer(&mut self) -> std::io::Result<Answer> {
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("not an HTTP status line: {line:?}")))?;
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line)?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').unwrap_or((line, ""));
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
        let length = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse::<usize>().ok());
        let mut body = Vec::new();
        match length {
            Some(n) => {
                body.resize(n, 0);
                self.reader.read_exact(&mut body)?;
            }
            None => {
                self.reader.read_to_end(&mut body)?;
            }
        }
        Ok(Answer {
            status,
            headers,
            body,
        })
    }
}

/// One request on a fresh connection (`Connection: close`).
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Answer> {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("\r\n{name}: {value}"));
    }
    let mut connection = Connection::open(addr)?;
    connection.send(&head, body)?;
    connection.read_answer()
}

/// A POST with a JSON body, from a blocking thread.
pub async fn post_json(addr: SocketAddr, path: &str, body: &Value) -> Answer {
    post(addr, path, "application/json", body.to_string().into_bytes()).await
}

/// A POST with this content type and body, from a blocking thread.
pub async fn post(addr: SocketAddr, path: &str, content_type: &str, body: Vec<u8>) -> Answer {
    let (path, content_type) = (path.to_string(), content_type.to_string());
    tokio::task::spawn_blocking(move || {
        request(addr, "POST", &path, &[("Content-Type", &content_type)], &body)
    })
    .await
    .unwrap()
    .unwrap()
}
