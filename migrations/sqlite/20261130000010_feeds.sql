-- One row per configured feed: what its last fetch said, when the next is
-- due, and the lease that lets one process at a time fetch it.
create table feeds (
    name text primary key,
    url text not null,
    etag text,
    last_modified text,
    last_fetch_at integer,
    last_status text check (last_status in ('ok', 'error', 'not_modified')),
    last_error text,
    failures integer not null default 0,
    next_fetch_at integer,
    leased_until integer
);

-- Which feed brought which article (an article may come from several).
create table feed_articles (
    feed text not null references feeds (name) on delete cascade,
    article_id integer not null references articles (id) on delete cascade,
    primary key (feed, article_id)
);
create index feed_articles_article on feed_articles (article_id);
