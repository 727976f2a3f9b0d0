//! `gazette preview DIGEST --serve`: the preview as a local page that
//! follows the editor's work.
//!
//! The page shows the email `send` would deliver now ([`render_preview`]):
//! its HTML in two frames (desktop and phone widths), the plain-text part,
//! the headers and the message's size, for a digest and reader picked on
//! the page. Every 300 ms the server looks at the modification times of
//! the configuration files and of every file under the templates
//! directory (a few stat calls: cheaper than a file-watching crate and its
//! dependencies); on a change it reads the configuration again and
//! rebuilds the [`Renderer`] from disk, and tells the open pages over
//! server-sent events, which reload themselves. A broken template or
//! configuration is shown on the page, with its file and line, until it
//! is fixed; the server keeps running.
//!
//! The page is for the editor's own machine: it shows subscribers' names
//! and addresses, so the server listens on loopback unless told otherwise.
//! It is compiled in (not under `templates/`) so that it works whatever
//! state the templates being edited are in.

use std::convert::Infallible;
use std::future::IntoFuture;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::Request;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{Next, from_fn_with_state, map_response};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use futures_util::{Stream, StreamExt as _};
use minijinja::{Environment, context};
use serde::Deserialize;
use tokio::sync::watch;

use super::preview::{Preview, ReaderChoice, render_preview};
use crate::config::{self, Settings};
use crate::delivery::Engine;
use crate::domain::{ReaderTokens, new_token};
use crate::errors::chain;
use crate::render::Renderer;
use crate::store::Store;

/// Where `--serve` listens unless `--bind` says otherwise.
pub const DEFAULT_BIND: &str = "127.0.0.1:8090";
/// How often the files are looked at.
const POLL: Duration = Duration::from_millis(300);
/// The readers offered in the page's picker.
const PICKER_READERS: usize = 50;

/// What `--serve` was asked for.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub digest: String,
    /// `--subscriber`: the reader shown when the page names none.
    pub subscriber: Option<String>,
    pub run: Option<i64>,
    pub bind: SocketAddr,
    /// `--config FILE`, read again (after `config/default.toml`) when it changes.
    pub config_file: Option<PathBuf>,
}

/// What the page is rendered from: an engine over the settings and
/// templates as they are on disk now, or why there is none.
struct Live {
    /// Changes with every reload, and between two runs of the server: a
    /// page that shows another version reloads.
    version: String,
    engine: Result<Engine, Problem>,
    /// The settings last read without error: their templates directory is
    /// watched, and their digests listed, while the configuration is broken.
    settings: Arc<Settings>,
    /// Said on the page besides the preview.
    notice: Option<String>,
}

/// A configuration or templates that do not load.
#[derive(Clone)]
struct Problem {
    title: &'static str,
    message: String,
}

struct PreviewState {
    live: watch::Sender<Arc<Live>>,
    /// Listening on loopback: requests must name a loopback host.
    loopback: bool,
    options: ServeOptions,
    page: Environment<'static>,
}

/// Serves the preview page until SIGINT/SIGTERM.
pub async fn preview_serve(settings: Settings, options: ServeOptions) -> Result<()> {
    settings.require_digest(&options.digest)?;
    let (store, tokens) = super::process::open_store(&settings).await?;
    let listener = tokio::net::TcpListener::bind(options.bind)
        .await
        .with_context(|| format!("cannot listen on {} (--bind)", options.bind))?;
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() {
        eprintln!(
            "warning: listening on {addr}, not loopback: anyone who reaches it sees \
             subscribers' names and addresses"
        );
    }
    let run_nonce = new_token()[..8].to_string();
    let settings = Arc::new(settings);
    let live = load_live(
        &run_nonce,
        0,
        Ok(settings.clone()),
        &settings,
        &store,
        &tokens,
    );
    if let Err(problem) = &live.engine {
        eprintln!("{}: {}", problem.title, problem.message);
    }
    let (live, _) = watch::channel(Arc::new(live));
    let mut page = Environment::new();
    page.add_template("preview_page.html", include_str!("preview_page.html"))
        .context("the preview page's template is invalid")?;
    let state = Arc::new(PreviewState {
        live,
        loopback: addr.ip().is_loopback(),
        options,
        page,
    });
    let watcher = tokio::spawn(watch_files(state.clone(), store, tokens, run_nonce));
    println!(
        "previewing `{}` on http://{addr}/ (for local use: the page shows subscribers' data); \
         Ctrl-C stops",
        state.options.digest
    );
    let router = Router::new()
        .route("/", get(page_handler))
        .route("/events", get(events))
        .route("/live.js", get(live_js))
        .layer(map_response(headers))
        .layer(from_fn_with_state(state.clone(), local_host_only))
        .with_state(state);
    let mut shutdown = super::shutdown_signal();
    let stopped = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    // (Not a graceful shutdown: the pages' event streams never end.)
    tokio::select! {
        served = axum::serve(listener, router).into_future() => {
            served.context("the preview server stopped")?;
        }
        () = stopped => {}
    }
    watcher.abort();
    Ok(())
}

/// Reads the configuration (`settings`, or the error of reading it) and
/// the templates into a [`Live`]; `last_good` is kept when the
/// configuration does not load.
fn load_live(
    run_nonce: &str,
    version: u64,
    settings: Result<Arc<Settings>, config::ConfigError>,
    last_good: &Arc<Settings>,
    store: &Store,
    tokens: &ReaderTokens,
) -> Live {
    let version = format!("{run_nonce}-{version}");
    let settings = match settings {
        Ok(settings) => settings,
        Err(e) => {
            return Live {
                version,
                engine: Err(Problem {
                    title: "The configuration is invalid",
                    message: e.to_string(),
                }),
                settings: last_good.clone(),
                notice: None,
            };
        }
    };
    let notice = (settings.database.url != last_good.database.url).then(|| {
        "database.url changed: the preview still reads the database it started with; \
         restart it to read the other"
            .to_string()
    });
    let engine = Renderer::new(&settings)
        .map(|renderer| {
            let metrics = Arc::new(crate::metrics::Metrics::default());
            Engine {
                relays: Arc::new(crate::mail::Relays::new(&settings.relays, &metrics)),
                settings: settings.clone(),
                store: store.clone(),
                renderer: Arc::new(renderer),
                tokens: tokens.clone(),
                return_path: None,
                sealer: crate::mail::Sealer::new(settings.dkim.clone()),
                metrics,
                confirmations_due: Arc::default(),
                panic_for_tests: None,
            }
        })
        .map_err(|e| Problem {
            title: "A template does not load",
            message: chain(&e).to_string(),
        });
    Live {
        version,
        engine,
        settings,
        notice,
    }
}

/// Looks at the files every [`POLL`]; on a change, loads the
/// configuration and templates again and publishes them.
async fn watch_files(
    state: Arc<PreviewState>,
    store: Store,
    tokens: ReaderTokens,
    run_nonce: String,
) {
    // As `main` reads them: the default file under the working directory,
    // then `--config FILE`.
    let mut config_files = vec![Path::new(".").join(config::DEFAULT_FILE)];
    config_files.extend(state.options.config_file.clone());
    let mut seen = {
        let live = state.live.borrow();
        fingerprint(&config_files, &live.settings.templates_dir)
    };
    let mut version = 0;
    loop {
        tokio::time::sleep(POLL).await;
        let last_good = state.live.borrow().settings.clone();
        let now = fingerprint(&config_files, &last_good.templates_dir);
        if now == seen {
            continue;
        }
        // (Before loading: a file written while it loads is a change next
        // time. A moved templates directory makes one reload more.)
        seen = now;
        version += 1;
        let settings =
            config::load(Path::new("."), state.options.config_file.as_deref()).map(Arc::new);
        let live = load_live(&run_nonce, version, settings, &last_good, &store, &tokens);
        match &live.engine {
            Ok(_) => eprintln!("reloaded the configuration and templates"),
            Err(problem) => eprintln!("{}: {}", problem.title, problem.message),
        }
        state.live.send_replace(Arc::new(live));
    }
}

/// What changes when a watched file is written, created or removed: each
/// path with its modification time and size. (Editors' hidden swap files
/// and `~` backups under the templates directory are not templates.)
fn fingerprint(files: &[PathBuf], templates: &Path) -> Vec<(PathBuf, Option<(SystemTime, u64)>)> {
    let stat = |path: &Path| {
        std::fs::metadata(path)
            .ok()
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
    };
    let mut all: Vec<_> = files.iter().map(|f| (f.clone(), stat(f))).collect();
    let mut dirs = vec![templates.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || name.ends_with('~') {
                continue;
            }
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(path);
            } else {
                let meta = stat(&path);
                all.push((path, meta));
            }
        }
    }
    all.sort();
    all
}

#[derive(Debug, Default, Deserialize)]
struct PageQuery {
    digest: Option<String>,
    /// Empty or absent: the default reader; `sample`: the sample reader;
    /// otherwise a subscriber's address.
    reader: Option<String>,
}

async fn page_handler(
    State(state): State<Arc<PreviewState>>,
    Query(query): Query<PageQuery>,
) -> Response {
    let live = state.live.borrow().clone();
    let digest = query
        .digest
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| state.options.digest.clone());
    let reader_field = query.reader.unwrap_or_default().trim().to_string();
    let reader = match reader_field.as_str() {
        "" => state
            .options
            .subscriber
            .as_deref()
            .map_or(ReaderChoice::Default, ReaderChoice::Email),
        "sample" => ReaderChoice::Sample,
        email => ReaderChoice::Email(email),
    };
    let digests: Vec<String> = live
        .settings
        .digests
        .iter()
        .map(|d| d.name.to_string())
        .collect();
    let (preview, error, readers) = match &live.engine {
        Err(problem) => (None, Some(problem.clone()), Vec::new()),
        Ok(engine) => {
            let readers = picker_readers(engine, &digest).await;
            match render_preview(engine, &digest, reader, state.options.run).await {
                Ok(preview) => (Some(preview), None, readers),
                Err(e) => (
                    None,
                    Some(Problem {
                        title: "The digest does not render",
                        message: chain(&e).to_string(),
                    }),
                    readers,
                ),
            }
        }
    };
    let ctx = context! {
        version => &live.version,
        digest => &digest,
        digests => digests,
        reader_field => &reader_field,
        readers => readers,
        notice => &live.notice,
        error => error.map(|p| context! { title => p.title, message => p.message }),
        preview => preview.as_ref().map(preview_value),
    };
    let page = state
        .page
        .get_template("preview_page.html")
        .and_then(|t| t.render(ctx));
    match page {
        Ok(html) => Html(html).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot render the preview page: {e}"),
        )
            .into_response(),
    }
}

fn preview_value(p: &Preview) -> minijinja::Value {
    context! {
        subject => &p.subject,
        html => &p.html,
        text => &p.text,
        headers => p.headers(),
        size => p.message.len(),
        reader => &p.reader,
        articles => p.articles,
        note => &p.note,
        warnings => &p.warnings,
    }
}

/// The first confirmed subscribers of `digest`, for the picker (none if the
/// store does not answer: the page still shows the preview).
async fn picker_readers(engine: &Engine, digest: &str) -> Vec<String> {
    let Some(digest) = engine.settings.digest(digest) else {
        return Vec::new();
    };
    engine
        .store
        .stream_confirmed_subscribers(&digest.name)
        .take(PICKER_READERS)
        .filter_map(|s| async move { s.ok().map(|s| s.email) })
        .collect()
        .await
}

/// One `version` event when a page connects, and one after each reload.
async fn events(
    State(state): State<Arc<PreviewState>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let live = state.live.subscribe();
    let stream = futures_util::stream::unfold((live, true), |(mut live, first)| async move {
        if !first {
            live.changed().await.ok()?;
        }
        let version = live.borrow_and_update().version.clone();
        let event = Event::default().event("version").data(version);
        Some((Ok(event), (live, false)))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

async fn live_js() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/javascript; charset=utf-8"),
        )],
        LIVE_JS,
    )
        .into_response()
}

/// Reloads the page when the server has another version than it shows.
const LIVE_JS: &str = r#""use strict";
(function () {
  var shown = document.body.getAttribute("data-version");
  var events = new EventSource("/events");
  events.addEventListener("version", function (event) {
    if (event.data !== shown) {
      events.close();
      location.reload();
    }
  });
})();
"#;

/// On loopback, a request whose `Host` is not a loopback name is refused:
/// a web page the editor opens cannot read the preview (and its readers'
/// addresses) through a name of its own that resolves to 127.0.0.1 (DNS
/// rebinding).
async fn local_host_only(
    State(state): State<Arc<PreviewState>>,
    request: Request,
    next: Next,
) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    if state.loopback && !is_loopback_host(host) {
        return (
            StatusCode::FORBIDDEN,
            "the preview answers to localhost, 127.0.0.1 and [::1] only",
        )
            .into_response();
    }
    next.run(request).await
}

/// Whether `host` (a `Host` header: a name or address, with or without a
/// port) names this machine's loopback.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The page's own script only; the email's images from anywhere (as a
/// mail client shows them), its inline styles, and nothing of it runs
/// (its frames are sandboxed, and inherit this policy).
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     connect-src 'self'; style-src 'unsafe-inline'; img-src http: https: data:; \
     form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// The page holds subscribers' data: no cache keeps it, no other site
/// frames it, and links leave no referrer.
async fn headers(mut response: Response) -> Response {
    let cache = HeaderValue::from_static("no-store");
    response.headers_mut().insert(header::CACHE_CONTROL, cache);
    crate::web::with_security_headers(response, CONTENT_SECURITY_POLICY)
}
