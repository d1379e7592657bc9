"""Open WebUI 0.12.4's own web app against the gateway, in Chromium: four things a
person does with chats and their account that the gateway used to break (a 404 or
405 for the call the app makes, an error toast, or what was done lost on reload).
One test each, through the app's own buttons, and each checked after a reload or
through the gateway's REST API:

    delete a reply (its "Delete" button, then "Confirm"): gone, and still gone
        after a reload (DELETE /api/v1/chats/{id}/messages/{mid})
    Settings › Account: opens without an error toast (GET /api/v1/users/user/variables,
        GET /api/v1/auths/mfa/status), and a new name saved there is kept
        (POST /api/v1/auths/update/profile)
    "Fork chat" on a reply in the middle of a chat: a new chat holding the
        conversation down to that reply (POST /api/v1/chats/{id}/fork)
    share a chat (its "Copy Link"): the link shows the conversation to another
        signed-in user, as it was when shared (a snapshot: a later message is not in it)

In every page, any error toast, uncaught page error, console error or error answer
from the gateway fails the test (TOLERATED would say which answers are let through,
and why), and so does an ERROR or traceback in the gateway's log.  Screenshots of the
steps go to each test's temporary directory, never into the repository.

One gateway serves the app directly (tests/browser/test_webapp.py runs its flow behind
nginx too); the users are made with `gateway users add` before it starts: the
conftest's user, a second one who opens the shared link, and a third whose name is
changed (so that no other test sees a renamed user).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import (
    CHROMIUM,
    CHROMIUM_ARGS,
    EMAIL,
    PASSWORD,
    add_user,
    gateway_command,
    install_webui,
)
from tests.browser.test_webapp import STEP_TIMEOUT_MS, Flow
from tests.fakes.upstream import FakeUpstream
from tests.gatewayproc import GatewayProcess

pytestmark = pytest.mark.timeout(300)

# (email, password, name) of the users besides the conftest's.
VIEWER = ("bob.viewer@example.com", "bob's own long password", "Bob Viewer")
RENAMED = ("carol@example.com", "carol's own long password", "Carol Before")

# Error answers from the gateway that do not fail a test: (URL pattern, why).
# Answers let through, each with why (none now: the two 404s the first runs let
# through, the shared page's sharer and the share modal's groups, are answered).
TOLERATED: list[tuple[str, str]] = []

# From the start of every page load: each error toast the page shows is passed, by
# its text, to `__errorToast` (a binding of the test's).
ERROR_TOAST_WATCHER = """
(() => {
    const told = new WeakSet();
    new MutationObserver(() => {
        for (const toast of document.querySelectorAll('[data-sonner-toast][data-type="error"]')) {
            if (!told.has(toast)) {
                told.add(toast);
                window.__errorToast(toast.textContent || '');
            }
        }
    }).observe(document, {subtree: true, childList: true, attributes: true});
})();
"""

CONTEXT_OPTIONS: dict[str, Any] = {
    "viewport": {"width": 1400, "height": 900},
    "locale": "en-US",
    "timezone_id": "UTC",
}


def _add_user(data_dir: Path, user: tuple[str, str, str]) -> None:
    email, password, name = user
    done = gateway_command(
        data_dir, "users", "add", "--email", email, "--password", password, "--name", name,
        "--role", "user",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def gateway(
    browser_upstream: FakeUpstream,
    tmp_path_factory: pytest.TempPathFactory,
    webui_wheels: Path,
) -> Iterator[GatewayProcess]:
    """A gateway serving the web app itself, its three users made before it starts."""
    data_dir = tmp_path_factory.mktemp("webui-chats")
    install_webui(data_dir, webui_wheels)
    add_user(data_dir)
    _add_user(data_dir, VIEWER)
    _add_user(data_dir, RENAMED)
    process = GatewayProcess(data_dir, {"OPENAI_API_BASE_URL": browser_upstream.url})
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def browser() -> Iterator[Any]:
    """A Chromium of its own, for a test that needs two people (two contexts) at once:
    the conftest's `chromium` is a single persistent context."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def log_checked(gateway: GatewayProcess) -> Iterator[None]:
    """Fails the test when the gateway logged an ERROR or a traceback meanwhile."""
    offset = len(gateway.log())
    yield
    troubles = gateway.troubles_since(offset)
    assert not troubles, "the gateway logged:\n" + "\n".join(troubles)


def _watched(context: Any, base: str, shots: Path) -> Flow:
    """A new page of `context` as a Flow (test_webapp.py's helpers), its problems
    (see the module docstring) collected in `flow.errors`."""
    page = context.new_page()
    page.set_default_timeout(STEP_TIMEOUT_MS)
    shots.mkdir(parents=True, exist_ok=True)
    flow = Flow(page, base, shots, features={})

    def on_console(message: Any) -> None:
        # A failed load is told by on_response, with its URL.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            flow.errors.append(f"{flow.naming}: console: {message.text[:500]}")

    def on_response(response: Any) -> None:
        if response.status < 400 or not response.url.startswith(base):
            return
        path = response.url[len(base) :].split("?")[0]
        if not any(re.search(pattern, path) for pattern, _why in TOLERATED):
            flow.errors.append(
                f"{flow.naming}: {response.status} for {response.request.method} {path}"
            )

    def on_toast(_source: Any, text: str) -> None:
        flow.errors.append(f"{flow.naming}: error toast: {text[:500]}")

    page.on("console", on_console)
    page.on("pageerror", lambda error: flow.errors.append(f"{flow.naming}: pageerror: {error}"))
    page.on("response", on_response)
    page.expose_binding("__errorToast", on_toast)
    page.add_init_script(ERROR_TOAST_WATCHER)
    return flow


def _sign_in(flow: Flow, email: str = EMAIL, password: str = PASSWORD) -> None:
    page = flow.page
    page.goto(flow.base + "/auth")
    page.locator('input[type="email"]').fill(email)
    page.locator('input[type="password"]').fill(password)
    page.keyboard.press("Enter")
    page.wait_for_url(flow.base + "/")
    page.locator("#chat-input").wait_for(state="visible")


def _start_chat(flow: Flow, *questions: str) -> None:
    """Signed in (as the conftest's user), the questions asked one by one, each reply
    waited for whole."""
    _sign_in(flow)
    flow.pick_model("fake-model")
    for question in questions:
        flow.send(question)
        flow.responses().last.get_by_text(f"Fake reply to: {question}").wait_for()


def _message_id(message: Any) -> str:
    """A message's id, from its element's (`message-<id>`)."""
    return str(message.get_attribute("id")).removeprefix("message-")


def _thread(chat: dict[str, Any]) -> list[tuple[str, str]]:
    """The conversation a chat shows, (role, text) from its first message to its
    current one, walking up from `currentId` as the web app does."""
    history = chat["chat"]["history"]
    messages, shown = history["messages"], []
    current = history.get("currentId")
    while current is not None:
        shown.append((messages[current]["role"], messages[current]["content"]))
        current = messages[current].get("parentId")
    return shown[::-1]


def _exchange(*questions: str) -> list[tuple[str, str]]:
    """The thread of these questions, each answered by fake-model."""
    return [pair for q in questions for pair in (("user", q), ("assistant", f"Fake reply to: {q}"))]


def _has_value(box: Any, value: str) -> None:
    """Waits for an input to hold `value` (the app fills it once its data comes)."""
    from playwright.sync_api import expect

    expect(box).to_have_value(value, timeout=STEP_TIMEOUT_MS)


def _eventually(check: Callable[[], bool], what: str, timeout_s: float = 20) -> None:
    """Polls `check` (for what the gateway stores, which no page element shows)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.1)


def _run(flow: Flow, steps: list[tuple[str, Callable[[], None]]]) -> None:
    for name, action in steps:
        flow.step(name, action)
    assert not flow.errors, "errors in the page:\n" + "\n".join(flow.errors)


def test_a_deleted_reply_stays_deleted(
    gateway: GatewayProcess, chromium: Any, tmp_path: Path, log_checked: None
) -> None:
    # A reply can be deleted once it has a sibling (Open WebUI offers "Delete" on a
    # reply only then; a user's own messages need a permission this user lacks).
    flow = _watched(chromium, gateway.url, tmp_path / "screenshots")
    page = flow.page
    question = "Answer me twice"
    doomed: dict[str, str] = {}

    def ask() -> None:
        _start_chat(flow, question)

    def regenerate() -> None:
        last = flow.responses().last
        last.hover()
        last.get_by_role("button", name="Regenerate").click()
        page.get_by_text("Try Again", exact=True).click()  # the regenerate menu
        last = flow.responses().last
        last.get_by_text("2/2").wait_for(state="visible")
        last.get_by_text(f"Fake reply to: {question}").wait_for()
        doomed["id"] = _message_id(last)

    def delete() -> None:
        reply = page.locator(f"#message-{doomed['id']}")
        with page.expect_response(
            lambda r: r.request.method == "DELETE" and r.url.endswith(f"/messages/{doomed['id']}")
        ) as answered:
            reply.get_by_role("button", name="Delete").click()
            dialog = page.get_by_role("dialog", name="Delete message?")
            dialog.get_by_role("button", name="Confirm").click()
        assert answered.value.ok, answered.value.status
        reply.wait_for(state="detached")
        flow.responses().get_by_text("1/2").wait_for(state="detached")

    def reload() -> None:
        page.reload()
        flow.responses().last.get_by_text(f"Fake reply to: {question}").wait_for()
        assert flow.responses().count() == 1
        assert page.locator(f"#message-{doomed['id']}").count() == 0
        assert flow.responses().get_by_text("/2").count() == 0, "a sibling counter is left"
        chat = flow.api(f"/api/v1/chats/{flow.chat_id()}")
        assert doomed["id"] not in chat["chat"]["history"]["messages"]
        assert _thread(chat) == _exchange(question)

    _run(flow, [("ask", ask), ("regenerate", regenerate), ("delete", delete), ("reload", reload)])


def test_account_settings_open_cleanly_and_keep_a_new_name(
    gateway: GatewayProcess, chromium: Any, tmp_path: Path, log_checked: None
) -> None:
    flow = _watched(chromium, gateway.url, tmp_path / "screenshots")
    page = flow.page
    email, password, old_name = RENAMED
    new_name = "Carol Renamed In Settings"
    account = page.locator("#tab-account")
    name_box = account.get_by_role("textbox", name="Name")

    def open_account() -> None:
        # Opening the tab asks for the user's prompt variables and second-factor
        # status: both answered, and no error toast (the watcher would tell).
        with (
            page.expect_response(re.compile(r"/api/v1/users/user/variables$")) as variables,
            page.expect_response(re.compile(r"/api/v1/auths/mfa/status$")) as mfa,
        ):
            # The picture opening the user menu, in the sidebar open or closed.
            page.locator('img[aria-label="Open User Profile Menu"]:visible').first.click()
            page.get_by_role("menuitem", name="Settings", exact=True).click()
            page.locator('button[role="tab"][aria-controls="tab-account"]').click()
        assert variables.value.ok and mfa.value.ok, (variables.value.status, mfa.value.status)
        account.wait_for(state="visible")

    def sign_in_and_open_account() -> None:
        _sign_in(flow, email, password)
        open_account()
        _has_value(name_box, old_name)

    def rename() -> None:
        name_box.fill(new_name)
        with page.expect_response(re.compile(r"/api/v1/auths/update/profile$")) as saved:
            account.get_by_role("button", name="Save").click()
        assert saved.value.ok, saved.value.status
        page.get_by_text("Settings saved successfully!").first.wait_for(state="visible")

    def reload() -> None:
        page.reload()
        page.locator("#chat-input").wait_for(state="visible")
        flow.sidebar().get_by_text(new_name).first.wait_for(state="visible")
        assert flow.api("/api/v1/auths/")["name"] == new_name
        open_account()
        _has_value(name_box, new_name)

    _run(
        flow,
        [
            ("open-account", sign_in_and_open_account),
            ("rename", rename),
            ("reload", reload),
        ],
    )


def test_fork_a_chat_at_a_reply(
    gateway: GatewayProcess, chromium: Any, tmp_path: Path, log_checked: None
) -> None:
    flow = _watched(chromium, gateway.url, tmp_path / "screenshots")
    page = flow.page
    first, second = "Fork from my first question", "A second question, left behind"
    chats: dict[str, Any] = {}

    def ask_twice() -> None:
        _start_chat(flow, first, second)
        chats["source"] = flow.chat_id()
        chats["before"] = {chat["id"] for chat in flow.api("/api/v1/chats/")}

    def fork() -> None:
        # "Fork chat" on the first reply (not the last: the fork stops there).
        reply = flow.responses().first
        reply.hover()
        with page.expect_response(re.compile(r"/api/v1/chats/[^/]+/fork$")) as forked:
            reply.get_by_role("button", name="Fork chat").click()
        assert forked.value.ok, forked.value.status
        page.wait_for_url(lambda url: "/c/" in url and chats["source"] not in url)
        chats["fork"] = flow.chat_id()
        flow.responses().last.get_by_text(f"Fake reply to: {first}").wait_for()
        assert flow.messages("user").get_by_text(second).count() == 0

    def through_the_api() -> None:
        now = {chat["id"] for chat in flow.api("/api/v1/chats/")}
        assert now - chats["before"] == {chats["fork"]}, (chats, now)
        assert _thread(flow.api(f"/api/v1/chats/{chats['fork']}")) == _exchange(first)
        # The chat forked from is as it was.
        assert _thread(flow.api(f"/api/v1/chats/{chats['source']}")) == _exchange(first, second)

    def reload() -> None:
        page.reload()
        flow.responses().last.get_by_text(f"Fake reply to: {first}").wait_for()
        assert flow.chat_id() == chats["fork"]
        assert flow.responses().count() == 1
        flow.sidebar_links(chats["fork"]).first.wait_for(state="visible")

    _run(flow, [("ask", ask_twice), ("fork", fork), ("api", through_the_api), ("reload", reload)])


def test_a_shared_link_shows_a_snapshot_to_another_user(
    gateway: GatewayProcess, browser: Any, tmp_path: Path, log_checked: None
) -> None:
    owner_context = browser.new_context(**CONTEXT_OPTIONS)
    owner_context.grant_permissions(["clipboard-read", "clipboard-write"], origin=gateway.url)
    owner = _watched(owner_context, gateway.url, tmp_path / "owner")
    viewer = _watched(browser.new_context(**CONTEXT_OPTIONS), gateway.url, tmp_path / "viewer")
    question, later = "Share this conversation", "Said after the link was made"
    shared: dict[str, str] = {}

    def ask() -> None:
        _start_chat(owner, question)
        shared["chat"] = owner.chat_id()

    def copy_the_link() -> None:
        page = owner.page
        page.get_by_role("button", name="Chat actions").first.click()
        page.locator("#chat-share-button").click()
        page.locator("#copy-and-share-chat-button").click()
        page.get_by_text("Copied shared chat URL to clipboard!").first.wait_for()
        shared["link"] = page.evaluate("navigator.clipboard.readText()")
        share_id = owner.api(f"/api/v1/chats/{shared['chat']}")["share_id"]
        assert shared["link"] == f"{gateway.url}/s/{share_id}", (shared, share_id)
        page.keyboard.press("Escape")
        page.locator("#copy-and-share-chat-button").wait_for(state="detached")

    def open_it_as_another_user() -> None:
        _sign_in(viewer, *VIEWER[:2])
        viewer.page.goto(shared["link"])
        viewer.messages("user").get_by_text(question).wait_for()
        viewer.responses().get_by_text(f"Fake reply to: {question}").wait_for()

    def say_more() -> None:
        owner.send(later)
        owner.responses().last.get_by_text(f"Fake reply to: {later}").wait_for()
        _eventually(
            lambda: (
                _thread(owner.api(f"/api/v1/chats/{shared['chat']}")) == _exchange(question, later)
            ),
            "the owner's chat stored with the later message",
        )

    def the_link_shows_the_snapshot() -> None:
        viewer.page.reload()
        viewer.responses().get_by_text(f"Fake reply to: {question}").wait_for()
        assert viewer.page.get_by_text(later).count() == 0, "the link shows a later message"
        share_id = shared["link"].rsplit("/", 1)[-1]
        assert _thread(viewer.api(f"/api/v1/chats/share/{share_id}")) == _exchange(question)

    steps: list[tuple[Flow, str, Callable[[], None]]] = [
        (owner, "ask", ask),
        (owner, "copy-link", copy_the_link),
        (viewer, "open-link", open_it_as_another_user),
        (owner, "say-more", say_more),
        (viewer, "reload-link", the_link_shows_the_snapshot),
    ]
    for flow, name, action in steps:
        flow.step(name, action)
    problems = owner.errors + viewer.errors
    assert not problems, "errors in the pages:\n" + "\n".join(problems)
