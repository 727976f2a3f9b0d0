//! The readers' web pages, over real HTTP on a loopback port, with a real
//! database and the recording SMTP server: double opt-in, one-click
//! unsubscribe, preferences, the web view, and bad input.

mod api;
mod browser;
pub mod chrome;
mod pages;
mod security;

use gazette::domain::EmailAddress;
use reqwest::StatusCode;

use crate::helpers::{Backend, SmtpServer, TestDb, Workspace, digest_section};

pub struct WebApp {
    pub base: String,
    pub smtp: SmtpServer,
    _ws: Workspace,
    pub engine: gazette::delivery::Engine,
    pub http: reqwest::Client,
    _stop: tokio::sync::watch::Sender<bool>,
    _db: TestDb,
}

impl WebApp {
    pub async fn start(backend: Backend, web: &str) -> Self {
        Self::start_with(backend, web, SmtpServer::start()).await
    }

    /// [`WebApp::start`] with `smtp` as the relay.
    pub async fn start_with(backend: Backend, web: &str, smtp: SmtpServer) -> Self {
        Self::start_with_sections(backend, web, "", smtp).await
    }

    /// [`WebApp::start_with`] with `sections` (TOML tables) added to the
    /// configuration.
    pub async fn start_with_sections(
        backend: Backend,
        web: &str,
        sections: &str,
        smtp: SmtpServer,
    ) -> Self {
        Self::start_with_env(backend, web, sections, smtp, &[]).await
    }

    /// [`WebApp::start_with_sections`] with these environment variables.
    pub async fn start_with_env(
        backend: Backend,
        web: &str,
        sections: &str,
        smtp: SmtpServer,
        env: &[(&str, &str)],
    ) -> Self {
        let db = TestDb::new(backend).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let sections = format!(
            "{}{}{sections}",
            digest_section("daily", ""),
            digest_section("weekly", "").replace("The weekly Digest", "The Weekly Roundup")
        );
        let ws = Workspace::new(&db.url, Some(smtp.port), &sections);
        let config = std::fs::read_to_string(&ws.config).unwrap().replace(
            "base_url = \"https://news.example.org/\"",
            &format!("base_url = \"{base}\"\n{web}"),
        );
        std::fs::write(&ws.config, config).unwrap();
        let engine = ws.engine_with_env(env).await;
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        tokio::spawn(gazette::web::serve(engine.clone(), listener, shutdown));
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        Self {
            base,
            smtp,
            _ws: ws,
            engine,
            http,
            _stop: stop,
            _db: db,
        }
    }

    pub async fn get(&self, path: &str) -> (StatusCode, String) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        (r.status(), r.text().await.unwrap())
    }

    pub async fn post_form(&self, path: &str, body: &str) -> (StatusCode, String) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        (r.status(), r.text().await.unwrap())
    }

    /// Sends only the head of `POST target` (a path and query), a JSON
    /// request with `Authorization: Bearer token` and a `Content-Length`
    /// of `length` whose body never follows; asserts that the server
    /// answers 413 and closes the connection within 5 s, and returns the
    /// answer.
    pub async fn refused_before_the_body(
        &self,
        target: &str,
        token: &str,
        length: usize,
    ) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let host = self.base.trim_start_matches("http://");
        let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
        let head = format!(
            "POST {target} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            stream.read_to_end(&mut answer),
        )
        .await
        .expect("no answer, or the connection was left open, 5 s after the head")
        .unwrap();
        let answer = String::from_utf8_lossy(&answer).into_owned();
        assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
        assert!(
            answer
                .to_ascii_lowercase()
                .contains("\r\nconnection: close\r\n"),
            "{answer}"
        );
        answer
    }

    /// Adds a confirmed subscriber, as an operator would.
    pub async fn add_reader(&self, email: &str, name: Option<&str>, digests: &[&str]) {
        let digests: Vec<String> = digests.iter().map(|d| d.to_string()).collect();
        gazette::app::subscribers_add(&self.engine, email, name.map(str::to_string), &digests)
            .await
            .unwrap();
    }

    pub async fn reader(&self, email: &str) -> Option<gazette::store::Subscriber> {
        self.engine
            .store
            .find_subscriber(&EmailAddress::parse(email).unwrap())
            .await
            .unwrap()
    }

    pub async fn status_of(&self, email: &str) -> Option<String> {
        self.reader(email).await.map(|s| s.status.to_string())
    }

    /// Waits until no confirmation email is left to send: they go out in
    /// the background, after the answer to the request.
    pub async fn mailed(&self) {
        let start = std::time::Instant::now();
        while self
            .engine
            .store
            .pending_confirmation_emails()
            .await
            .unwrap()
            > 0
        {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(30),
                "confirmation emails still waiting after 30 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// The link in the latest confirmation email to `email`.
    pub async fn confirmation_link(&self, email: &str) -> String {
        self.mailed().await;
        let mails = self.smtp.received_by(email);
        let mail = mails.last().expect("no confirmation email");
        let m = mail.parsed();
        assert!(
            m.subject()
                .unwrap()
                .starts_with("Confirm your subscription")
        );
        assert!(m.header("List-Unsubscribe").is_none());
        let text = m.body_text(0).unwrap().into_owned();
        let start = text
            .find(&format!("{}/confirm/", self.base))
            .expect("no link in the email");
        text[start..].split_whitespace().next().unwrap().to_string()
    }

    /// Publishes an article and sends the digest now.
    pub async fn publish_and_send(&self, title: &str, digest: &str) {
        self.add_article(title).await;
        gazette::app::send(&self.engine, digest, None, false)
            .await
            .unwrap();
    }

    /// Adds an article published now, and returns once the store's clock
    /// (milliseconds) has moved past it, so that a digest sent next takes it
    /// and one sent before it cannot have.
    pub async fn add_article(&self, title: &str) {
        let published = gazette::store::Timestamp::now();
        gazette::app::articles_add(
            &self.engine,
            gazette::import::ArticleInput {
                url: format!("https://example.org/{}", title.replace(' ', "-")),
                title: title.into(),
                published_at: Some(published.0.to_rfc3339()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        while gazette::store::Timestamp::now() <= published {
            tokio::task::yield_now().await;
        }
    }
}

pub fn path_of(url: &str) -> &str {
    let after = url.find("://").map_or(0, |i| i + 3);
    &url[after + url[after..].find('/').unwrap()..]
}
