"""The real OpenAI Python SDK as a client of the llm-meter proxy.

Run by tests/openai_sdk.rs with the proxy's base address as the only argument; prints one line
per check and a closing 'N passed, N failed' line; exits non-zero when any check failed.
"""
import json
import sys
import traceback

import openai

BASE = sys.argv[1].rstrip("/")
ANNOTATIONS = {
    "xProxy-UseCase-Name": "sdk.e2e",
    "xProxy-User-ID": "user-py",
    "xProxy-Limit-IDs": "sdk-daily",
    "xProxy-Request-Tags": "python,e2e",
}
MESSAGES = [{"role": "user", "content": "Say hello from Python"}]


def client(base_url):
    return openai.OpenAI(base_url=base_url, api_key="sk-python-client", max_retries=0, timeout=20)


def xproxy(obj):
    extra = getattr(obj, "model_extra", None) or {}
    return extra.get("xproxy_result")


def plain_call_on(route):
    c = client(BASE + route)
    completion = c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, extra_headers=ANNOTATIONS)
    assert completion.choices[0].message.content.startswith("Hello"), completion
    assert completion.usage.prompt_tokens > 0
    result = xproxy(completion)
    assert result is not None, "xproxy_result readable from the SDK's response object"
    assert result["use_case_name"] == "sdk.e2e", result
    assert result["user_id"] == "user-py", result
    assert result["request_tags"] == ["python", "e2e"], result
    assert result["limits"] == {"sdk-daily": {"state": "ok"}}, result
    assert result["cost"]["currency"] == "usd" and result["cost"]["total"]["base"] > 0, result


def test_plain_call_openai_route():
    plain_call_on("/v1")


def test_plain_call_payi_route():
    plain_call_on("/api/v1/proxy/openai/v1")


def test_streaming_call():
    c = client(BASE + "/v1")
    stream = c.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True, extra_headers=ANNOTATIONS)
    text, last = "", None
    for chunk in stream:
        for choice in chunk.choices:
            text += choice.delta.content or ""
        assert chunk.usage is None, "the SDK did not ask for usage and sees none"
        last = chunk
    assert text.startswith("Hello"), text
    result = xproxy(last)
    assert result is not None, "the last chunk carries xproxy_result"
    assert result["use_case_name"] == "sdk.e2e" and result["cost"]["total"]["base"] > 0, result


def test_streaming_with_usage_requested():
    c = client(BASE + "/v1")
    stream = c.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    usages = [chunk.usage for chunk in stream if chunk.usage is not None]
    assert len(usages) == 1 and usages[0].completion_tokens > 0, usages


def test_rate_limit_raises_rate_limit_error():
    c = client(BASE + "/v1")
    try:
        c.chat.completions.create(model="gpt-4o", messages=MESSAGES, extra_headers={"x-mock-error": "429"})
    except openai.RateLimitError as e:
        assert e.status_code == 429
        assert e.response.headers.get("retry-after"), "retry-after passes through"
        return
    raise AssertionError("no RateLimitError")


def test_raw_rate_limit_headers():
    c = client(BASE + "/v1")
    raw = c.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES, extra_headers=ANNOTATIONS)
    for name in ["x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-remaining-tokens",
                 "x-ratelimit-reset-requests", "x-request-id", "openai-processing-ms"]:
        assert raw.headers.get(name), f"{name} readable through with_raw_response"
    completion = raw.parse()
    assert xproxy(completion) is not None


def test_invalid_annotation_raises_bad_request():
    c = client(BASE + "/v1")
    try:
        c.chat.completions.create(model="gpt-4o", messages=MESSAGES, extra_headers={"xProxy-UseCase-Name": "not valid!"})
    except openai.BadRequestError as e:
        assert "xProxy-UseCase-Name" in str(e), str(e)
        return
    raise AssertionError("no BadRequestError")


def test_models_list_is_forwarded():
    c = client(BASE + "/v1")
    ids = [m.id for m in c.models.list()]
    assert "gpt-4o" in ids, ids


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
