#!/usr/bin/env python3
"""The official OpenAI and Anthropic Python SDKs (pinned in the Makefile), pointed at
`bulkhead gateway` with base_url, as the gateway's integration tests use them.

    client.py calls          plain, streamed and tool-calling requests of both wire formats
    client.py refused        each credential in CREDENTIALS (JSON list) must get a 401
    client.py race N         N concurrent streamed chat calls; prints how many were admitted
    client.py disconnect K   reads K chunks of a streamed chat, then closes the connection
    client.py until-cut      reads a stream until the gateway cuts it; prints when and how
    client.py load N         N concurrent streamed calls that run until the process is killed

Environment: GATEWAY (http://127.0.0.1:PORT), KEY (a bk_ key or a JWT), OPENAI_MODEL,
ANTHROPIC_MODEL. Prints one JSON object; exits non-zero when an expectation fails.
"""

import asyncio
import json
import os
import sys
import time

import anthropic
import openai

GATEWAY = os.environ["GATEWAY"]
KEY = os.environ.get("KEY", "")
OPENAI_MODEL = os.environ.get("OPENAI_MODEL", "")
ANTHROPIC_MODEL = os.environ.get("ANTHROPIC_MODEL", "")
TOOLS = [{"type": "function", "function": {"name": "lookup", "description": "Finds an order.",
                                           "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}}]
ANTHROPIC_TOOLS = [{"name": "lookup", "description": "Finds an order.",
                    "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}}}]
USER = [{"role": "user", "content": "find order 42 please"}]


def oa(key=None):
    return openai.OpenAI(base_url=GATEWAY + "/v1", api_key=key or KEY, max_retries=0)


def an(key=None):
    return anthropic.Anthropic(base_url=GATEWAY, api_key=key or KEY, max_retries=0)


def expect(condition, what):
    if not condition:
        print(json.dumps({"failed": what}))
        sys.exit(1)


def calls():
    out = {}
    o, a = oa(), an()
    r = o.chat.completions.with_raw_response.create(
        model=OPENAI_MODEL, messages=[{"role": "system", "content": "be brief"}] + USER, max_tokens=20)
    plain = r.parse()
    expect(plain.choices[0].message.content.startswith("fake answer"), "openai plain answer")
    expect(r.headers.get("x-bulkhead-request-id"), "x-bulkhead-request-id on the answer")
    out["openai_plain"] = plain.usage.completion_tokens
    chunks = list(o.chat.completions.create(model=OPENAI_MODEL, messages=USER, stream=True, max_tokens=20))
    expect(all(c.usage is None for c in chunks), "no usage chunk when the client did not ask for one")
    out["openai_stream"] = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    with_usage = list(o.chat.completions.create(model=OPENAI_MODEL, messages=USER, stream=True,
                                                stream_options={"include_usage": True}))
    expect(with_usage[-1].usage is not None, "the usage chunk when the client asked for it")
    tool = o.chat.completions.create(model=OPENAI_MODEL, messages=USER, tools=TOOLS)
    call = tool.choices[0].message.tool_calls[0]
    expect(call.function.name == "lookup" and json.loads(call.function.arguments)["query"], "openai tool call")
    follow = o.chat.completions.create(model=OPENAI_MODEL, tools=TOOLS, messages=USER + [
        tool.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "order 42 shipped"}])
    expect(follow.choices[0].finish_reason == "stop" and follow.choices[0].message.content, "openai tool result round trip")
    streamed_tool = [c for c in o.chat.completions.create(model=OPENAI_MODEL, messages=USER, tools=TOOLS, stream=True)
                     if c.choices and c.choices[0].delta.tool_calls]
    expect("".join(c.choices[0].delta.tool_calls[0].function.arguments or "" for c in streamed_tool), "openai streamed tool call")
    emb = o.embeddings.create(model=os.environ["EMBEDDING_MODEL"], input=["order 42", "order 43"])
    expect(len(emb.data) == 2, "embeddings")
    models = [m.id for m in o.models.list()]
    expect(OPENAI_MODEL in models and ANTHROPIC_MODEL not in models, "openai models list")
    m = a.messages.create(model=ANTHROPIC_MODEL, max_tokens=20, system="be brief", messages=USER)
    expect(m.content[0].text.startswith("fake answer"), "anthropic plain answer")
    with a.messages.stream(model=ANTHROPIC_MODEL, max_tokens=20, messages=USER) as stream:
        out["anthropic_stream"] = "".join(stream.text_stream)
        expect(stream.get_final_message().usage.output_tokens > 0, "anthropic stream usage")
    t = a.messages.create(model=ANTHROPIC_MODEL, max_tokens=50, tools=ANTHROPIC_TOOLS, messages=USER)
    expect(t.stop_reason == "tool_use" and t.content[0].input["query"], "anthropic tool use")
    follow = a.messages.create(model=ANTHROPIC_MODEL, max_tokens=50, tools=ANTHROPIC_TOOLS, messages=USER + [
        {"role": "assistant", "content": [b.model_dump() for b in t.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": t.content[0].id, "content": "shipped"}]}])
    expect(follow.stop_reason == "end_turn", "anthropic tool result round trip")
    with a.messages.stream(model=ANTHROPIC_MODEL, max_tokens=50, tools=ANTHROPIC_TOOLS, messages=USER) as stream:
        expect(stream.get_final_message().content[0].input["query"], "anthropic streamed tool use")
    expect(ANTHROPIC_MODEL in [m.id for m in a.models.list()], "anthropic models list")
    # A model of the other wire format: a clear 400, no translation.
    for attempt in (lambda: o.chat.completions.create(model=ANTHROPIC_MODEL, messages=USER),
                    lambda: a.messages.create(model=OPENAI_MODEL, max_tokens=5, messages=USER)):
        try:
            attempt()
            expect(False, "a model of the other wire format was served")
        except (openai.BadRequestError, anthropic.BadRequestError) as e:
            expect("not through this endpoint" in str(e), "the wrong-format error says why")
    out["ok"] = True
    return out


def refused():
    statuses = []
    for credential in json.loads(os.environ["CREDENTIALS"]):
        try:
            oa(credential).chat.completions.create(model=OPENAI_MODEL, messages=USER)
            statuses.append(200)
        except openai.APIStatusError as e:
            statuses.append(e.status_code)
        try:
            an(credential).messages.create(model=ANTHROPIC_MODEL, max_tokens=5, messages=USER)
            statuses.append(200)
        except anthropic.APIStatusError as e:
            statuses.append(e.status_code)
    return {"statuses": statuses}


async def race(n):
    client = openai.AsyncOpenAI(base_url=GATEWAY + "/v1", api_key=KEY, max_retries=0, timeout=60)
    start = asyncio.Event()

    async def one():
        await start.wait()
        try:
            stream = await client.chat.completions.create(model=OPENAI_MODEL, messages=USER, stream=True, max_tokens=10)
            async for _ in stream:
                pass
            return "admitted"
        except openai.RateLimitError as e:
            body = e.body or {}
            return body.get("code") or "429"

    tasks = [asyncio.create_task(one()) for _ in range(n)]
    await asyncio.sleep(0.2)
    start.set()
    results = await asyncio.gather(*tasks)
    return {"admitted": results.count("admitted"), "refused": [r for r in results if r != "admitted"]}


def disconnect(k):
    stream = oa().chat.completions.create(model=OPENAI_MODEL, messages=USER, stream=True, max_tokens=200)
    seen = 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            seen += 1
        if seen >= k:
            break
    stream.response.close()
    return {"chunks": seen}


def until_cut():
    stream = oa().chat.completions.create(model=OPENAI_MODEL, messages=USER, stream=True, max_tokens=200)
    seen, error = 0, None
    print(json.dumps({"streaming": True}), flush=True)
    try:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                seen += 1
    except openai.APIError as e:
        error = str(e)
    return {"chunks": seen, "error": error, "ended_at": time.time()}


async def load(n):
    client = openai.AsyncOpenAI(base_url=GATEWAY + "/v1", api_key=KEY, max_retries=0, timeout=120)

    async def one():
        try:
            stream = await client.chat.completions.create(model=OPENAI_MODEL, messages=USER, stream=True, max_tokens=200)
            async for _ in stream:
                pass
        except Exception:
            pass

    print(json.dumps({"started": n}), flush=True)
    await asyncio.gather(*(one() for _ in range(n)))
    return {"done": True}


def main():
    command = sys.argv[1]
    if command == "calls":
        result = calls()
    elif command == "refused":
        result = refused()
    elif command == "race":
        result = asyncio.run(race(int(sys.argv[2])))
    elif command == "disconnect":
        result = disconnect(int(sys.argv[2]))
    elif command == "until-cut":
        result = until_cut()
    elif command == "load":
        result = asyncio.run(load(int(sys.argv[2])))
    else:
        raise SystemExit("unknown command " + command)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
