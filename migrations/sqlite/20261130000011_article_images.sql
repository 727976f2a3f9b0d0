-- Articles from feeds: an image, and summaries and bodies that are
-- sanitized HTML (html = 1) rather than plain text, with the summary's
-- plain text for the text part of a digest. Runs keep the same fields.
alter table articles add column image_url text;
alter table articles add column summary_text text;
alter table articles add column html integer not null default 0;
alter table run_articles add column image_url text;
alter table run_articles add column summary_text text;
alter table run_articles add column html integer not null default 0;
