"""Open WebUI's backend routes: chats, completions, tasks, auths, users, and the small
routes its web app calls (`webapp.py`)."""
