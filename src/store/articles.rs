//! Articles: imported, added, listed, and chosen for a run.

use anyhow::Result;
use serde::{Deserialize, Serialize};
use sqlx::{FromRow, QueryBuilder};

use super::backend::{BeginWrite, Store};
use super::time::Timestamp;

/// An article to store, as parsed from an import or the command line.
#[derive(Debug, Clone, PartialEq)]
pub struct NewArticle {
    pub url: String,
    pub title: String,
    pub summary: Option<String>,
    pub body: Option<String>,
    pub author: Option<String>,
    pub tags: Vec<String>,
    pub published_at: Timestamp,
    /// An image to show with the article (http:// or https://).
    pub image_url: Option<String>,
    /// The summary as plain text, when `summary` is HTML.
    pub summary_text: Option<String>,
    /// Whether `summary` and `body` are sanitized HTML (from a feed)
    /// rather than plain text (imported, added, or pushed to the API).
    pub html: bool,
}

#[derive(Debug, Clone, FromRow)]
pub struct Article {
    pub id: i64,
    pub url: String,
    pub title: String,
    pub summary: Option<String>,
    pub author: Option<String>,
    pub published_at: Timestamp,
    pub image_url: Option<String>,
}

/// An article as it went into a run: a snapshot, so the run renders the
/// same email later even if the article is edited.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunArticle {
    pub article_id: i64,
    pub url: String,
    pub title: String,
    pub summary: Option<String>,
    pub body: Option<String>,
    pub author: Option<String>,
    pub tags: Vec<String>,
    pub published_at: chrono::DateTime<chrono::Utc>,
    #[serde(default)]
    pub image_url: Option<String>,
    /// The summary as plain text, when `summary` is HTML.
    #[serde(default)]
    pub summary_text: Option<String>,
    /// Whether `summary` and `body` are sanitized HTML (from a feed).
    #[serde(default)]
    pub html: bool,
}

#[derive(Debug, FromRow)]
pub(super) struct RunArticleRow {
    article_id: i64,
    url: String,
    title: String,
    summary: Option<String>,
    body: Option<String>,
    author: Option<String>,
    tags: String,
    published_at: Timestamp,
    image_url: Option<String>,
    summary_text: Option<String>,
    html: bool,
}

impl From<RunArticleRow> for RunArticle {
    fn from(r: RunArticleRow) -> Self {
        Self {
            article_id: r.article_id,
            url: r.url,
            title: r.title,
            summary: r.summary,
            body: r.body,
            author: r.author,
            tags: serde_json::from_str(&r.tags).unwrap_or_default(),
            published_at: r.published_at.0,
            image_url: r.image_url,
            summary_text: r.summary_text,
            html: r.html,
        }
    }
}

impl Store {
    // -- articles -----------------------------------------------------------

    /// Inserts or updates (by url) every article in one transaction: either
    /// all of them are stored or none. Returns (inserted, updated).
    pub async fn upsert_articles(
        &self,
        articles: &[NewArticle],
        now: Timestamp,
    ) -> Result<(u64, u64)> {
        self.upsert_articles_reporting(articles, now, &|_| {}).await
    }

    /// [`Store::upsert_articles`], calling `progress` with the number of
    /// articles written so far (before the commit).
    pub async fn upsert_articles_reporting(
        &self,
        articles: &[NewArticle],
        now: Timestamp,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<(u64, u64)> {
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let (mut inserted, mut updated) = (0, 0);
            for a in articles {
                let existing: Option<(i64,)> = sqlx::query_as("select id from articles where url = $1")
                    .bind(&a.url)
                    .fetch_optional(&mut *tx)
                    .await?;
                let id = match existing {
                    Some((id,)) => {
                        sqlx::query(
                            "update articles set title = $2, summary = $3, body = $4, author = $5, \
                             published_at = $6, updated_at = $7, image_url = $8, summary_text = $9, \
                             html = $10 where id = $1",
                        )
                        .bind(id).bind(&a.title).bind(&a.summary).bind(&a.body).bind(&a.author)
                        .bind(a.published_at).bind(now).bind(&a.image_url).bind(&a.summary_text)
                        .bind(a.html)
                        .execute(&mut *tx)
                        .await?;
                        sqlx::query("delete from article_tags where article_id = $1")
                            .bind(id)
                            .execute(&mut *tx)
                            .await?;
                        updated += 1;
                        id
                    }
                    None => {
                        let (id,): (i64,) = sqlx::query_as(
                            "insert into articles (url, title, summary, body, author, published_at, created_at, \
                             updated_at, image_url, summary_text, html) \
                             values ($1, $2, $3, $4, $5, $6, $7, $7, $8, $9, $10) returning id",
                        )
                        .bind(&a.url).bind(&a.title).bind(&a.summary).bind(&a.body).bind(&a.author)
                        .bind(a.published_at).bind(now).bind(&a.image_url).bind(&a.summary_text)
                        .bind(a.html)
                        .fetch_one(&mut *tx)
                        .await?;
                        inserted += 1;
                        id
                    }
                };
                for tag in &a.tags {
                    sqlx::query("insert into article_tags (article_id, tag) values ($1, $2) on conflict do nothing")
                        .bind(id)
                        .bind(tag)
                        .execute(&mut *tx)
                        .await?;
                }
                progress(inserted + updated);
            }
            tx.commit().await?;
            Ok((inserted, updated))
        })
    }

    /// Deletes the article at `url` (runs keep their own copy of it).
    pub async fn remove_article(&self, url: &str) -> Result<bool> {
        let sql = "delete from articles where url = $1";
        on_pool!(self, pool => {
            let done = sqlx::query(sql).bind(url).execute(pool).await?;
            Ok(done.rows_affected() > 0)
        })
    }

    /// The newest `limit` articles.
    pub async fn list_articles(&self, limit: i64) -> Result<Vec<Article>> {
        let sql = "select id, url, title, summary, author, published_at, image_url from articles \
                   order by published_at desc, id desc limit $1";
        on_pool!(self, pool => Ok(sqlx::query_as(sql).bind(limit).fetch_all(pool).await?))
    }

    pub async fn article_tags(&self, article_id: i64) -> Result<Vec<String>> {
        let sql = "select tag from article_tags where article_id = $1 order by tag";
        on_pool!(self, pool => {
            let rows: Vec<(String,)> = sqlx::query_as(sql).bind(article_id).fetch_all(pool).await?;
            Ok(rows.into_iter().map(|(t,)| t).collect())
        })
    }

    /// The articles a run would take: published in (`after`, `until`],
    /// newest first, at most `limit`, with one of `tags` when any are given.
    pub async fn select_articles(
        &self,
        after: Timestamp,
        until: Timestamp,
        tags: &[String],
        limit: u32,
    ) -> Result<Vec<RunArticle>> {
        let rows: Vec<RunArticleRow> = on_pool!(self, pool => {
            let mut q = QueryBuilder::new(
                "select a.id as article_id, a.url, a.title, a.summary, a.body, a.author, \
                 '[]' as tags, a.published_at, a.image_url, a.summary_text, a.html \
                 from articles a where a.published_at > ",
            );
            q.push_bind(after).push(" and a.published_at <= ").push_bind(until);
            if !tags.is_empty() {
                q.push(" and exists (select 1 from article_tags t where t.article_id = a.id and t.tag in (");
                let mut list = q.separated(", ");
                for tag in tags {
                    list.push_bind(tag);
                }
                q.push("))");
            }
            q.push(" order by a.published_at desc, a.id desc limit ").push_bind(i64::from(limit));
            q.build_query_as().fetch_all(pool).await?
        });
        let mut articles: Vec<RunArticle> = rows.into_iter().map(RunArticle::from).collect();
        for a in &mut articles {
            a.tags = self.article_tags(a.article_id).await?;
        }
        Ok(articles)
    }
}
