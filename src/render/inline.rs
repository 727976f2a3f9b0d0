//! CSS inlining: the rules of an HTML email's `<style>` blocks are copied
//! into the `style` attributes of the elements they select, because many
//! mail clients drop `<style>`. `@media` (and other `@`) rules cannot be
//! inlined and stay in a `<style>` block, so phone layouts still work.
//!
//! Inlining parses the document and writes it out again (html5ever, by
//! `css-inline`), which changes how text is escaped: the skeleton of the
//! fast path is inlined once per reader shape, and its holes learn from
//! the rewritten document how a reader's value is to be escaped there (see
//! [`super::fast`]).

use std::sync::atomic::{AtomicUsize, Ordering};

use css_inline::CSSInliner;

pub(super) struct Inliner {
    inliner: CSSInliner<'static>,
    /// How many documents were inlined (see [`super::Renderer::inlined`]).
    count: AtomicUsize,
}

impl Inliner {
    pub(super) fn new() -> Self {
        let inliner = CSSInliner::options()
            // (No stylesheet is fetched: `<link>` stays as written.)
            .load_remote_stylesheets(false)
            .keep_link_tags(true)
            .keep_style_tags(false)
            .keep_at_rules(true)
            .minify_css(true)
            // Mail clients do not know custom properties.
            .resolve_css_variables(true)
            .build();
        Self {
            inliner,
            count: AtomicUsize::new(0),
        }
    }

    /// `html` with its `<style>` rules inlined. `Err` says why not (no
    /// error is known to come from a `<style>` block: `css-inline` skips
    /// rules it cannot read, see [`css_warnings`]).
    pub(super) fn inline(&self, html: &str) -> Result<String, String> {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.inliner
            .inline(html)
            .map_err(|e| format!("the CSS cannot be inlined: {e}"))
    }

    pub(super) fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}

/// Whether `html` has a `<style>` element (in any case), whose rules are
/// then inlined. HTML without one is sent as rendered, byte for byte.
pub(super) fn has_style(html: &str) -> bool {
    style_blocks(html).next().is_some()
}

/// The byte ranges of the `<style>` elements of `html`, tag to end tag
/// (to the end of `html` if one is not closed).
pub(super) fn style_blocks(html: &str) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
    let bytes = html.as_bytes();
    let mut from = 0;
    std::iter::from_fn(move || {
        let start = find_tag(bytes, from, b"<style")?;
        let end = find_tag(bytes, start + 6, b"</style").map_or(bytes.len(), |end| {
            memchr::memchr(b'>', &bytes[end..]).map_or(bytes.len(), |gt| end + gt + 1)
        });
        from = end;
        Some(start..end)
    })
}

/// Where `tag` (`<style` or `</style`, ASCII case ignored) starts at or
/// after `from`, followed by the end of the tag name.
fn find_tag(bytes: &[u8], from: usize, tag: &[u8]) -> Option<usize> {
    let mut at = from;
    while let Some(lt) = memchr::memchr(b'<', bytes.get(at..)?) {
        let start = at + lt;
        let name_end = start + tag.len();
        if bytes
            .get(start..name_end)
            .is_some_and(|b| b.eq_ignore_ascii_case(tag))
            && bytes
                .get(name_end)
                .is_none_or(|c| c.is_ascii_whitespace() || *c == b'>' || *c == b'/')
        {
            return Some(start);
        }
        at = start + 1;
    }
    None
}

/// What an editor should hear about the CSS of `html`'s `<style>` blocks:
/// rules `css-inline` skips because they do not parse, and rules with a
/// selector no `style` attribute can hold (`a:hover`, `p::first-line`),
/// which are dropped. Each names the rule and its line in the block.
pub(super) fn css_warnings(html: &str) -> Vec<String> {
    let mut warnings = Vec::new();
    for block in style_blocks(html) {
        let block = &html[block];
        let Some(open_end) = block.find('>') else {
            continue;
        };
        let css = &block[open_end + 1..];
        let css = css
            .rfind("</")
            .map_or(css, |close| css.get(..close).unwrap_or(css));
        rules_of(css, &mut warnings);
    }
    warnings
}

/// Walks the rules of `css`, with `@media` and similar blocks as they are
/// (they stay in a `<style>` block), and adds a warning for each that
/// cannot be inlined.
fn rules_of(css: &str, warnings: &mut Vec<String>) {
    let mut parser = cssparser::Parser::new(css);
    loop {
        parser.skip_whitespace();
        let start = parser.position();
        let line = parser.current_source_location().line + 1;
        let token = match parser.next_including_whitespace_and_comments() {
            Ok(token) => token.clone(),
            Err(_) => break,
        };
        match token {
            cssparser::Token::Comment(_)
            | cssparser::Token::CDO
            | cssparser::Token::CDC
            | cssparser::Token::WhiteSpace(_) => continue,
            cssparser::Token::AtKeyword(_) => {
                // An `@` rule: its prelude, then `;` or a block (skipped
                // by the next token).
                while let Ok(t) = parser.next() {
                    if matches!(
                        t,
                        cssparser::Token::Semicolon | cssparser::Token::CurlyBracketBlock
                    ) {
                        break;
                    }
                }
            }
            _ => {
                // A style rule: its selectors up to `{`, then the block.
                let mut block = false;
                while let Ok(t) = parser.next_including_whitespace_and_comments() {
                    if matches!(t, cssparser::Token::CurlyBracketBlock) {
                        block = true;
                        break;
                    }
                }
                let text = parser.slice_from(start);
                let selectors = text
                    .strip_suffix('{')
                    .unwrap_or(text)
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ");
                if !block {
                    warnings.push(format!(
                        "the CSS at line {line} of a `<style>` block (`{}`) is not a rule (a \
                         selector, then declarations in braces): it is ignored",
                        shorten(&selectors)
                    ));
                    break;
                }
                let _ = parser.parse_nested_block(|p| {
                    while p.next().is_ok() {}
                    Ok::<_, cssparser::ParseError<()>>(())
                });
                if let Some(pseudo) = not_inlinable(&selectors) {
                    warnings.push(format!(
                        "the rule `{}` at line {line} of a `<style>` block is not inlined \
                         (`{pseudo}` is a state or a part of an element, which a `style` \
                         attribute cannot hold): mail clients that drop `<style>` do not see \
                         it; put it in an `@media` block to keep it in the email",
                        shorten(&selectors)
                    ));
                }
            }
        }
    }
}

/// The first pseudo-class or pseudo-element of `selectors` that a `style`
/// attribute cannot stand for.
fn not_inlinable(selectors: &str) -> Option<&str> {
    const STATES: [&str; 14] = [
        ":hover",
        ":active",
        ":focus",
        ":visited",
        ":link",
        ":target",
        ":focus-within",
        ":focus-visible",
        "::before",
        "::after",
        "::first-line",
        "::first-letter",
        "::placeholder",
        "::selection",
    ];
    STATES.into_iter().find(|state| {
        selectors.match_indices(state).any(|(at, _)| {
            // (`:focus` is not `:focus-within`.)
            !selectors[at + state.len()..]
                .starts_with(|c: char| c.is_ascii_alphanumeric() || c == '-')
        })
    })
}

fn shorten(text: &str) -> String {
    match text.char_indices().nth(60) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::{css_warnings, has_style, style_blocks};

    #[test]
    fn style_elements_are_found_in_any_case_and_only_as_tags() {
        assert!(has_style(
            "<head><STYLE type=\"text/css\">p{}</STYLE></head>"
        ));
        assert!(!has_style("<p>&lt;style&gt; <styles> <stylex></p>"));
        let html = "<style>a{}</style><p></p><style>\nb{}";
        let blocks: Vec<_> = style_blocks(html).map(|r| &html[r]).collect();
        assert_eq!(blocks, ["<style>a{}</style>", "<style>\nb{}"]);
    }

    #[test]
    fn rules_that_cannot_be_inlined_are_named_with_their_line() {
        let html = "<style>\np { color: red }\na:hover { color: blue }\n\
                    @media (max-width: 600px) { a:hover { color: red } }\n\
                    p::before { content: 'x' }\n.focus-within, :focus-within{}\n\
                    .link{}\nh1 oops\n</style>";
        let warnings = css_warnings(html);
        assert_eq!(warnings.len(), 4, "{warnings:?}");
        assert!(warnings[0].contains("`a:hover` at line 3"), "{warnings:?}");
        assert!(
            warnings[1].contains("`p::before` at line 5"),
            "{warnings:?}"
        );
        assert!(
            warnings[2].contains("`.focus-within, :focus-within` at line 6"),
            "{warnings:?}"
        );
        assert!(
            warnings[3].contains("line 8 of a `<style>` block (`h1 oops`) is not a rule"),
            "{warnings:?}"
        );
        assert!(css_warnings("<style>p{a:b} .x > a[href^=\"http:\"]{}</style>").is_empty());
    }
}
