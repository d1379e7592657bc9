-- RAGFlow chat assistants ("chats" in RAGFlow's API): a name, a model and prompt
-- settings.  Their sessions are ordinary chats that name their assistant, so they
-- appear in the owner's Open WebUI sidebar like any other chat.
CREATE TABLE assistants (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    name TEXT NOT NULL,
    config TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
CREATE UNIQUE INDEX assistants_user_name ON assistants (user_id, name);

ALTER TABLE chats ADD COLUMN assistant_id TEXT;
CREATE INDEX chats_assistant ON chats (assistant_id, updated_at);
