#!/usr/bin/env python3
"""Test double: a FAKE OpenAI + Anthropic + Pinecone server on 127.0.0.1, for tests and the demo only.

It speaks the providers' real wire formats (no real model behind it):
  POST /v1/chat/completions   OpenAI Chat Completions, plain or streamed (SSE, stream_options.include_usage)
  POST /v1/embeddings         OpenAI Embeddings (deterministic unit vectors of the requested dimensions)
  POST /v1/messages           Anthropic Messages, plain or streamed (SSE events)
  GET  /v1/organization/usage/completions, /v1/organization/usage/embeddings
                              OpenAI's organization usage API (bucket_width=1d, group_by=project_id),
                              from the calls this fake served (project: the OpenAI-Project header)
  GET  /v1/organizations/usage_report/messages
                              Anthropic's usage report (group_by[]=workspace_id), from the calls served
                              (workspace: registered per key with POST /_fake/workspaces {"key": "wrkspc_..."})
  POST /vectors/upsert        Pinecone data plane (the index host is http://127.0.0.1:PORT)
  POST /vectors/delete        Pinecone: by ids, or {"deleteAll": true} for a namespace (404 if it does not exist)
  OpenAI Admin API (Authorization: Bearer <admin key>): GET/POST /v1/organization/projects,
                              POST /v1/organization/projects/{id}/archive, GET/POST .../{id}/service_accounts
                              (a new account's key is in api_key.value, once), DELETE .../service_accounts/{sa},
                              GET .../{id}/rate_limits, POST .../rate_limits/{rate_limit_id}, POST .../{id}/spend_limit
  Anthropic Admin API (x-api-key, anthropic-version): GET/POST /v1/organizations/workspaces,
                              POST /v1/organizations/workspaces/{id}/archive, GET /v1/organizations/rate_limits,
                              POST .../workspaces/{id}/rate_limits/{rate_limit_id}, POST /v1/organizations/spend_limits,
                              GET /v1/organizations/api_keys
                              (?workspace_id=), POST /v1/organizations/api_keys/{id} {"status": "inactive"};
                              keys are added to a workspace with POST /_fake/admin/anthropic_keys {"workspace_id"}
                              (as the Console would: Anthropic's API cannot create keys)
  GET  /v1/organizations/analytics/usage   Anthropic's newer usage report (anthropic-beta: analytics-usage-cost-...)
  POST   /_fake/usage/add  {"api", "project", "ts", "input", "output"}: usage served elsewhere (a key used outside)
  GET    /_fake/admin     what the admin APIs hold: projects (service accounts, rate limits), workspaces, keys
Point the worker at it with OPENAI_BASE_URL=http://127.0.0.1:PORT/v1, ANTHROPIC_BASE_URL=http://127.0.0.1:PORT
and OPENAI_COMPATIBLE_BASE_URL=http://127.0.0.1:PORT/v1.

Answers are deterministic: "fake answer: <the first words of the prompt>". Usage counts a token
per 4 bytes of prompt and a token per answer word, capped at the request's max tokens.
A request whose text (messages or system prompt) holds FAKE_REPLY<<text>> is answered with that
text exactly (the first such directive; eval tests craft answers with it, judge scores too).

Faults are injected per path (admin APIs: per "METHOD /path", * matching one segment), consumed one
per request, in order:
  POST   /_fake/faults    {"path": "/v1/chat/completions", "faults": [F, ...]} where F is one of
                          {"status": 429, "retry_after": "1"}, {"status": 503}, {"status": 400, "message": "..."},
                          {"delay": 3} (answer after 3 s: a timeout for a short client timeout),
                          {"malformed": true} (200 with a body that is not JSON),
                          {"cut_after": 2} (a stream that stops after 2 deltas, without usage),
                          {"worst_case_tokens": true} (chat usage counts a token per prompt byte plus
                          OpenAI's documented framing, 7 for one message: what a byte-level BPE bills
                          for text that tokenizes worst, e.g. rare symbols),
                          {"slow": 0.1, "words": 100} (a stream of 100 words, 0.1 s apart; a client that
                          leaves early is billed, as a provider does, for the words sent before it left),
                          {"id": "..."} (the answer's id, e.g. one holding U+0000 as an OpenAI-compatible
                          server echoing a client's request_id would send)
Tool calls: a chat request that declares tools and whose last message is not a tool result is
answered with a call of its first tool (OpenAI tool_calls, Anthropic tool_use), plain or streamed,
with arguments {"query": "<the first words of the prompt>"}.
  GET    /_fake/faults    the faults not yet consumed
  DELETE /_fake/faults    clears them
  GET    /_fake/requests  every request received: path, headers, JSON body
  POST   /_fake/usage/shift  {"seconds": -86400}: moves every served call back in time
  GET    /_fake/inflight  how many requests are still being answered
  GET    /_fake/usage     every call served: api, key (the credential it came with), id, input, output
  GET    /_fake/pinecone  the fake index: {namespace: {id: {"values": [...], "metadata": {...}}}}
  DELETE /_fake/requests  clears the log
Prints "listening on 127.0.0.1:PORT" once ready (--port 0 picks a free port).
"""

import argparse
import hashlib
import json
import math
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
FAULTS = {}  # path -> [fault, ...]
REQUESTS = []
INDEX = {}  # Pinecone: namespace -> id -> vector
USAGE = []  # calls served: {"api", "project", "ts", "input", "cached", "cache_write", "output"}
WORKSPACES = {}  # Anthropic key -> workspace id
# Admin APIs: OpenAI projects {id: {..., "service_accounts": {id: {...}}, "rate_limits": {id: {...}}}},
# Anthropic workspaces {id: {...}} and API keys {id: {...}}.
ADMIN = {"projects": {}, "workspaces": {}, "anthropic_keys": {}, "refused_revoked_calls": 0}
MODELS_WITH_LIMITS = ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"]
ANTHROPIC_RATE_LIMIT_GROUPS = ["rl_sonnet", "rl_haiku"]
# Ids unique to this process: a database may hold ids another run of the fake handed out.
RUN = "%08x" % (int.from_bytes(__import__("os").urandom(4), "big"))


def record_usage(api, project, input_tokens, output_tokens, cached=0, cache_write=0, key=None, rid=None):
    with LOCK:
        USAGE.append({"api": api, "project": project, "ts": time.time(), "input": input_tokens,
                      "cached": cached, "cache_write": cache_write, "output": output_tokens,
                      "key": key, "id": rid})
COUNTER = [0]
INFLIGHT = [0]  # POST requests being answered (a delayed answer counts until it is written)


def next_id():
    with LOCK:
        return next_id_unlocked()


def next_id_unlocked():
    COUNTER[0] += 1
    return COUNTER[0]


def take_fault(path):
    with LOCK:
        queue = FAULTS.get(path) or []
        return queue.pop(0) if queue else None


def revoked_key(key):
    """A key of a deleted service account, or of an archived project: OpenAI refuses it (401)."""
    with LOCK:
        return any(a.get("key_value") == key and (a.get("deleted") or p["status"] != "active")
                   for p in ADMIN["projects"].values() for a in p["service_accounts"].values())


def take_admin_fault(method, path):
    """Admin API faults are keyed "METHOD /path", where a * stands for one path segment (an id)."""
    with LOCK:
        for key, queue in FAULTS.items():
            if not queue or " " not in key:
                continue
            want_method, want_path = key.split(" ", 1)
            want, got = want_path.split("/"), path.split("/")
            if want_method == method and len(want) == len(got) and all(w in ("*", g) for w, g in zip(want, got)):
                return queue.pop(0)
    return take_fault(path)


def scripted_reply(req):
    """The text of the first FAKE_REPLY<<...>> directive in a chat request, or None."""
    parts = [str(req.get("system", ""))] + [json.dumps(m.get("content")) if not isinstance(m.get("content"), str)
                                             else m.get("content") for m in req.get("messages", [])]
    for part in parts:
        start = part.find("FAKE_REPLY<<")
        if start >= 0:
            end = part.find(">>", start + 12)
            if end >= 0:
                return part[start + 12:end]
    return None


def answer_words(prompt, limit):
    words = ["fake", "answer:"] + prompt.split()[:6]
    return words[: max(1, limit)]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def send_json(self, status, obj, headers=None):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def read_body(self):
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return None

    def do_GET(self):
        from urllib.parse import urlparse, parse_qs
        url = urlparse(self.path)
        query = parse_qs(url.query)
        if url.path in ("/v1/organization/usage/completions", "/v1/organization/usage/embeddings"):
            return self.openai_usage(url.path.rsplit("/", 1)[1], query)
        if url.path == "/v1/organizations/usage_report/messages":
            fault = take_admin_fault("GET", url.path)
            if fault and "status" in fault:
                return self.send_json(fault["status"], {"type": "error", "error": {"type": "not_found_error",
                                                                                   "message": fault.get("message", "injected fault")}})
            return self.anthropic_usage(query)
        if url.path == "/v1/organizations/analytics/usage":
            return self.anthropic_analytics_usage(query)
        if url.path.startswith("/v1/organization/projects") or url.path.startswith("/v1/organizations/workspaces") \
                or url.path.startswith("/v1/organizations/api_keys") or url.path == "/v1/organizations/rate_limits":
            return self.admin("GET", url.path, query, None)
        if self.path == "/_fake/admin":
            with LOCK:
                return self.send_json(200, ADMIN)
        if self.path == "/_fake/requests":
            with LOCK:
                self.send_json(200, list(REQUESTS))
        elif self.path == "/_fake/faults":
            with LOCK:
                self.send_json(200, {k: v for k, v in FAULTS.items() if v})
        elif self.path == "/_fake/usage":
            with LOCK:
                self.send_json(200, list(USAGE))
        elif self.path == "/_fake/inflight":
            with LOCK:
                self.send_json(200, {"inflight": INFLIGHT[0]})
        elif self.path == "/_fake/pinecone":
            with LOCK:
                self.send_json(200, INDEX)
        else:
            self.send_json(404, {"error": {"message": "not found"}})

    def do_DELETE(self):
        if self.path.startswith("/v1/organization/projects"):
            return self.admin("DELETE", self.path, {}, None)
        with LOCK:
            if self.path == "/_fake/faults":
                FAULTS.clear()
            elif self.path == "/_fake/requests":
                REQUESTS.clear()
        self.send_json(200, {"ok": True})

    def do_POST(self):
        with LOCK:
            INFLIGHT[0] += 1
        try:
            self.answer_post()
        finally:
            with LOCK:
                INFLIGHT[0] -= 1

    def answer_post(self):
        body = self.read_body()
        if self.path == "/_fake/faults":
            with LOCK:
                FAULTS.setdefault(body["path"], []).extend(body["faults"])
            self.send_json(200, {"ok": True})
            return
        if self.path == "/_fake/workspaces":
            with LOCK:
                WORKSPACES.update(body)
            self.send_json(200, {"ok": True})
            return
        if self.path == "/_fake/admin/anthropic_keys":
            with LOCK:
                kid = "apikey_%s%06d" % (RUN, next_id_unlocked())
                ADMIN["anthropic_keys"][kid] = {"id": kid, "type": "api_key", "name": body.get("name", "console key"),
                                                "workspace_id": body["workspace_id"], "status": "active",
                                                "created_at": "2026-01-01T00:00:00Z", "partial_key_hint": "sk-ant-api03-...AAAA"}
            self.send_json(200, {"id": kid})
            return
        if self.path.startswith("/v1/organization/projects") or self.path.startswith("/v1/organizations/workspaces") \
                or self.path.startswith("/v1/organizations/api_keys") or self.path.startswith("/v1/organizations/spend_limits"):
            from urllib.parse import urlparse
            return self.admin("POST", urlparse(self.path).path, {}, body)
        if self.path == "/_fake/usage/add":
            # Usage served outside this fake's endpoints (a key used elsewhere), at time ts.
            with LOCK:
                USAGE.append({"api": body["api"], "project": body["project"], "ts": body["ts"], "input": body["input"],
                              "cached": 0, "cache_write": 0, "output": body["output"], "key": None, "id": None})
            self.send_json(200, {"ok": True})
            return
        if self.path == "/_fake/usage/shift":
            with LOCK:
                for u in USAGE:
                    u["ts"] += body["seconds"]
            self.send_json(200, {"ok": True})
            return
        with LOCK:
            REQUESTS.append({"path": self.path, "headers": dict(self.headers.items()), "body": body})
        fault = take_fault(self.path)
        if fault and "delay" in fault:
            time.sleep(fault["delay"])
            fault = None
        if fault and "status" in fault:
            headers = {"retry-after": str(fault["retry_after"])} if "retry_after" in fault else {}
            kind = "rate_limit_error" if fault["status"] == 429 else "api_error"
            self.send_json(fault["status"], {"error": {"message": fault.get("message", "injected fault"), "type": kind}}, headers)
            return
        if fault and fault.get("malformed"):
            # The provider did the work (and bills it); only the answer is garbled on the way.
            prompt = " ".join(str(m.get("content", "")) for m in (body or {}).get("messages", []))
            record_usage("completions", self.headers.get("openai-project") or "proj_default",
                         max(1, len(prompt.encode()) // 4), 1, key=self.headers.get("authorization"))
            raw = b'{"id": "chatcmpl-broken", "choices": [{"mess'
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)
            return
        cut_after = fault.get("cut_after") if fault else None
        self.slow = fault if fault and "slow" in fault else None
        self.forced_id = fault.get("id") if fault else None
        if self.path == "/v1/chat/completions":
            self.openai_chat(body or {}, cut_after, bool(fault and fault.get("worst_case_tokens")))
        elif self.path == "/v1/embeddings":
            self.openai_embeddings(body or {})
        elif self.path == "/v1/messages":
            self.anthropic_messages(body or {}, cut_after)
        elif self.path in ("/vectors/upsert", "/vectors/delete"):
            self.pinecone(body or {})
        else:
            self.send_json(404, {"error": {"message": "unknown path " + self.path}})

    # ------------------------------------------------------------------ OpenAI
    def openai_chat(self, req, cut_after, worst_case_tokens=False):
        if not (self.headers.get("authorization") or "").startswith("Bearer "):
            self.send_json(401, {"error": {"message": "You didn't provide an API key.", "type": "invalid_request_error"}})
            return
        key = self.headers.get("authorization")[len("Bearer "):]
        if revoked_key(key):
            with LOCK:
                ADMIN["refused_revoked_calls"] += 1
            self.send_json(401, {"error": {"message": "Incorrect API key provided: the service account is deleted.",
                                           "type": "invalid_request_error", "code": "invalid_api_key"}})
            return
        messages = req.get("messages", [])
        prompt = " ".join(str(m.get("content", "")) for m in messages)
        limit = req.get("max_completion_tokens") or req.get("max_tokens") or 16
        words = self.words(prompt, limit, req)
        prompt_tokens = len(prompt.encode()) + 7 if worst_case_tokens else max(1, len(prompt.encode()) // 4)
        tool = None
        if req.get("tools") and (not messages or messages[-1].get("role") != "tool"):
            tool = req["tools"][0].get("function", {}).get("name", "tool")
            arguments = json.dumps({"query": " ".join(prompt.split()[:4])})
            words = ["<tool>"]
        usage = lambda out: {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": out,
            "total_tokens": prompt_tokens + out,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        }
        rid = self.forced_id or "chatcmpl-fake-%d" % next_id()
        project = self.headers.get("openai-project") or "proj_default"
        served = lambda out: record_usage("completions", project, prompt_tokens, out, key=key, rid=rid)
        if not req.get("stream"):
            served(len(words))
            if tool:
                message = {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_" + rid, "type": "function", "function": {"name": tool, "arguments": arguments}}]}
                finish = "tool_calls"
            else:
                message = {"role": "assistant", "content": " ".join(words)}
                finish = "stop"
            self.send_json(200, {
                "id": rid, "object": "chat.completion", "created": int(time.time()), "model": req.get("model"),
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                "usage": usage(len(words)),
            }, {"x-request-id": "req_" + rid.replace("\0", "")})
            return
        self.start_stream()
        if tool:
            self.event(None, {"id": rid, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {
                "role": "assistant", "tool_calls": [{"index": 0, "id": "call_" + rid, "type": "function",
                                                     "function": {"name": tool, "arguments": ""}}]}, "finish_reason": None}]})
            self.event(None, {"id": rid, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {
                "tool_calls": [{"index": 0, "function": {"arguments": arguments}}]}, "finish_reason": None}]})
            finish = "tool_calls"
        else:
            finish = "stop"
            for i, word in enumerate(words):
                if cut_after is not None and i >= cut_after:
                    served(i)
                    return self.cut()
                chunk = {"id": rid, "object": "chat.completion.chunk", "model": req.get("model"),
                         "choices": [{"index": 0, "delta": {"content": (" " if i else "") + word}, "finish_reason": None}]}
                if not self.paced_event(None, chunk, i):
                    served(i)  # the client left: billed for what was generated
                    return
        served(len(words))
        self.event(None, {"id": rid, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
        if (req.get("stream_options") or {}).get("include_usage"):
            self.event(None, {"id": rid, "object": "chat.completion.chunk", "choices": [], "usage": usage(len(words))})
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()

    def words(self, prompt, limit, req=None):
        scripted = scripted_reply(req or {})
        if scripted is not None:
            return scripted.split(" ")[: max(1, limit)]
        if self.slow:
            return (["fake", "answer:"] + ["word%d" % i for i in range(self.slow.get("words", 100))])[: max(1, limit)]
        return answer_words(prompt, limit)

    def paced_event(self, name, data, i):
        """Sends one event, paced by a slow fault; False when the client has gone."""
        try:
            if self.slow and i:
                time.sleep(self.slow["slow"])
            self.event(name, data)
            return True
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            return False

    def openai_embeddings(self, req):
        if not (self.headers.get("authorization") or "").startswith("Bearer "):
            self.send_json(401, {"error": {"message": "You didn't provide an API key.", "type": "invalid_request_error"}})
            return
        inputs = req.get("input")
        inputs = [inputs] if isinstance(inputs, str) else (inputs or [])
        dims = int(req.get("dimensions") or 1536)
        data = []
        for i, text in enumerate(inputs):
            seed = hashlib.sha256(str(text).encode()).digest()
            raw = [((seed[j % 32] * (j + 1)) % 251) / 125.0 - 1.0 for j in range(dims)]
            norm = math.sqrt(sum(x * x for x in raw)) or 1.0
            data.append({"object": "embedding", "index": i, "embedding": [x / norm for x in raw]})
        tokens = sum(max(1, len(str(t).encode()) // 4) for t in inputs)
        record_usage("embeddings", self.headers.get("openai-project") or "proj_default", tokens, 0,
                     key=self.headers.get("authorization")[len("Bearer "):])
        self.send_json(200, {"object": "list", "data": data, "model": req.get("model"),
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}},
                       {"x-request-id": "req_emb_%d" % next_id()})

    # ------------------------------------------------------------ admin APIs
    def admin(self, method, path, query, body):
        """OpenAI's and Anthropic's Admin APIs, from their documented shapes; faults by path."""
        with LOCK:
            REQUESTS.append({"path": path, "method": method, "headers": dict(self.headers.items()), "body": body})
        fault = take_admin_fault(method, path)
        if fault and "delay" in fault:
            time.sleep(fault["delay"])
            fault = None
        openai = path.startswith("/v1/organization/")
        if fault and "status" in fault:
            headers = {"retry-after": str(fault["retry_after"])} if "retry_after" in fault else {}
            message = fault.get("message", "injected fault")
            if openai:
                return self.send_json(fault["status"], {"error": {"message": message, "type": "server_error", "param": None, "code": None}}, headers)
            return self.send_json(fault["status"], {"type": "error", "error": {"type": "api_error", "message": message}}, headers)
        if openai:
            if not (self.headers.get("authorization") or "").startswith("Bearer "):
                return self.send_json(401, {"error": {"message": "admin key required", "type": "invalid_request_error"}})
            return self.openai_admin(method, path.split("/")[2:], query, body or {})
        if not self.headers.get("x-api-key") or not self.headers.get("anthropic-version"):
            return self.send_json(401, {"type": "error", "error": {"type": "authentication_error", "message": "admin key required"}})
        return self.anthropic_admin(method, path.split("/")[2:], query, body or {})

    def page(self, items, query, after_param):
        limit = int((query.get("limit") or ["20"])[0])
        after = (query.get(after_param) or [None])[0]
        ids = [i["id"] for i in items]
        start = ids.index(after) + 1 if after in ids else 0
        # Two per page at most, to exercise pagination.
        chunk = items[start:start + min(limit, 2)]
        more = start + len(chunk) < len(items)
        return {"object": "list", "data": chunk, "first_id": chunk[0]["id"] if chunk else None,
                "last_id": chunk[-1]["id"] if chunk else None, "has_more": more}

    def not_found(self, what):
        return self.send_json(404, {"error": {"message": "No such %s" % what, "type": "invalid_request_error"}})

    def openai_admin(self, method, parts, query, body):
        # parts: ["organization", "projects", id?, sub?, sub_id?, ...]
        with LOCK:
            projects = ADMIN["projects"]
            if parts == ["organization", "projects"]:
                if method == "GET":
                    items = [{k: v for k, v in p.items() if k not in ("service_accounts", "rate_limits")}
                             for p in projects.values()
                             if "true" in (query.get("include_archived") or []) or p["status"] == "active"]
                    return self.send_json(200, self.page(items, query, "after"))
                if method == "POST":
                    if not body.get("name"):
                        return self.send_json(400, {"error": {"message": "name is required", "type": "invalid_request_error"}})
                    pid = "proj_fake%s%06d" % (RUN, next_id_unlocked())
                    projects[pid] = {"id": pid, "object": "organization.project", "name": body["name"],
                                     "created_at": int(time.time()), "archived_at": None, "status": "active",
                                     "service_accounts": {},
                                     "rate_limits": {"rl-" + m: {"object": "project.rate_limit", "id": "rl-" + m, "model": m,
                                                                 "max_requests_per_1_minute": 10000,
                                                                 "max_tokens_per_1_minute": 2000000}
                                                     for m in MODELS_WITH_LIMITS}}
                    return self.send_json(200, {k: v for k, v in projects[pid].items() if k not in ("service_accounts", "rate_limits")})
            project = projects.get(parts[2]) if len(parts) > 2 else None
            if project is None:
                return self.not_found("project")
            rest = parts[3:]
            if rest == ["archive"] and method == "POST":
                project["status"] = "archived"
                project["archived_at"] = project["archived_at"] or int(time.time())
                return self.send_json(200, {k: v for k, v in project.items() if k not in ("service_accounts", "rate_limits")})
            if rest[:1] == ["service_accounts"]:
                accounts = project["service_accounts"]
                if len(rest) == 1 and method == "GET":
                    items = [{k: v for k, v in a.items() if k != "key_value"} for a in accounts.values() if not a.get("deleted")]
                    return self.send_json(200, self.page(items, query, "after"))
                if len(rest) == 1 and method == "POST":
                    if project["status"] != "active":
                        return self.send_json(400, {"error": {"message": "project is archived", "type": "invalid_request_error"}})
                    n = next_id_unlocked()
                    sid = "svc_acct_fake%s%06d" % (RUN, n)
                    value = "sk-svcacct-fake%06d%s" % (n, hashlib.sha256(str(n).encode()).hexdigest()[:24])
                    accounts[sid] = {"object": "organization.project.service_account", "id": sid, "name": body.get("name"),
                                     "role": "member", "created_at": int(time.time()), "key_id": "key_fake%s%06d" % (RUN, n),
                                     "key_value": value}
                    return self.send_json(200, {"object": "organization.project.service_account", "id": sid,
                                                "name": body.get("name"), "role": "member", "created_at": int(time.time()),
                                                "api_key": {"object": "organization.project.service_account.api_key",
                                                            "value": value, "name": "Secret Key",
                                                            "created_at": int(time.time()), "id": "key_fake%s%06d" % (RUN, n)}})
                account = accounts.get(rest[1]) if len(rest) == 2 else None
                if account is None or account.get("deleted"):
                    return self.not_found("service account")
                if method == "DELETE":
                    account["deleted"] = True
                    return self.send_json(200, {"object": "organization.project.service_account.deleted",
                                                "id": account["id"], "deleted": True})
            if rest == ["spend_limit"] and method == "POST":
                if not isinstance(body.get("threshold_amount"), int) or body["threshold_amount"] < 1 \
                        or body.get("currency") != "USD" or body.get("interval") != "month":
                    return self.send_json(400, {"error": {"message": "threshold_amount (cents >= 1), currency USD and interval month are required",
                                                          "type": "invalid_request_error"}})
                project["spend_limit"] = {"object": "project.spend_limit", "threshold_amount": body["threshold_amount"],
                                          "currency": "USD", "interval": "month", "enforcement": {"status": "enforcing"}}
                return self.send_json(200, project["spend_limit"])
            if rest[:1] == ["rate_limits"]:
                limits = project["rate_limits"]
                if len(rest) == 1 and method == "GET":
                    return self.send_json(200, self.page(list(limits.values()), query, "after"))
                limit = limits.get(rest[1]) if len(rest) == 2 else None
                if limit is None:
                    return self.not_found("rate limit")
                if method == "POST":
                    for field in ("max_requests_per_1_minute", "max_tokens_per_1_minute"):
                        if field in body:
                            if not isinstance(body[field], int) or body[field] < 1:
                                return self.send_json(400, {"error": {"message": "%s must be a positive integer" % field,
                                                                      "type": "invalid_request_error"}})
                            limit[field] = body[field]
                    return self.send_json(200, limit)
        return self.send_json(404, {"error": {"message": "unknown admin path", "type": "invalid_request_error"}})

    def anthropic_admin(self, method, parts, query, body):
        # parts: ["organizations", "workspaces" | "api_keys", id?, action?]
        with LOCK:
            if parts[:2] == ["organizations", "workspaces"]:
                workspaces = ADMIN["workspaces"]
                if len(parts) == 2 and method == "GET":
                    items = [w for w in workspaces.values()
                             if "true" in (query.get("include_archived") or []) or w["archived_at"] is None]
                    return self.send_json(200, self.page(items, query, "after_id"))
                if len(parts) == 2 and method == "POST":
                    name = body.get("name") or ""
                    if not 1 <= len(name) <= 255:
                        return self.send_json(400, {"type": "error", "error": {"type": "invalid_request_error",
                                                                               "message": "name: must be 1 to 255 characters"}})
                    if any(w["name"] == name and w["archived_at"] is None for w in workspaces.values()):
                        return self.send_json(409, {"type": "error", "error": {"type": "invalid_request_error",
                                                                               "message": "a workspace with this name exists"}})
                    wid = "wrkspc_fake%s%06d" % (RUN, next_id_unlocked())
                    workspaces[wid] = {"id": wid, "type": "workspace", "name": name, "created_at": "2026-01-01T00:00:00Z",
                                       "archived_at": None, "display_color": "#6C5BB9", "tags": body.get("tags") or {},
                                       "rate_limits": {}, "spend_limit": None}
                    return self.send_json(200, workspaces[wid])
                workspace = workspaces.get(parts[2]) if len(parts) > 2 else None
                if workspace is None:
                    return self.send_json(404, {"type": "error", "error": {"type": "not_found_error", "message": "workspace not found"}})
                if parts[3:] == ["archive"] and method == "POST":
                    workspace["archived_at"] = workspace["archived_at"] or "2026-01-02T00:00:00Z"
                    return self.send_json(200, workspace)
                if parts[3:4] == ["rate_limits"] and len(parts) == 5 and method == "POST":
                    if parts[4] not in ANTHROPIC_RATE_LIMIT_GROUPS:
                        return self.send_json(404, {"type": "error", "error": {"type": "not_found_error", "message": "rate limit not found"}})
                    items = body.get("limits") or []
                    if not 1 <= len(items) <= 16 or any(not isinstance(i.get("value"), (int, type(None))) or (i.get("value") or 1) < 1 for i in items):
                        return self.send_json(400, {"type": "error", "error": {"type": "invalid_request_error", "message": "limits: 1 to 16 positive values"}})
                    entry = workspace["rate_limits"].setdefault(parts[4], {})
                    entry.update({i["type"]: i["value"] for i in items})
                    return self.send_json(200, {"type": "workspace_rate_limit", "workspace_id": workspace["id"],
                                                "rate_limit_id": parts[4], "limits": [{"type": t, "value": v} for t, v in entry.items()]})
            if parts == ["organizations", "rate_limits"] and method == "GET":
                return self.send_json(200, {"data": [{"type": "rate_limit", "id": g, "group": {"type": "model_group", "id": g},
                                                      "limits": [{"type": "requests_per_minute", "value": 4000}]}
                                                     for g in ANTHROPIC_RATE_LIMIT_GROUPS], "next_page": None})
            if parts == ["organizations", "spend_limits"] and method == "POST":
                scope = body.get("scope") or {}
                workspace = ADMIN["workspaces"].get(scope.get("workspace_id"))
                if workspace is None or not str(body.get("amount", "")).isdigit() or body.get("period") != "monthly":
                    return self.send_json(400, {"type": "error", "error": {"type": "invalid_request_error", "message": "scope, amount and period"}})
                workspace["spend_limit"] = {"type": "spend_limit", "amount": body["amount"], "currency": "USD", "period": "monthly"}
                return self.send_json(200, dict(workspace["spend_limit"], id="spl_" + workspace["id"], scope=scope))
            if parts[:2] == ["organizations", "api_keys"]:
                keys = ADMIN["anthropic_keys"]
                if len(parts) == 2 and method == "GET":
                    items = [k for k in keys.values()
                             if (not query.get("workspace_id") or k["workspace_id"] == query["workspace_id"][0])
                             and (not query.get("status") or k["status"] == query["status"][0])]
                    return self.send_json(200, self.page(items, query, "after_id"))
                key = keys.get(parts[2]) if len(parts) > 2 else None
                if key is None:
                    return self.send_json(404, {"type": "error", "error": {"type": "not_found_error", "message": "api key not found"}})
                if method == "POST":
                    if body.get("status") not in (None, "active", "inactive", "archived"):
                        return self.send_json(400, {"type": "error", "error": {"type": "invalid_request_error", "message": "bad status"}})
                    key.update({k: v for k, v in body.items() if k in ("status", "name")})
                    return self.send_json(200, key)
        return self.send_json(404, {"type": "error", "error": {"type": "not_found_error", "message": "unknown admin path"}})

    # ------------------------------------------------------------ usage APIs
    def served(self, api, start, end):
        with LOCK:
            return [u for u in USAGE if u["api"] == api and start <= u["ts"] < end]

    def openai_usage(self, api, query):
        if not (self.headers.get("authorization") or "").startswith("Bearer "):
            self.send_json(401, {"error": {"message": "admin key required"}})
            return
        start = int(query["start_time"][0])
        end = int(query.get("end_time", [start + 86400])[0])
        by_project = {}
        for u in self.served(api, start, end):
            r = by_project.setdefault(u["project"], {"input_tokens": 0, "output_tokens": 0, "input_cached_tokens": 0, "num_model_requests": 0})
            r["input_tokens"] += u["input"] + u["cached"]
            r["input_cached_tokens"] += u["cached"]
            r["output_tokens"] += u["output"]
            r["num_model_requests"] += 1
        kind = "organization.usage.%s.result" % api
        results = [dict(r, object=kind, project_id=p, model=None, user_id=None, api_key_id=None, batch=None)
                   for p, r in sorted(by_project.items())]
        if api == "embeddings":
            for r in results:
                r.pop("output_tokens")
                r.pop("input_cached_tokens")
        # One page per project, to exercise pagination.
        page = int((query.get("page") or ["0"])[0])
        self.send_json(200, {"object": "page", "data": [{"object": "bucket", "start_time": start, "end_time": end,
                                                        "results": results[page:page + 1]}],
                             "has_more": page + 1 < len(results), "next_page": str(page + 1) if page + 1 < len(results) else None})

    def anthropic_usage(self, query):
        if not self.headers.get("x-api-key") or not self.headers.get("anthropic-version"):
            self.send_json(401, {"type": "error", "error": {"type": "authentication_error", "message": "admin key required"}})
            return
        from datetime import datetime
        parse = lambda t: datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp()
        start = parse(query["starting_at"][0])
        end = parse(query["ending_at"][0]) if "ending_at" in query else start + 86400
        by_workspace = {}
        for u in self.served("messages", start, end):
            r = by_workspace.setdefault(u["project"], {"uncached_input_tokens": 0, "cache_read_input_tokens": 0,
                                                      "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
                                                      "output_tokens": 0})
            r["uncached_input_tokens"] += u["input"]
            r["cache_read_input_tokens"] += u["cached"]
            r["cache_creation"]["ephemeral_5m_input_tokens"] += u["cache_write"]
            r["output_tokens"] += u["output"]
        results = [dict(r, workspace_id=w, model=None, api_key_id=None, service_tier=None, context_window=None)
                   for w, r in by_workspace.items()]
        self.send_json(200, {"data": [{"starting_at": query["starting_at"][0], "ending_at": query.get("ending_at", [""])[0],
                                       "results": results}], "has_more": False, "next_page": None})

    def anthropic_analytics_usage(self, query):
        """Anthropic's analytics usage report (beta): rows {group: {workspace_id}, usage: {...}}."""
        if not self.headers.get("x-api-key") or not (self.headers.get("anthropic-beta") or "").startswith("analytics-usage-cost-"):
            self.send_json(400, {"type": "error", "error": {"type": "invalid_request_error",
                                                            "message": "x-api-key and anthropic-beta: analytics-usage-cost-... are required"}})
            return
        from datetime import datetime
        parse = lambda t: datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp()
        start = parse(query["starting_at"][0])
        end = parse(query["ending_at"][0]) if "ending_at" in query else start + 86400
        by_workspace = {}
        for u in self.served("messages", start, end):
            r = by_workspace.setdefault(u["project"], {"uncached_input_tokens": 0, "cache_read_input_tokens": 0,
                                                      "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
                                                      "output_tokens": 0, "requests": 0})
            r["uncached_input_tokens"] += u["input"]
            r["cache_read_input_tokens"] += u["cached"]
            r["cache_creation"]["ephemeral_5m_input_tokens"] += u["cache_write"]
            r["output_tokens"] += u["output"]
            r["requests"] += 1
        rows = [{"starting_at": query["starting_at"][0], "ending_at": query.get("ending_at", [""])[0],
                 "group": {"workspace_id": w}, "usage": r} for w, r in sorted(by_workspace.items())]
        # One row per page, to exercise pagination.
        page = int((query.get("page") or ["0"])[0])
        self.send_json(200, {"data": rows[page:page + 1], "next_page": str(page + 1) if page + 1 < len(rows) else None})

    # --------------------------------------------------------------- Anthropic
    def anthropic_messages(self, req, cut_after):
        if not self.headers.get("x-api-key") or not self.headers.get("anthropic-version"):
            self.send_json(401, {"type": "error", "error": {"type": "authentication_error", "message": "x-api-key and anthropic-version are required"}})
            return
        key = self.headers.get("x-api-key")
        messages = req.get("messages", [])
        prompt = " ".join(str(m.get("content", "")) for m in messages)
        words = self.words(prompt, req.get("max_tokens") or 16, req)
        input_tokens = max(1, len(prompt.encode()) // 4)
        last = messages[-1] if messages else {}
        answered_tool = isinstance(last.get("content"), list) and any(
            isinstance(b, dict) and b.get("type") == "tool_result" for b in last["content"])
        tool = req["tools"][0].get("name", "tool") if req.get("tools") and not answered_tool else None
        if tool:
            tool_input = {"query": " ".join(prompt.split()[:4])}
            words = ["<tool>"]
        usage = {"input_tokens": input_tokens, "output_tokens": len(words),
                 "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}
        rid = "msg_fake_%d" % next_id()
        workspace = WORKSPACES.get(key)
        served = lambda out: record_usage("messages", workspace, input_tokens, out, key=key, rid=rid)
        if not req.get("stream"):
            served(len(words))
            content = ([{"type": "tool_use", "id": "toolu_" + rid, "name": tool, "input": tool_input}] if tool
                       else [{"type": "text", "text": " ".join(words)}])
            self.send_json(200, {
                "id": rid, "type": "message", "role": "assistant", "model": req.get("model"),
                "content": content,
                "stop_reason": "tool_use" if tool else "end_turn", "stop_sequence": None, "usage": usage,
            }, {"request-id": "req_" + rid})
            return
        self.start_stream()
        start_usage = dict(usage, output_tokens=1)
        self.event("message_start", {"type": "message_start", "message": {
            "id": rid, "type": "message", "role": "assistant", "model": req.get("model"), "content": [],
            "stop_reason": None, "usage": start_usage}})
        if tool:
            self.event("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {
                "type": "tool_use", "id": "toolu_" + rid, "name": tool, "input": {}}})
            self.event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                               "delta": {"type": "input_json_delta", "partial_json": json.dumps(tool_input)}})
        else:
            self.event("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
            for i, word in enumerate(words):
                if cut_after is not None and i >= cut_after:
                    served(i)
                    return self.cut()
                if not self.paced_event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                        "delta": {"type": "text_delta", "text": (" " if i else "") + word}}, i):
                    served(i)
                    return
        served(len(words))
        self.event("content_block_stop", {"type": "content_block_stop", "index": 0})
        self.event("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use" if tool else "end_turn"},
                                     "usage": {"output_tokens": len(words)}})
        self.event("message_stop", {"type": "message_stop"})

    # ---------------------------------------------------------------- Pinecone
    def pinecone(self, req):
        if not self.headers.get("api-key"):
            self.send_json(401, {"code": 16, "message": "Invalid API Key", "details": []})
            return
        namespace = req.get("namespace", "")
        with LOCK:
            if self.path == "/vectors/upsert":
                vectors = req.get("vectors") or []
                for v in vectors:
                    if not isinstance(v.get("values"), list) or not v.get("id"):
                        self.send_json(400, {"code": 3, "message": "vector id and values are required", "details": []})
                        return
                space = INDEX.setdefault(namespace, {})
                for v in vectors:
                    space[v["id"]] = {"values": v["values"], "metadata": v.get("metadata") or {}}
                self.send_json(200, {"upsertedCount": len(vectors)})
            elif req.get("deleteAll"):
                if namespace not in INDEX:
                    self.send_json(404, {"code": 5, "message": "Namespace not found", "details": []})
                    return
                del INDEX[namespace]
                self.send_json(200, {})
            else:
                space = INDEX.get(namespace, {})
                for i in req.get("ids") or []:
                    space.pop(i, None)
                self.send_json(200, {})

    # ------------------------------------------------------------------ SSE
    def start_stream(self):
        # No content-length: the stream ends when the connection closes.
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("connection", "close")
        self.end_headers()
        self.close_connection = True

    def event(self, name, data):
        out = ("event: %s\n" % name if name else "") + "data: " + json.dumps(data) + "\n\n"
        self.wfile.write(out.encode())
        self.wfile.flush()

    def cut(self):
        self.wfile.flush()
        self.close_connection = True


class QuietServer(ThreadingHTTPServer):
    # A deep accept queue: hundreds of worker connections may arrive at once.
    request_queue_size = 1024

    def handle_error(self, request, client_address):
        # A client that gave up first (a timeout under test) is not the fake's error.
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = QuietServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print("listening on 127.0.0.1:%d" % server.server_address[1], flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
