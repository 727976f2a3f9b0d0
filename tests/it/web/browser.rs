//! The subscribe form in a real browser: headless Chromium driven through
//! ChromeDriver's W3C WebDriver protocol (`chrome`), against the web server
//! on Postgres with the recording SMTP server.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them).

use std::path::Path;
use std::time::Instant;

use super::chrome::{ChromeDriver, PNG_SIGNATURE};
use crate::helpers::Backend;
use crate::web::WebApp;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_subscribes_and_confirms_in_a_real_browser() {
    let started = Instant::now();
    let app = WebApp::start(Backend::Postgres, "").await;
    let driver = ChromeDriver::start().await;
    let profile = tempfile::tempdir().unwrap();
    let browser = driver.new_session(profile.path()).await;

    browser.goto(&format!("{}/", app.base)).await;
    assert_eq!(browser.h1().await, "Get the digest by email");
    let png = browser.screenshot().await;
    assert!(png.starts_with(PNG_SIGNATURE), "not a PNG screenshot");
    let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/subscribe-page.png");
    std::fs::create_dir_all(shot.parent().unwrap()).unwrap();
    std::fs::write(&shot, &png).unwrap();

    let email = browser.find("#email").await;
    browser.type_into(&email, "reader@example.org").await;
    let name = browser.find("#name").await;
    browser.type_into(&name, "Ada Reader").await;
    let submit = browser.find("button[type=submit]").await;
    browser.click(&submit).await;
    browser.wait_for_h1("Check your inbox").await;
    assert_eq!(
        app.status_of("reader@example.org").await.as_deref(),
        Some("pending")
    );

    let link = app.confirmation_link("reader@example.org").await;
    browser.goto(&link).await;
    browser.wait_for_h1("Confirm your subscription").await;
    assert_eq!(
        app.status_of("reader@example.org").await.as_deref(),
        Some("pending"),
        "opening the link confirms nothing"
    );
    let confirm = browser.find("button[type=submit]").await;
    browser.click(&confirm).await;
    browser.wait_for_h1("You are subscribed").await;
    assert_eq!(
        app.status_of("reader@example.org").await.as_deref(),
        Some("confirmed")
    );

    browser.quit().await;
    eprintln!(
        "browser test took {:.1} s; screenshot in {}",
        started.elapsed().as_secs_f64(),
        shot.display()
    );
}
