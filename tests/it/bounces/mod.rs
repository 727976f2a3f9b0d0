//! Bounces and complaints: the store's records and the readers' state
//! (`store`), messages that come back through `gazette bounces ingest`
//! (`ingest`), refusals at RCPT during a send (`smtp`), and the relays'
//! webhook (`webhook`), with Amazon SES's notifications through SNS
//! (`ses`).

mod ingest;
mod ses;
mod smtp;
mod store;
mod webhook;

/// `[bounces]` with a return path.
pub const WITH_RETURN_PATH: &str = "\n[bounces]\nreturn_path = \"bounces@news.example.org\"\n";

use reqwest::StatusCode;
use serde_json::Value;

use gazette::domain::{EmailAddress, SubscriberStatus};
use gazette::store::{NewSubscriber, Timestamp};

use crate::web::WebApp;

/// The text of `tests/fixtures/bounces/NAME`.
fn fixture(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/bounces")
        .join(name);
    std::fs::read_to_string(path).unwrap()
}

/// `POST /webhooks/bounces{query}` with `headers` and `body`: the status,
/// and the answer as JSON (as a JSON string when it is not JSON).
async fn post_webhook(
    app: &WebApp,
    query: &str,
    headers: &[(&str, &str)],
    body: String,
) -> (StatusCode, Value) {
    let mut request = app
        .http
        .post(format!("{}/webhooks/bounces{query}", app.base))
        .body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Adds confirmed readers with these addresses, of no digest.
async fn add(app: &WebApp, emails: &[&str]) {
    let subscribers: Vec<NewSubscriber> = emails
        .iter()
        .map(|e| NewSubscriber {
            email: EmailAddress::parse(e).unwrap(),
            name: None,
            digests: Vec::new(),
        })
        .collect();
    app.engine
        .store
        .upsert_subscribers(&subscribers, Timestamp::now())
        .await
        .unwrap();
}

/// The id and status of the reader with address `email`.
async fn reader(app: &WebApp, email: &str) -> (i64, SubscriberStatus) {
    let found = app
        .engine
        .store
        .find_subscriber(&EmailAddress::parse(email).unwrap())
        .await
        .unwrap()
        .unwrap();
    (found.id, found.status)
}
