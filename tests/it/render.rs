//! Rendering a run once and filling in each reader gives exactly the email
//! the templates render for that reader; templates that do more with a
//! reader's values than print or test them are rendered for every reader.

use chrono::{Duration, TimeZone, Utc};
use gazette::app;
use gazette::domain::EmailAddress;
use gazette::mail::BodyEncoder;
use gazette::render::{Recipient, RunContext};
use gazette::store::RunArticle;

use crate::helpers::{
    Backend, SmtpServer, TestDb, Workspace, copy_dir, digest_section, templates_dir,
};

/// Digest templates that use reader values in ways a skeleton can stand
/// for: printed in HTML and text, in an inline `if`, under
/// `{% autoescape false %}`, in an included template, in the subject; and
/// in HTML with a `<style>` block, whose CSS is inlined: in text, in
/// attributes, in a comment and in the title.
const SKELETON_OK: &[(&str, &str)] = &[
    (
        "printed.html.j2",
        "{% extends \"partials/bare.html.j2\" %}{% block content %}\
         <p>Hi {{ subscriber.name if subscriber.name else \"reader\" }} &lt;{{ subscriber.email }}&gt;</p>\
         {% for a in articles %}<h2>{{ a.title }}</h2>{% endfor %}\
         {% for a in articles %}{{ a.title|truncate(12) }} {{ a.title|wordcount }} words, \
         {{ a.published_at_iso|datetimeformat(format=\"[day] [month repr:short]\") }}\
         {{ (a.body or \"\")|markdown }}{% endfor %}\
         {% autoescape false %}<!-- {{ subscriber.name }} -->{% endautoescape %}\
         {% include \"partials/footer.html.j2\" %}{% endblock %}",
    ),
    (
        "printed.txt.j2",
        "{% if subscriber.name %}Dear {{ subscriber.name }}{% else %}Dear reader{% endif %},\n\
         {% if not subscriber.name %}(no name on file){% endif %}\n\
         {% for a in articles %}- {{ a.title }} {{ a.url }}\n{% endfor %}\
         {{ links.unsubscribe }} {{ links.preferences }} {{ links.web_view }}\n",
    ),
    (
        "partials/bare.html.j2",
        "<!DOCTYPE html>\n<html><head><title>{% block title %}{% endblock %}</title></head>\n\
         <body>{% block content %}{% endblock %}</body></html>\n",
    ),
    (
        "styled.html.j2",
        "{% extends \"layout.html.j2\" %}\
         {% block title %}{{ digest.title }} for {{ subscriber.name }}{% endblock %}\
         {% block style %}.hi { color: #123456 } a.out { font-weight: bold } td h2 { margin: 0 }{% endblock %}\
         {% block content %}<tr><td>\
         <p class=\"hi\">Hi {{ subscriber.name if subscriber.name else \"reader\" }} &lt;{{ subscriber.email }}&gt;</p>\n\
         <!-- for {{ subscriber.name }} -->\n\
         <a class=\"out\" href=\"{{ links.unsubscribe }}\" title=\"{{ subscriber.name }}\">unsubscribe {{ subscriber.email }}</a>\n\
         {% if links.web_view %}<a href=\"{{ links.web_view }}\">web</a>{% endif %}\
         {% for a in articles %}<h2>{{ a.title }}</h2>{% endfor %}\
         </td></tr>{% endblock %}\
         {% block footer %}{{ subscriber.name }}{% endblock %}",
    ),
    (
        "styled.txt.j2",
        "Dear {{ subscriber.name }} {{ subscriber.email }}\n{{ links.unsubscribe }}\n",
    ),
    (
        "partials/footer.html.j2",
        "<a href=\"{{ links.unsubscribe }}\">unsubscribe {{ subscriber.email }}</a>\
         {% if links.web_view %}<a href=\"{{ links.web_view }}\">web</a>{% endif %}",
    ),
];

/// A reader value printed without escaping into HTML whose CSS is
/// inlined: its markup would be parsed with the document, so no skeleton
/// stands for it.
const STYLED_RAW: &str = "{% extends \"layout.html.j2\" %}{% block content %}<tr><td>\
    {% autoescape false %}{{ subscriber.name }}{% endautoescape %} {{ subscriber.email }}\
    </td></tr>{% endblock %}";

/// One digest per way of using a reader value that a skeleton cannot
/// stand for. Each renders differently for the reader named in
/// `readers()` than a skeleton would.
const PER_READER: &[(&str, &str)] = &[
    (
        "compare",
        "{% if subscriber.email == \"vip@example.org\" %}VIP{% else %}regular{% endif %} {{ subscriber.email }}",
    ),
    ("filter", "{{ subscriber.email|upper }}"),
    ("length", "{{ subscriber.email|length }}"),
    ("concat", "{{ subscriber.name ~ \"!\" }}"),
    ("test", "{% if subscriber.name is string %}named{% endif %}"),
    (
        "and",
        "{% if subscriber.name and subscriber.name != \"Ann\" %}not Ann{% endif %}",
    ),
    ("set", "{% set n = subscriber.email %}{{ n[:3] }}"),
    (
        "macro",
        "{% macro hi(n) %}Hi {{ n }}{% endmacro %}{{ hi(subscriber.name)|upper }}",
    ),
    (
        "capture",
        "{% filter upper %}{{ subscriber.email }}{% endfilter %}",
    ),
    ("whole", "{{ subscriber }}"),
];

fn readers() -> Vec<(Option<&'static str>, &'static str, &'static str)> {
    vec![
        (None, "anon@example.org", "tok-1"),
        (Some(""), "empty@example.org", "tok-2"),
        (Some("Ann"), "vip@example.org", "tok-3"),
        (
            Some("Zoë <O'Neil> & \"Co\" {{ x }}"),
            "zoe+news@example.org",
            "tok/4",
        ),
        // What an HTML parser changes: NUL, CR, a no-break space.
        (
            Some("Nul\0 and\u{a0}no-break\rCR & <b>"),
            "nul@example.org",
            "tok&5",
        ),
        // Long enough for soft line breaks, with line breaks and `=`.
        (
            Some(
                "Line\r\nbreak, then a name that goes on well beyond seventy-six characters =3D ünïcödé\nend",
            ),
            "long@example.org",
            "tok-5",
        ),
    ]
}

fn articles() -> Vec<RunArticle> {
    (0..3)
        .map(|i| RunArticle {
            article_id: i,
            url: format!("https://example.org/a/{i}?x=1&y=<2>"),
            title: format!("Article {i} <b>& \"quoted\"</b>"),
            summary: (i != 1).then(|| format!("Summary {i}")),
            body: None,
            author: (i == 2).then(|| "An Author".to_string()),
            tags: vec![format!("tag{i}")],
            published_at: Utc.with_ymd_and_hms(2026, 11, 28, 8, i as u32, 0).unwrap(),
            image_url: (i == 2).then(|| "https://example.org/img/2.png?a=1&b=\"2\"".to_string()),
            summary_text: None,
            html: false,
        })
        .chain(std::iter::once(feed_article()))
        .collect()
}

/// An article from a feed: sanitized HTML, its plain text, an image.
fn feed_article() -> RunArticle {
    RunArticle {
        article_id: 3,
        url: "https://feed.example.org/post".into(),
        title: "From a feed".into(),
        summary: Some("<p>Feed <b>markup</b> &amp; more</p>".into()),
        summary_text: Some("Feed markup & more".into()),
        body: Some("<p>The body</p>".into()),
        image_url: Some("https://feed.example.org/img.png".into()),
        html: true,
        published_at: Utc.with_ymd_and_hms(2026, 11, 28, 9, 0, 0).unwrap(),
        ..Default::default()
    }
}

/// The shipped templates show a feed's sanitized markup as markup and a
/// text summary escaped, the image (with its size and alt text) only
/// where there is one, and plain text in the text part.
#[test]
fn feed_markup_images_and_plain_text_summaries_render_on_both_paths() {
    let ws = workspace();
    let settings = ws.settings();
    let renderer = gazette::render::Renderer::new(&settings).expect("templates load");
    let digest = settings.digest("daily").unwrap();
    let slot = Utc.with_ymd_and_hms(2026, 11, 29, 6, 0, 0).unwrap();
    let run = RunContext::new(digest, slot, &articles(), Some(1));
    let reader = Recipient {
        name: Some("Ann"),
        email: "ann@example.org",
        unsubscribe_token: "tok",
    };
    let fast = renderer.render(&run, &reader).unwrap();
    let full = renderer.render_full(&run, &reader).unwrap();
    assert_eq!(fast, full);
    let html = &full.html;
    assert!(
        html.contains("<p>Feed <b>markup</b> &amp; more</p>"),
        "{html}"
    );
    assert!(html.contains("Summary 0"), "{html}");
    // (The shipped templates' CSS is inlined, and the document written
    // out again escapes `&` and `"` in attribute values, not `/` or `<`.)
    assert!(
        html.contains(
            r#"<img src="https://feed.example.org/img.png" alt="From a feed" width="552" style="display:block;width:100%;max-width:552px;height:auto;border:0;margin:0 0 10px 0">"#
        ),
        "{html}"
    );
    assert!(
        html.contains(
            r#"<img src="https://example.org/img/2.png?a=1&amp;b=&quot;2&quot;" alt="Article 2 <b>&amp; &quot;quoted&quot;</b>" width="552" style="display:block;"#
        ),
        "{html}"
    );
    assert_eq!(html.matches("<img ").count(), 2, "{html}");
    let text = &full.text;
    assert!(text.contains("   Feed markup & more\n"), "{text}");
    assert!(text.contains("   Summary 0\n"), "{text}");
    assert!(!text.contains("<b>markup"), "{text}");
    assert!(!text.contains("<p>"), "{text}");
}

/// A workspace whose templates directory holds the bundled templates and
/// the ones above, with one digest per template.
fn workspace() -> Workspace {
    let mut digests = digest_section("daily", "template = \"digest\"");
    digests.push_str(&digest_section(
        "styled",
        "template = \"styled\"\nsubject = \"{{ digest.title }} for {{ subscriber.email }}\"",
    ));
    digests.push_str(&digest_section("styled_raw", "template = \"styled_raw\""));
    digests.push_str(&digest_section(
        "printed",
        "template = \"printed\"\nsubject = \"{{ digest.title }} for {{ subscriber.name if subscriber.name else subscriber.email }}\"",
    ));
    for (name, body) in PER_READER {
        digests.push_str(&digest_section(
            name,
            &format!(
                "template = \"{name}\"\nsubject = {:?}",
                format!("Subject: {body}")
            ),
        ));
    }
    let ws = Workspace::new("sqlite://unused.db", None, &digests);
    let dir = ws.dir.path().join("templates");
    copy_dir(&templates_dir(), &dir);
    for (name, body) in SKELETON_OK {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, body).unwrap();
    }
    std::fs::write(dir.join("styled_raw.html.j2"), STYLED_RAW).unwrap();
    std::fs::write(
        dir.join("styled_raw.txt.j2"),
        "{{ subscriber.email }} {{ subscriber.name }}\n",
    )
    .unwrap();
    for (name, body) in PER_READER {
        std::fs::write(
            dir.join(format!("{name}.html.j2")),
            format!("<p>{body}</p>"),
        )
        .unwrap();
        std::fs::write(dir.join(format!("{name}.txt.j2")), body).unwrap();
    }
    let config = std::fs::read_to_string(&ws.config).unwrap();
    let config = config.replace(
        &format!("dir = \"{}\"", templates_dir().display()),
        &format!("dir = \"{}\"", dir.display()),
    );
    std::fs::write(&ws.config, config).unwrap();
    ws
}

#[test]
fn a_skeleton_renders_each_reader_exactly_as_the_templates_do() {
    let ws = workspace();
    let settings = ws.settings();
    let renderer = gazette::render::Renderer::new(&settings).expect("templates load");
    let articles = articles();
    let slot = Utc.with_ymd_and_hms(2026, 11, 29, 6, 0, 0).unwrap();
    for digest in &settings.digests {
        let name = digest.name.as_str();
        let expect_skeleton = matches!(name, "daily" | "printed" | "styled");
        for run_id in [Some(42), None] {
            // One context per run, as the workers share it, so that the
            // skeletons built for earlier readers serve the later ones.
            let run = RunContext::new(digest, slot, &articles, run_id);
            let mut distinct = std::collections::HashSet::new();
            // How many times the fast path inlined CSS, and how many
            // reader shapes (no name, an empty one, a name) it met.
            let mut fast_inlined = 0;
            let mut shapes = std::collections::HashSet::new();
            for (name_value, email, token) in readers() {
                let reader = Recipient {
                    name: name_value,
                    email,
                    unsubscribe_token: token,
                };
                shapes.insert(name_value.map(str::is_empty));
                let before = renderer.inlined();
                let fast = renderer.render(&run, &reader).unwrap();
                fast_inlined += renderer.inlined() - before;
                let full = renderer.render_full(&run, &reader).unwrap();
                assert_eq!(
                    fast, full,
                    "digest `{name}`, reader {email}, run {run_id:?}"
                );
                // What goes into the email: the subject, and bodies that
                // are the encoding of the whole rendered text.
                let before = renderer.inlined();
                let (subject, bodies) = renderer
                    .render_for_mail(&run, &reader, &mut BodyEncoder::default())
                    .unwrap();
                fast_inlined += renderer.inlined() - before;
                assert_eq!(subject, full.subject);
                let whole = BodyEncoder::default().bodies(&full.text, &full.html);
                assert_eq!(
                    String::from_utf8(bodies.text).unwrap(),
                    String::from_utf8(whole.text).unwrap(),
                    "digest `{name}`, reader {email}"
                );
                assert_eq!(
                    String::from_utf8(bodies.html).unwrap(),
                    String::from_utf8(whole.html).unwrap(),
                    "digest `{name}`, reader {email}"
                );
                if expect_skeleton {
                    assert!(full.html.contains(email), "{}", full.html);
                }
                distinct.insert(full.text);
            }
            // The readers differ in what they see; a renderer that gave
            // every reader the first reader's email would fail above.
            assert!(distinct.len() > 1, "digest `{name}`: {distinct:?}");
            // CSS is inlined once per shape for its skeleton, and once for
            // the full rendering of its first reader that checks it; for
            // every email of a digest rendered in full.
            let expect_inlined = match name {
                "daily" | "styled" => 2 * shapes.len(),
                "styled_raw" => 2 * readers().len(),
                _ => 0,
            };
            assert_eq!(fast_inlined, expect_inlined, "digest `{name}`");
        }
        assert_eq!(
            renderer.renders_from_skeleton(name),
            expect_skeleton,
            "digest `{name}`"
        );
    }
}

#[test]
fn reader_values_are_escaped_as_the_template_prints_them() {
    let ws = workspace();
    let settings = ws.settings();
    let renderer = gazette::render::Renderer::new(&settings).unwrap();
    let digest = settings.digest("printed").unwrap();
    let run = RunContext::new(
        digest,
        Utc.with_ymd_and_hms(2026, 11, 29, 6, 0, 0).unwrap(),
        &articles(),
        Some(7),
    );
    let reader = Recipient {
        name: Some("Zoë <O'Neil> & Co"),
        email: "zoe@example.org",
        unsubscribe_token: "t0k",
    };
    let r = renderer.render(&run, &reader).unwrap();
    assert!(
        r.html
            .contains("<p>Hi Zoë &lt;O&#x27;Neil&gt; &amp; Co &lt;zoe@example.org&gt;</p>"),
        "{}",
        r.html
    );
    // Under `{% autoescape false %}` the name is printed as is.
    assert!(r.html.contains("<!-- Zoë <O'Neil> & Co -->"), "{}", r.html);
    assert!(
        r.html.contains(
            "<a href=\"https:&#x2f;&#x2f;news.example.org&#x2f;unsubscribe&#x2f;t0k\">unsubscribe zoe@example.org</a>"
        ),
        "{}",
        r.html
    );
    assert!(
        r.text.starts_with("Dear Zoë <O'Neil> & Co,\n"),
        "{}",
        r.text
    );
    assert!(
        r.text.contains(
            "https://news.example.org/unsubscribe/t0k https://news.example.org/preferences/t0k https://news.example.org/digests/7/t0k"
        ),
        "{}",
        r.text
    );
    assert_eq!(r.subject, "The printed Digest for Zoë <O'Neil> & Co");

    let anonymous = Recipient {
        name: None,
        email: "anon@example.org",
        unsubscribe_token: "t1",
    };
    let r = renderer.render(&run, &anonymous).unwrap();
    assert!(
        r.text.starts_with("Dear reader,\n(no name on file)"),
        "{}",
        r.text
    );
    assert!(
        r.html.contains("<p>Hi reader &lt;anon@example.org&gt;</p>"),
        "{}",
        r.html
    );
    assert_eq!(r.subject, "The printed Digest for anon@example.org");
}

#[test]
fn a_skeleton_that_differs_from_the_full_rendering_is_dropped_for_the_whole_run() {
    let ws = workspace();
    let settings = ws.settings();
    let renderer = gazette::render::Renderer::new(&settings).unwrap();
    let digest = settings.digest("printed").unwrap();
    assert!(renderer.renders_from_skeleton("printed"));
    let slot = Utc.with_ymd_and_hms(2026, 11, 29, 6, 0, 0).unwrap();

    for spoiled in [false, true] {
        let run = RunContext::new(digest, slot, &articles(), Some(7));
        if spoiled {
            run.spoil_skeletons_for_tests();
        }
        for (name, email, token) in readers() {
            let reader = Recipient {
                name,
                email,
                unsubscribe_token: token,
            };
            let full = renderer.render_full(&run, &reader).unwrap();
            assert_eq!(renderer.render(&run, &reader).unwrap(), full, "{email}");
            let (subject, bodies) = renderer
                .render_for_mail(&run, &reader, &mut BodyEncoder::default())
                .unwrap();
            let whole = BodyEncoder::default().bodies(&full.text, &full.html);
            assert_eq!((subject, bodies), (full.subject, whole), "{email}");
        }
        // A spoiled skeleton was caught by the comparison with the full
        // rendering, and the run went on in full; a sound one is used.
        assert_eq!(run.renders_in_full(), spoiled);
    }
}

/// After CSS inlining, the document is written out again by an HTML
/// serializer, which escapes less than the templates do; each reader's
/// value is written as it would write it, in text, in attributes and in a
/// comment, and the `<style>` block is gone but for its `@media` rules.
#[test]
fn reader_values_in_inlined_html_are_escaped_as_its_serializer_writes_them() {
    let ws = workspace();
    let settings = ws.settings();
    let renderer = gazette::render::Renderer::new(&settings).unwrap();
    assert!(renderer.renders_from_skeleton("styled"));
    let digest = settings.digest("styled").unwrap();
    let run = RunContext::new(
        digest,
        Utc.with_ymd_and_hms(2026, 11, 29, 6, 0, 0).unwrap(),
        &articles(),
        Some(7),
    );
    let reader = Recipient {
        name: Some("Zoë <O'Neil> & \"Co\"/"),
        email: "zoe@example.org",
        unsubscribe_token: "t/0k&'",
    };
    let r = renderer.render(&run, &reader).unwrap();
    assert_eq!(r, renderer.render_full(&run, &reader).unwrap());
    let html = &r.html;
    assert!(
        html.contains(
            "<p class=\"hi\" style=\"color:#123456\">Hi Zoë &lt;O'Neil&gt; &amp; \"Co\"/ &lt;zoe@example.org&gt;</p>"
        ),
        "{html}"
    );
    assert!(
        html.contains(
            "<a class=\"out\" title=\"Zoë <O'Neil> &amp; &quot;Co&quot;/\" \
             href=\"https://news.example.org/unsubscribe/t/0k&amp;'\" style=\"font-weight:bold\">\
             unsubscribe zoe@example.org</a>"
        ),
        "{html}"
    );
    // A comment keeps the template's escaping: nothing in it is parsed.
    assert!(
        html.contains("<!-- for Zoë &lt;O&#x27;Neil&gt; &amp; &quot;Co&quot;&#x2f; -->"),
        "{html}"
    );
    assert!(
        html.contains("<title>The styled Digest for Zoë &lt;O'Neil&gt; &amp; \"Co\"/</title>"),
        "{html}"
    );
    // The layout's rules, inlined; its `@media` rules kept in `<style>`.
    assert!(html.contains("<body style=\"margin:0;padding:0;"), "{html}");
    assert!(
        html.contains("<h2 style=\"margin:0\">Article 0 &lt;b&gt;&amp; \"quoted\"&lt;/b&gt;</h2>"),
        "{html}"
    );
    assert_eq!(html.matches("<style").count(), 1, "{html}");
    let style = &html[html.find("<style").unwrap()..html.find("</style>").unwrap()];
    assert!(style.contains("@media (max-width: 480px)"), "{style}");
    assert!(!style.contains(".hi"), "{style}");
    assert!(!html.contains("class=\"hi\">"), "{html}");
}

/// A reader value printed unescaped into HTML whose CSS is inlined makes
/// the digest render in full for every reader, and says why.
#[test]
fn an_unescaped_reader_value_in_inlined_html_renders_in_full_and_says_why() {
    let ws = workspace();
    let settings = ws.settings();
    let renderer = gazette::render::Renderer::new(&settings).unwrap();
    assert!(!renderer.renders_from_skeleton("styled_raw"));
    let (_, why) = renderer
        .full_renders()
        .iter()
        .find(|(digest, _)| digest == "styled_raw")
        .expect("styled_raw is rendered in full");
    assert!(
        why.contains("styled_raw.html.j2: a reader value is printed without HTML escaping")
            && why.contains("its CSS is inlined for every email"),
        "{why}"
    );
    let digest = settings.digest("styled_raw").unwrap();
    let run = RunContext::new(
        digest,
        Utc.with_ymd_and_hms(2026, 11, 29, 6, 0, 0).unwrap(),
        &articles(),
        Some(7),
    );
    let reader = Recipient {
        name: Some("<b class=\"x\">Bold</b>"),
        email: "bold@example.org",
        unsubscribe_token: "t",
    };
    let r = renderer.render(&run, &reader).unwrap();
    // (The name's markup is part of the document.)
    assert!(
        r.html.contains("<b class=\"x\">Bold</b> bold@example.org"),
        "{}",
        r.html
    );
}

/// The shipped digest, with its `<style>` block, as readers receive it
/// over SMTP: each element carries its rules in its `style` attribute,
/// only the `@media` rules are left in `<style>`, reader values are
/// escaped as the HTML serializer writes them, the email is byte for byte
/// the full rendering for that reader, and the CSS was inlined once per
/// reader shape, not once per reader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_digest_with_a_style_block_arrives_inlined_and_as_rendered_in_full() {
    let db = TestDb::new(Backend::Sqlite).await;
    let smtp = SmtpServer::start();
    let ws = Workspace::new(&db.url, Some(smtp.port), &digest_section("daily", ""));
    let engine = ws.engine().await;
    assert!(engine.renderer.renders_from_skeleton("daily"));
    let now = Utc::now();
    let json = serde_json::json!([
        {"url": "https://example.org/one?a=1&b=2", "title": "Fish & \"Chips\" <b>'n'</b> 1/2", "summary": "A summary", "published_at": (now - Duration::hours(1)).to_rfc3339()},
    ]);
    let path = ws.dir.path().join("articles.json");
    std::fs::write(&path, json.to_string()).unwrap();
    app::articles_import(&engine, path.to_str().unwrap())
        .await
        .unwrap();
    let hostile = "O'Neil & \"Sons\" </b><i> a/b";
    app::subscribers_add(&engine, "oneil@example.org", Some(hostile.into()), &[])
        .await
        .unwrap();
    app::subscribers_add(&engine, "anon@example.org", None, &[])
        .await
        .unwrap();
    for i in 0..6 {
        let name = format!("Reader {i}");
        app::subscribers_add(&engine, &format!("r{i}@example.org"), Some(name), &[])
            .await
            .unwrap();
    }

    let before = engine.renderer.inlined();
    let run_id = app::send(&engine, "daily", None, false)
        .await
        .unwrap()
        .unwrap();
    // Two shapes of reader (named, unnamed): a skeleton for each, and the
    // full rendering of its first reader that checks it.
    assert_eq!(engine.renderer.inlined() - before, 2 * 2);
    assert_eq!(smtp.received().len(), 8);

    let run = engine.store.run(run_id).await.unwrap().unwrap();
    let articles = engine.store.run_articles(run_id).await.unwrap();
    let digest = engine.settings.digest("daily").unwrap();
    let ctx = RunContext::new(digest, run.slot.0, &articles, Some(run_id));
    for (email, name) in [
        ("oneil@example.org", Some(hostile)),
        ("anon@example.org", None),
        ("r3@example.org", Some("Reader 3")),
    ] {
        let received = smtp.received_by(email);
        assert_eq!(received.len(), 1, "{email}");
        let message = received[0].parsed();
        let html = message.body_html(0).unwrap().replace("\r\n", "\n");
        let text = message.body_text(0).unwrap().replace("\r\n", "\n");

        // The same bytes as the templates rendered in full for this reader.
        let subscriber = engine
            .store
            .find_subscriber(&EmailAddress::parse(email).unwrap())
            .await
            .unwrap()
            .unwrap();
        let token = engine.tokens.for_reader(subscriber.id);
        let reader = Recipient {
            name,
            email,
            unsubscribe_token: &token,
        };
        let full = engine.renderer.render_full(&ctx, &reader).unwrap();
        assert_eq!(html, full.html, "{email}");
        assert_eq!(text, full.text, "{email}");

        // Inlined: the rules are on the elements, the `<style>` block
        // holds the `@media` rules only.
        assert_eq!(html.matches("<style").count(), 1, "{html}");
        let style = &html[html.find("<style").unwrap()..html.find("</style>").unwrap()];
        assert!(style.contains("@media (max-width: 480px)"), "{style}");
        assert!(!style.contains(".greeting"), "{style}");
        assert!(
            html.contains(
                "<td class=\"greeting\" style=\"padding:12px 24px 4px 24px;font-family:Helvetica, Arial, sans-serif;font-size:15px;line-height:22px;color:#3b372f\">"
            ),
            "{html}"
        );
        assert!(
            html.contains(
                "<a href=\"https://example.org/one?a=1&amp;b=2\" style=\"color:#1f1d18;text-decoration:none\">Fish &amp; \"Chips\" &lt;b&gt;'n'&lt;/b&gt; 1/2</a>"
            ),
            "{html}"
        );

        // The reader's values, escaped as the serializer writes them.
        let greeting = match name {
            Some(_) if email.starts_with("oneil") => {
                "Hello O'Neil &amp; \"Sons\" &lt;/b&gt;&lt;i&gt; a/b, here is 1 new article."
            }
            Some(_) => "Hello Reader 3, here is 1 new article.",
            None => "Hello, here is 1 new article.",
        };
        assert!(html.contains(greeting), "{greeting} in {html}");
        let unsubscribe = format!("https://news.example.org/unsubscribe/{token}");
        assert!(
            html.contains(&format!(
                "<a href=\"{unsubscribe}\" style=\"color:#7a7466;text-decoration:underline\">Unsubscribe</a>"
            )),
            "{html}"
        );
        assert!(!html.contains("<i>"), "{html}");
        // The text part is not touched.
        if email.starts_with("oneil") {
            assert!(
                text.contains(&format!("Hello {hostile}, here is 1 new article.")),
                "{text}"
            );
        }
        assert!(
            text.contains(&format!("Unsubscribe: {unsubscribe}")),
            "{text}"
        );
    }
}
