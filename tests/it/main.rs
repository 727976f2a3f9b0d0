//! Gazette's integration tests: one binary, real SQLite and Postgres, a
//! real SMTP server on loopback, and the `gazette` binary itself. The
//! modules follow the crate's rooms; `helpers` and `smtp` are the real
//! parts they share.

mod helpers;
mod smtp;

mod app;
mod bounces;
mod config;
mod delivery;
mod feeds;
mod import;
mod mail;
mod preview;
mod render;
mod retention;
mod schedule;
mod store;
mod web;
