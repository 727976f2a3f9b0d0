use std::path::{Path, PathBuf};
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use gazette::{app, config};

/// Gazette: a newsletter digest mailer.
///
/// Reads `config/default.toml`, then `--config FILE`, then `GAZETTE__SECTION__KEY`
/// environment variables (for example `GAZETTE__DATABASE__URL`).
#[derive(Parser)]
#[command(name = "gazette", version, about, long_about)]
struct Cli {
    /// A configuration file read after config/default.toml.
    #[arg(
        long,
        short,
        global = true,
        env = "GAZETTE_CONFIG",
        value_name = "FILE"
    )]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load sample articles and subscribers and send a digest into the outbox.
    Demo,
    /// Run the daemon: send each digest on its schedule and serve the web
    /// pages (subscribe, confirm, unsubscribe) until SIGINT/SIGTERM.
    Run,
    /// Serve only the web pages (subscribe, confirm, unsubscribe, preferences).
    Serve,
    /// Plan one run of a digest now and deliver it to every confirmed subscriber.
    Send {
        /// The digest's name, as in the configuration.
        digest: String,
        /// Render every email and send none; records nothing.
        #[arg(long)]
        dry_run: bool,
        /// The slot to plan (RFC 3339) instead of now; a slot is sent once.
        #[arg(long, value_name = "TIME")]
        slot: Option<DateTime<Utc>>,
        /// Send what `preview` shows to these addresses instead, marked
        /// [TEST] in the subject; records nothing and touches no run.
        #[arg(long = "test", value_name = "ADDRESS", num_args = 1.., conflicts_with_all = ["dry_run", "slot"])]
        test: Vec<String>,
    },
    /// Write DIGEST.html, DIGEST.txt and DIGEST.eml, or serve them on a page that
    /// follows template edits (--serve): the email `send` would deliver now.
    ///
    /// With nothing new since the last digest, the preview shows the latest
    /// `max_articles` articles instead, and says so. A preview that fails
    /// leaves no earlier DIGEST.* files in DIR behind.
    Preview {
        digest: String,
        /// Render for this subscriber (default: the digest's first subscriber, or a sample).
        #[arg(long, value_name = "EMAIL")]
        subscriber: Option<String>,
        /// Where to write the files.
        #[arg(
            long,
            default_value = "preview",
            value_name = "DIR",
            conflicts_with = "serve"
        )]
        out: PathBuf,
        /// Render an earlier run (its stored articles) instead of what is new now.
        #[arg(long, value_name = "RUN")]
        run: Option<i64>,
        /// Serve a page instead: the email at desktop and phone widths, its
        /// text part, headers and size, with a digest and reader picker; it
        /// reloads itself when a template or the configuration changes. For
        /// local use: the page shows subscribers' names and addresses.
        #[arg(long)]
        serve: bool,
        /// Where --serve listens (loopback unless you choose otherwise).
        #[arg(
            long,
            value_name = "ADDR",
            default_value = app::PREVIEW_BIND,
            requires = "serve"
        )]
        bind: std::net::SocketAddr,
    },
    /// Manage articles.
    #[command(subcommand)]
    Articles(ArticlesCommand),
    /// Manage subscribers.
    #[command(subcommand)]
    Subscribers(SubscribersCommand),
    /// Bounces and complaints that come back by mail.
    #[command(subcommand)]
    Bounces(BouncesCommand),
    /// The RSS and Atom feeds of `[[feeds]]`: fetch them now, list their state.
    #[command(subcommand)]
    Feeds(FeedsCommand),
    /// List recent runs with their delivery counts, or one run's failed deliveries.
    Status {
        /// A run id: show its failed deliveries with the SMTP reply.
        run: Option<i64>,
        /// How many recent runs to list.
        #[arg(long, default_value_t = 20)]
        limit: i64,
        /// JSON instead: one object a run.
        #[arg(long)]
        json: bool,
    },
    /// Re-queue a run's failed deliveries and deliver them now.
    Retry { run: i64 },
    /// Pause a digest for every process: its slots are recorded as missed, not sent.
    Pause { digest: String },
    /// Resume a paused digest: it sends again from its next slot.
    Resume { digest: String },
    /// Fold the ledger rows of runs finished longer ago than
    /// `delivery.keep_ledger` into their runs' counts, now (`gazette run`
    /// does it every ten minutes).
    FoldLedger {
        /// List the runs that would be folded, and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Apply database migrations.
    Migrate,
    /// Check the configuration and templates, and reach the database and SMTP relay.
    Check,
    /// DKIM keys: `gazette dkim keygen`.
    #[command(subcommand)]
    Dkim(DkimCommand),
}

#[derive(Subcommand)]
enum DkimCommand {
    /// Write a new DKIM private key (RSA 2048 bits, or Ed25519) and print
    /// the DNS TXT record to publish and the `[[dkim]]` section to add.
    Keygen {
        /// The signing domain (`d=`): the From address's domain, or a
        /// parent of it.
        #[arg(long)]
        domain: String,
        /// The selector (`s=`): the record is published at
        /// SELECTOR._domainkey.DOMAIN.
        #[arg(long)]
        selector: String,
        /// Where to write the key (PKCS#8 PEM, mode 0600); never over an
        /// existing file.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// An Ed25519 key instead of RSA.
        #[arg(long)]
        ed25519: bool,
    },
}

impl Command {
    /// Whether the command writes a listing to standard output, which a
    /// reader such as `head` may stop reading early.
    fn lists(&self) -> bool {
        matches!(
            self,
            Command::Status { .. }
                | Command::Articles(ArticlesCommand::List { .. })
                | Command::Subscribers(SubscribersCommand::List { .. })
                | Command::Subscribers(SubscribersCommand::Export { .. })
                | Command::Feeds(FeedsCommand::List { .. })
        )
    }
}

/// Logs to standard error, as `[log]` says (`GAZETTE_LOG` or `RUST_LOG`
/// decide the filter when set).
fn start_logging(log: &config::LogSettings) -> Result<(), String> {
    let filter = log.filter(|var| std::env::var(var).ok());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .map_err(|e| format!("the log filter `{filter}` (GAZETTE_LOG or RUST_LOG): {e}"))?;
    let logs = tracing_subscriber::fmt()
        .with_writer(|| gazette::app::LogWriter)
        .with_env_filter(filter);
    match log.format {
        config::LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        config::LogFormat::Json => logs.json().init(),
    }
    Ok(())
}

/// Output piped into a reader that stops early (`gazette subscribers list
/// | head`) ends the process quietly, as it does other command-line tools,
/// instead of a panic: the default action of SIGPIPE, which Rust ignores.
/// (Only for the listing commands: the daemon keeps running if its log's
/// reader goes away.)
fn quiet_on_a_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: called first thing in main, before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[derive(Subcommand)]
enum ArticlesCommand {
    /// Import a JSON array or NDJSON file (`-` for standard input); upsert by url.
    Import { file: String },
    /// Add (or update, by url) one article.
    Add {
        #[arg(long)]
        url: String,
        #[arg(long)]
        title: String,
        #[arg(long)]
        summary: Option<String>,
        #[arg(long)]
        body: Option<String>,
        #[arg(long)]
        author: Option<String>,
        /// Comma-separated tags.
        #[arg(long, value_delimiter = ',')]
        tags: Vec<String>,
        /// RFC 3339 time (default: now).
        #[arg(long, value_name = "TIME")]
        published_at: Option<String>,
        /// An image shown with the article (http:// or https://).
        #[arg(long, value_name = "URL")]
        image_url: Option<String>,
    },
    /// List the newest articles.
    List {
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// One JSON object a line instead.
        #[arg(long)]
        json: bool,
    },
    /// Remove the article at URL (runs keep their copy).
    Remove { url: String },
}

#[derive(Subcommand)]
enum BouncesCommand {
    /// Read one message that came back (a delivery status notification, a
    /// feedback report, or anything else, which is ignored) and record
    /// what it says. For the MTA: Postfix's `pipe` transport or an alias.
    /// Exits 75 (try again later) when the message cannot be read or
    /// recorded, so the MTA keeps it.
    Ingest {
        /// The message's file (`-` or none: standard input).
        file: Option<String>,
        /// The envelope recipient (Postfix's `${recipient}`); else the
        /// message's Delivered-To, X-Original-To or To.
        #[arg(long, value_name = "ADDR")]
        recipient: Option<String>,
    },
}

#[derive(Subcommand)]
enum FeedsCommand {
    /// Fetch every feed (or the one named) now, and print what was added,
    /// updated or skipped.
    Fetch {
        /// A feed's name, as in the configuration.
        name: Option<String>,
    },
    /// Each feed's last fetch, status, next fetch and article count.
    List {
        /// One JSON object a line instead.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum SubscribersCommand {
    /// Add a confirmed subscriber (default: to every digest); for an existing
    /// one, add the name and digests given, keeping their other digests.
    Add {
        email: String,
        #[arg(long)]
        name: Option<String>,
        /// A digest to subscribe to; repeat for several.
        #[arg(long = "digest", value_name = "NAME")]
        digests: Vec<String>,
    },
    /// Change a subscriber: name, digests (replaced) or status.
    Set {
        email: String,
        /// The name (empty: none).
        #[arg(long)]
        name: Option<String>,
        /// A digest to receive, instead of their current ones; repeat for several.
        #[arg(long = "digest", value_name = "NAME")]
        digests: Vec<String>,
        /// confirmed, unsubscribed or bounced.
        #[arg(long)]
        status: Option<String>,
    },
    /// Delete a subscriber and their history.
    Remove { email: String },
    /// List subscribers (tab-separated: email, name, status, digests).
    List {
        /// pending, confirmed, unsubscribed or bounced.
        #[arg(long)]
        status: Option<String>,
        /// One JSON object a line instead.
        #[arg(long)]
        json: bool,
    },
    /// Write the confirmed subscribers as the CSV that `import` reads (`-`: standard output).
    Export { file: String },
    /// Import a CSV file with the header `email,name,digests` (digests `;`-separated).
    Import { file: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.command.lists() {
        quiet_on_a_closed_pipe();
    }
    // (Needs no configuration: a key is made before the configuration
    // names it.)
    if let Command::Dkim(DkimCommand::Keygen {
        domain,
        selector,
        out,
        ed25519,
    }) = &cli.command
    {
        return match app::dkim_keygen(domain, selector, out, *ed25519) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {}", gazette::errors::chain(&e));
                ExitCode::FAILURE
            }
        };
    }
    let settings = match config::load(Path::new("."), cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = start_logging(&settings.log) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let threads = match app::runtime_threads(std::env::var("TOKIO_WORKER_THREADS").ok().as_deref())
    {
        Ok(n) => n,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("cannot start the async runtime");
    // On a worker thread, not the main one: the delivery loop hands every
    // message to a worker and takes back its outcome, and waking the main
    // thread for each costs a futex call on both sides.
    let result = runtime
        .block_on(runtime.spawn(execute(cli.command, settings, cli.config)))
        .unwrap_or_else(|e| Err(anyhow::anyhow!("gazette stopped unexpectedly: {e}")));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // EX_TEMPFAIL: the MTA keeps the message and hands it over again.
        Err(e) if e.downcast_ref::<app::IngestFailed>().is_some() => {
            eprintln!("error: {}", gazette::errors::chain(&e));
            ExitCode::from(75)
        }
        Err(e) => {
            eprintln!("error: {}", gazette::errors::chain(&e));
            ExitCode::FAILURE
        }
    }
}

async fn execute(
    command: Command,
    settings: config::Settings,
    config_file: Option<PathBuf>,
) -> anyhow::Result<()> {
    match command {
        Command::Check => return app::check(settings).await,
        // Each opens what it needs itself: a preview's earlier files are
        // removed before the templates are checked, and the served preview
        // shows broken templates instead of stopping.
        Command::Preview {
            digest,
            subscriber,
            out,
            run,
            serve: false,
            ..
        } => {
            return app::preview_command(settings, &digest, subscriber.as_deref(), &out, run).await;
        }
        Command::Preview {
            digest,
            subscriber,
            run,
            serve: true,
            bind,
            ..
        } => {
            let options = app::ServeOptions {
                digest,
                subscriber,
                run,
                bind,
                config_file,
            };
            return app::preview_serve(settings, options).await;
        }
        _ => {}
    }
    let engine = match app::open(settings).await {
        Ok(engine) => engine,
        // (A message that cannot be recorded now is kept by the MTA.)
        Err(e) if matches!(command, Command::Bounces(_)) => return Err(app::IngestFailed(e).into()),
        Err(e) => return Err(e),
    };
    let _lock = match command {
        Command::Run
        | Command::Demo
        | Command::Retry { .. }
        | Command::Send { dry_run: false, .. }
            if !matches!(&command, Command::Send { test, .. } if !test.is_empty()) =>
        {
            Some(
                engine
                    .store
                    .lock_for_delivery(&engine.settings.database.url)?,
            )
        }
        _ => None,
    };
    let result = match command {
        Command::Migrate => {
            println!("database is up to date ({})", engine.store.backend());
            Ok(())
        }
        Command::Demo => app::demo(&engine).await,
        Command::Status {
            run: None,
            limit,
            json,
        } => app::status(&engine, limit, json).await,
        Command::Status {
            run: Some(run),
            json,
            ..
        } => app::run_status(&engine, run, json).await,
        Command::Retry { run } => app::retry(&engine, run).await,
        Command::FoldLedger { dry_run } => app::fold_ledger(&engine, dry_run).await,
        Command::Pause { digest } => app::pause(&engine, &digest).await,
        Command::Resume { digest } => app::resume(&engine, &digest).await,
        Command::Run => app::run(&engine).await,
        Command::Serve => app::serve(&engine).await,
        Command::Send { digest, test, .. } if !test.is_empty() => {
            app::send_test(&engine, &digest, &test).await
        }
        Command::Send {
            digest,
            dry_run,
            slot,
            ..
        } => app::send(&engine, &digest, slot, dry_run).await.map(|_| ()),
        Command::Check | Command::Preview { .. } | Command::Dkim(_) => {
            unreachable!("handled above")
        }
        Command::Articles(cmd) => match cmd {
            ArticlesCommand::Import { file } => app::articles_import(&engine, &file).await,
            ArticlesCommand::Add {
                url,
                title,
                summary,
                body,
                author,
                tags,
                published_at,
                image_url,
            } => {
                let input = gazette::import::ArticleInput {
                    url,
                    title,
                    summary,
                    body,
                    author,
                    tags,
                    published_at,
                    image_url,
                };
                app::articles_add(&engine, input).await
            }
            ArticlesCommand::List { limit, json } => app::articles_list(&engine, limit, json).await,
            ArticlesCommand::Remove { url } => app::articles_remove(&engine, &url).await,
        },
        Command::Bounces(BouncesCommand::Ingest { file, recipient }) => {
            app::bounces_ingest(&engine, file.as_deref(), recipient.as_deref()).await
        }
        Command::Feeds(cmd) => match cmd {
            FeedsCommand::Fetch { name } => app::feeds_fetch(&engine, name.as_deref()).await,
            FeedsCommand::List { json } => app::feeds_list(&engine, json).await,
        },
        Command::Subscribers(cmd) => match cmd {
            SubscribersCommand::Add {
                email,
                name,
                digests,
            } => app::subscribers_add(&engine, &email, name, &digests).await,
            SubscribersCommand::Set {
                email,
                name,
                digests,
                status,
            } => app::subscribers_set(&engine, &email, name, &digests, status.as_deref()).await,
            SubscribersCommand::Remove { email } => app::subscribers_remove(&engine, &email).await,
            SubscribersCommand::List { status, json } => {
                let format = if json {
                    app::ListFormat::Json
                } else {
                    app::ListFormat::Text
                };
                app::subscribers_list(&engine, status.as_deref(), format).await
            }
            SubscribersCommand::Export { file } => app::subscribers_export(&engine, &file).await,
            SubscribersCommand::Import { file } => app::subscribers_import(&engine, &file).await,
        },
    };
    engine.store.close().await;
    result
}
