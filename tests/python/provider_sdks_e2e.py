"""The real Anthropic and OpenAI Python SDKs, for the proxy's other APIs: Anthropic Messages
(`anthropic.Anthropic`), Azure OpenAI chat completions (`openai.AzureOpenAI`) and OpenAI
Responses (`openai.OpenAI().responses`), each on its native route and Pay-i's (the URLs of
`payi.lib.helpers`), streaming and not.

Run by tests/suite/provider_sdks.rs with the proxy's address and the mock provider's origin (for
direct calls to compare with). Prints one line per check and a closing 'N passed, N failed' line;
exits non-zero when any check failed. Checks use `check()`, not `assert` (which `python -O`
removes). Every `xproxy_result` is parsed strictly with Pay-i's own pydantic model
(`payi.types.shared.xproxy_result.XproxyResult`): unknown keys or wrong types fail.

For every call through the proxy it also prints one `CALL {json}` line: what the SDK sent (its
credential and version headers) and saw (the response headers, the usage as the SDK parsed it,
the model, `xproxy_result` when the SDK gives access to it). The Rust test holds the proxy's
records, and the requests that reached the mock, against those lines.
"""
import json
import sys
import traceback

import anthropic
import openai
from anthropic.types import Message, RawMessageStartEvent, RawMessageStopEvent
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseCompletedEvent
from payi.lib.helpers import payi_anthropic_url, payi_azure_openai_url, payi_openai_url
from payi.types.shared.xproxy_result import XproxyResult

BASE = sys.argv[1].rstrip("/")
MOCK = sys.argv[2].rstrip("/")
# The keys each SDK sends (the Rust test checks that they reach the mock unchanged).
ANTHROPIC_KEY = "sk-ant-python-sdk-key"
AZURE_KEY = "azure-python-sdk-key"
OPENAI_KEY = "sk-python-sdk-key"
AZURE_API_VERSION = "2024-10-21"
DEPLOYMENT = "gpt-4o"
CLAUDE = "claude-sonnet-4-5"
# What the calls through the proxy send: Pay-i's annotations, and one more header.
PROXY_HEADERS = {
    "xProxy-UseCase-Name": "sdk.providers",
    "xProxy-UseCase-ID": "uc-12",
    "xProxy-UseCase-Step": "answer",
    "xProxy-User-ID": "user-py",
    "xProxy-Account-Name": "acme",
    "xProxy-Limit-IDs": "sdk-daily",
    "xProxy-Request-Tags": "python,providers",
    # Not Pay-i's: goes upstream, so the Rust test can tell the proxy's requests from direct ones.
    "x-e2e-via": "proxy",
}
MESSAGES = [{"role": "user", "content": "Say hello from Python, through the proxy"}]
ROUTES = {
    "anthropic": {"native": BASE, "payi": payi_anthropic_url(BASE)},
    "azure": {"native": BASE, "payi": payi_azure_openai_url(BASE)},
    "responses": {"native": BASE + "/v1", "payi": payi_openai_url(BASE)},
}
# What differs between two answers to the same request: ids, times, the fingerprint, and the
# proxy's own field.
VOLATILE = {"id", "item_id", "created", "created_at", "system_fingerprint", "xproxy_result"}


class CheckFailed(Exception):
    pass


def check(condition, message):
    if not condition:
        raise CheckFailed(message)


# ---- Pay-i's XproxyResult, strictly ------------------------------------------------------


def xproxy(obj):
    extra = getattr(obj, "model_extra", None) or {}
    return extra.get("xproxy_result")


def strict_keys(model_cls, value, path="xproxy_result"):
    """Every key in `value` is a field of the pydantic model (recursively): nothing unknown."""
    check(isinstance(value, dict), f"{path}: expected an object, got {value!r}")
    fields = model_cls.model_fields
    for key, item in value.items():
        check(key in fields, f"{path}.{key}: not a field of Pay-i's {model_cls.__name__}")
        annotation = fields[key].annotation
        for inner in _models_in(annotation):
            if isinstance(item, dict) and _is_dict_of(annotation):
                for k, v in item.items():
                    strict_keys(inner, v, f"{path}.{key}.{k}")
            elif isinstance(item, dict):
                strict_keys(inner, item, f"{path}.{key}")


def _models_in(annotation):
    import typing

    import pydantic

    args = typing.get_args(annotation) or (annotation,)
    out = []
    for a in args:
        if isinstance(a, type) and issubclass(a, pydantic.BaseModel):
            out.append(a)
        elif typing.get_args(a):
            out.extend(_models_in(a))
    return out


def _is_dict_of(annotation):
    import typing

    for a in typing.get_args(annotation) or (annotation,):
        if typing.get_origin(a) is dict:
            return True
    return False


def payi_result(obj, where):
    """The object's xproxy_result, parsed strictly with Pay-i's own model, annotations checked."""
    result = xproxy(obj)
    check(result is not None, f"{where}: no xproxy_result")
    strict_keys(XproxyResult, result)
    r = XproxyResult.model_validate(result, strict=True)
    check((r.use_case_name, r.use_case_id, r.use_case_step) == ("sdk.providers", "uc-12", "answer"), f"{where}: {r}")
    check(r.user_id == "user-py" and r.account_name == "acme", f"{where}: {r}")
    check(r.request_tags == ["python", "providers"], f"{where}: {r}")
    check(r.limits is not None and r.limits["sdk-daily"].state == "ok", f"{where}: {r}")
    check(r.blocked_limit_ids == [] and r.request_id, f"{where}: {r}")
    check(r.cost is not None and r.cost.currency == "usd" and r.cost.total.base > 0, f"{where}: {r}")
    check(abs(r.cost.input.base + r.cost.output.base - r.cost.total.base) < 1e-12, f"{where}: {r}")
    return result


def carriers_of(items):
    """The items that carry an xproxy_result."""
    return [i for i, item in enumerate(items) if xproxy(item) is not None]


# ---- Comparing with the mock's direct answer -----------------------------------------------


_DIRECT = {}


def direct(what, call):
    """The mock's own answer to a request, asked once (it answers the same request the same
    way): `call()`'s value, a raw response or `(http_response, events)` of a stream."""
    if what not in _DIRECT:
        _DIRECT[what] = call()
    return _DIRECT[what]


def read_stream(stream):
    """A stream the SDK parsed to its end: its HTTP response and its events."""
    return stream.response, list(stream)


def scrub(value):
    """`value` without what differs between two answers to one request."""
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    return value


def same_answer(got, want, where):
    """Typed SDK objects (or lists of them) equal apart from ids, times and xproxy_result."""
    def dump(x):
        return [dump(i) for i in x] if isinstance(x, list) else scrub(x.model_dump(mode="json"))

    a, b = dump(got), dump(want)
    check(a == b, f"{where}: the answer differs from the mock's direct one:\n  proxy  {a}\n  direct {b}")


# The request headers that carry credentials and the API version, as each SDK sends them.
SENT = ["authorization", "x-api-key", "api-key", "anthropic-version"]


# Headers that describe the connection or the body's framing, not the provider's answer.
FRAMING = {"content-length", "transfer-encoding", "connection", "keep-alive", "date"}


def same_headers(got, want, where):
    """The provider's response headers pass through the proxy: the same names as directly."""
    def names(http):
        return sorted({k.lower() for k in http.headers.keys()} - FRAMING)

    check(names(got) == names(want), f"{where}: headers through the proxy {names(got)}, directly {names(want)}")


def report(label, api, stream, http, usage, model, xproxy_result=None):
    """One `CALL` line for the Rust test: what the SDK sent and saw of one call through the
    proxy (`http`: its HTTP response)."""
    line = {
        "label": label,
        "api": api,
        "stream": stream,
        "sent": {k: http.request.headers.get(k) for k in SENT},
        "headers": {k.lower(): v for k, v in http.headers.items()},
        "usage": usage,
        "model": model,
        "xproxy_result": xproxy_result,
    }
    print("CALL " + json.dumps(line, sort_keys=True))


# ---- Anthropic Messages ------------------------------------------------------------------


def claude(base_url):
    return anthropic.Anthropic(base_url=base_url, api_key=ANTHROPIC_KEY, max_retries=0, timeout=20)


def claude_args(**extra):
    return dict(model=CLAUDE, max_tokens=256, messages=MESSAGES, **extra)


def anthropic_create(route):
    c = claude(ROUTES["anthropic"][route])
    raw = c.messages.with_raw_response.create(**claude_args(), extra_headers=PROXY_HEADERS)
    message = raw.parse()
    check(isinstance(message, Message) and message.type == "message", message)
    check(message.content[0].type == "text" and message.content[0].text, message)
    check(message.stop_reason == "end_turn", message)
    u = message.usage
    check(u.cache_read_input_tokens and u.cache_creation_input_tokens and u.input_tokens, f"the mock caches: {u}")
    want = direct("anthropic", lambda: claude(MOCK).messages.with_raw_response.create(**claude_args()))
    same_answer(message, want.parse(), "message")
    same_headers(raw.http_response, want.http_response, "message")
    x = payi_result(message, "message")
    report(f"anthropic create {route}", "anthropic", False, raw.http_response, u.model_dump(mode="json"),
           message.model, x)


def test_anthropic_create_native_route():
    anthropic_create("native")


def test_anthropic_create_payi_route():
    anthropic_create("payi")


def folded_usage(events):
    """Usage of a raw event stream as the SDK's own accumulation folds it: `message_start`'s,
    updated by what `message_delta` carries."""
    usage = events[0].message.usage.model_dump(mode="json")
    for e in events:
        if e.type == "message_delta":
            usage.update({k: v for k, v in e.usage.model_dump(mode="json").items() if v is not None})
    return usage


def anthropic_create_stream(route):
    c = claude(ROUTES["anthropic"][route])
    stream = c.messages.create(**claude_args(stream=True), extra_headers=PROXY_HEADERS)
    events = list(stream)
    http, want = direct(
        "anthropic stream", lambda: read_stream(claude(MOCK).messages.create(**claude_args(stream=True)))
    )
    same_headers(stream.response, http, "stream")
    check(isinstance(events[0], RawMessageStartEvent), events[0])
    check(isinstance(events[-1], RawMessageStopEvent), f"the stream ends with message_stop: {events[-1]!r}")
    check([e.type for e in events] == [e.type for e in want], "the same events as the mock's (ping aside)")
    same_answer(events, want, "events")
    check(carriers_of(events) == [len(events) - 1], "message_stop alone carries xproxy_result")
    x = payi_result(events[-1], "message_stop")
    usage = folded_usage(events)
    check(usage == folded_usage(want), (usage, folded_usage(want)))
    report(f"anthropic create(stream=True) {route}", "anthropic", True, stream.response, usage,
           events[0].message.model, x)


def test_anthropic_create_stream_native_route():
    anthropic_create_stream("native")


def test_anthropic_create_stream_payi_route():
    anthropic_create_stream("payi")


def anthropic_stream_helper(route):
    """`messages.stream(...)` to the end, `get_final_message()` as a direct call gives it."""

    def final(c, headers):
        with c.messages.stream(**claude_args(), extra_headers=headers) as s:
            kinds = [e.type for e in s]
            return s.get_final_message(), s.get_final_text(), kinds, s.response

    got, text, kinds, http = final(claude(ROUTES["anthropic"][route]), PROXY_HEADERS)
    want, want_text, want_kinds, _ = direct("anthropic messages.stream", lambda: final(claude(MOCK), {}))
    check(kinds[-1] == "message_stop" and kinds == want_kinds, (kinds, want_kinds))
    check(isinstance(got, Message) and text == want_text and text, (text, want_text))
    same_answer(got, want, "final message")
    # The helper rebuilds message_stop from its snapshot: xproxy_result is on the raw event only.
    report(f"anthropic messages.stream {route}", "anthropic", True, http, got.usage.model_dump(mode="json"), got.model)


def test_anthropic_stream_helper_native_route():
    anthropic_stream_helper("native")


def test_anthropic_stream_helper_payi_route():
    anthropic_stream_helper("payi")


# ---- Azure OpenAI chat completions ---------------------------------------------------------


def azure(endpoint):
    return openai.AzureOpenAI(
        azure_endpoint=endpoint, api_key=AZURE_KEY, api_version=AZURE_API_VERSION, max_retries=0, timeout=20
    )


def azure_create(route):
    c = azure(ROUTES["azure"][route])
    raw = c.chat.completions.with_raw_response.create(model=DEPLOYMENT, messages=MESSAGES, extra_headers=PROXY_HEADERS)
    completion = raw.parse()
    check(isinstance(completion, ChatCompletion) and completion.choices[0].message.content, completion)
    check(completion.choices[0].finish_reason == "stop" and completion.usage.prompt_tokens > 0, completion)
    check((completion.model_extra or {}).get("prompt_filter_results"), "Azure's content-filter results pass through")
    want = direct(
        "azure", lambda: azure(MOCK).chat.completions.with_raw_response.create(model=DEPLOYMENT, messages=MESSAGES)
    )
    same_answer(completion, want.parse(), "completion")
    same_headers(raw.http_response, want.http_response, "completion")
    x = payi_result(completion, "completion")
    report(f"azure create {route}", "azure", False, raw.http_response, completion.usage.model_dump(mode="json"),
           completion.model, x)


def test_azure_create_native_route():
    azure_create("native")


def test_azure_create_payi_route():
    azure_create("payi")


def azure_direct_stream(include_usage):
    extra = {"stream_options": {"include_usage": True}} if include_usage else {}
    return direct(
        f"azure stream {include_usage}",
        lambda: read_stream(
            azure(MOCK).chat.completions.create(model=DEPLOYMENT, messages=MESSAGES, stream=True, **extra)
        ),
    )


def azure_stream(route, include_usage):
    extra = {"stream_options": {"include_usage": True}} if include_usage else {}
    c = azure(ROUTES["azure"][route])
    stream = c.chat.completions.create(model=DEPLOYMENT, messages=MESSAGES, stream=True, extra_headers=PROXY_HEADERS,
                                       **extra)
    chunks = list(stream)
    http, want = azure_direct_stream(include_usage)
    same_headers(stream.response, http, "stream")
    check(all(isinstance(ch, ChatCompletionChunk) for ch in chunks), chunks)
    check(len(chunks) == len(want), f"{len(chunks)} chunks, {len(want)} direct: none added, none lost")
    check(chunks[0].choices == [] and (chunks[0].model_extra or {}).get("prompt_filter_results"),
          f"Azure's first chunk (the prompt's filter results) comes first: {chunks[0]}")
    same_answer(chunks, want, "chunks")
    finish = [i for i, ch in enumerate(chunks) if ch.choices and ch.choices[0].finish_reason == "stop"]
    usages = [i for i, ch in enumerate(chunks) if ch.usage is not None]
    if include_usage:
        check(usages == [len(chunks) - 1] and chunks[-1].choices == [], "the usage chunk is last, as Azure sends it")
        check(carriers_of(chunks) == usages, "xproxy_result rides on the usage chunk itself")
        usage = chunks[-1].usage.model_dump(mode="json")
    else:
        check(usages == [], "the SDK did not ask for usage and sees none")
        check(len(finish) == 1 and carriers_of(chunks) == finish, "the finish chunk alone carries xproxy_result")
        # The proxy asked for usage and hid its chunk: the record has the usage the mock reports
        # when asked.
        _, asked = azure_direct_stream(True)
        usage = asked[-1].usage.model_dump(mode="json")
    x = payi_result(chunks[carriers_of(chunks)[0]], "stream")
    model = next(ch.model for ch in chunks if ch.model)
    label = f"azure create(stream=True{', include_usage' if include_usage else ''}) {route}"
    report(label, "azure", True, stream.response, usage, model, x)


def test_azure_stream_with_usage_native_route():
    azure_stream("native", True)


def test_azure_stream_with_usage_payi_route():
    azure_stream("payi", True)


def test_azure_stream_without_usage_native_route():
    azure_stream("native", False)


def test_azure_stream_without_usage_payi_route():
    azure_stream("payi", False)


# ---- OpenAI Responses ----------------------------------------------------------------------


def openai_client(base_url, **extra):
    return openai.OpenAI(base_url=base_url, api_key=OPENAI_KEY, max_retries=0, timeout=20, **extra)


def response_args(**extra):
    return dict(model="gpt-4o-mini", input="Say hello from Python.", max_output_tokens=64, **extra)


def responses_create(route):
    raw = openai_client(ROUTES["responses"][route]).responses.with_raw_response.create(
        **response_args(), extra_headers=PROXY_HEADERS
    )
    response = raw.parse()
    check(isinstance(response, Response) and response.status == "completed", response)
    check(response.output_text and response.usage.input_tokens > 0, response)
    check(response.usage.input_tokens_details.cached_tokens > 0, f"the mock caches: {response.usage}")
    want = direct(
        "responses", lambda: openai_client(MOCK + "/v1").responses.with_raw_response.create(**response_args())
    )
    same_answer(response, want.parse(), "response")
    same_headers(raw.http_response, want.http_response, "response")
    x = payi_result(response, "response")
    report(f"responses create {route}", "responses", False, raw.http_response, response.usage.model_dump(mode="json"),
           response.model, x)


def test_responses_create_native_route():
    responses_create("native")


def test_responses_create_payi_route():
    responses_create("payi")


def responses_create_stream(route):
    stream = openai_client(ROUTES["responses"][route]).responses.create(
        **response_args(stream=True), extra_headers=PROXY_HEADERS
    )
    events = list(stream)
    http, want = direct(
        "responses stream",
        lambda: read_stream(openai_client(MOCK + "/v1").responses.create(**response_args(stream=True))),
    )
    same_headers(stream.response, http, "stream")
    check(events[0].type == "response.created", events[0])
    check(isinstance(events[-1], ResponseCompletedEvent), f"the stream ends with response.completed: {events[-1]!r}")
    check([e.type for e in events] == [e.type for e in want], "the same events as the mock's")
    same_answer(events, want, "events")
    check(carriers_of(events) == [len(events) - 1], "response.completed alone carries xproxy_result")
    x = payi_result(events[-1], "response.completed")
    done = events[-1].response
    check(done.output_text and done.usage.output_tokens > 0, done)
    report(f"responses create(stream=True) {route}", "responses", True, stream.response,
           done.usage.model_dump(mode="json"), done.model, x)


def test_responses_create_stream_native_route():
    responses_create_stream("native")


def test_responses_create_stream_payi_route():
    responses_create_stream("payi")


def responses_stream_helper(route):
    """`responses.stream(...)` to the end, `get_final_response()` as a direct call gives it."""

    def final(c, headers):
        with c.responses.stream(**response_args(), extra_headers=headers) as s:
            kinds = [e.type for e in s]
            return s.get_final_response(), kinds

    # The helper keeps its HTTP response to itself: the client's response hook sees it.
    seen_responses = []
    hooked = openai.DefaultHttpxClient(event_hooks={"response": [seen_responses.append]})
    got, kinds = final(openai_client(ROUTES["responses"][route], http_client=hooked), PROXY_HEADERS)
    want, want_kinds = direct("responses.stream", lambda: final(openai_client(MOCK + "/v1"), {}))
    check(len(seen_responses) == 1, f"one HTTP response: {seen_responses}")
    check(kinds[-1] == "response.completed" and kinds == want_kinds, (kinds, want_kinds))
    check(isinstance(got, Response) and got.output_text == want.output_text and got.output_text, (got, want))
    same_answer(got, want, "final response")
    # The helper rebuilds response.completed: xproxy_result is on the raw event only.
    report(f"responses.stream {route}", "responses", True, seen_responses[0], got.usage.model_dump(mode="json"),
           got.model)


def test_responses_stream_helper_native_route():
    responses_stream_helper("native")


def test_responses_stream_helper_payi_route():
    responses_stream_helper("payi")


def main():
    tests = [(name, fn) for name, fn in sorted(globals().items()) if name.startswith("test_")]
    passed = failed = 0
    for name, fn in tests:
        try:
            fn()
            passed += 1
            print(f"ok   {name}")
        except Exception:  # noqa: BLE001 - report every failure, keep going
            failed += 1
            print(f"FAIL {name}")
            traceback.print_exc()
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
