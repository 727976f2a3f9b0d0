//! The commands, as library functions that print what the operator sees:
//! one file per command family. `main.rs` parses the command line and
//! calls them.

mod articles;
mod bounces;
mod check;
mod daemon;
mod demo;
mod dkim;
mod feeds;
mod ledger;
mod preview;
mod preview_server;
mod process;
mod progress;
mod send;
mod subscribers;

pub use self::articles::{articles_add, articles_import, articles_list, articles_remove};
pub use self::bounces::{IngestFailed, bounces_ingest};
pub use self::check::check;
pub use self::daemon::{run, serve};
pub use self::demo::demo;
pub use self::dkim::{dkim_keygen, dns_record};
pub use self::feeds::{feeds_fetch, feeds_list};
pub use self::ledger::fold_ledger;
pub use self::preview::{
    Preview, PreviewFiles, ReaderChoice, preview, preview_command, print_preview, render_preview,
};
pub use self::preview_server::{DEFAULT_BIND as PREVIEW_BIND, ServeOptions, preview_serve};
pub use self::process::{counted, open, runtime_threads, shutdown_signal};
pub use self::progress::{LogWriter, Progress};
pub use self::send::{pause, resume, retry, run_status, send, send_test, status};
pub use self::subscribers::{
    ListFormat, subscribers_add, subscribers_export, subscribers_import, subscribers_list,
    subscribers_remove, subscribers_set,
};
