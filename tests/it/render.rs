//! Rendering a run once and filling in each reader gives exactly the email
//! the templates render for that reader; templates that do more with a
//! reader's values than print or test them are rendered for every reader.

use chrono::{TimeZone, Utc};
use gazette::mail::BodyEncoder;
use gazette::render::{Recipient, RunContext};
use gazette::store::RunArticle;

use crate::helpers::{Workspace, copy_dir, digest_section, templates_dir};

/// Digest templates that use reader values in ways a skeleton can stand
/// for: printed in HTML and text, in an inline `if`, under
/// `{% autoescape false %}`, in an included template, in the subject.
const SKELETON_OK: &[(&str, &str)] = &[
    (
        "printed.html.j2",
        "{% extends \"layout.html.j2\" %}{% block content %}\
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
        "partials/footer.html.j2",
        "<a href=\"{{ links.unsubscribe }}\">unsubscribe {{ subscriber.email }}</a>\
         {% if links.web_view %}<a href=\"{{ links.web_view }}\">web</a>{% endif %}",
    ),
];

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
    assert!(
        html.contains(
            r#"<img src="https:&#x2f;&#x2f;feed.example.org&#x2f;img.png" alt="From a feed" width="552""#
        ),
        "{html}"
    );
    assert!(
        html.contains(
            r#"<img src="https:&#x2f;&#x2f;example.org&#x2f;img&#x2f;2.png?a=1&amp;b=&quot;2&quot;" alt="Article 2 &lt;b&gt;&amp; &quot;quoted&quot;&lt;&#x2f;b&gt;" width="552""#
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
        let expect_skeleton = matches!(name, "daily" | "printed");
        for run_id in [Some(42), None] {
            // One context per run, as the workers share it, so that the
            // skeletons built for earlier readers serve the later ones.
            let run = RunContext::new(digest, slot, &articles, run_id);
            let mut distinct = std::collections::HashSet::new();
            for (name_value, email, token) in readers() {
                let reader = Recipient {
                    name: name_value,
                    email,
                    unsubscribe_token: token,
                };
                let fast = renderer.render(&run, &reader).unwrap();
                let full = renderer.render_full(&run, &reader).unwrap();
                assert_eq!(
                    fast, full,
                    "digest `{name}`, reader {email}, run {run_id:?}"
                );
                // What goes into the email: the subject, and bodies that
                // are the encoding of the whole rendered text.
                let (subject, bodies) = renderer
                    .render_for_mail(&run, &reader, &mut BodyEncoder::default())
                    .unwrap();
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
