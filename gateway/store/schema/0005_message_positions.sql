-- A message's position, found by chat: each new message goes after the chat's
-- last (`MAX(position)`), which without this index read every message of the
-- chat, so saving a chat of n messages took n² reads (20,000 messages: 28 s on
-- SQLite, while every other user's write waited).  Messages are also listed in
-- this order.
CREATE INDEX messages_chat_position ON messages (chat_id, position);
