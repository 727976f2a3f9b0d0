//! The filters and functions templates have besides minijinja's own:
//! those of `minijinja-contrib` (`truncate`, `wordcount`, `striptags`,
//! `pluralize`, `datetimeformat`, …) and `markdown`.

use minijinja::value::{Kwargs, Rest};
use minijinja::{Environment, Error, State, Value};

/// Adds every filter and function to `env`.
pub(super) fn add_to(env: &mut Environment<'_>) {
    minijinja_contrib::add_to_environment(env);
    env.add_filter("truncate", truncate);
    env.add_filter("markdown", markdown);
}

/// Jinja's `truncate(length=255, killwords=false, end='...', leeway=5)`,
/// positional or named (`minijinja-contrib`'s takes names only).
fn truncate(
    state: &State,
    value: &Value,
    positional: Rest<Value>,
    named: Kwargs,
) -> Result<Value, Error> {
    const NAMES: [&str; 4] = ["length", "killwords", "end", "leeway"];
    if positional.len() > NAMES.len() {
        return Err(Error::from(minijinja::ErrorKind::TooManyArguments));
    }
    let mut all: Vec<(String, Value)> = NAMES
        .iter()
        .zip(positional.iter())
        .map(|(name, value)| (name.to_string(), value.clone()))
        .collect();
    for name in named.args() {
        all.push((name.to_string(), named.get::<Value>(name)?));
    }
    minijinja_contrib::filters::truncate(state, value, Kwargs::from_iter(all))
}

/// Markdown (CommonMark with tables and strikethrough) as HTML, cleaned to
/// a safe allow-list of tags and attributes: no script, style, event
/// handler or `javascript:` link survives, whatever the text holds.
fn markdown(text: &str) -> Value {
    use pulldown_cmark::{Options, Parser, html};
    let options = Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH;
    let mut rendered = String::with_capacity(text.len() * 3 / 2);
    html::push_html(&mut rendered, Parser::new_ext(text, options));
    Value::from_safe_string(ammonia::clean(&rendered))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(source: &str, value: &str) -> String {
        let mut env = Environment::new();
        add_to(&mut env);
        env.add_template("t.html", source).unwrap();
        env.get_template("t.html")
            .unwrap()
            .render(minijinja::context! { value })
            .unwrap()
    }

    #[test]
    fn markdown_becomes_clean_html() {
        assert_eq!(
            render(
                "{{ value|markdown }}",
                "Some *words* and [a link](https://example.org)."
            ),
            "<p>Some <em>words</em> and <a href=\"https://example.org\" rel=\"noopener noreferrer\">a link</a>.</p>\n"
        );
        let hostile = "<script>alert(1)</script><img src=x onerror=alert(2)>\
                       <a href=\"javascript:alert(4)\">y</a>\n\n[x](javascript:alert(3))";
        let html = render("{{ value|markdown }}", hostile);
        for bad in ["<script", "onerror", "href=\"javascript:", "alert(1)"] {
            assert!(!html.contains(bad), "{bad} in {html}");
        }
        assert!(
            html.contains("<a rel=\"noopener noreferrer\">x</a>"),
            "{html}"
        );
    }

    #[test]
    fn the_contrib_filters_are_there() {
        assert_eq!(
            render("{{ value|truncate(12) }}", "A rather long headline"),
            "A rather..."
        );
        assert_eq!(
            render(
                "{{ value|truncate(10, true, '…', 0) }}",
                "A rather long headline"
            ),
            "A rather …"
        );
        assert_eq!(
            render(
                "{{ value|truncate(length=12, end='…') }}",
                "A rather long headline"
            ),
            "A rather…"
        );
        assert_eq!(render("{{ value|wordcount }}", "one two three"), "3");
        // (The text, escaped again in an HTML template.)
        assert_eq!(
            render("{{ value|striptags }}", "<b>bold</b> &amp; plain"),
            "bold &amp; plain"
        );
        assert_eq!(render("{{ 2|pluralize('y', 'ies') }}", ""), "ies");
        assert_eq!(
            render(
                "{{ value|datetimeformat(format='[day] [month repr:short] [year]') }}",
                "2026-11-29T08:15:00+01:00"
            ),
            "29 Nov 2026"
        );
    }
}
