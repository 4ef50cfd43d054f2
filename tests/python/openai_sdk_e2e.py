"""The real OpenAI Python SDK as a client of the llm-meter proxy.

Run by tests/suite/openai_sdk.rs with the proxy's base address and the mock provider's base address
(for direct calls to compare with); prints one line per check and a closing 'N passed, N failed'
line; exits non-zero when any check failed. Checks use `check()`, not `assert` (which
`python -O` removes). Every `xproxy_result` is parsed with Pay-i's own pydantic model
(`payi.types.shared.xproxy_result.XproxyResult`, the `payi` package), strictly: unknown keys
or wrong types fail.
"""
import contextlib
import io
import sys
import traceback

import openai
from payi.types.shared.xproxy_result import XproxyResult

BASE = sys.argv[1].rstrip("/")
MOCK = sys.argv[2].rstrip("/")
ANNOTATIONS = {
    "xProxy-UseCase-Name": "sdk.e2e",
    "xProxy-UseCase-ID": "uc-7",
    "xProxy-UseCase-Step": "draft",
    "xProxy-User-ID": "user-py",
    "xProxy-Account-Name": "acme",
    "xProxy-Limit-IDs": "sdk-daily",
    "xProxy-Request-Tags": "python,e2e",
}
MESSAGES = [{"role": "user", "content": "Say hello from Python"}]
ROUTES = {"openai": "/v1", "payi": "/api/v1/proxy/openai/v1"}


class CheckFailed(Exception):
    pass


def check(condition, message):
    if not condition:
        raise CheckFailed(message)


def client(base_url):
    return openai.OpenAI(base_url=base_url, api_key="sk-python-client", max_retries=0, timeout=20)


def direct():
    """The mock provider without the proxy, to compare answers with."""
    return client(MOCK)


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
    import pydantic
    import typing

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
    """The object's xproxy_result, parsed strictly with Pay-i's own model."""
    result = xproxy(obj)
    check(result is not None, f"{where}: no xproxy_result")
    strict_keys(XproxyResult, result)
    return XproxyResult.model_validate(result, strict=True)


def check_annotations(r, where):
    check(r.use_case_name == "sdk.e2e" and r.use_case_id == "uc-7" and r.use_case_step == "draft", f"{where}: {r}")
    check(r.user_id == "user-py" and r.account_name == "acme", f"{where}: {r}")
    check(r.request_tags == ["python", "e2e"], f"{where}: {r}")
    check(r.limits is not None and r.limits["sdk-daily"].state == "ok", f"{where}: {r}")
    check(r.blocked_limit_ids == [] and r.request_id, f"{where}: {r}")
    check(r.cost is not None and r.cost.currency == "usd" and r.cost.total.base > 0, f"{where}: {r}")
    check(abs(r.cost.input.base + r.cost.output.base - r.cost.total.base) < 1e-12, f"{where}: {r}")


def plain_call_on(route):
    c = client(BASE + route)
    completion = c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, extra_headers=ANNOTATIONS)
    check(completion.choices[0].message.content.startswith("Hello"), completion)
    check(completion.usage.prompt_tokens > 0, completion)
    check_annotations(payi_result(completion, "JSON answer"), "JSON answer")


def test_plain_call_openai_route():
    plain_call_on(ROUTES["openai"])


def test_plain_call_payi_route():
    plain_call_on(ROUTES["payi"])


def seed_loop(route):
    """The Pay-i guide's streaming loop, verbatim, on a stream that did not ask for usage."""
    c = client(BASE + route)
    stream = c.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True, extra_headers=ANNOTATIONS)
    printed = io.StringIO()
    chunks = []
    with contextlib.redirect_stdout(printed):
        for chunk in stream:
            chunks.append(chunk)
            if chunk.choices[0].delta.content:
                print(chunk.choices[0].delta.content, end="")
    want = "".join(
        ch.choices[0].delta.content or ""
        for ch in direct().chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    )
    check(printed.getvalue() == want, f"printed {printed.getvalue()!r}, direct {want!r}")
    check(all(ch.usage is None for ch in chunks), "the SDK did not ask for usage and sees none")
    carriers = [ch for ch in chunks if xproxy(ch) is not None]
    check(len(carriers) == 1 and carriers[0] is chunks[-1], "the last chunk alone carries xproxy_result")
    check(chunks[-1].choices[0].finish_reason == "stop", chunks[-1])
    check_annotations(payi_result(chunks[-1], "stream"), "stream")


def test_seed_stream_loop_openai_route():
    seed_loop(ROUTES["openai"])


def test_seed_stream_loop_payi_route():
    seed_loop(ROUTES["payi"])


def stream_helper(route, usage):
    """`chat.completions.stream(...)` and `get_final_completion()` as a direct call gives them."""
    extra = {"stream_options": {"include_usage": True}} if usage else {}

    def final(c, headers):
        with c.chat.completions.stream(model="gpt-4o", messages=MESSAGES, extra_headers=headers, **extra) as s:
            for _ in s:
                pass
            return s.get_final_completion()

    got = final(client(BASE + route), ANNOTATIONS)
    want = final(direct(), {})
    check(got.choices[0].message.content == want.choices[0].message.content, (got, want))
    check(got.choices[0].finish_reason == want.choices[0].finish_reason == "stop", (got, want))
    if usage:
        check(got.usage is not None and got.usage.completion_tokens == want.usage.completion_tokens, got.usage)


def test_stream_helper_openai_route_without_usage():
    stream_helper(ROUTES["openai"], False)


def test_stream_helper_payi_route_without_usage():
    stream_helper(ROUTES["payi"], False)


def test_stream_helper_openai_route_with_usage():
    stream_helper(ROUTES["openai"], True)


def test_stream_helper_payi_route_with_usage():
    stream_helper(ROUTES["payi"], True)


def streaming_with_usage_on(route):
    c = client(BASE + route)
    stream = c.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True},
        extra_headers=ANNOTATIONS,
    )
    chunks = list(stream)
    direct_chunks = list(
        direct().chat.completions.create(
            model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    check(len(chunks) == len(direct_chunks), f"{len(chunks)} chunks, {len(direct_chunks)} direct: none added")
    usages = [ch for ch in chunks if ch.usage is not None]
    check(len(usages) == 1 and usages[0].usage.completion_tokens > 0, usages)
    check(usages[0] is chunks[-1] and chunks[-1].choices == [], "the usage chunk is last, as OpenAI sends it")
    carriers = [ch for ch in chunks if xproxy(ch) is not None]
    check(carriers == [usages[0]], "xproxy_result rides on the usage chunk itself")
    check_annotations(payi_result(usages[0], "usage chunk"), "usage chunk")


def test_streaming_with_usage_requested_openai_route():
    streaming_with_usage_on(ROUTES["openai"])


def test_streaming_with_usage_requested_payi_route():
    streaming_with_usage_on(ROUTES["payi"])


def test_rate_limit_raises_rate_limit_error():
    c = client(BASE + "/v1")
    try:
        c.chat.completions.create(model="gpt-4o", messages=MESSAGES, extra_headers={"x-mock-error": "429"})
    except openai.RateLimitError as e:
        check(e.status_code == 429, e)
        check(e.response.headers.get("retry-after"), "retry-after passes through")
        return
    raise CheckFailed("no RateLimitError")


def test_raw_rate_limit_headers():
    c = client(BASE + "/v1")
    raw = c.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES, extra_headers=ANNOTATIONS)
    for name in ["x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-remaining-tokens",
                 "x-ratelimit-reset-requests", "x-request-id", "openai-processing-ms"]:
        check(raw.headers.get(name), f"{name} readable through with_raw_response")
    check_annotations(payi_result(raw.parse(), "raw response"), "raw response")


def test_invalid_annotation_raises_bad_request():
    c = client(BASE + "/v1")
    try:
        c.chat.completions.create(model="gpt-4o", messages=MESSAGES, extra_headers={"xProxy-UseCase-Name": "not valid!"})
    except openai.BadRequestError as e:
        check("xProxy-UseCase-Name" in str(e), str(e))
        return
    raise CheckFailed("no BadRequestError")


def test_models_list_is_forwarded():
    c = client(BASE + "/v1")
    ids = [m.id for m in c.models.list()]
    check("gpt-4o" in ids, ids)


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
