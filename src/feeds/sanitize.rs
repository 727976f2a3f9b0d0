//! Feed HTML is hostile: it is cut down to a small allow-list of tags and
//! attributes (ammonia), relative addresses are made absolute against the
//! feed's, and images of one pixel (trackers) are dropped. What is left is
//! also offered as plain text.
//!
//! The functions after [`sanitize`] read ammonia's output only: HTML as
//! html5ever writes it, where every `<` of text is `&lt;`, attribute values
//! are double-quoted with `"` written `&quot;`, and the only entities are
//! `&amp;`, `&lt;`, `&gt;`, `&quot;` and `&nbsp;`.

use std::collections::HashSet;

use ammonia::{Builder, UrlRelative};
use url::Url;

/// The tags a digest may show of a feed's HTML.
const TAGS: [&str; 22] = [
    "a",
    "abbr",
    "b",
    "blockquote",
    "br",
    "code",
    "em",
    "figcaption",
    "figure",
    "h2",
    "h3",
    "h4",
    "hr",
    "i",
    "img",
    "li",
    "ol",
    "p",
    "pre",
    "strong",
    "sub",
    "ul",
];

/// Tags that end a line in the plain text.
const BLOCKS: [&str; 14] = [
    "p",
    "br",
    "li",
    "ul",
    "ol",
    "blockquote",
    "pre",
    "h2",
    "h3",
    "h4",
    "hr",
    "figure",
    "figcaption",
    "div",
];

/// `html` cut down to the allow-list, with its addresses absolute against
/// `base` and without tracking pixels: no scripts, styles, event handlers,
/// `javascript:` addresses or comments survive.
pub fn sanitize(html: &str, base: &Url) -> String {
    let mut builder = Builder::empty();
    builder
        .add_tags(TAGS)
        .add_tag_attributes("a", ["href", "title"])
        .add_tag_attributes("img", ["src", "alt", "width", "height"])
        .add_tag_attributes("abbr", ["title"])
        .url_schemes(HashSet::from(["http", "https", "mailto"]))
        .url_relative(UrlRelative::RewriteWithBase(base.clone()))
        .link_rel(Some("noopener noreferrer"))
        .clean_content_tags(HashSet::from([
            "script", "style", "iframe", "object", "embed", "template", "noscript", "svg", "math",
        ]))
        .strip_comments(true);
    let clean = builder.clean(html).to_string();
    without_pixels(&clean)
}

/// Plain text (`text/plain` feed fields) as the HTML that shows it.
pub fn escape_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            _ => out.push(c),
        }
    }
    out
}

/// One tag of sanitized HTML: where it is, its name, whether it closes,
/// and its attributes (values decoded).
struct Tag {
    start: usize,
    end: usize,
    name: String,
    closing: bool,
    attributes: Vec<(String, String)>,
}

impl Tag {
    fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The tags of sanitized HTML, in order.
fn tags(html: &str) -> Vec<Tag> {
    let bytes = html.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(offset) = html[i..].find('<') {
        let start = i + offset;
        let mut j = start + 1;
        let closing = bytes.get(j) == Some(&b'/');
        if closing {
            j += 1;
        }
        let name_end = html[j..]
            .find(|c: char| c.is_ascii_whitespace() || c == '>' || c == '/')
            .map_or(html.len(), |n| j + n);
        let name = html[j..name_end].to_ascii_lowercase();
        j = name_end;
        let mut attributes = Vec::new();
        loop {
            while bytes
                .get(j)
                .is_some_and(|b| b.is_ascii_whitespace() || *b == b'/')
            {
                j += 1;
            }
            match bytes.get(j) {
                None => break,
                Some(b'>') => {
                    j += 1;
                    break;
                }
                _ => {}
            }
            let attr_end = html[j..]
                .find(|c: char| c.is_ascii_whitespace() || c == '=' || c == '>')
                .map_or(html.len(), |n| j + n);
            let attr = html[j..attr_end].to_ascii_lowercase();
            j = attr_end;
            let mut value = String::new();
            if bytes.get(j) == Some(&b'=') && bytes.get(j + 1) == Some(&b'"') {
                let value_end = html[j + 2..].find('"').map_or(html.len(), |n| j + 2 + n);
                value = decode(&html[j + 2..value_end]);
                j = (value_end + 1).min(html.len());
            }
            if attr.is_empty() {
                j += 1;
                continue;
            }
            attributes.push((attr, value));
        }
        out.push(Tag {
            start,
            end: j,
            name,
            closing,
            attributes,
        });
        i = j.max(start + 1);
    }
    out
}

/// The entities of html5ever's output, decoded.
fn decode(text: &str) -> String {
    if !text.contains('&') {
        return text.to_string();
    }
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}

/// Whether an `img` is a tracking pixel (1×1 or smaller) or shows nothing.
fn is_pixel(tag: &Tag) -> bool {
    let tiny = |name: &str| {
        tag.attribute(name).is_some_and(|v| {
            v.trim()
                .trim_end_matches("px")
                .trim()
                .parse::<f64>()
                .is_ok_and(|n| n <= 1.0)
        })
    };
    tiny("width") || tiny("height") || tag.attribute("src").is_none_or(str::is_empty)
}

/// Sanitized HTML without its tracking pixels (nor images without a source).
fn without_pixels(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut from = 0;
    for tag in tags(html) {
        if tag.name == "img" && !tag.closing && is_pixel(&tag) {
            out.push_str(&html[from..tag.start]);
            from = tag.end;
        }
    }
    out.push_str(&html[from..]);
    out
}

/// The source of the first image of sanitized HTML (pixels are gone).
pub fn first_image(html: &str) -> Option<String> {
    tags(html)
        .into_iter()
        .find(|t| t.name == "img" && !t.closing)
        .and_then(|t| t.attribute("src").map(str::to_string))
}

/// Sanitized HTML as plain text: tags dropped, a line per block, spaces
/// collapsed.
pub fn to_text(html: &str) -> String {
    // (A line break in the HTML's text is a space; the blocks end lines.)
    let text = |part: &str| decode(part).replace(['\n', '\r'], " ");
    let mut raw = String::with_capacity(html.len());
    let mut from = 0;
    for tag in tags(html) {
        raw.push_str(&text(&html[from..tag.start]));
        if BLOCKS.contains(&tag.name.as_str()) {
            raw.push('\n');
        }
        from = tag.end;
    }
    raw.push_str(&text(&html[from..]));
    let mut lines: Vec<String> = Vec::new();
    for line in raw.split('\n') {
        let line = line
            .split(|c: char| c.is_whitespace())
            .filter(|w| !w.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        if !line.is_empty() {
            lines.push(line);
        }
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Url {
        Url::parse("https://blog.example.org/feed.xml").unwrap()
    }

    #[test]
    fn scripts_handlers_javascript_and_pixels_are_removed() {
        let html = r#"<p onclick="steal()">Hi <script>alert(1)</script><style>p{}</style>
            <a href="javascript:alert(2)">x</a> <img src="/a.png" onerror="alert(3)" alt="A">
            <img src="https://t.example/p.gif" width="1" height="1"><img src="https://t.example/q.gif" style="x" height="1px"></p>"#;
        let clean = sanitize(html, &base());
        for bad in [
            "script",
            "alert",
            "onclick",
            "onerror",
            "javascript",
            "style",
            "t.example",
        ] {
            assert!(!clean.contains(bad), "{bad} in {clean}");
        }
        assert!(
            clean.contains(r#"<img src="https://blog.example.org/a.png" alt="A">"#),
            "{clean}"
        );
        assert_eq!(
            first_image(&clean).as_deref(),
            Some("https://blog.example.org/a.png")
        );
    }

    #[test]
    fn relative_links_become_absolute() {
        let clean = sanitize(r#"<a href="../post?a=1&amp;b=2">post</a>"#, &base());
        assert!(
            clean.contains(r#"href="https://blog.example.org/post?a=1&amp;b=2""#),
            "{clean}"
        );
    }

    #[test]
    fn text_keeps_words_and_lines_and_decodes_entities() {
        let clean = sanitize(
            "<p>Fish &amp; <b>chips</b></p><p>a &lt;b&gt;\n  c</p>",
            &base(),
        );
        assert_eq!(to_text(&clean), "Fish & chips\na <b> c");
    }

    #[test]
    fn an_attribute_value_with_angle_brackets_does_not_end_the_tag() {
        let clean = sanitize(
            r#"<img alt="a > b" src="https://x.example/i.png" width="1">after"#,
            &base(),
        );
        assert_eq!(clean, "after");
    }
}
