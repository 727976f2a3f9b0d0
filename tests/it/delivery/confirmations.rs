//! Confirmation emails go out in the background: a relay that fails for a
//! while delays them, a relay that refuses an address changes nothing in
//! what the reader's page says, and every outcome is in the store.

use std::sync::Arc;

use reqwest::StatusCode;

use crate::helpers::{Backend, SmtpServer};
use crate::on_both_backends;
use crate::smtp::{Behaviour, Fault};
use crate::web::{WebApp, path_of};

on_both_backends!(
    a_relay_that_fails_for_a_while_delays_the_confirmation_email_and_loses_nothing,
    a_relay_that_refuses_an_address_changes_nothing_in_the_answer,
);

/// The mail status and last error of the confirmations of `email`.
async fn confirmation_rows(app: &WebApp, email: &str) -> Vec<(String, Option<String>, i32)> {
    let sql = "select c.mail_status, c.last_error, c.attempts from confirmations c \
               join subscribers s on s.id = c.subscriber_id where s.email_key = $1";
    match &app.engine.store {
        gazette::store::Store::Postgres(pool) => sqlx::query_as(sql)
            .bind(email)
            .fetch_all(pool)
            .await
            .unwrap(),
        gazette::store::Store::Sqlite(pool) => sqlx::query_as(sql)
            .bind(email)
            .fetch_all(pool)
            .await
            .unwrap(),
    }
}

async fn a_relay_that_fails_for_a_while_delays_the_confirmation_email_and_loses_nothing(
    backend: Backend,
) {
    // The relay answers 451 to the first two transactions (numbered from 1).
    let smtp = SmtpServer::start_with(Behaviour {
        policy: Arc::new(|n| {
            if n <= 2 {
                Fault::TempFail
            } else {
                Fault::Accept
            }
        }),
        ..Behaviour::default()
    });
    let app = WebApp::start_with(backend, "", smtp).await;

    let (status, page) = app
        .post_form("/subscribe", "email=ada%40example.org&digest=daily")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("Check your inbox"), "{page}");

    // The third attempt (retry_base_ms = 50 in the tests) is accepted.
    let link = app.confirmation_link("ada@example.org").await;
    assert_eq!(app.smtp.received_by("ada@example.org").len(), 1);
    assert_eq!(app.smtp.faults(Fault::TempFail), 2);
    assert_eq!(
        confirmation_rows(&app, "ada@example.org").await,
        vec![(
            "sent".to_string(),
            Some(
                "SMTP relay refused the message: transient error (451): \
                 4.3.0 temporary failure, try again later"
                    .to_string()
            ),
            3
        )]
    );
    let (status, _) = app.post_form(path_of(&link), "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        app.status_of("ada@example.org").await.as_deref(),
        Some("confirmed")
    );
}

async fn a_relay_that_refuses_an_address_changes_nothing_in_the_answer(backend: Backend) {
    let smtp = SmtpServer::start_rejecting(&["nobody@example.org"]);
    let app = WebApp::start_with(backend, "", smtp).await;

    let refused = app
        .post_form("/subscribe", "email=nobody%40example.org&digest=daily")
        .await;
    let accepted = app
        .post_form("/subscribe", "email=ada%40example.org&digest=daily")
        .await;
    assert_eq!(refused.0, StatusCode::OK);
    assert_eq!(refused, accepted, "the answer tells which mailbox exists");

    app.mailed().await;
    assert!(app.smtp.received_by("nobody@example.org").is_empty());
    assert_eq!(app.smtp.received_by("ada@example.org").len(), 1);
    let rows = confirmation_rows(&app, "nobody@example.org").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].0, "failed");
    let reply = rows[0].1.as_deref().unwrap();
    assert!(reply.contains("550"), "{reply}");
    assert_eq!(
        confirmation_rows(&app, "ada@example.org").await[0].0,
        "sent"
    );
}
