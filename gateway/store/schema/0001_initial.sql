-- Users, API keys, chats, one row per message, tags.
-- Written once for SQLite and PostgreSQL: TEXT, BIGINT, INTEGER, BOOLEAN only;
-- JSON is TEXT holding compact json.dumps output.
CREATE TABLE users (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    email TEXT UNIQUE,
    role TEXT NOT NULL,
    password_hash TEXT,
    profile_image_url TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    settings TEXT NOT NULL
);

CREATE TABLE api_keys (
    key_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL
);

CREATE TABLE chats (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    title TEXT NOT NULL,
    current_id TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    share_id TEXT UNIQUE,
    archived BOOLEAN NOT NULL,
    pinned BOOLEAN NOT NULL,
    folder_id TEXT,
    meta TEXT NOT NULL,
    extra TEXT NOT NULL,
    last_read_at BIGINT
);
CREATE INDEX chats_user_updated ON chats (user_id, updated_at);

CREATE TABLE messages (
    chat_id TEXT NOT NULL REFERENCES chats (id) ON DELETE CASCADE,
    id TEXT NOT NULL,
    parent_id TEXT,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    done BOOLEAN,
    fields TEXT NOT NULL,
    draft TEXT,
    position INTEGER NOT NULL,
    PRIMARY KEY (chat_id, id)
);
CREATE INDEX messages_done ON messages (done);

CREATE TABLE tags (
    user_id TEXT NOT NULL,
    id TEXT NOT NULL,
    name TEXT NOT NULL,
    PRIMARY KEY (user_id, id)
);

CREATE TABLE chat_tags (
    chat_id TEXT NOT NULL REFERENCES chats (id) ON DELETE CASCADE,
    user_id TEXT NOT NULL,
    tag_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (chat_id, tag_id)
);
CREATE INDEX chat_tags_user_tag ON chat_tags (user_id, tag_id);
