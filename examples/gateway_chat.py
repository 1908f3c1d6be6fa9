#!/usr/bin/env python3
"""A streamed chat through `bulkhead gateway` with the official OpenAI Python SDK, unchanged:
only base_url and api_key (a tenant's bk_ key) differ from calling OpenAI itself.

    GATEWAY=http://127.0.0.1:8787 KEY=bk_... MODEL=gpt-4o-mini python3 examples/gateway_chat.py "question"

With REFUSED_KEY set (a tenant over its budget), it also shows the 429 that tenant gets.
`bulkhead demo` runs it.
"""

import json
import os
import sys

import openai

client = openai.OpenAI(base_url=os.environ["GATEWAY"] + "/v1", api_key=os.environ["KEY"], max_retries=0)
question = sys.argv[1] if len(sys.argv) > 1 else "What are your support hours?"
stream = client.chat.completions.with_streaming_response.create(
    model=os.environ["MODEL"],
    messages=[{"role": "user", "content": question}],
    stream=True,
    max_tokens=60,
    # The tenant's own prompt template, rendered by the database (the system message).
    extra_headers={"x-bulkhead-prompt": os.environ["PROMPT"],
                   "x-bulkhead-vars": json.dumps({"question": question})} if os.environ.get("PROMPT") else None,
)
with stream as response:
    print("   request id:", response.headers.get("x-bulkhead-request-id"))
    print("   streamed: ", end="", flush=True)
    chunks = 0
    for chunk in response.parse():
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
            chunks += 1
    print(f"   ({chunks} chunks)")

refused_key = os.environ.get("REFUSED_KEY")
if refused_key:
    other = openai.OpenAI(base_url=os.environ["GATEWAY"] + "/v1", api_key=refused_key, max_retries=0)
    try:
        # The size of the calls its runaway agent made: more than what is left of its budget.
        other.chat.completions.create(model=os.environ["MODEL"], messages=[{"role": "user", "content": question}],
                                      max_tokens=4000)
        print("   the over-budget tenant was served (unexpected)")
        sys.exit(1)
    except openai.RateLimitError as e:
        print(f"   over-budget tenant: HTTP {e.status_code} {e.body.get('code')} "
              f"(limit {e.body.get('limit')}, Retry-After {e.response.headers.get('retry-after', 'none')})")
