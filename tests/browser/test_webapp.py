"""Open WebUI 0.12.4's own web app against the gateway, in Chromium, as a person uses it.

The gateway serves the app itself (`gateway webui install`, then `gateway serve`), in
front of the fake model server: directly, and behind the shipped nginx config
(nginx/gateway.conf) with two replicas sharing Redis and PostgreSQL.  One flow, step
by step, each step asserting what is on the screen:

    sign in (a user made by `gateway users add`) · pick a model · send a message and
    watch the reply stream · the chat in the sidebar · its tags · reload and find it · continue
    it · regenerate (2/2, then ‹ back to 1/2) · stop a slow reply (and find what was
    kept after a reload) · edit a message (a new branch, 2/2) · rename · pin ·
    search · archive · a model that thinks (its reasoning collapsed above the answer,
    there after a reload, opened by a click) · delete · sign out

Any uncaught page error or console error fails the test (ALLOWED_CONSOLE and
OPTIONAL_ROUTES say which are tolerated, and why).  Screenshots of every step go to
the test's temporary directory (printed at the end), never into the repository.

Guarded by what the gateway offers (asserted once `/api/config` turns them on):
model-written titles, tags (in the chat's "Chat actions" menu) and follow-up
suggestions, the model's avatar.  Left for later: the changelog ("What's New"
shows to admins only; this user is a `user`).

Open WebUI cannot be served under a sub-path (it asks for /_app/…, /api/… and
/ws/socket.io from the root of the host and has no base-path setting): there, the
gateway answers `GET /` with its JSON index and says so (tests/webui/).
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import EMAIL, NAME, PASSWORD, add_user, install_webui
from tests.fakes import upstream as fakes
from tests.fakes.upstream import FakeUpstream
from tests.gatewayproc import GatewayProcess

pytestmark = pytest.mark.timeout(600)

STEP_TIMEOUT_MS = 20_000

# Console messages of type "error" that do not fail the test: (pattern, why).
ALLOWED_CONSOLE: list[tuple[str, str]] = []


@pytest.fixture(scope="module", params=["direct", "nginx"])
def served(
    request: pytest.FixtureRequest,
    browser_upstream: FakeUpstream,
    tmp_path_factory: pytest.TempPathFactory,
    webui_wheels: Path,
) -> Iterator[str]:
    """Where the web app is: a gateway serving it itself, or two behind nginx."""
    if request.param == "direct":
        data_dir = tmp_path_factory.mktemp("webui-gateway")
        said = install_webui(data_dir, webui_wheels)
        assert "installed in" in said and str(data_dir) in said
        add_user(data_dir)
        gateway = GatewayProcess(data_dir, {"OPENAI_API_BASE_URL": browser_upstream.url})
        gateway.start()
        yield gateway.url
        gateway.stop()
        return
    yield from _behind_nginx(browser_upstream, tmp_path_factory, webui_wheels)


def _behind_nginx(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory, wheels: Path
) -> Iterator[str]:
    from tests.proxy.runners import start_nginx
    from tests.services import pg_database

    with pg_database() as database_url:
        env = {
            "OPENAI_API_BASE_URL": upstream.url,
            "WEBSOCKET_MANAGER": "redis",
            "REDIS_URL": "redis://127.0.0.1:6379/0",
            "GATEWAY_REDIS_KEY_PREFIX": f"browser-{uuid.uuid4().hex[:8]}:",
            "DATABASE_URL": database_url,
        }
        replicas = []
        for name in ("a", "b"):
            data_dir = tmp_path_factory.mktemp(f"webui-replica-{name}")
            install_webui(data_dir, wheels, env)
            replicas.append(GatewayProcess(data_dir, env))
        add_user(replicas[0].data_dir, env)
        proxy = None
        try:
            for replica in replicas:
                replica.start()
            proxy = start_nginx(
                tmp_path_factory.mktemp("webui-nginx"),
                "nginx/gateway.conf",
                [replica.port for replica in replicas],
            )
            yield proxy.base
        finally:
            if proxy is not None:
                proxy.stop()
            for replica in replicas:
                replica.stop()


@dataclass
class Flow:
    """The page, where it is served, and what it said along the way."""

    page: Any
    base: str
    shots: Path
    features: dict[str, Any]
    errors: list[str] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)
    naming: str = ""

    def shot(self, name: str) -> None:
        number = len(self.steps) + (0 if self.steps and self.steps[-1] == name else 1)
        self.page.screenshot(path=str(self.shots / f"{number:02d}-{name}.png"))

    def step(self, name: str, action: Callable[[], None]) -> None:
        self.naming = name
        try:
            action()
        except Exception as exc:
            self.shot(f"{name}-FAILED")
            raise AssertionError(
                f"step {name!r} failed (after {self.steps}); errors in the page: {self.errors}"
            ) from exc
        self.steps.append(name)
        self.shot(name)

    # -- what the steps use ------------------------------------------------------------
    def see(self, text: str, timeout: int = STEP_TIMEOUT_MS) -> None:
        self.page.get_by_text(text, exact=False).first.wait_for(state="visible", timeout=timeout)

    def chat_id(self) -> str:
        match = re.search(r"/c/([0-9a-f-]{36})", self.page.url)
        assert match, f"not on a chat page: {self.page.url}"
        return match.group(1)

    def sidebar(self) -> Any:
        """The sidebar, opened if it is closed (the app keeps that in localStorage)."""
        opener = self.page.get_by_role("button", name="Open Sidebar")
        if opener.first.is_visible():
            opener.first.click()
        self.page.get_by_role("button", name="Close Sidebar").first.wait_for(state="visible")
        return self.page.locator("#sidebar")

    def sidebar_links(self, chat_id: str) -> Any:
        return self.sidebar().locator(f'a[href="/c/{chat_id}"]')

    def chat_menu(self, chat_id: str, choice: str) -> None:
        """The sidebar item's ··· menu, then `choice` in it."""
        self.sidebar_links(chat_id).first.hover()
        row = self.page.locator("#sidebar-chat-group").filter(
            has=self.page.locator(f'a[href="/c/{chat_id}"]')
        )
        row.first.get_by_role("button", name="Chat Menu").click()
        self.page.get_by_role("menuitem", name=choice).or_(
            self.page.locator(f'[role="menu"] >> text="{choice}"')
        ).first.click()

    def pick_model(self, model: str) -> None:
        button = self.page.locator("#model-selector-model-button")
        button.click()
        self.page.locator("#model-search-input").fill(model)
        self.page.locator(f'#model-selector-list [data-value="{model}"]').click()
        assert model in button.inner_text()

    def send(self, text: str) -> None:
        box = self.page.locator("#chat-input")
        box.click()
        box.fill(text)
        self.page.keyboard.press("Enter")

    def messages(self, role: str) -> Any:
        """Each message of a role, whole: its text (in `.chat-<role>`) and its buttons."""
        return self.page.locator('div[id^="message-"]').filter(
            has=self.page.locator(f".chat-{role}")
        )

    def responses(self) -> Any:
        return self.messages("assistant")

    def last_response_text(self) -> str:
        return str(self.page.locator(".chat-assistant").last.inner_text())

    def api(self, path: str) -> Any:
        """A GET as the signed-in page makes it (its `token` cookie)."""
        response = self.page.request.get(self.base + path)
        assert response.ok, f"GET {path}: {response.status}"
        return response.json()


def _until(check: Callable[[], bool], what: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.1)


def _signed_in(base: str) -> str:
    signin = urllib.request.Request(
        base + "/api/v1/auths/signin",
        data=json.dumps({"email": EMAIL, "password": PASSWORD}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(signin, timeout=10) as response:
        return str(json.load(response)["token"])


def _get(base: str, path: str, token: str) -> tuple[int, bytes]:
    asked = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(asked, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def _offered(base: str) -> dict[str, Any]:
    """The features the gateway's /api/config turns on for the test's user."""
    token = _signed_in(base)
    features: dict[str, Any] = json.loads(_get(base, "/api/config", token)[1])["features"]
    status, _ = _get(base, "/api/v1/models/model/profile/image?id=fake-model", token)
    features["model_avatar"] = status == 200
    return features


def _console_listener(flow: Flow) -> Callable[[Any], None]:
    def on_console(message: Any) -> None:
        if message.type != "error":
            return
        # "Failed to load resource" names no URL in its text: its location does.
        url = message.location.get("url", "")
        text = f"{message.text} [{url}]"
        if any(re.search(pattern, text) for pattern, _why in ALLOWED_CONSOLE):
            return
        flow.errors.append(f"{flow.naming}: console: {text[:500]}")

    return on_console


def _task_answer(task: str) -> Any:
    """What the fake model answers one of the gateway's background tasks, if it does."""
    answers = getattr(fakes, "TASK_ANSWERS", {})
    if task not in answers:
        return None
    found = re.search(r"\{.*\}", answers[task], re.S)
    return json.loads(found.group(0)) if found else None


def test_the_web_app_end_to_end(served: str, chromium: Any, tmp_path: Path) -> None:
    shots = tmp_path / "screenshots"
    shots.mkdir()
    page = chromium.new_page()
    page.set_default_timeout(STEP_TIMEOUT_MS)
    features = _offered(served)
    flow = Flow(page, served, shots, features)
    page.on("console", _console_listener(flow))
    page.on("pageerror", lambda error: flow.errors.append(f"{flow.naming}: pageerror: {error}"))
    started = time.monotonic()
    try:
        _run(flow)
    finally:
        print(f"\nscreenshots in {shots} after {time.monotonic() - started:.1f} s: {flow.steps}")
        guarded = (
            "enable_title_generation",
            "enable_tags_generation",
            "enable_follow_up_generation",
            "model_avatar",
        )
        print("guarded checks on:", [name for name in guarded if flow.features.get(name)])
    assert not flow.errors, "errors in the page:\n" + "\n".join(flow.errors)


def _run(flow: Flow) -> None:
    page = flow.page
    chat: dict[str, str] = {}

    def sign_in() -> None:
        page.goto(flow.base + "/")
        page.wait_for_url(re.compile(r"/auth"))
        page.locator('input[type="email"]').fill(EMAIL)
        page.locator('input[type="password"]').fill(PASSWORD)
        page.keyboard.press("Enter")
        page.wait_for_url(flow.base + "/")
        page.locator("#chat-input").wait_for(state="visible")
        flow.sidebar().get_by_text(NAME).first.wait_for(state="visible")

    def pick_model() -> None:
        flow.pick_model("fake-model")

    def send_and_watch_it_stream() -> None:
        # Every distinct text the last reply shows, as the page changes.
        page.evaluate(
            """() => {
                window.__seen = [];
                new MutationObserver(() => {
                    const all = document.querySelectorAll('.chat-assistant');
                    const text = all.length ? all[all.length - 1].innerText : '';
                    if (text && window.__seen[window.__seen.length - 1] !== text) {
                        window.__seen.push(text);
                    }
                }).observe(document.body, {subtree: true, childList: true, characterData: true});
            }"""
        )
        flow.send("Hello gateway")
        flow.see("Fake reply to: Hello gateway")
        seen = page.evaluate("window.__seen")
        partial = [text for text in seen if text.strip() and "Hello gateway" not in text]
        assert partial, f"the reply never showed part of its text before the whole: {seen}"
        chat["id"] = flow.chat_id()
        if flow.features.get("enable_follow_up_generation"):
            suggestions = (_task_answer("Task: follow-ups") or {}).get("follow_ups") or []
            flow.see("Follow up")
            for suggestion in suggestions:
                flow.see(suggestion)

    def chat_in_sidebar() -> None:
        item = flow.sidebar_links(chat["id"]).first
        item.wait_for(state="visible")
        assert item.inner_text().strip(), "the chat has no title in the sidebar"
        if flow.features.get("enable_title_generation"):
            title = (_task_answer("Task: title") or {}).get("title", "")
            words = title.split(" ", 1)[-1]  # without a leading emoji: no font draws it here
            _until(
                lambda: words in item.inner_text() if words else item.inner_text() != "New Chat",
                f"the model-written title {title!r} in the sidebar",
            )

    def see_the_tags() -> None:
        # The model-written tags, in the chat's own menu (···, "Chat actions", at the
        # top of the chat), as Open WebUI shows them.
        if not flow.features.get("enable_tags_generation"):
            return
        expected = (_task_answer("Task: tags") or {}).get("tags") or []
        assert expected, "the fake model answers the tags task"
        _until(
            lambda: len(flow.api(f"/api/v1/chats/{chat['id']}/tags")) == len(expected),
            f"the model-written tags {expected} stored",
        )
        page.get_by_role("button", name="Chat actions").first.click()
        menu = page.get_by_role("menu")
        for tag in expected:
            menu.get_by_text(tag, exact=True).first.wait_for(state="visible")
        flow.shot("tags-in-the-chat-menu")
        page.keyboard.press("Escape")
        menu.first.wait_for(state="hidden")

    def reload_and_find_it() -> None:
        page.reload()
        flow.see("Hello gateway")
        flow.see("Fake reply to: Hello gateway")
        flow.sidebar_links(chat["id"]).first.wait_for(state="visible")
        if flow.features.get("model_avatar"):
            avatar = flow.responses().first.locator("img.assistant-message-profile-image")
            _until(
                lambda: bool(avatar.evaluate("img => img.complete && img.naturalWidth > 0")),
                "the model's avatar drawn",
            )

    def continue_the_chat() -> None:
        flow.send("And a second question")
        flow.see("Fake reply to: And a second question")
        assert flow.chat_id() == chat["id"]

    def regenerate_then_go_back() -> None:
        last = flow.responses().last
        last.hover()
        last.get_by_role("button", name="Regenerate").click()
        try_again = page.get_by_text("Try Again", exact=True)  # the regenerate menu
        if try_again.count():
            try_again.first.click()
        flow.responses().last.get_by_text("2/2").wait_for(state="visible")
        _until(
            lambda: "Fake reply to: And a second question" in flow.last_response_text(),
            "the regenerated reply, whole",
        )
        flow.shot("regenerated")
        flow.responses().last.get_by_role("button", name="Previous message").click()
        flow.responses().last.get_by_text("1/2").wait_for(state="visible")

    def stop_a_slow_reply() -> None:
        flow.pick_model("fake-crawl")
        flow.send("A long answer please")
        flow.see("c5 ")
        flow.shot("streaming")
        page.get_by_role("button", name="Stop").click()
        page.get_by_role("button", name="Stop").wait_for(state="hidden")
        stopped = flow.last_response_text()
        time.sleep(1.5)
        assert flow.last_response_text() == stopped, "the reply went on after Stop"
        assert "c299" not in stopped
        # What was said before Stop is kept: a reload shows it.
        page.reload()
        flow.see("A long answer please")
        kept = flow.last_response_text()
        assert kept.startswith("c0 c1 c2 c3 c4 c5") and "c299" not in kept, kept

    def edit_a_message() -> None:
        flow.pick_model("fake-model")
        message = flow.messages("user").filter(has_text="A long answer please").last
        message.hover()
        message.get_by_role("button", name="Edit").click()
        page.locator('textarea[id^="message-edit-"]').fill("An edited question")
        page.locator("#confirm-edit-message-button").click()  # "Send": a new branch
        flow.see("Fake reply to: An edited question")
        edited = flow.messages("user").filter(has_text="An edited question").last
        edited.get_by_text("2/2").wait_for(state="visible")

    def rename() -> None:
        flow.chat_menu(chat["id"], "Rename")
        title = page.locator(f"#chat-title-input-{chat['id']}")
        title.fill("Renamed by the browser test")
        title.press("Enter")
        flow.sidebar_links(chat["id"]).first.get_by_text("Renamed by the browser test").wait_for()
        assert flow.api(f"/api/v1/chats/{chat['id']}")["title"] == "Renamed by the browser test"

    def pin() -> None:
        flow.chat_menu(chat["id"], "Pin")
        # A "Pinned" group above the day's chats: the chat is listed in both.
        flow.sidebar().get_by_text("Pinned", exact=True).wait_for(state="visible")
        links = flow.sidebar_links(chat["id"])
        _until(lambda: links.count() == 2, "the pinned chat listed twice in the sidebar")

    def search() -> None:
        page.locator("#sidebar-search-button").click()
        dialog = page.get_by_role("dialog")
        dialog.get_by_placeholder("Search workspace…").fill("Renamed")
        # GET /api/v1/search, Open WebUI 0.12's workspace search, over the user's chats.
        dialog.get_by_text("Renamed by the browser test").first.wait_for(state="visible")
        flow.shot("search-results")
        page.keyboard.press("Escape")
        dialog.wait_for(state="hidden")

    def archive() -> None:
        flow.chat_menu(chat["id"], "Unpin")
        _until(lambda: flow.sidebar_links(chat["id"]).count() == 1, "the chat unpinned")
        flow.chat_menu(chat["id"], "Archive")
        flow.sidebar_links(chat["id"]).first.wait_for(state="detached")
        assert flow.api(f"/api/v1/chats/{chat['id']}")["archived"] is True

    def delete() -> None:
        page.locator('[aria-label="New Chat"]:visible').first.click()
        page.wait_for_url(flow.base + "/")
        flow.send("A chat to delete")
        flow.see("Fake reply to: A chat to delete")
        doomed = flow.chat_id()
        flow.chat_menu(doomed, "Delete")
        page.get_by_role("button", name="Confirm").click()
        flow.sidebar_links(doomed).first.wait_for(state="detached")
        gone = flow.page.request.get(f"{flow.base}/api/v1/chats/{doomed}")
        assert gone.status == 404, gone.status

    def see_the_reasoning() -> None:
        # A model that thinks: its reasoning in a collapsed block above the answer,
        # as Open WebUI shows it, and still there after a reload (stored with it).
        page.locator('[aria-label="New Chat"]:visible').first.click()
        page.wait_for_url(flow.base + "/")
        flow.pick_model("fake-think")
        flow.send("Think first")
        flow.see("Fake reply to: Think first")
        thought = flow.responses().last.get_by_text(re.compile(r"^Thought for"))
        thought.first.wait_for(state="visible")
        page.reload()
        flow.see("Fake reply to: Think first")
        thought.first.wait_for(state="visible")
        # Collapsed: the reasoning's words show only once the block is opened.
        reasoning = flow.responses().last.get_by_text("still weighing.")
        assert not reasoning.first.is_visible()
        thought.first.click()
        reasoning.first.wait_for(state="visible")

    def sign_out() -> None:
        page.get_by_role("button", name="Open User Profile Menu").first.click()
        page.get_by_text("Sign Out", exact=True).click()
        page.wait_for_url(re.compile(r"/auth"))
        page.locator('input[type="email"]').wait_for(state="visible")
        # Signed out for the server too: the cookie no longer opens the API.
        assert flow.page.request.get(flow.base + "/api/v1/auths/").status == 401

    for name, action in [
        ("sign-in", sign_in),
        ("pick-model", pick_model),
        ("send-and-stream", send_and_watch_it_stream),
        ("chat-in-sidebar", chat_in_sidebar),
        ("tags", see_the_tags),
        ("reload", reload_and_find_it),
        ("continue", continue_the_chat),
        ("regenerate", regenerate_then_go_back),
        ("stop", stop_a_slow_reply),
        ("edit", edit_a_message),
        ("rename", rename),
        ("pin", pin),
        ("search", search),
        ("archive", archive),
        ("reasoning", see_the_reasoning),
        ("delete", delete),
        ("sign-out", sign_out),
    ]:
        flow.step(name, action)
