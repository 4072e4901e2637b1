"""The Space in a real browser (Playwright driving Debian's chromium) against a running
`python -m space_app` on a prebuilt store: every view, as a user clicks through it."""

from __future__ import annotations

import re
import time

import pytest
from space_helpers import SYNTHETIC_REPOS, screenshot

pytestmark = pytest.mark.slow

LUNAR = "LunarLander-v3"
CARTPOLE = "CartPole-v1"


def expect():
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect


def open_space(page, url: str, query: str = "", *, board: bool = True) -> None:
    page.goto(url + "/" + query)
    if board:  # the leaderboard tab is the one shown
        page.wait_for_selector("#ranking .virtual-row", state="attached")
        expect()(page.locator("#page-info")).to_contain_text("Rows")


def choose(page, elem_id: str, label: str) -> None:
    """Pick an option of a gradio Dropdown by (part of) its label."""
    page.click(f"#{elem_id} input")
    page.locator(f"#{elem_id} ~ * [role=option], [role=option]").filter(has_text=label).first.click()


def fill(page, elem_id: str, text: str, *, submit: bool = False) -> None:
    box = page.locator(f"#{elem_id} textarea, #{elem_id} input").first
    box.fill(text)
    if submit:
        box.press("Enter")


def column(page, index: int) -> list[str]:
    rows = page.locator("#ranking .virtual-row")
    return [rows.nth(i).locator("[role=gridcell]").nth(index).inner_text().strip() for i in range(rows.count())]


def models(page) -> list[str]:
    return column(page, 2)


def settle(page, previous_info: str | None = None) -> str:
    """Wait until the page info changes from `previous_info` (or is there), then for idle."""
    info = page.locator("#page-info")
    if previous_info is not None:
        page.wait_for_function("([el, old]) => el.innerText !== old", arg=[info.element_handle(), previous_info])
    page.wait_for_timeout(400)
    return info.inner_text()


def eventually(check, timeout: float = 30.0) -> bool:
    """Poll `check` until it holds (an update that changes no counter has no event to wait on)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.25)
    return check()


def test_the_ranking_shows_the_demo_agents_in_score_order(page, space):
    from leaderboard.store import Store

    url, store, _ = space
    expected = [r.split("/", 1)[1] for r in Store(store).ranking(LUNAR)["repo_id"]]
    assert {"ppo-LunarLander-v3", "dqn-LunarLander-v3", "random-LunarLander-v3"} <= set(expected)
    open_space(page, url)
    info = page.locator("#page-info").inner_text()
    choose(page, "env", LUNAR)
    settle(page, info)
    assert models(page) == expected
    scores = [float(s) for s in column(page, 4)]
    assert scores == sorted(scores, reverse=True)
    assert column(page, 0) == [str(i) for i in range(1, len(expected) + 1)]
    expect()(page.locator("#threshold")).to_contain_text("Unit 1 ≥ 200")
    assert "consistent" in column(page, 8)
    screenshot(page, "leaderboard")


def test_search_filters_and_server_side_sort(page, space):
    from leaderboard.store import Store

    url, store, _ = space
    place = Store(store).entry(CARTPOLE, "hype-master/ppo-CartPole-v1-perfect")["rank"]
    total = Store(store).count(CARTPOLE)
    assert total >= SYNTHETIC_REPOS + 3
    open_space(page, url, f"?env={CARTPOLE}")
    info = page.locator("#page-info").inner_text()
    assert f"of {total}" in info
    fill(page, "search", "ADA-lov", submit=True)  # a user substring, any case
    info = settle(page, info)
    assert "of 2" in info and set(models(page)) == {"a2c-CartPole-v1", "ppo-CartPole-v1"}
    fill(page, "search", "", submit=True)
    info = settle(page, info)
    choose(page, "verdict", "inflated")
    info = settle(page, info)
    assert models(page) == ["ppo-CartPole-v1-perfect"] and column(page, 0) == [str(place)]  # its place in the env
    choose(page, "verdict", "consistent")
    info = settle(page, info)
    choose(page, "algo", "dqn")
    info = settle(page, info)
    dqn = Store(store).count(CARTPOLE, algo="dqn", verdict="consistent")
    assert dqn >= SYNTHETIC_REPOS and f"of {dqn}" in info and set(column(page, 3)) == {"dqn"}
    def repo_ids() -> list[str]:
        return [f"{user}/{model}" for user, model in zip(column(page, 1), models(page), strict=True)]

    before = repo_ids()
    choose(page, "sort", "repo_id")  # same rows, same count: wait for the order itself
    assert eventually(lambda: repo_ids() != before and repo_ids() == sorted(repo_ids())), repo_ids()
    screenshot(page, "leaderboard-filtered")


def test_paging_reaches_the_last_row(page, space):
    from leaderboard.store import Store

    url, store, _ = space
    open_space(page, url, f"?env={CARTPOLE}")
    total = Store(store).count(CARTPOLE)
    pages = -(-total // 25)
    info = page.locator("#page-info").inner_text()
    page.click("#last")
    info = settle(page, info)
    assert re.search(rf"Rows \d+–{total} of {total}", info), info
    assert column(page, 0)[-1] == str(total)
    page.click("#prev")
    info = settle(page, info)
    assert f"page {pages - 1} of {pages}" in info
    page.click("#first")
    info = settle(page, info)
    assert column(page, 0)[0] == "1"
    screenshot(page, "leaderboard-paging")


def test_opening_a_row_plays_its_replay_and_draws_its_plots(page, space):
    url, _, _ = space
    open_space(page, url, f"?env={CARTPOLE}")
    rows = page.locator("#ranking .virtual-row")
    perfect = [i for i in range(rows.count()) if "ppo-CartPole-v1-perfect" in rows.nth(i).inner_text()][0]
    rows.nth(perfect).locator("[role=gridcell]").nth(4).click()
    expect()(page.locator("#details")).to_contain_text("hype-master")
    expect()(page.locator("#details")).to_contain_text("inflated")
    video = page.locator("#replay video")
    expect()(video).to_have_count(1)
    duration = page.evaluate("""() => new Promise(resolve => {
        const v = document.querySelector('#replay video');
        const done = () => resolve(v.duration);
        if (v.readyState >= 1) done(); else v.addEventListener('loadedmetadata', done);
        setTimeout(() => resolve(-1), 15000); })""")
    assert duration > 0
    assert page.locator("#returns-plot svg circle.episode").count() == 50
    assert page.locator("#returns-plot svg line.claim").count() == 1
    assert page.locator("#distribution svg line.this-agent").count() == 1
    command = page.locator("#command").inner_text()
    assert "python -m evaluator evaluate hype-master/ppo-CartPole-v1-perfect --revision" in command
    screenshot(page, "agent")


def test_compare_shows_the_paired_ci(page, space):
    url, _, _ = space
    open_space(page, url)
    page.get_by_role("tab", name="Compare").click()
    fill(page, "compare-env", LUNAR)
    fill(page, "compare-a", "kenji-rl/ppo-LunarLander-v3")
    fill(page, "compare-b", "grace-h/dqn-LunarLander-v3")
    page.click("#compare-button")
    result = page.locator("#compare-out .compare-result")
    expect()(result).to_contain_text("kenji-rl/ppo-LunarLander-v3 beats grace-h/dqn-LunarLander-v3 by")
    assert re.search(r"by [\d.]+ \[[\d.]+, [\d.]+\]", result.inner_text())
    assert page.locator("#compare-out svg rect.difference").count() == 50
    screenshot(page, "compare")


def test_submit_checks_the_id_then_queues_and_finishes(page, space):
    url, _, _ = space
    open_space(page, url)
    page.get_by_role("tab", name="Submit").click()
    message = page.locator("#submit-message")
    for repo_id, expected in [("not a repo id", "is not a Hub model repo id"),
                              ("nobody/missing-repo", "not queued"),
                              ("empty-user/no-agent", "No agent found"),
                              ("secret-user/ppo-CartPole-v1", "gated")]:
        fill(page, "submit-repo", repo_id)
        page.click("#submit-button")
        expect()(message).to_contain_text(expected)
        assert "❌" in message.inner_text()
    screenshot(page, "submit-refused")
    fill(page, "submit-repo", "ada-lovelace/ppo-CartPole-v1")  # evaluated already: a duplicate
    page.click("#submit-button")
    expect()(message).to_contain_text("already requested")
    fill(page, "submit-repo", "new-user/ppo-CartPole-v1")
    page.click("#submit-button")
    expect()(message).to_contain_text("queued as request #")
    status = page.locator("#request-status")
    expect()(status).to_contain_text("new-user/ppo-CartPole-v1")
    expect()(status).to_contain_text("finished", timeout=240_000)  # the live worker evaluated it
    expect()(page.locator("#queue")).to_contain_text("new-user/ppo-CartPole-v1")
    screenshot(page, "submit")


def test_the_user_page_lists_agents_and_certification(page, space):
    url, _, _ = space
    open_space(page, url, "?user=kenji-rl", board=False)
    expect()(page.locator("#user-message")).to_contain_text("kenji-rl: 1 of")
    expect()(page.locator("#user-agents")).to_contain_text("ppo-LunarLander-v3")
    certification = page.locator("#certification")
    expect()(certification).to_contain_text("Unit 1")
    expect()(certification).to_contain_text("passed")
    expect()(certification).to_contain_text("not verifiable yet")
    screenshot(page, "user")
    page.get_by_role("tab", name="About").click()
    expect()(page.get_by_text("How every score here is measured")).to_be_visible()
    time.sleep(0.2)
    screenshot(page, "about")
