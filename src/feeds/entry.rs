//! A feed's entries as articles: RSS 2.0, RSS 1.0 and Atom 1.0 (and the
//! older RSS) parsed by feed-rs, each entry mapped to a [`FeedArticle`] or
//! skipped with the reason.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use feed_rs::model::{Entry, Text};
use url::Url;

use super::sanitize::{escape_text, first_image, sanitize, to_text};
use crate::config::Feed;
use crate::store::{FeedArticle, NewArticle, Timestamp};

/// What a feed's body holds: its articles, and the entries skipped.
#[derive(Debug, Default)]
pub struct Entries {
    pub articles: Vec<FeedArticle>,
    /// A line each: which entry, and why.
    pub skipped: Vec<String>,
}

/// A title made of the summary is cut to this many characters.
const TITLE_FROM_SUMMARY: usize = 80;

/// Parses a feed's body fetched from `base` (its address after redirects).
pub fn parse(body: &[u8], feed: &Feed, base: &Url, now: DateTime<Utc>) -> Result<Entries, String> {
    let parsed = feed_rs::parser::Builder::new()
        .base_uri(Some(base.as_str()))
        .build()
        .parse(body)
        .map_err(|e| format!("not an RSS or Atom feed: {e}"))?;
    let mut entries = Entries::default();
    let mut thumbnails = bare_thumbnails(body);
    if thumbnails.len() != parsed.entries.len() {
        thumbnails = vec![None; parsed.entries.len()];
    }
    for (i, entry) in parsed.entries.iter().enumerate() {
        match article(entry, feed, base, now, thumbnails[i].as_deref()) {
            Ok(a) => entries.articles.push(a),
            Err(why) => {
                entries
                    .skipped
                    .push(format!("entry {} ({}): {why}", i + 1, describe(entry)))
            }
        }
    }
    Ok(entries)
}

/// How an entry is named in messages: its title, or else its id.
fn describe(entry: &Entry) -> String {
    match entry.title.as_ref().map(|t| t.content.trim()) {
        Some(title) if !title.is_empty() => format!("`{title}`"),
        _ => format!("id `{}`", entry.id),
    }
}

/// A text construct as sanitized HTML (plain text escaped first).
fn html_of(text: &str, plain: bool, base: &Url) -> Option<String> {
    let html = if plain {
        sanitize(&escape_text(text), base)
    } else {
        sanitize(text, base)
    };
    let html = html.trim().to_string();
    (!html.is_empty()).then_some(html)
}

fn is_plain(text: &Text) -> bool {
    text.content_type.essence().to_string() == "text/plain"
}

/// An http(s) address, resolved against `base` when relative.
fn web_address(href: &str, base: &Url) -> Option<String> {
    let url = base.join(href.trim()).ok()?;
    matches!(url.scheme(), "http" | "https").then(|| url.to_string())
}

fn article(
    entry: &Entry,
    feed: &Feed,
    base: &Url,
    now: DateTime<Utc>,
    bare_thumbnail: Option<&str>,
) -> Result<FeedArticle, String> {
    let link = entry
        .links
        .iter()
        .find(|l| l.rel.as_deref().is_none_or(|r| r == "alternate"))
        .or(entry.links.first())
        .and_then(|l| web_address(&l.href, base));
    let url = match link {
        Some(url) => url,
        // Without a link, the id when it is an address (an RSS guid often is).
        None => Url::parse(entry.id.trim())
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .map(|u| u.to_string())
            .ok_or("no link, and its id is not an http(s) address")?,
    };
    let summary = entry
        .summary
        .as_ref()
        .and_then(|s| html_of(&s.content, is_plain(s), base));
    let body = entry.content.as_ref().and_then(|c| {
        let plain = c.content_type.essence().to_string() == "text/plain";
        c.body.as_deref().and_then(|b| html_of(b, plain, base))
    });
    let summary_text = summary.as_deref().map(to_text).filter(|t| !t.is_empty());
    let title = entry
        .title
        .as_ref()
        .map(|t| {
            if is_plain(t) {
                t.content.split_whitespace().collect::<Vec<_>>().join(" ")
            } else {
                to_text(&sanitize(&t.content, base)).replace('\n', " ")
            }
        })
        .filter(|t| !t.is_empty())
        .or_else(|| {
            let text = summary_text
                .clone()
                .or_else(|| body.as_deref().map(to_text))?
                .replace('\n', " ");
            let mut title: String = text.chars().take(TITLE_FROM_SUMMARY).collect();
            if text.chars().count() > TITLE_FROM_SUMMARY {
                title.push('…');
            }
            (!title.is_empty()).then_some(title)
        })
        .ok_or("no title and no summary to make one of")?;
    let author = entry
        .authors
        .iter()
        .find_map(|p| p.name.as_deref().map(str::trim).filter(|n| !n.is_empty()))
        .map(str::to_string);
    let tags: BTreeSet<String> = entry
        .categories
        .iter()
        .map(|c| c.label.as_deref().unwrap_or(&c.term).trim().to_string())
        .chain(feed.tags.iter().cloned())
        .filter(|t| !t.is_empty())
        .collect();
    let date = entry.published.or(entry.updated);
    Ok(FeedArticle {
        article: NewArticle {
            url,
            title,
            image_url: image(
                entry,
                base,
                bare_thumbnail,
                [body.as_deref(), summary.as_deref()],
            ),
            summary,
            body,
            author,
            tags: tags.into_iter().collect(),
            published_at: Timestamp::from(date.unwrap_or(now)),
            summary_text,
            html: true,
        },
        dated: date.is_some(),
    })
}

/// The entry's image: a `media:content` or enclosure of an image type, a
/// `media:thumbnail` (in a `media:content`, or the entry's own,
/// `bare_thumbnail`), or else the first image of its body or summary;
/// never one said to be a pixel wide or high (a tracker).
fn image(
    entry: &Entry,
    base: &Url,
    bare_thumbnail: Option<&str>,
    html: [Option<&str>; 2],
) -> Option<String> {
    let visible = |width: Option<u32>, height: Option<u32>| {
        width.is_none_or(|w| w > 1) && height.is_none_or(|h| h > 1)
    };
    let media = entry.media.iter();
    let content = media
        .clone()
        .flat_map(|m| m.content.iter())
        .filter(|c| {
            c.content_type
                .as_ref()
                .is_some_and(|t| t.ty().as_str().eq_ignore_ascii_case("image"))
                && visible(c.width, c.height)
        })
        .find_map(|c| c.url.as_ref().and_then(|u| web_address(u.as_str(), base)));
    let thumbnail = || {
        media
            .clone()
            .flat_map(|m| m.thumbnails.iter())
            .filter(|t| visible(t.image.width, t.image.height))
            .find_map(|t| web_address(&t.image.uri, base))
    };
    content
        .or_else(thumbnail)
        .or_else(|| bare_thumbnail.and_then(|t| web_address(t, base)))
        .or_else(|| html.into_iter().flatten().find_map(first_image))
}

/// For each entry (`item` or `entry` element, in order), the address of
/// the first Media RSS `thumbnail` in it that is not a pixel wide or high:
/// feed-rs keeps a thumbnail only inside a `media:content`, and many feeds
/// put it on the item alone. Empty if the body does not read as XML.
fn bare_thumbnails(body: &[u8]) -> Vec<Option<String>> {
    use quick_xml::events::{BytesStart, Event};
    use quick_xml::name::{Namespace, ResolveResult};
    const MEDIA_RSS: Namespace<'_> = Namespace("http://search.yahoo.com/mrss/");

    let attribute = |e: &BytesStart<'_>, name: &str| {
        e.try_get_attribute(name).ok().flatten().and_then(|a| {
            a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                .ok()
                .map(|v| v.into_owned())
        })
    };
    let mut reader = quick_xml::NsReader::from_reader(body);
    let mut buf = Vec::new();
    let mut found: Vec<Option<String>> = Vec::new();
    let (mut depth, mut entry_depth) = (0usize, None);
    loop {
        let (ns, e, empty) = match reader.read_resolved_event_into(&mut buf) {
            Ok((ns, Event::Start(e))) => (ns, e.into_owned(), false),
            Ok((ns, Event::Empty(e))) => (ns, e.into_owned(), true),
            Ok((_, Event::End(_))) => {
                if entry_depth == Some(depth) {
                    entry_depth = None;
                }
                depth = depth.saturating_sub(1);
                buf.clear();
                continue;
            }
            Ok((_, Event::Eof)) => break,
            Err(_) => return Vec::new(),
            Ok(_) => {
                buf.clear();
                continue;
            }
        };
        buf.clear();
        let level = depth + 1;
        let local = e.local_name();
        if entry_depth.is_none() && matches!(local.as_ref(), "item" | "entry") {
            found.push(None);
            if !empty {
                entry_depth = Some(level);
            }
        } else if entry_depth.is_some()
            && ns == ResolveResult::Bound(MEDIA_RSS)
            && local.as_ref() == "thumbnail"
            && let Some(slot) = found.last_mut().filter(|slot| slot.is_none())
        {
            let one_pixel = |name: &str| attribute(&e, name).is_some_and(|v| v.trim() == "1");
            if !one_pixel("width") && !one_pixel("height") {
                *slot = attribute(&e, "url");
            }
        }
        if !empty {
            depth = level;
        }
    }
    found
}
