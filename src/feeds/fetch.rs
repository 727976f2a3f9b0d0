//! Fetching a feed politely: a conditional GET (ETag, Last-Modified),
//! gzip, at most five redirects, a timeout over the whole exchange, and a
//! body streamed up to a size limit so that memory stays flat.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED};
use url::Url;

use crate::config::Feed;

/// Redirects followed; one more is an error.
pub const MAX_REDIRECTS: usize = 5;

/// What a server answered, when it answered well.
#[derive(Debug)]
pub enum Fetched {
    /// 304: nothing changed since the validators.
    NotModified,
    Body {
        body: Vec<u8>,
        /// The address after redirects: the base of relative links.
        url: Url,
        etag: Option<String>,
        last_modified: Option<String>,
    },
}

/// The validators of the previous answer, sent back in a conditional GET.
#[derive(Debug, Clone, Default)]
pub struct Validators {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

/// One HTTP client for every feed (its connections are pooled).
#[derive(Clone)]
pub struct Fetcher {
    client: reqwest::Client,
}

impl Fetcher {
    /// `homepage`, when given, is named in the User-Agent for the feeds'
    /// owners to find who reads them.
    pub fn new(homepage: Option<&str>) -> anyhow::Result<Self> {
        let agent = match homepage {
            Some(home) => format!("Gazette/{} (+{home})", env!("CARGO_PKG_VERSION")),
            None => format!("Gazette/{}", env!("CARGO_PKG_VERSION")),
        };
        // (TLS: rustls with ring and the public roots, as reqwest's
        // `rustls-tls-webpki-roots` feature sets it up.)
        let client = reqwest::Client::builder()
            .user_agent(agent)
            .redirect(reqwest::redirect::Policy::limited(MAX_REDIRECTS))
            .gzip(true)
            .connect_timeout(Duration::from_secs(30))
            .build()?;
        Ok(Self { client })
    }

    /// GETs `feed`, conditionally on `validators`. The error is a sentence
    /// for `gazette feeds list`.
    pub async fn fetch(&self, feed: &Feed, validators: &Validators) -> Result<Fetched, String> {
        let exchange = self.exchange(feed, validators);
        match tokio::time::timeout(feed.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "no complete answer within {} (timeout)",
                humantime::format_duration(feed.timeout)
            )),
        }
    }

    async fn exchange(&self, feed: &Feed, validators: &Validators) -> Result<Fetched, String> {
        let mut request = self.client.get(feed.url.clone());
        if let Some(etag) = &validators.etag {
            request = request.header(IF_NONE_MATCH, etag);
        }
        if let Some(date) = &validators.last_modified {
            request = request.header(IF_MODIFIED_SINCE, date);
        }
        let mut response = request.send().await.map_err(|e| describe(&e))?;
        let status = response.status();
        if status == StatusCode::NOT_MODIFIED {
            return Ok(Fetched::NotModified);
        }
        if !status.is_success() {
            return Err(format!("HTTP {status}"));
        }
        let header = |name| {
            response
                .headers()
                .get(name)
                .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
                .map(str::to_string)
        };
        let (etag, last_modified) = (header(ETAG), header(LAST_MODIFIED));
        let url = response.url().clone();
        let too_large = || {
            format!(
                "the feed is larger than max_bytes ({} bytes)",
                feed.max_bytes
            )
        };
        // (With gzip the length said is the compressed one: the limit is
        // checked again on what arrives.)
        if response
            .content_length()
            .is_some_and(|n| n > feed.max_bytes)
        {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| describe(&e))? {
            if (body.len() + chunk.len()) as u64 > feed.max_bytes {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Fetched::Body {
            body,
            url,
            etag,
            last_modified,
        })
    }
}

/// A reqwest error with its causes, in one line.
fn describe(e: &reqwest::Error) -> String {
    if e.is_redirect() {
        return format!("more than {MAX_REDIRECTS} redirects");
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}
