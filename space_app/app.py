"""The Gradio Blocks of the Space: layout and event wiring only (the logic is `service`, the
markup `render`, the data `source`).

Views: Leaderboard (one env at a time, grouped by family; server-side paging, search, filters,
sort), Agent (a row opened: replay, returns against the claim, score distribution, provenance,
reproduction command), Compare (paired CI on shared seeds), Submit (by repo id, with the queue),
User (their agents and course certification), About. Named API endpoints expose the same
functions to `gradio_client`. Deep links: `?user=NAME`, `?env=ENV_KEY&repo=NS/NAME`.
"""

from __future__ import annotations

import os
from typing import Any

import gradio as gr

from leaderboard.ranking import SORTS

from . import render, service
from .about import about_markdown

REFRESH_SECONDS = float(os.environ.get("RL_SPACE_REFRESH") or 10)
CSS = ".banner {background:#fff8c5;border:1px solid #d4a72c;padding:8px;border-radius:6px}"


def _submitter(request: gr.Request | None) -> str:
    """Who submits: the Hugging Face login when deployed with OAuth, else the client's address."""
    if request is None:
        return "api"
    username = getattr(request, "username", None)
    if username:
        return f"hf:{username}"
    if os.environ.get("SPACE_ID"):  # on Spaces the proxy sets X-Forwarded-For; locally it is spoofable
        forwarded = (request.headers.get("x-forwarded-for") or "").split(",")[0].strip()
        if forwarded:
            return f"ip:{forwarded}"
    client = getattr(request, "client", None)
    return f"ip:{getattr(client, 'host', None) or 'unknown'}"


def build_demo(store: Any = None, hub_dataset: str | None = None, *, endpoint: str | None = None,
               token: Any = None, source: Any = None) -> gr.Blocks:
    """The Space's gr.Blocks over a store folder or a Hub dataset (or a ready `source`)."""
    from .source import open_source

    source = source or open_source(store, hub_dataset, endpoint=endpoint, token=token)

    def banner() -> dict:
        text = source.guard.banner
        return gr.update(value=f"<div class='banner'>⚠ {render.esc(text)}</div>" if text else "", visible=bool(text))

    def show(env_key, search, algo, verdict, sort, page):
        """One page; the last output is the view (what the user chose), kept on the server."""
        result = service.ranking_page(source, env_key, page=page, search=search, algo=algo, verdict=verdict,
                                      sort=sort)
        ids = list(result.rows["repo_id"]) if not result.rows.empty else []
        algos = gr.update(choices=[""] + source.algos(env_key))
        view = {"env": env_key, "search": search, "algo": algo, "verdict": verdict, "sort": sort,
                "page": result.page}
        return (render.display_table(result.rows), result.info, result.page, ids,
                service.threshold_text(env_key), algos, banner(), view)

    def refresh(view, known_keys):
        """The timer's refresh of the current view. It reads the view from the server-side
        state, never a snapshot of the widgets taken when the tick was sent: a tick racing a
        user's click can neither bring the old env back nor reset a dropdown."""
        keys = source.env_keys()
        env_out = gr.update(choices=service.env_choices(keys)) if keys != known_keys else gr.update()
        if not view:
            return (env_out, *[gr.update()] * 8, keys)
        return (env_out, *show(view["env"], view["search"], view["algo"], view["verdict"], view["sort"],
                               view["page"]), keys)

    def opened(env_key, repo_id):
        result = service.open_row(source, env_key, repo_id)
        return (result.details, result.replay, result.returns_svg, result.distribution_svg, result.command,
                gr.Tabs(selected="agent"), env_key, repo_id)

    def select_row(env_key, ids, evt: gr.SelectData):
        index = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        repo_id = ids[index] if ids and 0 <= index < len(ids) else ""
        return opened(env_key, repo_id)

    def compared(env_key, a, b):
        result = service.compare_rows(source, env_key, a, b)
        chart = render.differences_chart(result["comparison"]["differences"]) if result["ok"] else ""
        return f"<p class='compare-result'><b>{render.esc(result['message'])}</b></p>{chart}"

    def submitted(repo_id, env_id, request: gr.Request):
        outcome = source.submit(repo_id, env_id, _submitter(request))
        request_id = (outcome.request or {}).get("id")
        return (("✅ " if outcome.ok else "❌ ") + outcome.message, request_id,
                service.request_line(outcome.request), service.requests_table(source.requests()))

    def poll(request_id):
        found = source.request(request_id) if request_id else None
        return service.request_line(found), service.requests_table(source.requests())

    def user_page(user):
        agents = service.user_agents(source, user)
        result = service.certify_user(source, user)
        table = render.certification_table(result["frame"]) if result["frame"] is not None else None
        return render.display_table(agents) if not agents.empty else None, table, result["message"]

    with gr.Blocks(title="Verified RL Leaderboard", analytics_enabled=False) as demo:
        gr.Markdown("# Verified RL Leaderboard\nEvery score here was measured by this evaluator on seeded "
                    "episodes, never read from a model card. Open a row for its replay and provenance.")
        banner_box = gr.HTML(visible=False, elem_id="banner")
        with gr.Tabs(selected="board") as tabs:
            with gr.Tab("Leaderboard", id="board"):
                with gr.Row():
                    env = gr.Dropdown(label="Environment", choices=[], elem_id="env", scale=2)
                    search = gr.Textbox(label="Search user or model", elem_id="search", scale=2)
                    algo = gr.Dropdown(label="Algorithm", choices=[""], value="", elem_id="algo", scale=1)
                    verdict = gr.Dropdown(label="Claim verdict", choices=["", *service.VERDICTS], value="",
                                          elem_id="verdict", scale=1)
                    sort = gr.Dropdown(label="Sort by", choices=list(SORTS), value="score", elem_id="sort", scale=1)
                threshold = gr.Markdown(elem_id="threshold")
                table = gr.Dataframe(headers=render.TABLE_HEADERS, datatype=render.TABLE_TYPES, interactive=False,
                                     elem_id="ranking", wrap=True, max_height=900)
                with gr.Row():
                    first = gr.Button("« First", elem_id="first", size="sm")
                    prev = gr.Button("‹ Prev", elem_id="prev", size="sm")
                    page = gr.Number(value=1, precision=0, minimum=1, label="Page", elem_id="page")
                    nxt = gr.Button("Next ›", elem_id="next", size="sm")
                    last = gr.Button("Last »", elem_id="last", size="sm")
                page_info = gr.Markdown(elem_id="page-info")
                page_ids = gr.State([])
            with gr.Tab("Agent", id="agent"):
                with gr.Row():
                    open_env = gr.Textbox(label="Env key", elem_id="open-env")
                    open_repo = gr.Textbox(label="Repo id", elem_id="open-repo")
                    open_button = gr.Button("Open", elem_id="open-button")
                details = gr.HTML(elem_id="details")
                with gr.Row():
                    replay = gr.Video(label="Replay (episode 1)", elem_id="replay", autoplay=False, loop=False)
                    with gr.Column():
                        returns_plot = gr.HTML(elem_id="returns-plot")
                        distribution = gr.HTML(elem_id="distribution")
                command = gr.Code(label="Reproduce this row", language="shell", elem_id="command")
            with gr.Tab("Compare", id="compare"):
                gr.Markdown("Two agents of one env played the same seeded episodes: their per-episode differences "
                            "are paired, and the interval is a paired bootstrap 95% CI of the mean difference.")
                with gr.Row():
                    compare_env = gr.Textbox(label="Env key", elem_id="compare-env")
                    repo_a = gr.Textbox(label="Agent A (repo id)", elem_id="compare-a")
                    repo_b = gr.Textbox(label="Agent B (repo id)", elem_id="compare-b")
                compare_button = gr.Button("Compare", elem_id="compare-button")
                compare_out = gr.HTML(elem_id="compare-out")
            with gr.Tab("Submit", id="submit"):
                with gr.Row():
                    submit_repo = gr.Textbox(label="Hub repo id", placeholder="namespace/name", elem_id="submit-repo")
                    submit_env = gr.Textbox(label="Env id (optional)", elem_id="submit-env")
                submit_button = gr.Button("Submit for evaluation", variant="primary", elem_id="submit-button")
                submit_message = gr.Markdown(elem_id="submit-message")
                request_status = gr.Markdown(elem_id="request-status")
                request_id = gr.State(None)
                queue_table = gr.Dataframe(label="Recent requests", interactive=False, elem_id="queue")
            with gr.Tab("User", id="user"):
                with gr.Row():
                    user = gr.Textbox(label="Hub username", elem_id="user-name")
                    user_button = gr.Button("Show", elem_id="user-button")
                user_message = gr.Markdown(elem_id="user-message")
                user_table = gr.Dataframe(label="Their ranked agents", headers=render.TABLE_HEADERS,
                                          datatype=render.TABLE_TYPES, interactive=False, elem_id="user-agents")
                certification = gr.Dataframe(label="Course certification", interactive=False,
                                             elem_id="certification")
            with gr.Tab("About", id="about"):
                gr.Markdown(about_markdown(source.where))

        filters = [env, search, algo, verdict, sort]
        view, known_keys = gr.State({}), gr.State([])
        page_out = [table, page_info, page, page_ids, threshold, algo, banner_box, view]
        for trigger in (env.input, algo.input, verdict.input, sort.input, search.submit):  # user changes only
            trigger(lambda *a: show(*a, 1), filters, page_out, api_visibility="private")
        page.submit(show, [*filters, page], page_out, api_visibility="private")
        first.click(lambda *a: show(*a, 1), filters, page_out, api_visibility="private")
        prev.click(lambda *a: show(*a[:-1], max(1, int(a[-1] or 1) - 1)), [*filters, page], page_out,
                   api_visibility="private")
        nxt.click(lambda *a: show(*a[:-1], int(a[-1] or 1) + 1), [*filters, page], page_out, api_visibility="private")
        last.click(lambda *a: show(*a, 10**12), filters, page_out, api_visibility="private")
        open_out = [details, replay, returns_plot, distribution, command, tabs, open_env, open_repo]
        table.select(select_row, [env, page_ids], open_out, api_visibility="private")
        open_button.click(opened, [open_env, open_repo], open_out, api_visibility="private")
        compare_button.click(compared, [compare_env, repo_a, repo_b], compare_out, api_visibility="private")
        submit_button.click(submitted, [submit_repo, submit_env], [submit_message, request_id, request_status,
                                                                    queue_table], api_visibility="private")
        user_button.click(user_page, user, [user_table, certification, user_message], api_visibility="private")
        user.submit(user_page, user, [user_table, certification, user_message], api_visibility="private")

        timer = gr.Timer(REFRESH_SECONDS)
        timer.tick(refresh, [view, known_keys], [env, *page_out, known_keys], api_visibility="private")
        poll_timer = gr.Timer(2.0)
        poll_timer.tick(poll, request_id, [request_status, queue_table], api_visibility="private")

        agent_out = [details, replay, returns_plot, distribution, command, open_env, open_repo]
        user_out = [user, user_table, certification, user_message]

        def on_load(request: gr.Request):
            params = dict(request.query_params) if request else {}
            keys = source.env_keys()
            env_key = params.get("env") if params.get("env") in keys else (keys[0] if keys else None)
            updates = [gr.update(choices=service.env_choices(keys), value=env_key),
                       *show(env_key, "", "", "", "score", 1), keys, service.requests_table(source.requests())]
            same_agent, same_user = [gr.update()] * len(agent_out), [gr.update()] * len(user_out)
            if params.get("user"):
                return [*updates, gr.Tabs(selected="user"), *same_agent, params["user"], *user_page(params["user"])]
            if params.get("repo") and env_key:
                shown = opened(env_key, params["repo"])
                return [*updates, shown[5], *shown[:5], *shown[6:], *same_user]
            return [*updates, gr.update(), *same_agent, *same_user]

        demo.load(on_load, None, [env, *page_out, known_keys, queue_table, tabs, *agent_out, *user_out],
                  api_visibility="private")
        _api(source)
    return demo


def _api(source) -> None:
    """The named endpoints for gradio_client (JSON in, JSON out)."""

    def rankings(env_key: str, page: int = 1, page_size: int = 25, search: str = "", algo: str = "",
                 verdict: str = "", sort: str = "score") -> dict:
        """One page of an env's ranking: {"total", "page", "pages", "rows"}."""
        result = service.ranking_page(source, env_key, page=page, page_size=page_size, search=search, algo=algo,
                                      verdict=verdict, sort=sort)
        return {"env_key": env_key, "total": result.total, "page": result.page, "pages": result.pages,
                "rows": service.jsonable(result.rows)}

    def search(query: str, env_key: str = "", limit: int = 25) -> dict:
        """Ranked rows whose repo id contains `query` (case-insensitive), one env or all."""
        result = service.ranking_page(source, env_key or None, page=1, page_size=limit, search=query)
        return {"total": result.total, "rows": service.jsonable(result.rows)}

    def submit(repo_id: str, env_id: str = "", request: gr.Request = None) -> dict:
        """Queue a Hub repo for evaluation (checked first); the request, or why not."""
        return source.submit(repo_id, env_id, _submitter(request)).to_dict()

    def request_status(request_id: int) -> dict:
        """A request's status: pending, running, finished or failed (with the reason)."""
        found = source.request(request_id)
        return found or {"status": "unknown", "message": f"no request #{request_id}"}

    def compare(env_key: str, repo_a: str, repo_b: str) -> dict:
        """Paired comparison of two agents of one env (same seeds): mean difference and its CI."""
        return service.compare_rows(source, env_key, repo_a, repo_b)

    def certification(user: str) -> dict:
        """The course units a user passed on verified scores, with the evidence rows."""
        result = service.certify_user(source, user)
        return {k: v for k, v in result.items() if k != "frame"}

    for fn in (rankings, search, submit, request_status, compare, certification):
        gr.api(fn, api_name=fn.__name__)
