//! `gazette preview`: the files it writes (and removes), the fallback to the
//! latest articles when nothing is new, and `--serve`: the `gazette` binary
//! serving its page over real HTTP on loopback, a real store, and headless
//! Chromium watching the page follow template edits on disk.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout};
use std::time::Duration;

use crate::helpers::{
    Backend, Log, TestDb, Workspace, digest_section, stderr, stdout, templates_dir,
};
use crate::on_both_backends;
use crate::web::chrome::{ChromeDriver, PNG_SIGNATURE};

on_both_backends!(
    a_reader_who_is_not_on_the_digest_gets_a_warning_on_the_page,
    a_preview_right_after_a_send_shows_the_latest_articles_and_says_so,
);

/// How long a page may take to follow a file written on disk.
const FOLLOWS_WITHIN: Duration = Duration::from_secs(20);

/// A copy of the templates directory in the workspace, which the
/// configuration then names: the tests edit it.
fn copy_templates(ws: &Workspace) -> PathBuf {
    let copy = ws.dir.path().join("templates");
    crate::helpers::copy_dir(&templates_dir(), &copy);
    let config = std::fs::read_to_string(&ws.config).unwrap();
    let original = format!("dir = \"{}\"", templates_dir().display());
    assert!(config.contains(&original), "{config}");
    std::fs::write(
        &ws.config,
        config.replace(&original, &format!("dir = \"{}\"", copy.display())),
    )
    .unwrap();
    copy
}

/// `gazette preview ARGS --serve` on a free loopback port, killed on drop.
struct PreviewServer {
    child: Child,
    /// The page's address, as the server printed it.
    url: String,
    log: Log,
    _stdout: BufReader<ChildStdout>,
}

impl PreviewServer {
    fn start(ws: &Workspace, args: &[&str]) -> Self {
        let mut all = vec!["preview"];
        all.extend(args);
        all.extend(["--serve", "--bind", "127.0.0.1:0"]);
        let mut child = ws.spawn(&all);
        let log = Log::of(&mut child);
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        if line.is_empty() {
            let status = child.wait().unwrap();
            panic!(
                "the preview server printed nothing and ended ({status}):\n{}",
                log.all()
            );
        }
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://127.0.0.1:"))
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_string();
        assert!(
            line.contains("for local use"),
            "the server does not say it is for local use: {line}"
        );
        Self {
            child,
            url,
            log,
            _stdout: out,
        }
    }

    async fn get(&self, path_and_query: &str) -> (reqwest::StatusCode, String) {
        let response = reqwest::get(format!(
            "{}{}",
            self.url.trim_end_matches('/'),
            path_and_query
        ))
        .await
        .unwrap();
        (response.status(), response.text().await.unwrap())
    }

    /// Polls the page at `path_and_query` until `done` holds for its
    /// HTML, and returns it.
    async fn wait_for_page(
        &self,
        what: &str,
        path_and_query: &str,
        done: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = std::time::Instant::now() + FOLLOWS_WITHIN;
        loop {
            let (status, page) = self.get(path_and_query).await;
            assert_eq!(status, reqwest::StatusCode::OK, "{page}");
            if done(&page) {
                return page;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}; the page:\n{page}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for PreviewServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The text of the HTML part in the frame of class `class`, or "".
fn frame_text(class: &str) -> String {
    format!(
        "var f = document.querySelector('iframe.{class}'); \
         return f && f.contentDocument && f.contentDocument.body \
         ? f.contentDocument.body.innerText : '';"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_preview_follows_template_edits_in_a_real_browser() {
    let db = TestDb::new(Backend::Sqlite).await;
    let ws = Workspace::new(&db.url, None, &digest_section("daily", ""));
    let templates = copy_templates(&ws);
    ws.add_article("Rivers of the north");
    let server = PreviewServer::start(&ws, &["daily"]);
    let driver = ChromeDriver::start().await;
    let profile = tempfile::tempdir().unwrap();
    let browser = driver.new_session(profile.path()).await;
    browser.goto(&server.url).await;

    // The email at both widths, its text part, and its size.
    for class in ["desktop", "phone"] {
        browser
            .wait_for_value(
                &format!("the article in the {class} frame"),
                &frame_text(class),
                FOLLOWS_WITHIN,
                |text| text.contains("Rivers of the north"),
            )
            .await;
    }
    let widths = browser
        .execute(
            "return ['desktop', 'phone'].map(c => \
             document.querySelector('iframe.' + c).contentWindow.innerWidth);",
        )
        .await;
    assert_eq!(widths, serde_json::json!([700, 375]));
    let text_part = browser
        .execute("return document.getElementById('text').innerText;")
        .await;
    let text_part = text_part.as_str().unwrap();
    assert!(text_part.contains("1. Rivers of the north"), "{text_part}");
    assert!(text_part.contains("Hello Sample Reader"), "{text_part}");
    let size = browser
        .execute("return document.getElementById('size').innerText;")
        .await;
    assert!(
        size.as_str().unwrap().ends_with(" bytes"),
        "no size shown: {size}"
    );
    let headers = browser
        .execute("return document.getElementById('headers').innerText;")
        .await;
    assert!(
        headers
            .as_str()
            .unwrap()
            .contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click"),
        "{headers}"
    );

    let png = browser.screenshot().await;
    assert!(png.starts_with(PNG_SIGNATURE), "not a PNG screenshot");
    let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/preview-page.png");
    std::fs::create_dir_all(shot.parent().unwrap()).unwrap();
    std::fs::write(&shot, &png).unwrap();

    // An edit on disk: the open page shows it by itself.
    let html_template = templates.join("digest.html.j2");
    let original = std::fs::read_to_string(&html_template).unwrap();
    assert!(original.contains("{% block content %}\n"), "{original}");
    let edited = original.replacen(
        "{% block content %}\n",
        "{% block content %}\n<tr><td>Edited while the page was open</td></tr>\n",
        1,
    );
    std::fs::write(&html_template, &edited).unwrap();
    for class in ["desktop", "phone"] {
        browser
            .wait_for_value(
                &format!("the edit in the {class} frame"),
                &frame_text(class),
                FOLLOWS_WITHIN,
                |text| text.contains("Edited while the page was open"),
            )
            .await;
    }

    // A broken template: the page shows the error, with the file and line.
    let broken = format!("{edited}{{% if articles %}}\n");
    let if_line = broken.lines().count();
    std::fs::write(&html_template, &broken).unwrap();
    let error = browser
        .wait_for_value(
            "the template error on the page",
            "var e = document.getElementById('error'); return e ? e.innerText : '';",
            FOLLOWS_WITHIN,
            |text| !text.is_empty(),
        )
        .await;
    assert!(error.contains("A template does not load"), "{error}");
    assert!(error.contains("digest.html.j2"), "{error}");
    assert!(error.contains(&format!("line {if_line}")), "{error}");
    let frames = browser
        .execute("return document.querySelectorAll('iframe').length;")
        .await;
    assert_eq!(frames, 0, "a broken template still shows an email");

    // Fixed: the digest is back, with the edit.
    std::fs::write(&html_template, &edited).unwrap();
    browser
        .wait_for_value(
            "the digest back after the fix",
            &frame_text("desktop"),
            FOLLOWS_WITHIN,
            |text| text.contains("Edited while the page was open"),
        )
        .await;
    let error = browser
        .execute("return document.getElementById('error') === null;")
        .await;
    assert_eq!(error, true, "the error is still shown after the fix");

    browser.quit().await;
    drop(server);
}

async fn a_reader_who_is_not_on_the_digest_gets_a_warning_on_the_page(backend: Backend) {
    let db = TestDb::new(backend).await;
    let sections = format!(
        "{}{}",
        digest_section("daily", ""),
        digest_section("weekly", "")
    );
    let ws = Workspace::new(&db.url, None, &sections);
    ws.add_article("Harbour news");
    for (email, digest) in [("bea@example.org", "daily"), ("ann@example.org", "weekly")] {
        let out = ws.run(&["subscribers", "add", email, "--digest", digest]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let server = PreviewServer::start(&ws, &["daily"]);

    // By default, the digest's first subscriber; the picker offers its readers.
    let (status, page) = server.get("/").await;
    assert_eq!(status, reqwest::StatusCode::OK);
    assert!(
        page.contains(r#"<dd id="to">bea@example.org</dd>"#),
        "{page}"
    );
    assert!(
        page.contains(r#"<option value="bea@example.org">"#),
        "{page}"
    );
    assert!(
        !page.contains(r#"<option value="ann@example.org">"#),
        "{page}"
    );
    assert!(!page.contains("is not a subscriber"), "{page}");

    // A reader of another digest: shown, with a warning.
    let (status, page) = server.get("/?digest=daily&reader=ann%40example.org").await;
    assert_eq!(status, reqwest::StatusCode::OK);
    assert!(
        page.contains(r#"<dd id="to">ann@example.org</dd>"#),
        "{page}"
    );
    assert!(
        page.contains(r#"<p class="warning">ann@example.org is not a subscriber of `daily` (they receive weekly): `send` would not mail them this digest</p>"#),
        "{page}"
    );
    // The same reader on their own digest: no warning.
    let (_, page) = server.get("/?digest=weekly&reader=ann%40example.org").await;
    assert!(page.contains("Harbour news"), "{page}");
    assert!(!page.contains("is not a subscriber"), "{page}");
    // The sample reader, and an address nobody has.
    let (_, page) = server.get("/?digest=daily&reader=sample").await;
    assert!(
        page.contains(r#"<dd id="to">reader@example.org</dd>"#),
        "{page}"
    );
    let (_, page) = server
        .get("/?digest=daily&reader=nobody%40example.org")
        .await;
    assert!(page.contains("The digest does not render"), "{page}");
    assert!(page.contains("no subscriber nobody@example.org"), "{page}");

    // Another site's name for 127.0.0.1 (DNS rebinding) reads nothing.
    let response = reqwest::Client::new()
        .get(&server.url)
        .header("host", "attacker.example:8090")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::FORBIDDEN);
    assert!(!response.text().await.unwrap().contains("bea@example.org"));
}

async fn a_preview_right_after_a_send_shows_the_latest_articles_and_says_so(backend: Backend) {
    let db = TestDb::new(backend).await;
    let ws = Workspace::new(
        &db.url,
        None,
        &digest_section("daily", r#"subject = "{{ articles[0].title }} and more""#),
    );
    ws.add_article("Older story");
    std::thread::sleep(Duration::from_millis(20));
    ws.add_article("Newest story");
    let out = ws.run(&["subscribers", "add", "zoe@example.org"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = ws.run(&["send", "daily"]);
    assert!(out.status.success(), "{}", stderr(&out));

    let out = ws.run(&["preview", "daily", "--out", "pv"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let said = "note: nothing new for `daily` since the last digest: \
                showing the latest 2 articles instead \
                (a run now would be skipped and send nothing)";
    assert!(stderr(&out).contains(said), "{}", stderr(&out));
    let printed: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
    assert_eq!(printed, ["pv/daily.html", "pv/daily.txt", "pv/daily.eml"]);
    let text = std::fs::read_to_string(ws.dir.path().join("pv/daily.txt")).unwrap();
    assert!(text.contains("1. Newest story"), "{text}");
    assert!(text.contains("2. Older story"), "{text}");
    let eml = std::fs::read_to_string(ws.dir.path().join("pv/daily.eml")).unwrap();
    assert!(
        eml.contains("\r\nSubject: Newest story and more\r\n"),
        "{eml}"
    );

    let server = PreviewServer::start(&ws, &["daily"]);
    let (_, page) = server.get("/").await;
    assert!(
        page.contains(
            "nothing new for `daily` since the last digest: showing the latest 2 articles instead"
        ),
        "{page}"
    );
    assert!(
        page.contains(r#"<dd id="subject">Newest story and more</dd>"#),
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_preview_leaves_no_earlier_files_behind() {
    let db = TestDb::new(Backend::Sqlite).await;
    let ws = Workspace::new(&db.url, None, &digest_section("daily", ""));
    let templates = copy_templates(&ws);
    ws.add_article("Tide tables");
    let files = ["daily.html", "daily.txt", "daily.eml"].map(|f| ws.dir.path().join("pv").join(f));
    let wrote_all = || {
        let out = ws.run(&["preview", "daily", "--out", "pv"]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(files.iter().all(|f| f.is_file()));
    };

    // A reader who does not exist: the earlier files go, and the error says so.
    wrote_all();
    let out = ws.run(&[
        "preview",
        "daily",
        "--out",
        "pv",
        "--subscriber",
        "nobody@example.org",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(
            "no preview of `daily` was written, and the earlier pv/daily.html, pv/daily.txt \
             and pv/daily.eml were removed so that none looks current: no subscriber nobody@example.org"
        ),
        "{}",
        stderr(&out)
    );
    let left: Vec<_> = files.iter().filter(|f| f.exists()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");

    // A broken template, which stops the command before it renders anything.
    wrote_all();
    let html_template = templates.join("digest.html.j2");
    let original = std::fs::read_to_string(&html_template).unwrap();
    std::fs::write(&html_template, format!("{original}{{% if articles %}}\n")).unwrap();
    let out = ws.run(&["preview", "daily", "--out", "pv"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let said = stderr(&out);
    assert!(
        said.contains("no preview of `daily` was written, and the earlier pv/daily.html, pv/daily.txt and pv/daily.eml were removed"),
        "{said}"
    );
    assert!(said.contains("digest.html.j2"), "{said}");
    let left: Vec<_> = files.iter().filter(|f| f.exists()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_preview_shows_a_configuration_error_and_recovers() {
    let db = TestDb::new(Backend::Sqlite).await;
    let ws = Workspace::new(&db.url, None, &digest_section("daily", ""));
    ws.add_article("Lighthouse keepers");
    let mut server = PreviewServer::start(&ws, &["daily"]);
    let (_, page) = server.get("/").await;
    assert!(page.contains("Lighthouse keepers"), "{page}");

    let config = std::fs::read_to_string(&ws.config).unwrap();
    std::fs::write(
        &ws.config,
        config.replace("window = \"7d\"", "window = \"7d\"\nmax_articles = \"ten\""),
    )
    .unwrap();
    let page = server
        .wait_for_page("the configuration error", "/", |page| {
            page.contains("The configuration is invalid")
        })
        .await;
    assert!(page.contains("max_articles"), "{page}");
    assert!(page.contains("gazette.toml"), "{page}");
    assert!(!page.contains("Lighthouse keepers"), "{page}");

    std::fs::write(&ws.config, &config).unwrap();
    server
        .wait_for_page("the digest back", "/", |page| {
            page.contains("Lighthouse keepers") && !page.contains("The configuration is invalid")
        })
        .await;
    server.log.wait_for("the reload in the log", |line| {
        line.contains("reloaded the configuration and templates")
    });
}

#[test]
fn preview_help_says_the_page_is_for_local_use() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gazette"))
        .args(["preview", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let help = stdout(&out);
    assert!(help.contains("For local use"), "{help}");
    assert!(help.contains("[default: 127.0.0.1:8090]"), "{help}");
}
