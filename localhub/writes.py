"""The write routes of localhub: README validation, repo creation and deletion, preupload, and
commits (streamed: see localhub.payload)."""

from __future__ import annotations

from .errors import HttpError
from .names import check_path, check_revision
from .payload import parse_commit
from .storage import NotFound, RepoRef, repo_ref


class WriteRoutes:
    """Mixed into the request handler (localhub.handler.HubHandler)."""

    def _validate_yaml(self) -> None:
        from .cards import front_matter

        data = self._json_body()
        content = data.get("content", "")
        if not isinstance(content, str):
            raise HttpError(400, "'content' must be a string")
        if content.startswith("---") and not front_matter(content):
            self._json({"errors": [{"message": "README.md front matter is not a YAML mapping"}],
                        "warnings": []}, 400)
            return
        self._json({"errors": [], "warnings": []})

    def _create_repo(self) -> None:
        data = self._json_body()
        repo_type = data.get("type") or "model"
        if repo_type not in ("model", "dataset"):
            raise HttpError(400, f"repo type {repo_type!r} is not served by localhub (model, dataset)")
        namespace = data.get("organization") or "localhub"
        name = data.get("name")
        if not isinstance(name, str) or not isinstance(namespace, str):
            raise HttpError(400, "'name' (and 'organization') must be strings")
        ref = repo_ref(repo_type, namespace, name)
        prefix = "" if repo_type == "model" else "datasets/"
        url = f"{self._base_url()}/{prefix}{ref.repo_id}"
        if not self.server.storage.create_repo(ref):
            self._json({"error": "You already created this repo", "url": url}, 409)
            return
        self._json({"url": url, "name": ref.repo_id})

    def _delete_repo(self) -> None:
        data = self._json_body()
        repo_type = data.get("type") or "model"
        namespace, name = data.get("organization") or "localhub", data.get("name")
        valid_type = repo_type in ("model", "dataset")
        if not (isinstance(name, str) and isinstance(namespace, str) and valid_type):
            raise HttpError(400, "'name', 'organization' and 'type' are required")
        ref = repo_ref(repo_type, namespace, name)
        self.server.storage.delete_repo(ref)
        self._json({})

    def _preupload(self, ref: RepoRef, revision: str) -> None:
        data = self._json_body()
        commit = self._commit_for(ref, revision)
        files = data.get("files")
        if not isinstance(files, list):
            raise HttpError(400, "'files' must be a list")
        out = []
        for item in files:
            if not isinstance(item, dict) or not isinstance(item.get("path"), str):
                raise HttpError(400, "each file needs a 'path'")
            path = check_path(item["path"])
            existing = commit.files.get(path)
            # "regular" for everything: content travels inline in the commit, so uploads work
            # whether or not hf_xet is installed, with no LFS or xet server to run.
            out.append({"path": path, "uploadMode": "regular", "shouldIgnore": False,
                        "oid": existing.oid if existing else None})
        self._json({"files": out, "commitOid": commit.sha})

    def _commit(self, ref: RepoRef, revision: str) -> None:
        check_revision(revision)
        if revision not in ("main", "refs/heads/main"):
            raise NotFound("RevisionNotFound", f"localhub commits to 'main' only, not {revision!r}")
        storage = self.server.storage
        with self._spooled_body() as body:
            payload = parse_commit(body, storage.staging_dir())  # the whole payload, validated
        try:
            if not storage.exists(ref):
                raise NotFound("RepoNotFound", f"repository {ref.repo_id} not found: create it first")
            additions = {path: storage.put_blob_file(staged) for path, staged in payload.additions.items()}
            summary = payload.header.get("summary") or "Commit with localhub"
            commit = storage.commit_changes(
                ref, parent=payload.header.get("parentCommit"), title=str(summary)[:500],
                message=str(payload.header.get("description") or ""), additions=additions,
                deletions=payload.deletions, folder_deletions=payload.folders,
            )
        finally:
            payload.discard()
        prefix = "" if ref.repo_type == "model" else "datasets/"
        self._json({"success": True, "commitOid": commit.sha, "pullRequestUrl": None,
                    "commitUrl": f"{self._base_url()}/{prefix}{ref.repo_id}/commit/{commit.sha}"})
