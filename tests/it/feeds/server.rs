//! An HTTP server on a loopback port that serves feeds the way real sites
//! do, good and bad: a feed with an ETag (304 when `If-None-Match`
//! matches), a 500, a redirect, garbage, a slow answer, an endless body.
//! It counts the requests for each path and keeps their headers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// What a path answers.
#[derive(Debug, Clone)]
pub enum Route {
    /// A feed; with an ETag, a request with a matching `If-None-Match`
    /// gets 304. `delay` holds the answer back (for overlapping pollers).
    Feed {
        body: String,
        etag: Option<String>,
        delay: Duration,
    },
    /// A feed with a Last-Modified date: 304 when `If-Modified-Since`
    /// is that date.
    Dated {
        body: String,
        last_modified: String,
    },
    /// A feed sent gzipped (`Content-Encoding: gzip`) whatever the client
    /// asked: what arrives is smaller than what it holds.
    Gzip(String),
    Status(u16),
    /// 302 to another path (or address).
    Redirect(String),
    /// A 200 with a body that is no feed at all.
    Garbage,
    /// Headers, then nothing for this long before the feed.
    Slow(Duration),
    /// A 200 of this many bytes without a Content-Length, in chunks.
    Endless(usize),
}

/// A request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    /// Header names lowercased.
    pub headers: HashMap<String, String>,
}

#[derive(Default)]
struct State {
    routes: Mutex<HashMap<String, Route>>,
    seen: Mutex<Vec<Seen>>,
}

pub struct FeedServer {
    pub base: String,
    state: Arc<State>,
}

impl FeedServer {
    /// Starts on its own thread and runtime, so that a test may block
    /// (running the `gazette` binary) while it serves.
    pub fn start() -> Self {
        let state = Arc::new(State::default());
        let served = state.clone();
        let addr =
            crate::helpers::serve_on_own_thread(0, move |stream, _| answer(stream, served.clone()));
        Self {
            base: format!("http://{addr}"),
            state,
        }
    }

    pub fn route(&self, path: &str, route: Route) {
        self.state
            .routes
            .lock()
            .unwrap()
            .insert(path.to_string(), route);
    }

    /// Serves a fixture of `tests/fixtures/feeds` at `path` (with `etag`).
    pub fn fixture(&self, path: &str, file: &str, etag: Option<&str>) {
        self.route(
            path,
            Route::Feed {
                body: fixture(file),
                etag: etag.map(str::to_string),
                delay: Duration::ZERO,
            },
        );
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The requests for `path` so far.
    pub fn requests(&self, path: &str) -> Vec<Seen> {
        self.state
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.path == path)
            .cloned()
            .collect()
    }
}

pub fn fixture(file: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/feeds")
        .join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

async fn answer(stream: TcpStream, state: Arc<State>) {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut headers = HashMap::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).await.unwrap_or(0) == 0 {
            return;
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    state.seen.lock().unwrap().push(Seen {
        path: path.clone(),
        headers: headers.clone(),
    });
    let route = state.routes.lock().unwrap().get(&path).cloned();
    let mut stream = reader.into_inner();
    let respond = |status: &str, extra: &str, body: &str| {
        format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
            body.len()
        )
    };
    let text = match route {
        None => respond("404 Not Found", "", "no such feed"),
        Some(Route::Feed { body, etag, delay }) => {
            tokio::time::sleep(delay).await;
            match etag {
                Some(etag) if headers.get("if-none-match") == Some(&etag) => {
                    respond("304 Not Modified", &format!("ETag: {etag}\r\n"), "")
                }
                Some(etag) => respond(
                    "200 OK",
                    &format!("Content-Type: application/xml\r\nETag: {etag}\r\n"),
                    &body,
                ),
                None => respond("200 OK", "Content-Type: application/xml\r\n", &body),
            }
        }
        Some(Route::Dated {
            body,
            last_modified,
        }) => {
            if headers.get("if-modified-since") == Some(&last_modified) {
                respond("304 Not Modified", "", "")
            } else {
                respond(
                    "200 OK",
                    &format!("Content-Type: application/xml\r\nLast-Modified: {last_modified}\r\n"),
                    &body,
                )
            }
        }
        Some(Route::Gzip(body)) => {
            use std::io::Write as _;
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            gz.write_all(body.as_bytes()).unwrap();
            let compressed = gz.finish().unwrap();
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Encoding: gzip\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n",
                compressed.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(&compressed).await;
            let _ = stream.shutdown().await;
            return;
        }
        Some(Route::Status(code)) => respond(&format!("{code} Trouble"), "", "it broke"),
        Some(Route::Redirect(to)) => respond("302 Found", &format!("Location: {to}\r\n"), ""),
        Some(Route::Garbage) => respond(
            "200 OK",
            "Content-Type: application/xml\r\n",
            "\u{0}\u{1}this is not <xml at all",
        ),
        Some(Route::Slow(wait)) => {
            let body = fixture("rss2.xml");
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.flush().await;
            tokio::time::sleep(wait).await;
            body
        }
        Some(Route::Endless(size)) => {
            let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
            if stream.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let chunk = "<!-- padding -->".repeat(64);
            let mut sent = 0;
            while sent < size {
                let frame = format!("{:x}\r\n{chunk}\r\n", chunk.len());
                if stream.write_all(frame.as_bytes()).await.is_err() {
                    // The client stopped reading: as it should.
                    return;
                }
                sent += chunk.len();
            }
            "0\r\n\r\n".to_string()
        }
    };
    let _ = stream.write_all(text.as_bytes()).await;
    let _ = stream.shutdown().await;
}
