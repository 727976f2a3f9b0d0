//! Bad configuration stops the command with a message naming the file and
//! key (or template and line), and a non-zero exit.

use crate::helpers::{Workspace, digest_section, stderr, templates_dir};

fn workspace_with(extra: &str) -> Workspace {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/g.db", dir.path().display());
    let ws = Workspace::new(&db, None, extra);
    std::mem::forget(dir);
    ws
}

fn check_fails(ws: &Workspace) -> String {
    let out = ws.run(&["check"]);
    assert!(!out.status.success(), "check succeeded: {}", stderr(&out));
    assert_eq!(out.status.code(), Some(2));
    stderr(&out)
}

#[test]
fn an_unknown_key_is_refused_with_its_file_and_line() {
    let ws = workspace_with("[smtp]\nhots = \"x\"\n");
    // The generated file already has an [smtp] table: write a separate one.
    let extra = ws.dir.path().join("extra.toml");
    std::fs::write(&extra, "# comment\n[smtp]\nhots = \"relay.example.org\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gazette"))
        .args(["--config", extra.to_str().unwrap(), "check"])
        .current_dir(ws.dir.path())
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("extra.toml"), "{err}");
    assert!(err.contains("line 3"), "{err}");
    assert!(err.contains("unknown field `hots`"), "{err}");
}

#[test]
fn a_wrong_type_is_refused_with_its_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[smtp]\nport = \"twenty-five\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gazette"))
        .args(["--config", file.to_str().unwrap(), "check"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("bad.toml") && err.contains("line 2"), "{err}");
}

#[test]
fn a_bad_cron_line_and_an_unknown_time_zone_name_their_keys() {
    let ws = workspace_with(
        &digest_section("daily", "")
            .replace("0 7 * * *", "0 25 * * *")
            .replace("Europe/Berlin", "Europe/Berlim"),
    );
    let err = check_fails(&ws);
    assert!(err.contains("gazette.toml"), "{err}");
    assert!(err.contains("digests[0].schedule"), "{err}");
    assert!(
        err.contains("`0 25 * * *`: the hour field is 25, outside 0–23"),
        "{err}"
    );
    assert!(err.contains("digests[0].timezone"), "{err}");
    assert!(err.contains("Europe/Berlim"), "{err}");
}

#[test]
fn a_six_field_line_is_accepted_and_a_four_field_line_is_not() {
    let ws = workspace_with(&digest_section("daily", "").replace("0 7 * * *", "0 7 * *"));
    let err = check_fails(&ws);
    assert!(err.contains("4 fields"), "{err}");
    let ws = workspace_with(&digest_section("daily", "").replace("0 7 * * *", "30 0 7 * * 1"));
    let out = ws.run(&["check"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_missing_template_is_named() {
    let ws = workspace_with(&digest_section("daily", "template = \"weekly\""));
    let err = check_fails(&ws);
    assert!(err.contains("digests[0].template"), "{err}");
    assert!(err.contains("weekly.html.j2"), "{err}");
}

/// A templates directory with one broken template.
fn broken_templates(html: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("web")).unwrap();
    for f in gazette::render::Renderer::WEB_TEMPLATES.iter().chain(&[
        "layout.html.j2",
        "digest.txt.j2",
        "web/layout.html.j2",
    ]) {
        std::fs::copy(templates_dir().join(f), dir.path().join(f)).unwrap();
    }
    std::fs::write(dir.path().join("digest.html.j2"), html).unwrap();
    dir
}

fn run_with_templates(dir: &tempfile::TempDir) -> (Option<i32>, String) {
    let ws = workspace_with(&digest_section("daily", ""));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gazette"))
        .args(["check"])
        .current_dir(ws.dir.path())
        .env("GAZETTE_CONFIG", &ws.config)
        .env("GAZETTE__TEMPLATES__DIR", dir.path())
        .output()
        .unwrap();
    (out.status.code(), stderr(&out))
}

#[test]
fn a_template_syntax_error_names_the_template_and_line() {
    let dir = broken_templates("<p>ok</p>\n<p>{% for a in articles %}{{ a.title }}</p>\n");
    let (code, err) = run_with_templates(&dir);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("digest.html.j2"), "{err}");
    assert!(err.contains("line 2"), "{err}");
}

#[test]
fn a_misspelt_template_variable_is_an_error_not_an_empty_string() {
    let dir = broken_templates("<p>ok</p>\n\n<p>{{ subscriber.nmae }}</p>\n");
    let (code, err) = run_with_templates(&dir);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("undefined value `subscriber.nmae` (template digest.html.j2, line 3)"),
        "{err}"
    );
}

#[test]
fn environment_variables_override_files_and_bad_values_name_the_variable() {
    let ws = workspace_with(&digest_section("daily", ""));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gazette"))
        .args(["check"])
        .current_dir(ws.dir.path())
        .env("GAZETTE_CONFIG", &ws.config)
        .env("GAZETTE__SMTP__PORT", "not-a-port")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("GAZETTE__SMTP__PORT"), "{err}");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gazette"))
        .args(["check"])
        .current_dir(ws.dir.path())
        .env("GAZETTE_CONFIG", &ws.config)
        .env("GAZETTE__WEB__BASE_URL", "ftp://nope")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("environment variable GAZETTE__WEB__BASE_URL") && err.contains("web.base_url"),
        "{err}"
    );
}

#[test]
fn a_bad_runtime_thread_count_is_named_and_a_good_one_runs() {
    let ws = workspace_with(&digest_section("daily", ""));
    let check = |threads: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_gazette"))
            .args(["check"])
            .current_dir(ws.dir.path())
            .env("GAZETTE_CONFIG", &ws.config)
            .env("TOKIO_WORKER_THREADS", threads)
            .output()
            .unwrap()
    };
    for bad in ["0", "two"] {
        let out = check(bad);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains(&format!(
                "TOKIO_WORKER_THREADS must be a positive number, not `{bad}`"
            )),
            "{err}"
        );
    }
    let out = check("3");
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn the_smtp_password_never_appears_in_output() {
    let ws = workspace_with(&digest_section("daily", ""));
    // Nothing listens on port 1: the check fails to reach the relay.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gazette"))
        .args(["check"])
        .current_dir(ws.dir.path())
        .env("GAZETTE_CONFIG", &ws.config)
        .env("GAZETTE__MAIL__TRANSPORT", "smtp")
        .env("GAZETTE__SMTP__PORT", "1")
        .env("GAZETTE__SMTP__USERNAME", "mailer")
        .env("GAZETTE__SMTP__PASSWORD", "0123456789")
        .env("GAZETTE_LOG", "debug")
        .output()
        .unwrap();
    let all = format!("{}{}", stderr(&out), crate::helpers::stdout(&out));
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("127.0.0.1:1"), "{all}");
    assert!(!all.contains("0123456789"), "{all}");

    let settings = ws.settings();
    assert!(!format!("{settings:?}").contains("0123456789"));
}

#[test]
fn an_all_digit_password_from_the_environment_stays_a_string() {
    let ws = workspace_with(&digest_section("daily", ""));
    let env = [
        ("GAZETTE__SMTP__PASSWORD".to_string(), "007".to_string()),
        ("GAZETTE__SMTP__USERNAME".to_string(), "bond".to_string()),
    ];
    let settings = gazette::config::load_from(ws.dir.path(), Some(&ws.config), env).unwrap();
    assert_eq!(settings.smtp.password.unwrap().expose(), "007");
}

#[test]
fn an_unreadable_or_empty_ca_file_names_its_key_and_path() {
    let ws = workspace_with(&digest_section("daily", ""));
    let missing = ws.dir.path().join("missing-ca.pem");
    ws.set_smtp(&format!(
        "tls = \"starttls\"\nca_file = \"{}\"\n",
        missing.display()
    ));
    let err = check_fails(&ws);
    assert!(err.contains("`smtp.ca_file`"), "{err}");
    assert!(
        err.contains("missing-ca.pem") && err.contains("cannot read"),
        "{err}"
    );

    let ws = workspace_with(&digest_section("daily", ""));
    let not_pem = ws.dir.path().join("not-a-ca.pem");
    std::fs::write(&not_pem, "just some text\n").unwrap();
    ws.set_smtp(&format!(
        "tls = \"tls\"\nca_file = \"{}\"\n",
        not_pem.display()
    ));
    let err = check_fails(&ws);
    assert!(
        err.contains("`smtp.ca_file`") && err.contains("not-a-ca.pem"),
        "{err}"
    );
    assert!(err.contains("no PEM certificate"), "{err}");
}

/// Runs `gazette check` with `toml` as the only configuration file.
fn check_with_file(toml: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret.toml");
    std::fs::write(&file, toml).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gazette"))
        .args(["--config", file.to_str().unwrap(), "check"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let all = format!("{}{}", stderr(&out), crate::helpers::stdout(&out));
    (out.status.code(), all)
}

#[test]
fn a_toml_error_on_a_line_with_a_password_does_not_print_it() {
    // An unterminated string: the error quotes the line it is on.
    let (code, all) = check_with_file("[smtp]\nusername = \"mailer\"\npassword = \"hunter2\n");
    assert_eq!(code, Some(2), "{all}");
    assert!(
        all.contains("secret.toml") && all.contains("line 3"),
        "{all}"
    );
    assert!(all.contains("password = … (hidden"), "{all}");
    assert!(!all.contains("hunter2"), "{all}");

    // A database address with credentials, on a line with an error.
    let (code, all) =
        check_with_file("[database]\nurl = \"postgres://gazette:hunter2@db/gazette\" x\n");
    assert_eq!(code, Some(2), "{all}");
    assert!(all.contains("line 2"), "{all}");
    assert!(!all.contains("hunter2"), "{all}");

    // An error elsewhere still shows its line.
    let (code, all) = check_with_file("[smtp]\nport = \"twenty-five\"\n");
    assert_eq!(code, Some(2), "{all}");
    assert!(all.contains("port = \"twenty-five\""), "{all}");
}

#[test]
fn a_misspelt_database_scheme_is_named_without_the_address() {
    let (code, all) =
        check_with_file("[database]\nurl = \"postgress://gazette:hunter2@db/gazette\"\n");
    assert_eq!(code, Some(2), "{all}");
    assert!(all.contains("`database.url`"), "{all}");
    assert!(all.contains("its scheme is `postgress`"), "{all}");
    assert!(!all.contains("hunter2") && !all.contains("@db"), "{all}");

    let (code, all) = check_with_file("[database]\nurl = \"gazette:hunter2@db/gazette\"\n");
    assert_eq!(code, Some(2), "{all}");
    assert!(!all.contains("hunter2"), "{all}");
}

#[test]
fn a_password_in_the_database_query_string_is_hidden_when_the_database_is_unreachable() {
    // Nothing listens on port 1: the error names the address, redacted.
    let (code, all) = check_with_file(&format!(
        "[database]\nurl = \"postgres://127.0.0.1:1/gazette?user=gazette&password=hunter2\"\n\
         [templates]\ndir = \"{}\"\n",
        templates_dir().display()
    ));
    assert_ne!(code, Some(0), "{all}");
    assert!(all.contains("password=***"), "{all}");
    assert!(!all.contains("hunter2"), "{all}");
}

#[test]
fn an_unknown_log_level_is_named_with_the_levels_there_are() {
    let ws = workspace_with(&format!(
        "{}\n[log]\nlevel = \"loud\"\n",
        digest_section("daily", "")
    ));
    let err = check_fails(&ws);
    assert!(err.contains("key `log.level`"), "{err}");
    assert!(
        err.contains("`loud` is not one of error, warn, info, debug, trace"),
        "{err}"
    );
}

#[test]
fn a_cron_field_out_of_range_is_named_with_its_range() {
    for (line, said) in [
        ("61 7 * * *", "the minute field is 61, outside 0–59"),
        ("0 7 32 * *", "the day-of-month field is 32, outside 1–31"),
        (
            "0 7 * 1-13 *",
            "the month field `1-13` has 13, outside 1–12",
        ),
        (
            "0 7 * * 1,8",
            "the day-of-week field `1,8` has 8, outside 0–7",
        ),
        ("75 0 7 * * *", "the second field is 75, outside 0–59"),
    ] {
        let ws = workspace_with(&digest_section("daily", "").replace("0 7 * * *", line));
        let err = check_fails(&ws);
        assert!(err.contains(&format!("`{line}`: {said}")), "{line}: {err}");
    }
}

#[test]
fn a_missing_templates_directory_is_one_error_naming_its_key() {
    let ws = workspace_with(&format!(
        "{}{}",
        digest_section("daily", ""),
        digest_section("weekly", "")
    ));
    let config = std::fs::read_to_string(&ws.config).unwrap();
    let dir = format!("dir = \"{}\"", templates_dir().display());
    assert!(config.contains(&dir));
    std::fs::write(
        &ws.config,
        config.replace(&dir, "dir = \"no-such-templates\""),
    )
    .unwrap();
    let err = check_fails(&ws);
    assert_eq!(err.matches("\n  - ").count(), 1, "{err}");
    // (Relative to the configuration file's directory.)
    let missing = ws.config.parent().unwrap().join("no-such-templates");
    assert!(
        err.contains(&format!(
            "key `templates.dir`: `{}` is not a directory",
            missing.display()
        )),
        "{err}"
    );
}

#[test]
fn an_allowed_origin_with_a_path_is_refused_with_its_key() {
    let ws = workspace_with(&digest_section("daily", ""));
    let config = std::fs::read_to_string(&ws.config).unwrap().replace(
        "bind = \"127.0.0.1:0\"",
        "bind = \"127.0.0.1:0\"\nallowed_origins = [\"https://blog.example.org/signup\"]",
    );
    std::fs::write(&ws.config, config).unwrap();
    let err = check_fails(&ws);
    assert!(err.contains("key `web.allowed_origins`"), "{err}");
    assert!(
        err.contains("`https://blog.example.org/signup` is not an origin"),
        "{err}"
    );
}

#[test]
fn a_missing_default_file_is_said_not_skipped_silently() {
    let ws = workspace_with(&digest_section("daily", ""));
    // The workspace has no config/default.toml: check says so.
    let out = ws.run(&["check"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let dir = std::fs::canonicalize(ws.dir.path()).unwrap();
    let said = format!(
        "configuration: ok (no config/default.toml in {}: built-in defaults, {})",
        dir.display(),
        ws.config.display()
    );
    assert!(
        crate::helpers::stdout(&out).contains(&said),
        "{}",
        crate::helpers::stdout(&out)
    );

    // With one, it is the first source named.
    std::fs::create_dir_all(ws.dir.path().join("config")).unwrap();
    std::fs::write(
        ws.dir.path().join("config/default.toml"),
        "[web]\nsubscribe_per_hour = 5\n",
    )
    .unwrap();
    let out = ws.run(&["check"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        crate::helpers::stdout(&out).contains("configuration: ok (./config/default.toml, "),
        "{}",
        crate::helpers::stdout(&out)
    );
}

/// Copies the shipped templates into `dir`.
fn copy_templates(dir: &std::path::Path) {
    crate::helpers::copy_dir(&templates_dir(), dir);
}

#[test]
fn relative_paths_in_a_config_file_are_from_that_files_directory() {
    let root = tempfile::tempdir().unwrap();
    let site = root.path().join("site");
    let elsewhere = root.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    copy_templates(&site.join("tpl"));
    std::fs::write(
        site.join("gazette.toml"),
        format!(
            "[database]\nurl = \"sqlite://data/g.db\"\n\
             [mail]\ntransport = \"outbox\"\noutbox_dir = \"outbox\"\n\
             [templates]\ndir = \"tpl\"\n{}",
            digest_section("daily", "")
        ),
    )
    .unwrap();
    let gazette = |args: &[&str], env: &[(&str, &str)]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_gazette"))
            .args(["--config", "../site/gazette.toml"])
            .args(args)
            .envs(env.iter().copied())
            .current_dir(&elsewhere)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        out
    };
    gazette(
        &["subscribers", "add", "ada@example.org", "--digest", "daily"],
        &[],
    );
    gazette(
        &[
            "articles",
            "add",
            "--url",
            "https://example.org/a",
            "--title",
            "A",
        ],
        &[],
    );
    gazette(&["send", "daily"], &[]);

    // The database and the outbox are beside the file, not in the working
    // directory.
    assert!(site.join("data/g.db").is_file());
    let sent = std::fs::read_dir(site.join("outbox")).unwrap().count();
    assert_eq!(sent, 1);
    let left: Vec<_> = std::fs::read_dir(&elsewhere).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");

    // A path from the environment is from the working directory.
    let env = [("GAZETTE__TEMPLATES__DIR", "tpl")];
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gazette"))
        .args(["--config", "../site/gazette.toml", "check"])
        .envs(env)
        .current_dir(&elsewhere)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("key `templates.dir`: `tpl` is not a directory"),
        "{err}"
    );
    copy_templates(&elsewhere.join("tpl"));
    gazette(&["check"], &env);
}

#[test]
fn an_unclosed_block_is_named_with_the_line_it_opened_on() {
    let dir = broken_templates(
        "<p>ok</p>\n{% for a in articles %}\n{% if a.title %}\n{{ a.title }}\n{% endfor %}\n",
    );
    let (code, err) = run_with_templates(&dir);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("(template digest.html.j2, line 5)")
            && err.contains("the `{% if %}` opened on line 3 is not closed"),
        "{err}"
    );
}

#[test]
fn an_undefined_attribute_is_named_and_so_is_the_including_template() {
    let dir = broken_templates("<p>ok</p>\n<p>{{ articles[0].thumbnail }}</p>\n");
    let (code, err) = run_with_templates(&dir);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("undefined value `articles[0].thumbnail` (template digest.html.j2, line 2)"),
        "{err}"
    );

    // In an included template: where the include is, and the mistake.
    let dir = broken_templates("<p>ok</p>\n\n{% include 'parts/lead.html.j2' %}\n");
    std::fs::create_dir(dir.path().join("parts")).unwrap();
    std::fs::write(
        dir.path().join("parts/lead.html.j2"),
        "<p>lead</p>\n{{ digest.subtitle }}\n",
    )
    .unwrap();
    let (code, err) = run_with_templates(&dir);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("could not render include (template digest.html.j2, line 3)")
            && err.contains(
                "undefined value `digest.subtitle` (template parts/lead.html.j2, line 2)"
            ),
        "{err}"
    );
}

#[test]
fn a_template_rendered_in_full_is_said_once_by_check_and_send_naming_the_expression() {
    let dir = broken_templates(
        "<p>ok</p>\n{% for a in articles %}{{ a.title }}{% endfor %}\n<p>{{ subscriber.name|upper }}</p>\n",
    );
    let ws = workspace_with(&digest_section("daily", ""));
    let gazette = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_gazette"))
            .args(args)
            .current_dir(ws.dir.path())
            .env("GAZETTE_CONFIG", &ws.config)
            .env("GAZETTE__TEMPLATES__DIR", dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        out
    };
    let said =
        "digest.html.j2, line 3: `{{ subscriber.name|upper }}` does more with a reader's value";
    let check = crate::helpers::stdout(&gazette(&["check"]));
    assert_eq!(check.matches(said).count(), 1, "{check}");
    assert!(
        check.contains("daily: each email is rendered in full for every reader"),
        "{check}"
    );

    // Not by commands that render nothing.
    let list = gazette(&["articles", "list"]);
    assert!(
        !stderr(&list).contains("rendered in full"),
        "{}",
        stderr(&list)
    );

    ws.import_readers(2);
    ws.add_article("News");
    let send = stderr(&gazette(&["send", "daily"]));
    assert_eq!(send.matches(said).count(), 1, "{send}");
}

#[test]
fn bad_feeds_are_named_by_index_and_key() {
    let ws = workspace_with(
        "[[feeds]]\nurl = \"https://blog.example.org/feed.xml\"\n\
         [[feeds]]\nurl = \"https://blog.example.org/other.xml\"\ninterval = \"often\"\n\
         [[feeds]]\nname = \"ftp\"\nurl = \"ftp://files.example.org/feed\"\n\
         [[feeds]]\nname = \"fine\"\nurl = \"https://fine.example.org/\"\ntimeout = \"0s\"\nmax_bytes = 0\n",
    );
    let err = check_fails(&ws);
    for expected in [
        "key `feeds[1].name`: `blog.example.org` (taken from the URL's host: set a `name`) is also the name of feeds[0]",
        "key `feeds[1].interval`: `often` is not a duration",
        "key `feeds[2].url`: `ftp://files.example.org/feed` is not an http:// or https:// address",
        "key `feeds[3].timeout`: must be longer than zero",
        "key `feeds[3].max_bytes`: must be at least 1",
    ] {
        assert!(err.contains(expected), "no `{expected}` in:\n{err}");
    }
    assert!(err.contains("gazette.toml"), "{err}");
}

#[test]
fn a_short_api_token_is_refused_without_being_printed() {
    let ws = workspace_with("[api]\ntoken = \"hunter2-secret\"\n");
    let err = check_fails(&ws);
    assert!(err.contains("key `api.token`"), "{err}");
    assert!(err.contains("use at least 24"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn a_style_rule_that_cannot_be_inlined_is_a_warning_of_check_and_send_naming_the_template() {
    let dir = broken_templates(
        "{% extends \"layout.html.j2\" %}\n{% block style %}\n.card a:hover { color: #ff0000 }\n{% endblock %}\n\
         {% block content %}<tr><td>{{ subscriber.email }}</td></tr>{% endblock %}\n",
    );
    let ws = workspace_with(&digest_section("daily", ""));
    let gazette = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_gazette"))
            .args(args)
            .current_dir(ws.dir.path())
            .env("GAZETTE_CONFIG", &ws.config)
            .env("GAZETTE__TEMPLATES__DIR", dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        out
    };
    let said =
        "digest.html.j2: the rule `.card a:hover` at line 10 of a `<style>` block is not inlined";
    let check = crate::helpers::stdout(&gazette(&["check"]));
    assert_eq!(check.matches(said).count(), 1, "{check}");
    // The shipped templates' own rules all inline.
    assert_eq!(check.matches("warning:").count(), 1, "{check}");

    ws.import_readers(2);
    ws.add_article("News");
    let send = stderr(&gazette(&["send", "daily"]));
    assert_eq!(send.matches(said).count(), 1, "{send}");
}

#[test]
fn a_malformed_sns_topic_arn_is_named_by_its_entry() {
    let ws = workspace_with(
        "[bounces]\nwebhook_token = \"bounce-hook-0123456789abcdef012345\"\nsns_topic_arns = [\"arn:aws:sns:us-west-2:123456789012:MyTopic\", \"MyTopic\"]\n",
    );
    let err = check_fails(&ws);
    assert!(err.contains("key `bounces.sns_topic_arns`"), "{err}");
    assert!(err.contains("entry 2, `MyTopic`"), "{err}");
    assert!(!err.contains("entry 1"), "{err}");
}
