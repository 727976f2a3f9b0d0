//! Template errors that point at the mistake: the undefined expression by
//! name, the block left open with the line where it opened, and for an
//! error inside an included template, the including one too.

use std::path::Path;

use minijinja::{Environment, ErrorKind};

/// `e` said for an editor: kind, template and line, what is wrong there.
pub(super) fn describe(env: &Environment<'_>, dir: &Path, e: &minijinja::Error) -> String {
    let source = e.name().and_then(|name| template_source(env, dir, name));
    let mut out = e.kind().to_string();
    if e.kind() == ErrorKind::UndefinedError
        && let (Some(source), Some(range)) = (&source, e.range())
        && let Some(expression) = expression_at(source, range)
    {
        out.push_str(&format!(" `{expression}`"));
    }
    if let (Some(name), Some(line)) = (e.name(), e.line()) {
        out.push_str(&format!(" (template {name}, line {line})"));
    }
    if let Some(detail) = e.detail() {
        out.push_str(": ");
        out.push_str(detail);
    }
    // (At the end of the input, minijinja's line is where the block
    // opened, not where the input ended.)
    let at_end = e
        .detail()
        .is_some_and(|d| d.contains("unexpected end of input"));
    if e.kind() == ErrorKind::SyntaxError
        && let Some(source) = &source
        && let Some(hint) = unclosed_block(source, e.line().filter(|_| !at_end))
    {
        out.push_str(": ");
        out.push_str(&hint);
    }
    let mut cause = std::error::Error::source(e);
    while let Some(inner) = cause {
        out.push_str(": ");
        // (An error in an included template: said as fully as this one.)
        match inner.downcast_ref::<minijinja::Error>() {
            Some(inner) => {
                out.push_str(&describe(env, dir, inner));
                break;
            }
            None => out.push_str(&inner.to_string()),
        }
        cause = inner.source();
    }
    out
}

/// The expression an error's `range` points into: minijinja's range of an
/// attribute or item starts after the value it is taken from
/// (`[0].image_url` of `articles[0].image_url`), so it is widened to the
/// left over the names, dots and subscripts before it (and over the value
/// a filter that failed was given: `subscriber.nmae|upper`).
fn expression_at(source: &str, range: std::ops::Range<usize>) -> Option<&str> {
    source.get(range.clone())?;
    let part_of_path = |c: char| c.is_alphanumeric() || "_.[]'\"".contains(c);
    let mut start = range.start;
    loop {
        let before = &source[..start];
        start = before
            .char_indices()
            .rev()
            .take_while(|(_, c)| part_of_path(*c))
            .last()
            .map_or(start, |(i, _)| i);
        let spaced = source[..start].trim_end();
        match spaced.strip_suffix('|') {
            Some(value) => start = value.trim_end().len(),
            None => break,
        }
    }
    Some(source[start..range.end].trim())
}

/// The text of template `name`: from the environment if it compiles,
/// else from its file.
fn template_source(env: &Environment<'_>, dir: &Path, name: &str) -> Option<String> {
    match env.get_template(name) {
        Ok(template) => Some(template.source().to_string()),
        Err(_) => std::fs::read_to_string(dir.join(name)).ok(),
    }
}

/// The statements that open a block closed by `end…`.
const BLOCKS: [&str; 9] = [
    "for",
    "if",
    "block",
    "macro",
    "call",
    "filter",
    "with",
    "autoescape",
    "raw",
];

/// For a syntax error at `error_line`: the block still open there, with
/// the line it opened on (`{% if %}` opened on line 3 is not closed), if
/// the template's tags say so.
fn unclosed_block(source: &str, error_line: Option<usize>) -> Option<String> {
    let mut open: Vec<(&str, usize)> = Vec::new();
    let mut rest = source;
    let mut line = 1;
    while let Some(start) = rest.find("{%") {
        line += rest[..start].matches('\n').count();
        let after = &rest[start + 2..];
        let end = after.find("%}")?;
        let tag = after[..end].trim_matches(|c: char| c == '-' || c == '+' || c.is_whitespace());
        let word = tag.split_whitespace().next().unwrap_or("");
        if error_line.is_some_and(|at| line >= at) {
            break;
        }
        if BLOCKS.contains(&word) || (word == "set" && !tag.contains('=')) {
            open.push((word, line));
        } else if let Some(closed) = word.strip_prefix("end") {
            match open.iter().rposition(|(w, _)| *w == closed) {
                Some(i) => open.truncate(i),
                None => return None,
            }
        }
        line += after[..end].matches('\n').count();
        rest = &after[end + 2..];
        // (Nothing inside `{% raw %}` is a tag.)
        if word == "raw" {
            let close = rest.find("endraw")?;
            line += rest[..close].matches('\n').count();
            rest = &rest[close..];
            rest = &rest[rest.find("%}")? + 2..];
            open.pop();
        }
    }
    let (word, opened) = open.last()?;
    Some(format!(
        "the `{{% {word} %}}` opened on line {opened} is not closed (`{{% end{word} %}}`) before this"
    ))
}

#[cfg(test)]
mod tests {
    use super::unclosed_block;

    #[test]
    fn the_block_left_open_is_named_with_its_line() {
        let source = "a\n{% for i in items %}\n{% if i %}\nx\n{% endfor %}\n";
        assert_eq!(
            unclosed_block(source, Some(5)).as_deref(),
            Some("the `{% if %}` opened on line 3 is not closed (`{% endif %}`) before this")
        );
        // At the end of the template.
        let source = "a\n{%- if x -%}\n{% for a in b %}{% endfor %}\nmore\n";
        assert_eq!(
            unclosed_block(source, None).as_deref(),
            Some("the `{% if %}` opened on line 2 is not closed (`{% endif %}`) before this")
        );
        // Closed blocks, `set` with a value, and raw text are not blocks
        // left open.
        let source = "{% set x = 1 %}{% if a %}{% endif %}\n{% raw %}{% if %}{% endraw %}\n";
        assert_eq!(unclosed_block(source, None), None);
        let source = "{% set x %}a{% endset %}{% if a %}\n";
        assert!(unclosed_block(source, None).unwrap().contains("line 1"));
    }
}
