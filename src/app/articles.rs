//! `gazette articles …`: import, add, list.

use anyhow::{Context, Result};
use chrono::Utc;

use super::process::counted;
use super::progress::Progress;
use crate::delivery::Engine;
use crate::import;
use crate::store::Timestamp;

pub async fn articles_import(engine: &Engine, path: &str) -> Result<()> {
    let text = import::read_input(path)?;
    let shown = if path == "-" { "standard input" } else { path };
    let articles = import::parse_articles(&text, Utc::now())
        .with_context(|| format!("{shown}: nothing was imported"))?;
    let total = articles.len() as u64;
    let progress = Progress::start(format!("{shown}: importing"), total, "articles");
    let (inserted, updated) = engine
        .store
        .upsert_articles_reporting(&articles, Timestamp::now(), &|n| progress.set(n))
        .await
        .with_context(|| format!("{shown}: nothing was imported"))?;
    drop(progress);
    println!(
        "imported {} from {shown} ({inserted} new, {updated} updated)",
        counted(articles.len() as u64, "article", "articles")
    );
    Ok(())
}

pub async fn articles_add(engine: &Engine, input: import::ArticleInput) -> Result<()> {
    let article = input.validate(Utc::now()).map_err(anyhow::Error::msg)?;
    let (inserted, _) = engine
        .store
        .upsert_articles(std::slice::from_ref(&article), Timestamp::now())
        .await?;
    println!(
        "{} {}",
        if inserted == 1 { "added" } else { "updated" },
        article.url
    );
    Ok(())
}

/// `gazette articles remove URL`: the runs that took it keep their copy.
pub async fn articles_remove(engine: &Engine, url: &str) -> Result<()> {
    if engine.store.remove_article(url.trim()).await? {
        println!("removed {}", url.trim());
        Ok(())
    } else {
        anyhow::bail!("no article at {}", url.trim())
    }
}

/// `gazette articles list`: the newest articles, a line each (with
/// `json`, one JSON object a line).
pub async fn articles_list(engine: &Engine, limit: i64, json: bool) -> Result<()> {
    let articles = engine.store.list_articles(limit).await?;
    if articles.is_empty() && !json {
        println!("no articles yet: add some with `gazette articles import FILE`");
    }
    for a in articles {
        let tags = engine.store.article_tags(a.id).await?;
        if json {
            let line = serde_json::json!({
                "url": a.url,
                "title": a.title,
                "summary": a.summary,
                "author": a.author,
                "tags": tags,
                "published_at": a.published_at.0.to_rfc3339(),
                "image_url": a.image_url,
            });
            println!("{line}");
            continue;
        }
        println!(
            "{}  {}  {}{}",
            a.published_at.0.format("%Y-%m-%d %H:%M"),
            a.title,
            a.url,
            if tags.is_empty() {
                String::new()
            } else {
                format!("  [{}]", tags.join(", "))
            }
        );
    }
    Ok(())
}
