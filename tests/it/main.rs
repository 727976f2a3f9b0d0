//! Gazette's integration tests: one binary, real SQLite and Postgres, a
//! real SMTP server on loopback, and the `gazette` binary itself.

mod helpers;
mod smtp;

mod browser;
mod cli;
mod config_errors;
mod confirmations;
mod faults;
mod message;
mod pipeline;
mod render;
mod scheduling;
mod store;
mod tls;
mod web;
mod web_security;
