//! `gazette preview`: the files it writes (and removes), and the fallback
//! to the latest articles when nothing is new, with the `gazette` binary
//! on a real store.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::helpers::{Backend, TestDb, Workspace, digest_section, stderr, stdout, templates_dir};
use crate::on_both_backends;

on_both_backends!(a_preview_right_after_a_send_shows_the_latest_articles_and_says_so);

/// A copy of the templates directory in the workspace, which the
/// configuration then names: the tests edit it.
fn copy_templates(ws: &Workspace) -> PathBuf {
    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy_dir(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), &target).unwrap();
            }
        }
    }
    let copy = ws.dir.path().join("templates");
    copy_dir(&templates_dir(), &copy);
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
